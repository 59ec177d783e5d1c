"""Where each version of a synthesis plan lives, and what names it.

A plan's rows and images depend on the stages upstream of it (prepare, train-classifier and
score; the fine-tunes too for a fine-tuned model's plan) and on its fingerprint: the base model,
the generator section, the synthesis section without the other plans, the plan itself (a digest
leaves out their `runtime` fields: actors, batch sizes, speed), the seed, and the content of a
prompts file (only for a plan that reads one). Their digest names the version's folder,
`<synthesis.output>/<plan>/<digest>/`, so changing one plan, or a fine-tune, makes a new version
of only the plans it concerns, and switching back reuses the old one. `_plan.json` in the folder
records the digest and, to read, what the version is made from.
"""

from __future__ import annotations

import dataclasses

from raysys.core import io, run_layout
from raysys.core.config import PlanConfig, RaysysConfig
from raysys.core.loading import digest
from raysys.core.stage import stage_named
from raysys.generation.plans import prompts_file_digest


def output_root(cfg: RaysysConfig) -> str:
    """synthesis.output, or <root>/synthesize."""
    return io.resolve(cfg.synthesis.output) if cfg.synthesis.output else run_layout.stage_folder(cfg, "synthesize")


def plan_folder(cfg: RaysysConfig, name: str) -> str:
    """Folder of every version of one plan: a folder per digest, and latest.json."""
    return io.join(output_root(cfg), name)


def plan_fingerprint(cfg: RaysysConfig, plan: PlanConfig) -> tuple:
    """What a plan's rows and images depend on besides its upstream stages."""
    fingerprint = (run_layout.base_label(cfg), cfg.generator, dataclasses.replace(cfg.synthesis, plans=[]), plan,
                   cfg.run.seed)
    prompts = prompts_file_digest(plan)
    return fingerprint if prompts is None else (*fingerprint, prompts)


def plan_digest(cfg: RaysysConfig, plan: PlanConfig) -> str:
    """A plan's own digest: the stages it reads (the fine-tunes only for a fine-tuned model's plan)
    and its fingerprint."""
    upstream = ["prepare", "train_classifier", "score"] + (["finetune"] if plan.model != "base" else [])
    return digest([stage_named(s).digest(cfg) for s in upstream], plan_fingerprint(cfg, plan))


def plan_dir(cfg: RaysysConfig, name: str) -> str:
    """Folder of the Parquet parts of plan `name` as `cfg` defines it: `<output>/<plan>/<digest>`."""
    plan = next((p for p in cfg.synthesis.plans if p.name == name), None)
    if plan is None:
        raise ValueError(f"no plan named '{name}' in synthesis.plans {[p.name for p in cfg.synthesis.plans]}")
    return io.join(plan_folder(cfg, name), plan_digest(cfg, plan))


def plan_summary(cfg: RaysysConfig, plan: PlanConfig) -> dict:
    """What a version's `_plan.json` records: its digest and, to read, what the plan is made from."""
    return {"digest": plan_digest(cfg, plan), "plan": dataclasses.asdict(plan),
            "generator": run_layout.base_label(cfg), "dtype": cfg.generator.dtype,
            "sampling": dataclasses.asdict(cfg.generator.sampling()),
            "prompt_template": cfg.generator.prompt_template,
            "image_format": cfg.synthesis.image_format, "filter": dataclasses.asdict(cfg.synthesis.filter),
            "seed": cfg.run.seed, "prompts_file_sha256": prompts_file_digest(plan)}


def open_version(cfg: RaysysConfig, plan: PlanConfig) -> str:
    """The version folder of `plan`, with its `_plan.json` (written once; a version's folder only
    ever holds the rows of its own digest, so nothing in it, or beside it, is moved or deleted)."""
    directory = plan_dir(cfg, plan.name)
    marker = io.join(directory, "_plan.json")
    if not io.exists(marker):
        io.makedirs(directory)
        io.write_json(marker, plan_summary(cfg, plan))
    return directory
