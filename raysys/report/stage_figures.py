"""The figures the synthesize, control and quality stages draw of their own results, each written as
a PNG into the stage's folder (plots.py draws them): synthetic difficulty against the real train
set, the proof-of-control grids and curves, and set quality against λ and requested s.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.generation.control_measure import HARD_FACTOR_SEED
from raysys.generation.synthesis import read_plan
from raysys.quality.groups import REAL
from raysys.report.plots import difficulty_histogram, image_grid, quality_curves, requested_vs_measured


def synthetic_difficulty_histogram(cfg: RaysysConfig, plan_folders: dict[str, str], location: str) -> None:
    """Requested vs measured difficulty of the kept images of every plan (`plan_folders`: name -> its
    version folder) that requested s, beside the real train images'."""
    hist = {}
    real = read_manifest(run_layout.scored_manifest(cfg), columns=["difficulty"], where=pc.field("split") == "train")
    hist["real train"] = real["difficulty"].to_numpy(zero_copy_only=False)
    for name, folder in plan_folders.items():
        kept = read_plan(folder)
        if len(kept):
            hist[f"{name} (measured)"] = kept["difficulty"].to_numpy(zero_copy_only=False)
            requested = kept["requested_difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
            if not np.isnan(requested).all():
                hist[f"{name} (requested)"] = requested[~np.isnan(requested)]
    difficulty_histogram(hist, location, "difficulty: real train vs synthetic")


def recognition_samples(samples: np.ndarray, class_names: list[str], location: str) -> None:
    """The built-in base generator's images, one row per class (its first ten seeds)."""
    image_grid(samples[:, :10], location, row_labels=class_names,
               col_labels=[f"seed {i}" for i in range(10)], title="pretrained base generator: prompt per row")


def difficulty_model_grids(grid: dict, class_names: list[str], levels: list[float], spearman: float | None,
                           class_input: bool, folder: str) -> None:
    """control_grid.png (class x requested s, seed 0) and hard_factors.png (difficulty tokens only) of the
    difficulty model's measured grid."""
    level_labels = [f"s={s:g}" for s in levels]
    image_grid(grid["images"][:, :, 0], io.join(folder, "control_grid.png"), row_labels=class_names,
               col_labels=level_labels, title="difficulty model: prompt + requested s (seed 0)",
               col_title=f"Spearman(requested, measured) = {spearman}")
    if class_input:
        hard_rows, hard_title = class_names, f"seed {HARD_FACTOR_SEED}"
    else:  # tokens depend on s alone: one row per seed
        hard_rows, hard_title = [f"seed {HARD_FACTOR_SEED + r}" for r in range(len(class_names))], "no class input"
    image_grid(grid["hard"], io.join(folder, "hard_factors.png"), row_labels=hard_rows, col_labels=level_labels,
               title=f"hard factors: difficulty tokens only, empty prompt, {hard_title}")


def control_curves(real: np.ndarray, grids: dict[str, dict], measured_by_level: dict[str, list[float]],
                   levels: list[float], folder: str) -> None:
    """difficulty_control_hist.png (every variant's grid against the real train set) and
    requested_vs_measured.png (mean measured difficulty per requested s, per variant)."""
    histograms = {"real train": real}
    histograms.update({f"{v} model grid": g["measured"].ravel() for v, g in grids.items()})
    difficulty_histogram(histograms, io.join(folder, "difficulty_control_hist.png"),
                         "measured difficulty: real train vs generated grids")
    requested_vs_measured(levels, measured_by_level, io.join(folder, "requested_vs_measured.png"), "proof of control")


def quality_by_axis(rows: dict[str, list[dict]], folder: str) -> list[str]:
    """quality_by_lambda.png and quality_by_s.png, for the plans that have those groups (`rows`: the
    quality stage's rows per plan); returns the files written."""
    written = []
    for by, axis, file in (("lambda", "image guidance λ", "quality_by_lambda.png"),
                           ("s", "requested difficulty s (tenth)", "quality_by_s.png")):
        curves = {}
        for name, plan_rows in rows.items():
            chosen = [r for r in plan_rows if r["by"] == by] if name != REAL else []
            if chosen:
                curves.update(_train_and_test_curves(name, chosen))
        if curves:
            real = rows[REAL][0] if REAL in rows else {}
            level = {"fid": real.get("train_fid"), "precision": real.get("train_precision"),
                     "recall": real.get("train_recall"), "copies": real.get("copies")}
            quality_curves(curves, io.join(folder, file), axis, f"synthetic-set quality by {axis}", level)
            written.append(file)
    return written


def _train_and_test_curves(name: str, chosen: list[dict]) -> dict:
    xs = [r["value"] for r in chosen]
    return {f"{name} vs {side}": (xs, {"fid": [r.get(f"{side}_fid") for r in chosen],
                                       "precision": [r.get(f"{side}_precision") for r in chosen],
                                       "recall": [r.get(f"{side}_recall") for r in chosen],
                                       "copies": [r["copies"] for r in chosen] if side == "train" else None,
                                       "reliable": [r.get(f"{side}_reliable", False) for r in chosen]})
            for side in ("train", "test")}
