"""Configuration declarations, one dataclass per section, grouped by component in this package (loading: raysys.core.loading; checks: beside components).

A field declared with `runtime(...)` changes how a stage runs (resources, concurrency, checkpoint
frequency), never what it writes: no digest holds it, so changing it reruns nothing. Every other
field is in the fingerprint of each stage that declares its section (raysys.core.stage), and a
test checks that each of them changes some stage's digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from raysys.core.config.data import CaptionsConfig, DataConfig, TableColumns
from raysys.core.config.fields import RUNTIME, runtime
from raysys.core.config.generation import (ControlConfig, FilterConfig, FinetuneConfig, GeneratorConfig, PlanConfig,
                                           PretrainConfig, QualityConfig, SamplingConfig, SpeedConfig,
                                           SynthesisConfig)
from raysys.core.config.training import (ClassifierConfig, CompareConfig, CurriculumConfig, ScoreConfig, TrainConfig,
                                         TuneConfig)

__all__ = ["RUNTIME", "runtime", "RunSection", "TrackingConfig", "RaysysConfig", "TableColumns", "DataConfig",
           "CaptionsConfig", "SamplingConfig", "GeneratorConfig", "PretrainConfig", "FinetuneConfig", "ControlConfig",
           "PlanConfig", "FilterConfig", "SpeedConfig", "SynthesisConfig", "QualityConfig", "ClassifierConfig",
           "TrainConfig", "ScoreConfig", "CurriculumConfig", "CompareConfig", "TuneConfig"]


@dataclass
class RunSection:
    """Where a run writes and how it is seeded."""

    root: str = runtime("runs/default")
    """Run root: a local path or a pyarrow filesystem URI (s3://, gs://). Each stage writes under <root>/<stage>/."""
    seed: int = 0
    """Seed for every random choice in the run (splits, init, data order)."""
    address: Optional[str] = runtime(None)
    """Ray cluster address. None: use $RAY_ADDRESS if set, else start an embedded Ray."""
    num_cpus: Optional[int] = runtime(None)
    """CPUs for an embedded Ray (None: all of this machine's). Ignored on a cluster."""
    hf_home: Optional[str] = runtime(None)
    """HF_HOME for this process and every Ray worker, so workers share one copy of the weights (None: as set)."""


@dataclass
class TrackingConfig:
    """Experiment tracking of every Ray Train run and Tune trial (raysys.ray.tracking; docs/tracking.md). It never
    changes what a stage writes: every field is runtime."""

    mlflow_uri: Optional[str] = runtime(None)
    """MLflow tracking URI: an `http://host:port` server (on a cluster: one every node reaches), a `file:` store or
    `sqlite:///<file>` (relative paths are taken from the working directory); None: no MLflow. Needs
    `pip install raysys[tracking]`."""
    mlflow_experiment: Optional[str] = runtime(None)
    """Experiment of the run's Ray Train runs, one MLflow run each (a sweep: `<experiment>/tune/<tune.name>`, one
    MLflow run per trial); None: the run root's folder name."""
    tensorboard: bool = runtime(True)
    """TensorBoard event files of every Ray Train run and trial under `<root>/tensorboard/<stage>/<run name>/`."""


@dataclass
class RaysysConfig:
    """The whole run: one section per component."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
