"""Stage `pretrain_generator`: the quickstart's small base text-to-image model (generator.base = builtin).

Trains a pixel-space SD-layout model from scratch on the `pretrain` split (disjoint from train,
val and test) on one Ray Train worker and writes <root>/pretrain_generator/pipeline/ (a diffusers
pipeline directory). It checkpoints every `pretrain.checkpoint_every` steps (under ray/): a
killed run, rerun with the same command, resumes from its last checkpoint and ends with the
weights an uninterrupted run would have. How well it draws the classes (`recognition`,
samples.png) is measured by the control stage, with the sampling settings of the run. With a
real base model (a Stable Diffusion directory or hub id) there is nothing to pretrain and the
stage does not apply.
"""

from __future__ import annotations

import numpy as np

from raysys.core import run_layout
from raysys.core.config import RaysysConfig
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.generation.prompts import check_prompt_template
from raysys.generation.pretrain import (PIPELINE_DIR, PretrainJob, StreamedImages, check_pretrain, pretrain_loop,
                                       pretrain_metrics, print_progress)
from raysys.ray.train import Workers, fit
from raysys.ray.tracking import check_tracking, tracked


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _run(stage: StageRun) -> dict:
    from raysys.training.classifier import manifest_rows

    cfg, p = stage.cfg, stage.cfg.pretrain
    files, rows = manifest_rows(run_layout.real_manifest(cfg), ["pretrain"])  # without images
    if rows.num_rows == 0:
        raise ValueError("the pretrain split is empty: set data.pretrain_per_class > 0 to pretrain the built-in generator")
    # Each step's batch is read and decoded on the worker when it is drawn.
    job = PretrainJob(images=StreamedImages(files, rows, p.image_size, cfg.data.channels),
                      labels=rows["label"].to_numpy().astype(np.int64),
                      class_names=run_layout.stage_metrics(cfg, "prepare")["class_names"], cfg=p,
                      prompt_template=cfg.generator.prompt_template, seed=cfg.run.seed, log=print_progress)
    workers = Workers(num_workers=1, use_gpu=p.use_gpu, cpus_per_worker=p.cpus, max_failures=p.max_failures)
    state = fit(pretrain_loop, job, workers, f"pretrain-{stage.digest}", stage.file("ray"),
                outputs={PIPELINE_DIR: stage.file("pipeline")}, tracking=tracked(cfg, STAGE))
    if state["step"] != p.steps:
        raise RuntimeError(f"pretrain: last checkpoint is at step {state['step']}, expected {p.steps}")
    metrics = pretrain_metrics(state)
    print(f"[pretrain_generator] {metrics['steps']} steps in {metrics['train_seconds']:.0f}s, loss "
          f"{metrics['loss_start']:.4f} -> {metrics['loss_end']:.4f} -> {stage.file('pipeline')}")
    return {"pretrain_images": int(rows.num_rows), "image_size": p.image_size, **metrics}


def _check(cfg: RaysysConfig) -> list[str]:
    problems = check_pretrain(cfg.pretrain) + check_prompt_template(cfg.generator.prompt_template) + check_tracking(cfg)
    if run_layout.builtin_generator(cfg) and cfg.data.pretrain_per_class < 1:
        problems.append("generator.base builtin pretrains on the pretrain split: set data.pretrain_per_class > 0")
    return problems


STAGE = Stage(
    name="pretrain_generator", reads=("prepare",), run=_run,
    config=("pretrain", "generator.prompt_template", "run.seed"),
    check=_check, applies=run_layout.builtin_generator,
    ready=lambda cfg: [] if run_layout.builtin_generator(cfg) else [f"generator.base is '{cfg.generator.base}': there is no built-in model to pretrain"],
    describe="the built-in base generator, trained from scratch on the pretrain split (generator.base: builtin): pipeline/",
)
