"""Proof of difficulty control and the hard-factor visualisation (plain torch/numpy).

- `control_grid`: every class x every requested s x several seeds, generated with the prompt
  and the difficulty condition. Re-scored by a classifier, the measured difficulty should rise
  with the requested one: `spearman` gives the rank correlation.
- `hard_factor_grid`: the difficulty tokens alone (empty prompt), s rising left to right, one
  row per class (one seed), or one row per seed when the encoder has no class input: what the
  generator learned makes an image hard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from raysys.core.config import ControlConfig, SamplingConfig
from raysys.generation.pipeline import DifficultyDiffusionPipeline


@dataclass
class Grid:
    images: np.ndarray
    """uint8 (classes, levels, seeds, H, W, C)."""
    labels: np.ndarray
    """int (classes, levels, seeds): the class of each image."""
    requested: np.ndarray
    """float (classes, levels, seeds): s asked for (NaN: no difficulty condition)."""


def encode_images(images: np.ndarray) -> list[bytes]:
    """uint8 (N, H, W, C) images as PNG bytes, what a classifier scores."""
    from raysys.data.images import encode_png

    return [encode_png(im[..., 0] if im.shape[-1] == 1 else im) for im in images]


def check_control(c: ControlConfig) -> list[str]:
    problems = []
    if not c.grid_levels or any(not 0 <= s <= 1 for s in c.grid_levels) or c.grid_seeds < 1:
        problems.append(f"control.grid_levels must be a non-empty list in [0, 1] and control.grid_seeds >= 1, "
                        f"got {c.grid_levels} and {c.grid_seeds}")
    if c.cpus is not None and c.cpus < 1:
        problems.append(f"control.cpus must be null (finetune.cpus_per_worker) or >= 1, got {c.cpus}")
    return problems


def _generate(pipe, prompts, seeds, labels, difficulty, opts: SamplingConfig, batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = slice(start, start + batch_size)
        out.append(pipe(
            prompts[rows], seeds=seeds[rows], class_labels=labels[rows],
            difficulty=None if difficulty is None else difficulty[rows],
            negative_prompt=opts.negative_prompt, guidance_scale=opts.guidance_scale,
            difficulty_guidance_scale=opts.difficulty_guidance_scale,
            num_inference_steps=opts.num_inference_steps, scheduler=opts.scheduler,
        ).images)
    return np.concatenate(out)


def control_grid(
    pipe: DifficultyDiffusionPipeline,
    prompts_by_class: Sequence[str],
    levels: Sequence[float],
    num_seeds: int,
    opts: SamplingConfig,
    *,
    with_difficulty: bool = True,
    first_seed: int = 0,
    batch_size: int = 64,
) -> Grid:
    """Class x level x seed images. Seeds are shared across classes and levels, so a column of
    the grid differs only by the requested s. `with_difficulty=False` asks for no s (the plain
    model, or the same model unconditioned), still laid out by level for comparison: every level
    would draw the same images, so one level is drawn and repeated."""
    classes = len(prompts_by_class)
    shape = (classes, len(levels), num_seeds)
    drawn = (classes, len(levels) if with_difficulty else 1, num_seeds)
    labels = np.broadcast_to(np.arange(classes)[:, None, None], drawn).ravel()
    requested = np.broadcast_to(np.asarray(levels[:drawn[1]], dtype=np.float64)[None, :, None], drawn).ravel()
    seeds = np.broadcast_to(first_seed + np.arange(num_seeds)[None, None, :], drawn).ravel()
    prompts = [prompts_by_class[c] for c in labels]
    difficulty = [float(s) for s in requested] if with_difficulty else None
    images = _generate(pipe, prompts, [int(s) for s in seeds], [int(c) for c in labels], difficulty, opts, batch_size)
    images = np.repeat(images.reshape(*drawn, *images.shape[1:]), shape[1] // drawn[1], axis=1)
    labels = np.broadcast_to(np.arange(classes)[:, None, None], shape)
    requested = np.broadcast_to(np.asarray(levels, dtype=np.float64)[None, :, None], shape)
    if not with_difficulty:
        requested = np.full(shape, np.nan)
    return Grid(images, labels.copy(), requested.copy())


def hard_factor_grid(
    pipe: DifficultyDiffusionPipeline, num_classes: int, levels: Sequence[float], seed: int, opts: SamplingConfig,
    batch_size: int = 64,
) -> np.ndarray:
    """uint8 (rows, levels, H, W, C): empty prompt, difficulty tokens only, s rising left to right.

    One row per class, all with `seed`. An encoder without class input (tokens depend on s
    alone) would draw the same row for every class, so it gets one row per seed instead:
    seed, seed + 1, ... (as many rows as classes)."""
    if pipe.difficulty_encoder is None:
        raise ValueError("the hard-factor visualisation needs a pipeline with a difficulty encoder")
    by_class = pipe.difficulty_encoder.config.use_class
    labels = [r if by_class else 0 for r in range(num_classes) for _ in levels]
    seeds = [seed if by_class else seed + r for r in range(num_classes) for _ in levels]
    difficulty = [float(s) for _ in range(num_classes) for s in levels]
    images = _generate(pipe, [""] * len(labels), seeds, labels, difficulty, opts, batch_size)
    return images.reshape(num_classes, len(levels), *images.shape[1:])


def spearman(requested: np.ndarray, measured: np.ndarray) -> Optional[float]:
    """Spearman rank correlation (average ranks for ties); None if either side is constant."""
    from scipy.stats import spearmanr

    requested, measured = np.ravel(requested), np.ravel(measured)
    if np.ptp(requested) == 0 or np.ptp(measured) == 0:
        return None
    return float(spearmanr(requested, measured).statistic)


def within_class_spearman(labels: np.ndarray, requested: np.ndarray, measured: np.ndarray) -> Optional[float]:
    """Mean over classes of the Spearman correlation inside each class (classes where it is
    undefined are left out): control that does not come from the class alone."""
    values = []
    for c in np.unique(labels):
        rows = np.ravel(labels) == c
        r = spearman(np.ravel(requested)[rows], np.ravel(measured)[rows])
        if r is not None:
            values.append(r)
    return float(np.mean(values)) if values else None
