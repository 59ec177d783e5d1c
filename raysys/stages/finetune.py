"""Stage `finetune`: LoRA fine-tuning of the base generator on Ray Train, and the proof of control.

For each of `finetune.variants` (difficulty: LoRA + difficulty encoder; plain: LoRA only) it
trains on the scored manifest's train rows and writes <root>/finetune/<variant>/adapters/
(`pytorch_lora_weights.safetensors` in diffusers' format, plus `difficulty_encoder/`).

Then, as one Ray task, it generates the control grid (every class x every requested s x
`grid_seeds` seeds), re-scores it with the baseline classifier and writes to metrics.json:
`difficulty_spearman` (requested vs measured, over the whole grid), the same inside each class,
the mean measured difficulty per requested s for each variant, and the histograms against the
real train set. PNGs: control_grid.png, hard_factors.png, requested_vs_measured.png,
difficulty_control_hist.png.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow.compute as pc

from raysys.core import io
from raysys.core.config import RaysysConfig, digest
from raysys.core.schema import read_manifest
from raysys.core.stage import MissingInput, StageDir
from raysys.stages import pretrain_generator, score, train_classifier

NAME = "finetune"
HARD_FACTOR_SEED = 0


def stage_dir(cfg: RaysysConfig) -> StageDir:
    base = pretrain_generator.stage_dir(cfg).digest if pretrain_generator.needed(cfg) else cfg.generator.base
    return StageDir(cfg.run.root, NAME, digest(score.stage_dir(cfg).digest, base, cfg.generator, cfg.finetune))


def adapters_dir(cfg: RaysysConfig, variant: str) -> str:
    return stage_dir(cfg).file(variant, "adapters")


def _prove_control(cfg: RaysysConfig, base: str, adapters: dict[str, str], classifier_dir: str,
                   class_names: list[str]) -> dict:
    """Runs inside one Ray task: generate the grids, re-score them with the baseline classifier."""
    import torch

    from raysys.data.images import encode_png
    from raysys.generation.control import SamplingOptions, control_grid, hard_factor_grid
    from raysys.generation.finetune import load_finetuned
    from raysys.scoring.difficulty import DifficultyScorer

    device = "cuda" if cfg.finetune.use_gpu else "cpu"
    g, f = cfg.generator, cfg.finetune
    opts = SamplingOptions(g.guidance_scale, g.num_inference_steps, g.scheduler, g.negative_prompt,
                           difficulty_guidance_scale=g.difficulty_guidance_scale)
    prompts = [g.prompt_template.format(name=n) for n in class_names]
    scorer = DifficultyScorer({"baseline": classifier_dir})
    out = {}
    for variant, location in adapters.items():
        pipe = load_finetuned(base, io.local_copy(location)).to(device)
        t0 = time.time()
        with torch.no_grad():
            grid = control_grid(pipe, prompts, f.grid_levels, f.grid_seeds, opts,
                                with_difficulty=variant == "difficulty")
            hard = (hard_factor_grid(pipe, len(class_names), f.grid_levels, HARD_FACTOR_SEED, opts)
                    if variant == "difficulty" else None)
        seconds = time.time() - t0
        flat = grid.images.reshape(-1, *grid.images.shape[3:])
        encoded = [encode_png(im[..., 0] if im.shape[-1] == 1 else im) for im in flat]
        measured = scorer(encoded, grid.labels.ravel(), ["baseline"] * len(flat))["difficulty"]
        out[variant] = {"images": grid.images, "labels": grid.labels, "requested": grid.requested,
                        "measured": measured.reshape(grid.labels.shape), "hard": hard, "seconds": seconds}
    return out


def run(cfg: RaysysConfig) -> dict:
    stage = stage_dir(cfg)
    if stage.is_complete():
        print(f"[finetune] complete for this config, skipped ({stage.path})")
        return stage.metrics()
    if not score.stage_dir(cfg).is_complete():
        raise MissingInput(f"finetune needs measured difficulty: run `raysys score CONFIG` first ({score.stage_dir(cfg).path})")
    if pretrain_generator.needed(cfg) and not pretrain_generator.stage_dir(cfg).is_complete():
        raise MissingInput("generator.base is builtin: run `raysys pretrain-generator CONFIG` first "
                           f"({pretrain_generator.stage_dir(cfg).path})")
    if not pretrain_generator.needed(cfg):
        from raysys.generation.components import check_base

        check_base(cfg.generator.base)
    from raysys.ray.finetune import FinetuneJob, fit_generator, remote_task
    from raysys.report.plots import difficulty_histogram, image_grid, requested_vs_measured
    from raysys.generation.control import spearman, within_class_spearman

    prep = io.read_json(io.join(io.resolve(cfg.run.root), "prepare", "metrics.json"))
    class_names = prep["class_names"]
    stage.begin(cfg)
    base = pretrain_generator.base_location(cfg)
    if pretrain_generator.needed(cfg):
        base = io.local_copy(base)  # from_pretrained reads local directories (or hub ids)
    f = cfg.finetune

    variants = {}
    for variant in f.variants:
        t0 = time.time()
        job = FinetuneJob(
            variant=variant, base=base, manifest=score.manifest_path(cfg), class_names=class_names,
            prompt_template=cfg.generator.prompt_template, cfg=f, seed=cfg.run.seed,
            storage=io.join(stage.path, "ray"), name=f"finetune-{variant}-{stage.digest}",
        )
        result = fit_generator(job, adapters_dir(cfg, variant))
        window = max(1, min(50, len(result.losses) // 5))
        variants[variant] = {
            "seconds": round(time.time() - t0, 2),
            "steps": f.steps,
            "losses_logged": len(result.losses),
            "loss_start": float(np.mean(result.losses[:window])),
            "loss_end": float(np.mean(result.losses[-window:])),
            "resumed_at_steps": result.resumed_at_steps,
        }
        print(f"[finetune] {variant}: {f.steps} steps in {variants[variant]['seconds']:.0f}s, loss "
              f"{variants[variant]['loss_start']:.4f} -> {variants[variant]['loss_end']:.4f}")

    t0 = time.time()
    task = remote_task(_prove_control, num_cpus=f.cpus_per_worker, num_gpus=1 if f.use_gpu else 0)
    grids = task(cfg, base, {v: adapters_dir(cfg, v) for v in f.variants},
                 io.local_copy(train_classifier.model_dir(cfg)), class_names)
    grid_seconds = time.time() - t0

    table = read_manifest(score.manifest_path(cfg), columns=["split", "difficulty"])
    real = table.filter(pc.equal(table["split"], "train"))["difficulty"].to_numpy(zero_copy_only=False)
    levels = [float(s) for s in f.grid_levels]
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
    metrics = {"variants": variants, "grid_levels": levels, "grid_seeds": f.grid_seeds,
               "real_train_mean_difficulty": float(np.mean(real)), "control": control,
               "control_seconds": round(grid_seconds, 2),
               "difficulty_spearman": None, "difficulty_spearman_within_class": None}
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
    metrics = stage.finish(metrics)
    print(f"[finetune] proof of control: Spearman(requested, measured) = {metrics['difficulty_spearman']} "
          f"(within class {metrics['difficulty_spearman_within_class']}); mean measured by s: "
          + "; ".join(f"{v}: {c['measured_mean_by_level']}" for v, c in control.items()))
    return metrics
