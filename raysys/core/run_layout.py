"""Where every artefact of a run lives: one place that knows the run root's layout, so that stages
read each other's outputs without importing each other.

Every stage writes under `<run.root>/<stage>/`; the paths here name what later stages read:

    prepare/manifest/               the real images and their splits (Parquet parts)
    caption/manifest/               the same with a caption per image (captions.model set)
    train_classifier/model/         the baseline classifier
    score/manifest/                 the manifest with measured difficulty
    pretrain_generator/pipeline/    the built-in base generator (generator.base: builtin)
    finetune/<variant>/adapters/    LoRA (+ difficulty encoder) per fine-tuned variant
    <synthesis.output>/<plan>/      every version of a synthesis plan (raysys.generation.plan_versions)

A stage's own metrics and digest are the runner's (`stage_named(name).dir(cfg)`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.stage import stage_named


def stage_folder(cfg: RaysysConfig, stage: str) -> str:
    """<run.root>/<stage>."""
    return io.join(io.resolve(cfg.run.root), stage)


def stage_metrics(cfg: RaysysConfig, stage: str) -> dict[str, Any]:
    """The metrics.json of a complete one-unit stage (prepare's class names, counts, ...)."""
    return stage_named(stage).dir(cfg).metrics()


def real_manifest(cfg: RaysysConfig) -> str:
    """The prepared manifest: the real images and their splits."""
    return io.join(stage_folder(cfg, "prepare"), "manifest")


def captioned(cfg: RaysysConfig) -> bool:
    """Whether the run captions its images (the caption stage runs)."""
    return cfg.captions.model is not None


def captioned_manifest(cfg: RaysysConfig) -> str:
    """The prepared manifest with a caption for every row of captions.splits."""
    return io.join(stage_folder(cfg, "caption"), "manifest")


def described_manifest(cfg: RaysysConfig) -> str:
    """The real manifest that scoring carries forward: captioned when the run captions, else prepared."""
    return captioned_manifest(cfg) if captioned(cfg) else real_manifest(cfg)


def scored_manifest(cfg: RaysysConfig) -> str:
    """The prepared manifest with every row's measured difficulty."""
    return io.join(stage_folder(cfg, "score"), "manifest")


def classifier_model(cfg: RaysysConfig) -> str:
    """The baseline classifier (trained on the real train split)."""
    return io.join(stage_folder(cfg, "train_classifier"), "model")


def builtin_generator(cfg: RaysysConfig) -> bool:
    """Whether the base generator is raysys's own, pretrained from scratch by pretrain-generator."""
    return cfg.generator.base == "builtin"


def pretrained_pipeline(cfg: RaysysConfig) -> str:
    """The built-in base generator pretrain-generator writes."""
    return io.join(stage_folder(cfg, "pretrain_generator"), "pipeline")


def base_model(cfg: RaysysConfig) -> str:
    """Where later stages find the base model: the pretrained pipeline or generator.base."""
    return pretrained_pipeline(cfg) if builtin_generator(cfg) else cfg.generator.base


def base_label(cfg: RaysysConfig) -> str:
    """What the `generator` column records for the base model (the built-in one: by its digest)."""
    return f"builtin:{stage_named('pretrain_generator').digest(cfg)}" if builtin_generator(cfg) else cfg.generator.base


@contextlib.contextmanager
def local_base_model(cfg: RaysysConfig) -> Iterator[str]:
    """The base model where from_pretrained reads it, for the `with` block: a local directory
    (copied from a URI, removed after the block) or a hub id."""
    if not builtin_generator(cfg):
        yield cfg.generator.base
        return
    with io.local_copy(base_model(cfg)) as local:
        yield local


def adapters(cfg: RaysysConfig, variant: str) -> str:
    """A fine-tuned variant's LoRA (and difficulty encoder) folder."""
    return io.join(stage_folder(cfg, "finetune"), variant, "adapters")
