"""What the control stage measures, inside its one Ray task: how often the baseline classifier
recognises the built-in base model's images (and, to compare, the real pretrain images at their own
size and at the generator's), and every fine-tuned variant's class x s grid, re-scored; then the
per-variant means the stage records.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from raysys.core import io
from raysys.core.config import RaysysConfig, SamplingConfig
from raysys.data.images import decode_batch
from raysys.data.stream import RowGroupCache, read_images
from raysys.generation.components import load_pipeline
from raysys.generation.control import control_grid, encode_images, hard_factor_grid
from raysys.generation.finetune import load_finetuned
from raysys.generation.prompts import fill_prompt
from raysys.scoring.difficulty import DifficultyScorer

RECOGNITION_BLOCK = 256
"""Real pretrain images read and scored at a time."""
HARD_FACTOR_SEED = 0
"""The seed of the hard-factor visualisation (its first row's, when the encoder has no class input)."""


def measure_control(cfg: RaysysConfig, base: str, adapters: dict[str, str], classifier_dir: str,
                    class_names: list[str], pretrain: tuple | None, recognition_seeds: int) -> dict:
    """The recognition set of the base model, `recognition_seeds` images per class (when `pretrain`, the
    manifest files and the pretrain split's rows without images, is given; its images are read a block
    at a time) and the grids of every fine-tuned variant (`adapters`: variant -> its adapters), re-scored
    by the baseline classifier."""
    device = "cuda" if cfg.finetune.use_gpu else "cpu"
    opts = cfg.generator.sampling()
    prompts = [fill_prompt(cfg.generator.prompt_template, n) for n in class_names]
    scorer = DifficultyScorer({"baseline": classifier_dir})
    out: dict = {"variants": {}}
    if pretrain is not None:
        pipe = load_pipeline(base).to(device)
        out["recognition"], out["samples"] = _recognition(pipe, prompts, recognition_seeds, opts, scorer)
        out["recognition"].update(_real_recognition(pipe, scorer, *pretrain, num_classes=len(class_names)))
    for variant, location in adapters.items():
        with io.local_copy(location) as local:
            pipe = load_finetuned(base, local).to(device)
        out["variants"][variant] = _variant_grid(pipe, variant, prompts, cfg.control.grid_levels,
                                                 cfg.control.grid_seeds, opts, scorer)
    return out


def _recognition(pipe, prompts: list[str], seeds: int, opts: SamplingConfig,
                 scorer: DifficultyScorer) -> tuple[dict, np.ndarray]:
    """How often the classifier calls the base model's images the prompted class, and the images
    (classes, seeds, H, W, C)."""
    with torch.no_grad():  # the base model has no difficulty encoder: nothing to guide s with
        grid = control_grid(pipe, prompts, [0.0], seeds, replace(opts, difficulty_guidance_scale=None),
                            with_difficulty=False, first_seed=10_000)
    samples = grid.images[:, 0]
    flat, labels_flat = samples.reshape(-1, *samples.shape[2:]), grid.labels[:, 0].ravel()
    correct = (scorer(encode_images(flat), labels_flat, ["baseline"] * len(flat))["pred"] == labels_flat)
    correct = correct.reshape(len(prompts), -1)
    return {"recognition": float(correct.mean()), "recognition_images": int(correct.size),
            "recognition_per_class": [round(float(x), 3) for x in correct.mean(axis=1)]}, samples


def _real_recognition(pipe, scorer: DifficultyScorer, files, rows, num_classes: int) -> dict:
    """The same for the real pretrain images, at their own size and at the generator's."""
    labels = rows["label"].to_numpy().astype(np.int64)
    preds: dict[str, list] = {"recognition_real_native": [], "recognition_real_same_size": []}
    cache = RowGroupCache()
    for start in range(0, len(rows), RECOGNITION_BLOCK):
        block = rows.slice(start, RECOGNITION_BLOCK)
        native = read_images(files, block["file"].to_numpy(), block["row"].to_numpy(), cache)
        same_size = encode_images(decode_batch(native, pipe.image_size, pipe.image_channels).transpose(0, 2, 3, 1))
        for key, encoded in (("recognition_real_native", native), ("recognition_real_same_size", same_size)):
            preds[key].append(scorer(encoded, labels[start:start + len(block)], ["baseline"] * len(block))["pred"])
    out = {}
    for key, parts in preds.items():
        pred = np.concatenate(parts)
        out[key] = float((pred == labels).mean())
        out[f"{key}_per_class"] = [round(float((pred[labels == c] == c).mean()), 3) for c in range(num_classes)]
    return out


def _variant_grid(pipe, variant: str, prompts: list[str], levels: list[float], seeds: int, opts: SamplingConfig,
                  scorer: DifficultyScorer) -> dict:
    """One variant's class x s x seed grid (and, for the difficulty model, its hard factors), re-scored."""
    t0 = time.time()
    with torch.no_grad():
        grid = control_grid(pipe, prompts, levels, seeds, opts, with_difficulty=variant == "difficulty")
        hard = (hard_factor_grid(pipe, len(prompts), levels, HARD_FACTOR_SEED, opts)
                if variant == "difficulty" else None)
    seconds = time.time() - t0
    flat = grid.images.reshape(-1, *grid.images.shape[3:])
    measured = scorer(encode_images(flat), grid.labels.ravel(), ["baseline"] * len(flat))["difficulty"]
    return {"images": grid.images, "labels": grid.labels, "requested": grid.requested,
            "measured": measured.reshape(grid.labels.shape), "hard": hard, "seconds": seconds}


def grid_summary(grid: dict) -> dict:
    """A measured grid's mean difficulty, overall, per requested s and per class, and its cost."""
    measured = grid["measured"]
    return {
        "measured_mean": float(measured.mean()),
        "measured_mean_by_level": [round(float(x), 4) for x in measured.mean(axis=(0, 2))],
        "measured_mean_by_class": [round(float(x), 4) for x in measured.mean(axis=(1, 2))],
        "generation_seconds": round(grid["seconds"], 2),
        "images": int(measured.size),
    }
