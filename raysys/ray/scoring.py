"""Difficulty scoring on Ray Data: an actor pool maps batches of encoded images to scores.

Each actor loads its classifiers once (in __init__). Only sample ids and score columns leave
the actors; the driver joins them back onto the manifest.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from raysys.core import io
from raysys.core.config import ScoreConfig
from raysys.ray.session import on_assigned_cpus
from raysys.scoring.difficulty import DifficultyScorer


class ScoringActor:
    """Ray Data callable class: loads the classifiers once, scores pyarrow batches."""

    def __init__(self, model_dirs: dict[str, str], use_gpu: bool = False):
        import torch

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.scorer = DifficultyScorer({k: io.local_copy(v) for k, v in model_dirs.items()}, device)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        scores = self.scorer(
            batch["image"].to_pylist(),
            batch["label"].to_numpy(),
            batch["score_mode"].to_pylist(),
        )
        return {"sample_id": np.asarray(batch["sample_id"].to_pylist(), dtype=object), **scores}


def score_table(table: pa.Table, model_dirs: dict[str, str], cfg: ScoreConfig) -> pa.Table:
    """Score `table` (sample_id, image, label, score_mode) on an actor pool; returns sample_id + scores."""
    if len(table) == 0:
        raise ValueError("nothing to score: the table has no rows")
    table = table.select(["sample_id", "image", "label", "score_mode"])
    # Blocks of a few batches each, so that every actor in the pool gets work.
    rows_per_block = max(cfg.batch_size, -(-len(table) // (4 * cfg.max_actors)))
    blocks = [table.slice(i, rows_per_block) for i in range(0, len(table), rows_per_block)]
    ds = ray.data.from_arrow(blocks)
    scored = ds.map_batches(
        on_assigned_cpus(ScoringActor),
        fn_constructor_kwargs={"model_dirs": model_dirs, "use_gpu": cfg.num_gpus > 0},
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        num_gpus=cfg.num_gpus,
        num_cpus=cfg.cpus_per_actor,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
    )
    refs = scored.to_arrow_refs()
    out = pa.concat_tables(ray.get(refs))
    if len(out) != len(table):
        raise RuntimeError(f"scoring returned {len(out)} rows for {len(table)} inputs")
    return out
