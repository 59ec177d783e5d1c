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

import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.data.export import LATEST
from raysys.generation.memory_checks import generation_batch_size, generation_problems
from raysys.generation.pipeline import check_generator
from raysys.generation.plan_versions import output_root, plan_digest, plan_dir, plan_folder
from raysys.generation.plan_work import (PlanWork, generator_specs, open_plan, synthesis_metrics, work_with_sources,
                                         written_plan)
from raysys.generation.plans import check_plans
from raysys.generation.prompts import prompt_tokenizer
from raysys.generation.synthesis import check_clip_model, remove_duplicates
from raysys.report.stage_figures import synthetic_difficulty_histogram


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def check_generator_dtype(cfg: RaysysConfig) -> list[str]:
    if cfg.generator.dtype == "float16" and cfg.synthesis.num_gpus <= 0:
        return ["generator.dtype=float16 needs GPUs (synthesis.num_gpus > 0): CPUs run float16 slowly or not at all; "
                "on CPUs use bfloat16 or float32"]
    return []


def _open_plans(cfg: RaysysConfig, train, prepared: dict, tokenizer) -> dict[str, PlanWork]:
    """Every plan's rows and what its version folder already holds, each plan's in one or two lines."""
    plans = {}
    for p in cfg.synthesis.plans:
        plans[p.name] = work = open_plan(cfg, p, train, prepared, tokenizer)
        if work.prompts_cut:
            print(f"[synthesize] plan {p.name}: {work.prompts_cut} of {len(work.rows)} prompts are longer than the text "
                  f"encoder's {tokenizer.model_max_length} tokens and were cut")
        print(f"[synthesize] plan {p.name}: version {work.version} ({work.state}) in {work.folder}: "
              f"{len(work.rows)} rows planned ({p.kind}, model {p.model}), {work.already} already written, "
              f"{len(work.remaining)} to generate")
    return plans


def _generate(cfg: RaysysConfig, plans: dict[str, PlanWork]):
    """Generate, filter, re-score and write what is left of every plan (None: nothing is left)."""
    from raysys.ray.synthesis import run_synthesis

    work = work_with_sources(cfg, list(plans.values()))
    if not len(work):
        return None
    synthesis = dataclasses.replace(cfg.synthesis, batch_size=generation_batch_size(cfg))
    if cfg.synthesis.batch_size == "auto":
        print(f"[synthesize] batch_size auto: {synthesis.batch_size} images per call on {cfg.synthesis.gpu} "
              f"(the memory plan, generator.dtype {cfg.generator.dtype})")
    with contextlib.ExitStack() as copies:
        specs = generator_specs(cfg, set(work["model"].to_pylist()), copies)
        return run_synthesis(work, specs, cfg.generator.sampling(), synthesis, run_layout.classifier_model(cfg),
                             {name: p.folder for name, p in plans.items()})


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    if cfg.synthesis.filter.clip_model:
        check_clip_model(cfg.synthesis.filter.clip_model)  # before any plan is built or any actor starts
    prepared = run_layout.stage_metrics(cfg, "prepare")
    # The train rows' ids, labels, scores and captions; image bytes only for the sources still to generate from.
    train = read_manifest(run_layout.scored_manifest(cfg),
                          columns=["sample_id", "label", "difficulty", "caption", "prompt"],
                          where=pc.field("split") == "train")
    with run_layout.local_base_model(cfg) as base:  # every plan's generator conditions on the base's text encoder
        tokenizer = prompt_tokenizer(base)

    # 1-2. Plans, and what is still to do.
    t0 = time.time()
    plans = _open_plans(cfg, train, prepared, tokenizer)
    plan_seconds = time.time() - t0
    # 3. Generate, filter, re-score, write.
    run_info = _generate(cfg, plans)
    # 4. Exactly once: repair a re-cut retry, then the written set must equal the plan.
    per_plan, removed_total = {}, 0
    for name, plan in plans.items():
        removed_total += remove_duplicates(plan.folder)
        per_plan[name] = written_plan(name, plan)
    for name, plan in plans.items():  # every version complete: each plan folder names the one this run wrote
        io.write_json(io.join(plan_folder(cfg, name), LATEST), {"version": plan.version})
    metrics = synthesis_metrics(cfg, per_plan, removed_total, run_info, plan_seconds)
    synthetic_difficulty_histogram(cfg, {name: plan_dir(cfg, name) for name in plans}, stage.file("difficulty_hist.png"))
    print(f"[synthesize] planned {metrics['planned']}, generated {metrics['generated']} now, written {metrics['written']} "
          f"(kept {metrics['kept']}, filtered {metrics['filtered']}), duplicates {metrics['duplicates']}, "
          f"{metrics['images_per_s']} images/s -> {output_root(cfg)}")
    return metrics


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
