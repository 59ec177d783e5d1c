"""The runs of a comparison: every `compare.variants` x `compare.seeds`, each its own config.

A variant is a set of `curriculum` fields; one run of it is the config with those fields set,
named `<variant>-seed<n>`. With the built-in generator, `compare.reference` adds the headroom
reference: real-only Balanced Softmax on train + the generator's own training split.
"""

from __future__ import annotations

from dataclasses import replace

from raysys.core import io
from raysys.core.config import RaysysConfig

REFERENCE = "reference"
"""The headroom reference's variant name (compare.reference)."""
REFERENCE_FIELDS = {"schedule": "real_only", "loss": "balanced_softmax"}
"""Real-only Balanced Softmax (on train + the generator's training split: compare_variants)."""


def variant_name(cfg: RaysysConfig) -> str:
    return cfg.curriculum.name or cfg.curriculum.schedule


def plan_names(cfg: RaysysConfig) -> list[str]:
    """The synthesis plans a curriculum run draws from."""
    return cfg.curriculum.plans or [p.name for p in cfg.synthesis.plans]


def generator_training_split(cfg: RaysysConfig) -> str | None:
    """The manifest split the generator learned from, when it is known: `pretrain` for the built-in
    base model (raysys pretrain-generator); None for a downloaded one."""
    return "pretrain" if cfg.generator.base == "builtin" else None


def compare_variants(cfg: RaysysConfig) -> dict[str, dict]:
    """compare.variants, with the headroom reference added when compare.reference asks for it and
    the generator's training images are known (a variant of that name in the config wins)."""
    out = dict(cfg.compare.variants)
    if out and cfg.compare.reference and generator_training_split(cfg) and REFERENCE not in out:
        out[REFERENCE] = {**REFERENCE_FIELDS, "extra_real_splits": [generator_training_split(cfg)]}
    return out


def variant_config(cfg: RaysysConfig, variant: str, seed: int) -> RaysysConfig:
    """The config of one curriculum run of the comparison: `curriculum` with the variant's fields
    set, named `<variant>-seed<seed>`."""
    overrides = compare_variants(cfg)[variant]
    return replace(cfg, curriculum=replace(cfg.curriculum, **overrides, name=f"{variant}-seed{seed}", seed=seed))


def variants(cfg: RaysysConfig) -> dict[str, list[RaysysConfig]]:
    """Variant name -> the config of each of its curriculum runs (one per seed)."""
    cfg = replace(cfg, run=replace(cfg.run, root=io.resolve(cfg.run.root)))  # runs may train in Ray tasks
    if not cfg.compare.variants:
        return {variant_name(cfg): [cfg]}
    return {name: [variant_config(cfg, name, seed) for seed in cfg.compare.seeds] for name in compare_variants(cfg)}


def curriculum_configs(cfg: RaysysConfig) -> list[RaysysConfig]:
    """Every run of the comparison (the `curriculum` section once without variants)."""
    return [c for runs in variants(cfg).values() for c in runs]
