"""The bookkeeping of a synthesize run, plan by plan: each plan's rows and version folder, what that
folder already holds and what is left to generate; the generators the work needs; and, once it is
generated, the check that the written set is exactly the plan, and the run's metrics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import PlanConfig, RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import stage_named
from raysys.generation.plan_versions import open_version, output_root, plan_digest
from raysys.generation.plans import build_plan, with_source_images
from raysys.generation.prompts import cut_prompts
from raysys.generation.synthesis import GeneratorSpec, read_plan, written_ids


@dataclass
class PlanWork:
    """One plan of a synthesize run: its planned rows, its version folder and what is left to generate."""

    rows: pa.Table
    """Every planned row."""
    folder: str
    """The version folder, `<output>/<plan>/<digest>`."""
    version: str
    """The plan's digest."""
    already: int
    """Planned rows the folder already holds."""
    remaining: pa.Table
    """Planned rows still to generate."""
    prompts_cut: int
    """Prompts longer than the text encoder takes, which cuts them."""
    state: str
    """What the folder held: `new` (nothing), `resumed` or `finished, reused`."""


def open_plan(cfg: RaysysConfig, plan: PlanConfig, train: pa.Table, prepared: dict, tokenizer) -> PlanWork:
    """Build `plan`'s rows from the train rows (`prepared`: the prepare stage's metrics), open its
    version folder and find what is still to generate there."""
    rows = build_plan(plan, train, prepared["class_names"], prepared["groups"]["few"], cfg.generator.prompt_template,
                      cfg.run.seed, negative_prompt=cfg.generator.negative_prompt)
    cut = cut_prompts(tokenizer, rows["prompt"].to_pylist())
    folder = open_version(cfg, plan)
    done = written_ids(folder)
    ids = rows["sample_id"].to_pylist()
    remaining = rows.filter(pa.array([sid not in done for sid in ids]))
    state = "new" if not done else "finished, reused" if not len(remaining) else "resumed"
    return PlanWork(rows=rows, folder=folder, version=plan_digest(cfg, plan), already=sum(1 for sid in ids if sid in done),
                    remaining=remaining, prompts_cut=cut, state=state)


def work_with_sources(cfg: RaysysConfig, plans: list[PlanWork]) -> pa.Table:
    """Every plan's remaining rows, with the bytes of the real images that guide them."""
    work = pa.concat_tables([p.remaining for p in plans])
    sources = sorted({sid for sid in work["source_id"].to_pylist() if sid is not None})
    if sources:
        found = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "image"],
                              where=pc.field("sample_id").isin(sources))
        work = with_source_images(work, dict(zip(found["sample_id"].to_pylist(), found["image"].to_pylist())))
    return work


def generator_specs(cfg: RaysysConfig, models: set[str], copies: contextlib.ExitStack) -> dict[str, GeneratorSpec]:
    """The generators of `models`; the local copies of models under a URI live as long as `copies`
    (generation actors load them in their constructors, and the pool may start more while it runs)."""
    base, label_base = copies.enter_context(run_layout.local_base_model(cfg)), run_layout.base_label(cfg)
    specs = {}
    for model in sorted(models):
        if model == "base":
            specs[model] = GeneratorSpec(base=base, label=label_base, dtype=cfg.generator.dtype)
        else:
            adapters = copies.enter_context(io.local_copy(run_layout.adapters(cfg, model)))
            specs[model] = GeneratorSpec(base=base, adapters=adapters, dtype=cfg.generator.dtype,
                                         label=f"{label_base}+{model}:{stage_named('finetune').digest(cfg)}")
    return specs


def written_plan(name: str, plan: PlanWork) -> dict:
    """The plan's figures once its folder holds exactly the planned rows (else RuntimeError: rerun to finish)."""
    counts = written_ids(plan.folder)
    planned_ids = set(plan.rows["sample_id"].to_pylist())
    missing = planned_ids - set(counts)
    extra = set(counts) - planned_ids
    duplicates = sum(c - 1 for c in counts.values())
    if missing or extra or duplicates:
        raise RuntimeError(f"plan {name}: {len(missing)} planned rows not written, {len(extra)} rows not in the "
                           f"plan, {duplicates} duplicates in {plan.folder}; rerun to finish")
    written = read_plan(plan.folder, kept_only=False)
    keep = written["keep"].to_numpy(zero_copy_only=False).astype(bool)
    measured = written["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    requested = written["requested_difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    return {
        "planned": len(plan.rows), "already_written": plan.already, "written": len(written),
        "kept": int(keep.sum()), "filtered": int((~keep).sum()), "duplicates": duplicates,
        "measured_difficulty_mean": float(np.mean(measured[keep])) if keep.any() else None,
        "requested_difficulty_mean": float(np.nanmean(requested[keep])) if keep.any() and not np.isnan(requested[keep]).all() else None,
        "version": plan.version, "path": plan.folder,
        "reused": plan.already == len(plan.rows), "prompts_cut": plan.prompts_cut,
    }


def synthesis_metrics(cfg: RaysysConfig, per_plan: dict[str, dict], duplicates_removed: int, run_info,
                      plan_seconds: float) -> dict:
    """The stage's metrics: the plans' totals, this run's generation (`run_info`: what generating
    returned, its summary table, wall seconds and actors; None when nothing was left to generate),
    the pool and the filter."""
    summary = run_info.summary if run_info else None
    generated = len(summary) if summary is not None else 0
    seconds = run_info.wall_seconds if run_info else 0.0

    def total(key: str) -> int:
        return sum(p[key] for p in per_plan.values())

    return {
        "planned": total("planned"),
        "generated": generated,
        "filtered": total("filtered"),
        "written": total("written"),
        "kept": total("kept"),
        "duplicates": total("duplicates"),
        "duplicates_removed": duplicates_removed,
        "images_per_s": round(generated / seconds, 3) if seconds > 0 else None,
        "generation_seconds": round(seconds, 3),
        "plan_seconds": round(plan_seconds, 3),
        "plans": per_plan,
        "actors": run_info.actors if run_info else {},
        "pool": {"min": cfg.synthesis.min_actors, "max": cfg.synthesis.max_actors,
                 "num_gpus": cfg.synthesis.num_gpus, "cpus_per_actor": cfg.synthesis.cpus_per_actor},
        "filter": "clip" if cfg.synthesis.filter.clip_model else f"classifier p >= {cfg.synthesis.filter.classifier_min_p}",
        "output": output_root(cfg),
    }
