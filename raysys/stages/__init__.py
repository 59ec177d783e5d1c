"""The stage registry: the one list of stages the CLI, `jobs/` and the report take their stages from.

`raysys.core.stage` has the contract and the runner; each module here declares one `STAGE`.
`load_config` reads a config and runs every stage's check, so that a bad value is refused
before any work, naming where it came from.
"""

from __future__ import annotations

from pathlib import Path

from raysys.core.config import RaysysConfig
from raysys.core.loading import read_config
from raysys.core.stage import Stage, check_chain, register
from raysys.stages import (caption, control, curriculum, evaluate, finetune, prepare, pretrain_generator, quality, report,
                           score, synthesize, train_classifier, tune)

STAGES: tuple[Stage, ...] = (prepare.STAGE, caption.STAGE, train_classifier.STAGE, score.STAGE, pretrain_generator.STAGE,
                             finetune.STAGE, control.STAGE, synthesize.STAGE, quality.STAGE, curriculum.STAGE,
                             evaluate.STAGE, report.STAGE, tune.STAGE)
"""Every stage, in the order `raysys run` takes them where the graph leaves a choice."""
register(STAGES)  # the stages name what they read: this makes the names known
BY_COMMAND = {s.command: s for s in STAGES}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RaysysConfig:
    """Load YAML `path` (optional) over the defaults, then `key=value` overrides; check every stage.

    Problems are reported against where they came from: the file, or "command line"."""
    if path is not None and overrides:
        check_chain(STAGES, read_config(path), str(path))  # the file's own problems name the file
    cfg = read_config(path, overrides)
    check_chain(STAGES, cfg, "command line" if overrides else str(path or "config"))
    return cfg
