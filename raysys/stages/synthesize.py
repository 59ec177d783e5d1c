"""Stage `synthesize`: every plan of `synthesis.plans`, generated exactly once on Ray Data.

1. **Plan**: each plan's rows are decided up front (`raysys.generation.plans`), with
   deterministic sample ids. Each version of a plan has its own folder, named by the plan's
   digest: `<output>/<plan>/<digest>/part-*.parquet`, and `_plan.json` there records the digest
   and what the plan was made from, to read.
2. **Skip what is written**: ids already in the version folder are dropped from the work; a
   finished version generates nothing. A changed plan gets a new folder; nothing is moved or
   deleted, so switching back to an earlier config reuses its version as it is (on `s3://`
   roots too). Old versions stay until deleted by hand.
3. **Generate -> [CLIP filter] -> re-score and write** on actor pools (`raysys.ray.synthesis`).
4. **Check**: duplicate ids (a batch retried with another cut) are removed, then the written
   set must equal the planned set: nothing missing, nothing twice, or the stage fails. Only
   then does `<output>/<plan>/latest.json` name the version this run wrote.

Writes metrics.json (`planned`, `generated`, `filtered`, `written`, `duplicates`,
`images_per_s`, per plan its `version`, `path` and `prompts_cut`: how many of its prompts are
longer than the text encoder takes, which cuts them, and per actor) and difficulty_hist.png
(real vs requested vs measured). Read a plan's images with `read_plan(plan_dir(cfg, name))`;
export them to an image folder with `raysys export <output>/<plan> OUT` (the version that
latest.json names) or `raysys export <output>/<plan>/<digest> OUT`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage, stage_named
from raysys.data.export import LATEST
from raysys.generation.memory_checks import generation_batch_size, generation_problems
from raysys.generation.pipeline import check_generator
from raysys.generation.plan_versions import open_version, output_root, plan_digest, plan_dir, plan_folder
from raysys.generation.plans import check_plans
from raysys.generation.prompts import cut_prompts, prompt_tokenizer


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def check_generator_dtype(cfg: RaysysConfig) -> list[str]:
    if cfg.generator.dtype == "float16" and cfg.synthesis.num_gpus <= 0:
        return ["generator.dtype=float16 needs GPUs (synthesis.num_gpus > 0): CPUs run float16 slowly or not at all; "
                "on CPUs use bfloat16 or float32"]
    return []


def _generator_specs(cfg: RaysysConfig, models: set[str], copies: contextlib.ExitStack) -> dict:
    """The generators of `models`; the local copies of models under a URI live as long as `copies`
    (generation actors load them in their constructors, and the pool may start more while it runs)."""
    from raysys.generation.synthesis import GeneratorSpec

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


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    from raysys.generation.plans import build_plan, with_source_images
    from raysys.generation.synthesis import check_clip_model, read_plan, remove_duplicates, written_ids
    from raysys.ray.synthesis import run_synthesis

    if cfg.synthesis.filter.clip_model:
        check_clip_model(cfg.synthesis.filter.clip_model)  # before any plan is built or any actor starts

    prep = run_layout.stage_metrics(cfg, "prepare")
    # The train rows' ids, labels, scores and captions; image bytes only for the sources still to generate from.
    train = read_manifest(run_layout.scored_manifest(cfg),
                          columns=["sample_id", "label", "difficulty", "caption", "prompt"],
                          where=pc.field("split") == "train")
    with run_layout.local_base_model(cfg) as base:  # every plan's generator conditions on the base's text encoder
        tokenizer = prompt_tokenizer(base)

    # 1-2. Plans, and what is still to do.
    t0 = time.time()
    plans, todo, already, folders, versions, cut = {}, [], {}, {}, {}, {}
    for p in cfg.synthesis.plans:
        rows = build_plan(p, train, prep["class_names"], prep["groups"]["few"], cfg.generator.prompt_template,
                          cfg.run.seed, negative_prompt=cfg.generator.negative_prompt)
        plans[p.name] = rows
        cut[p.name] = cut_prompts(tokenizer, rows["prompt"].to_pylist())
        if cut[p.name]:
            print(f"[synthesize] plan {p.name}: {cut[p.name]} of {len(rows)} prompts are longer than the text "
                  f"encoder's {tokenizer.model_max_length} tokens and were cut")
        folders[p.name], versions[p.name] = open_version(cfg, p), plan_digest(cfg, p)
        done = written_ids(folders[p.name])
        already[p.name] = sum(1 for sid in rows["sample_id"].to_pylist() if sid in done)
        remaining = rows.filter(pa.array([sid not in done for sid in rows["sample_id"].to_pylist()]))
        todo.append(remaining)
        state = "new" if not done else "finished, reused" if not len(remaining) else "resumed"
        print(f"[synthesize] plan {p.name}: version {versions[p.name]} ({state}) in {folders[p.name]}: "
              f"{len(rows)} rows planned ({p.kind}, model {p.model}), {already[p.name]} already written, "
              f"{len(remaining)} to generate")
    plan_seconds = time.time() - t0
    work = pa.concat_tables(todo)
    sources = sorted({sid for sid in work["source_id"].to_pylist() if sid is not None})
    if sources:
        found = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "image"],
                              where=pc.field("sample_id").isin(sources))
        work = with_source_images(work, dict(zip(found["sample_id"].to_pylist(), found["image"].to_pylist())))

    # 3. Generate, filter, re-score, write.
    run_info = None
    if len(work):
        sampling = cfg.generator.sampling()
        models = set(work["model"].to_pylist())
        synthesis = dataclasses.replace(cfg.synthesis, batch_size=generation_batch_size(cfg))
        if cfg.synthesis.batch_size == "auto":
            print(f"[synthesize] batch_size auto: {synthesis.batch_size} images per call on {cfg.synthesis.gpu} "
                  f"(the memory plan, generator.dtype {cfg.generator.dtype})")
        with contextlib.ExitStack() as copies:
            run_info = run_synthesis(work, _generator_specs(cfg, models, copies), sampling, synthesis,
                                     run_layout.classifier_model(cfg), folders)

    # 4. Exactly once: repair a re-cut retry, then the written set must equal the plan.
    per_plan, removed_total = {}, 0
    for name, rows in plans.items():
        directory = folders[name]
        removed_total += remove_duplicates(directory)
        counts = written_ids(directory)
        planned_ids = set(rows["sample_id"].to_pylist())
        missing = planned_ids - set(counts)
        extra = set(counts) - planned_ids
        duplicates = sum(c - 1 for c in counts.values())
        if missing or extra or duplicates:
            raise RuntimeError(f"plan {name}: {len(missing)} planned rows not written, {len(extra)} rows not in the "
                               f"plan, {duplicates} duplicates in {directory}; rerun to finish")
        written = read_plan(directory, kept_only=False)
        keep = written["keep"].to_numpy(zero_copy_only=False).astype(bool)
        measured = written["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
        requested = written["requested_difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
        per_plan[name] = {
            "planned": len(rows), "already_written": already[name], "written": len(written),
            "kept": int(keep.sum()), "filtered": int((~keep).sum()), "duplicates": duplicates,
            "measured_difficulty_mean": float(np.mean(measured[keep])) if keep.any() else None,
            "requested_difficulty_mean": float(np.nanmean(requested[keep])) if keep.any() and not np.isnan(requested[keep]).all() else None,
            "version": versions[name], "path": directory,
            "reused": already[name] == len(rows), "prompts_cut": cut[name],
        }
    for name, version in versions.items():  # every version complete: each plan folder names the one this run wrote
        io.write_json(io.join(plan_folder(cfg, name), LATEST), {"version": version})
    summary = run_info.summary if run_info else None
    generated = len(summary) if summary is not None else 0
    seconds = run_info.wall_seconds if run_info else 0.0
    metrics = {
        "planned": sum(p["planned"] for p in per_plan.values()),
        "generated": generated,
        "filtered": sum(p["filtered"] for p in per_plan.values()),
        "written": sum(p["written"] for p in per_plan.values()),
        "kept": sum(p["kept"] for p in per_plan.values()),
        "duplicates": sum(p["duplicates"] for p in per_plan.values()),
        "duplicates_removed": removed_total,
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
    _plot(cfg, stage, plans)
    print(f"[synthesize] planned {metrics['planned']}, generated {generated} now, written {metrics['written']} "
          f"(kept {metrics['kept']}, filtered {metrics['filtered']}), duplicates {metrics['duplicates']}, "
          f"{metrics['images_per_s']} images/s -> {output_root(cfg)}")
    return metrics


def _plot(cfg: RaysysConfig, stage: StageRun, plans: dict) -> None:
    """Requested vs measured difficulty of the kept images of every plan that requested s."""
    from raysys.generation.synthesis import read_plan
    from raysys.report.plots import difficulty_histogram

    hist = {}
    real = read_manifest(run_layout.scored_manifest(cfg), columns=["difficulty"], where=pc.field("split") == "train")
    hist["real train"] = real["difficulty"].to_numpy(zero_copy_only=False)
    for name in plans:
        kept = read_plan(plan_dir(cfg, name))
        if len(kept):
            hist[f"{name} (measured)"] = kept["difficulty"].to_numpy(zero_copy_only=False)
            requested = kept["requested_difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
            if not np.isnan(requested).all():
                hist[f"{name} (requested)"] = requested[~np.isnan(requested)]
    difficulty_histogram(hist, stage.file("difficulty_hist.png"), "difficulty: real train vs synthetic")


def _needs(cfg: RaysysConfig) -> tuple:
    """Only plans of fine-tuned models need the finetune stage."""
    needed = ("prepare", "train_classifier", "score", "pretrain_generator")
    return needed + (("finetune",) if any(p.model != "base" for p in cfg.synthesis.plans) else ())


STAGE = Stage(
    name="synthesize", reads=("prepare", "train_classifier", "score", "pretrain_generator", "finetune"),
    version=2,  # a folder per plan version (<plan>/<digest>/)
    needs=_needs, run=_run,
    config=("synthesis.output",), derived=lambda cfg: [plan_digest(cfg, p) for p in cfg.synthesis.plans],
    check=lambda cfg: (check_generator(cfg.generator) + check_generator_dtype(cfg)
                       + check_plans(cfg.synthesis, cfg.finetune.variants) + generation_problems(cfg)),
    describe="every plan of synthesis.plans generated exactly once on Ray Data: <plan>/<digest>/part-*.parquet",
)
