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
from dataclasses import replace

import numpy as np
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.generation.control import check_control, encode_images
from raysys.generation.pipeline import check_generator
from raysys.ray.train import remote_task
from raysys.training.classifier import manifest_rows

RECOGNITION_SEEDS = 20
"""Images per class for the recognition measurement."""
RECOGNITION_BLOCK = 256
"""Real pretrain images read and scored at a time."""
HARD_FACTOR_SEED = 0


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _measure(cfg: RaysysConfig, base: str, adapters: dict[str, str], classifier_dir: str, class_names: list[str],
             pretrain: tuple | None) -> dict:
    """Runs inside one Ray task: the recognition set of the base model (when `pretrain`, the
    manifest files and the pretrain split's rows without images, is given; its images are read a
    block at a time) and the grids of every fine-tuned variant, re-scored by the baseline classifier."""
    import torch

    from raysys.data.images import decode_batch
    from raysys.data.stream import RowGroupCache, read_images
    from raysys.generation.components import load_pipeline
    from raysys.generation.control import control_grid, hard_factor_grid
    from raysys.generation.finetune import load_finetuned
    from raysys.generation.prompts import fill_prompt
    from raysys.scoring.difficulty import DifficultyScorer

    device = "cuda" if cfg.finetune.use_gpu else "cpu"
    opts = cfg.generator.sampling()
    prompts = [fill_prompt(cfg.generator.prompt_template, n) for n in class_names]
    scorer = DifficultyScorer({"baseline": classifier_dir})
    out: dict = {"variants": {}}
    if pretrain is not None:
        pipe = load_pipeline(base).to(device)
        with torch.no_grad():  # the base model has no difficulty encoder: nothing to guide s with
            grid = control_grid(pipe, prompts, [0.0], RECOGNITION_SEEDS, replace(opts, difficulty_guidance_scale=None),
                                with_difficulty=False, first_seed=10_000)
        samples = grid.images[:, 0]  # (classes, seeds, H, W, C)
        flat, labels_flat = samples.reshape(-1, *samples.shape[2:]), grid.labels[:, 0].ravel()
        correct = (scorer(encode_images(flat), labels_flat, ["baseline"] * len(flat))["pred"] == labels_flat)
        correct = correct.reshape(len(class_names), -1)
        rec = {"recognition": float(correct.mean()), "recognition_images": int(correct.size),
               "recognition_per_class": [round(float(x), 3) for x in correct.mean(axis=1)]}
        files, rows = pretrain
        labels = rows["label"].to_numpy().astype(np.int64)
        preds: dict[str, list] = {"recognition_real_native": [], "recognition_real_same_size": []}
        cache = RowGroupCache()
        for start in range(0, len(rows), RECOGNITION_BLOCK):
            block = rows.slice(start, RECOGNITION_BLOCK)
            native = read_images(files, block["file"].to_numpy(), block["row"].to_numpy(), cache)
            same_size = encode_images(decode_batch(native, pipe.image_size, pipe.image_channels).transpose(0, 2, 3, 1))
            for key, encoded in (("recognition_real_native", native), ("recognition_real_same_size", same_size)):
                preds[key].append(scorer(encoded, labels[start:start + len(block)], ["baseline"] * len(block))["pred"])
        for key, parts in preds.items():
            pred = np.concatenate(parts)
            rec[key] = float((pred == labels).mean())
            rec[f"{key}_per_class"] = [round(float((pred[labels == c] == c).mean()), 3) for c in range(len(class_names))]
        out["recognition"], out["samples"] = rec, samples
    for variant, location in adapters.items():
        with io.local_copy(location) as local:
            pipe = load_finetuned(base, local).to(device)
        t0 = time.time()
        with torch.no_grad():
            grid = control_grid(pipe, prompts, cfg.control.grid_levels, cfg.control.grid_seeds, opts,
                                with_difficulty=variant == "difficulty")
            hard = (hard_factor_grid(pipe, len(class_names), cfg.control.grid_levels, HARD_FACTOR_SEED, opts)
                    if variant == "difficulty" else None)
        seconds = time.time() - t0
        flat = grid.images.reshape(-1, *grid.images.shape[3:])
        measured = scorer(encode_images(flat), grid.labels.ravel(), ["baseline"] * len(flat))["difficulty"]
        out["variants"][variant] = {"images": grid.images, "labels": grid.labels, "requested": grid.requested,
                                    "measured": measured.reshape(grid.labels.shape), "hard": hard, "seconds": seconds}
    return out


