"""Stage `control`: what the generators draw, measured with the run's sampling settings.

As one Ray task:
- **Recognition** of the built-in base model (generator.base = builtin): `RECOGNITION_SEEDS`
  images per class, re-scored by the baseline classifier: how often it calls them the prompted
  class (`recognition`), against the real pretrain images at their own size and at the
  generator's; samples.png (one row per class).
- **Proof of control** of every fine-tuned variant: every class x every requested s of
  `control.grid_levels` x `control.grid_seeds` seeds, re-scored: `difficulty_spearman` (requested vs
  measured, over the whole grid), the same inside each class, the mean measured difficulty per
  requested s for each variant, and histograms against the real train set. PNGs:
  control_grid.png, hard_factors.png, requested_vs_measured.png, difficulty_control_hist.png.

Its fingerprint is the sampling settings and the grid, so changing them re-renders this stage
(and synthesis) and never retrains a model.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.generation.control import check_control, spearman, within_class_spearman
from raysys.generation.control_measure import grid_summary, measure_control
from raysys.generation.pipeline import check_generator
from raysys.ray.train import remote_task
from raysys.report.stage_figures import control_curves, difficulty_model_grids, recognition_samples
from raysys.training.classifier import manifest_rows

RECOGNITION_SEEDS = 20
"""Images per class for the recognition measurement."""


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _measure(*args) -> dict:
    """The stage's one Ray task, as Ray lists it: `measure_control`, `RECOGNITION_SEEDS` images per class."""
    return measure_control(*args, recognition_seeds=RECOGNITION_SEEDS)


def _run(stage: StageRun) -> dict:
    cfg, f = stage.cfg, stage.cfg.finetune
    class_names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    pretrain = (manifest_rows(run_layout.real_manifest(cfg), ["pretrain"]) if run_layout.builtin_generator(cfg)
                else None)
    t0 = time.time()
    cpus = f.cpus_per_worker if cfg.control.cpus is None else cfg.control.cpus
    task = remote_task(_measure, num_cpus=cpus, num_gpus=1 if f.use_gpu else 0)
    with run_layout.local_base_model(cfg) as base, io.local_copy(run_layout.classifier_model(cfg)) as classifier:
        out = task(cfg, base, {v: run_layout.adapters(cfg, v) for v in f.variants}, classifier, class_names, pretrain)
    grids = out["variants"]
    metrics: dict = {"control_seconds": round(time.time() - t0, 2)}
    if "recognition" in out:
        metrics.update(out["recognition"])
        recognition_samples(out["samples"], class_names, stage.file("samples.png"))
        print(f"[control] the baseline classifier recognises {metrics['recognition']:.1%} of "
              f"{metrics['recognition_images']} images of the base generator (real pretrain images: "
              f"{metrics['recognition_real_native']:.1%} at their size, "
              f"{metrics['recognition_real_same_size']:.1%} at the generator's)")

    real = read_manifest(run_layout.scored_manifest(cfg), columns=["difficulty"],
                         where=pc.field("split") == "train")["difficulty"].to_numpy(zero_copy_only=False)
    levels = [float(s) for s in cfg.control.grid_levels]
    control = {variant: grid_summary(grid) for variant, grid in grids.items()}
    metrics.update({"grid_levels": levels, "grid_seeds": cfg.control.grid_seeds, "real_train_mean_difficulty": float(np.mean(real)),
                    "control": control, "difficulty_spearman": None, "difficulty_spearman_within_class": None})
    if "difficulty" in grids:
        grid = grids["difficulty"]
        metrics["difficulty_spearman"] = spearman(grid["requested"], grid["measured"])
        metrics["difficulty_spearman_within_class"] = within_class_spearman(grid["labels"], grid["requested"],
                                                                            grid["measured"])
        difficulty_model_grids(grid, class_names, levels, metrics["difficulty_spearman"], f.class_input, stage.dir.path)
    control_curves(real, grids, {v: c["measured_mean_by_level"] for v, c in control.items()}, levels, stage.dir.path)
    print(f"[control] proof of control: Spearman(requested, measured) = {metrics['difficulty_spearman']} "
          f"(within class {metrics['difficulty_spearman_within_class']}); mean measured by s: "
          + "; ".join(f"{v}: {c['measured_mean_by_level']}" for v, c in control.items()))
    return metrics


STAGE = Stage(
    name="control", reads=("prepare", "train_classifier", "score", "pretrain_generator", "finetune"),
    run=_run, check=lambda cfg: check_generator(cfg.generator) + check_control(cfg.control),
    config=("generator", "control"),
    describe="the proof of control (class x s grids re-scored) and the base model's recognition, as sampled",
)