def _run(stage: StageRun) -> dict:
    from raysys.generation.control import spearman, within_class_spearman
    from raysys.report.plots import difficulty_histogram, image_grid, requested_vs_measured

    cfg, f = stage.cfg, stage.cfg.finetune
    class_names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    pretrain = (manifest_rows(run_layout.real_manifest(cfg), ["pretrain"]) if run_layout.builtin_generator(cfg)
                else None)
    t0 = time.time()
    task = remote_task(_measure, num_cpus=f.cpus_per_worker, num_gpus=1 if f.use_gpu else 0)
    with run_layout.local_base_model(cfg) as base, io.local_copy(run_layout.classifier_model(cfg)) as classifier:
        out = task(cfg, base, {v: run_layout.adapters(cfg, v) for v in f.variants}, classifier, class_names, pretrain)
    grids = out["variants"]
    metrics: dict = {"control_seconds": round(time.time() - t0, 2)}
    if "recognition" in out:
        metrics.update(out["recognition"])
        image_grid(out["samples"][:, :10], stage.file("samples.png"), row_labels=class_names,
                   col_labels=[f"seed {i}" for i in range(10)], title="pretrained base generator: prompt per row")
        print(f"[control] the baseline classifier recognises {metrics['recognition']:.1%} of "
              f"{metrics['recognition_images']} images of the base generator (real pretrain images: "
              f"{metrics['recognition_real_native']:.1%} at their size, "
              f"{metrics['recognition_real_same_size']:.1%} at the generator's)")

    real = read_manifest(run_layout.scored_manifest(cfg), columns=["difficulty"],
                         where=pc.field("split") == "train")["difficulty"].to_numpy(zero_copy_only=False)
    levels = [float(s) for s in cfg.control.grid_levels]
    control = {}
    for variant, grid in grids.items():
        measured = grid["measured"]
        control[variant] = {
            "measured_mean": float(measured.mean()),
            "measured_mean_by_level": [round(float(x), 4) for x in measured.mean(axis=(0, 2))],
            "measured_mean_by_class": [round(float(x), 4) for x in measured.mean(axis=(1, 2))],
            "generation_seconds": round(grid["seconds"], 2),
            "images": int(measured.size),
        }
    metrics.update({"grid_levels": levels, "grid_seeds": cfg.control.grid_seeds, "real_train_mean_difficulty": float(np.mean(real)),
                    "control": control, "difficulty_spearman": None, "difficulty_spearman_within_class": None})
    if "difficulty" in grids:
        grid = grids["difficulty"]
        metrics["difficulty_spearman"] = spearman(grid["requested"], grid["measured"])
        metrics["difficulty_spearman_within_class"] = within_class_spearman(grid["labels"], grid["requested"],
                                                                            grid["measured"])
        level_labels = [f"s={s:g}" for s in levels]
        image_grid(grid["images"][:, :, 0], stage.file("control_grid.png"), row_labels=class_names,
                   col_labels=level_labels, title="difficulty model: prompt + requested s (seed 0)",
                   col_title=f"Spearman(requested, measured) = {metrics['difficulty_spearman']}")
        if f.class_input:
            hard_rows, hard_title = class_names, f"seed {HARD_FACTOR_SEED}"
        else:  # tokens depend on s alone: one row per seed
            hard_rows, hard_title = [f"seed {HARD_FACTOR_SEED + r}" for r in range(len(class_names))], "no class input"
        image_grid(grid["hard"], stage.file("hard_factors.png"), row_labels=hard_rows, col_labels=level_labels,
                   title=f"hard factors: difficulty tokens only, empty prompt, {hard_title}")
    histograms = {"real train": real}
    histograms.update({f"{v} model grid": g["measured"].ravel() for v, g in grids.items()})
    difficulty_histogram(histograms, stage.file("difficulty_control_hist.png"),
                         "measured difficulty: real train vs generated grids")
    requested_vs_measured(levels, {v: c["measured_mean_by_level"] for v, c in control.items()},
                          stage.file("requested_vs_measured.png"), "proof of control")
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
