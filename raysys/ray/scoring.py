"""Difficulty scoring on Ray Data: an actor pool scores a sharded manifest part by part.

Each actor loads its classifiers once (in __init__), then for each part it is given reads the
part, scores the rows of the chosen splits, writes the part with its score columns to the
output folder (atomically, under the same name) and returns sample ids and scores only. The
driver never holds an image.
"""

from __future__ import annotations

import contextlib

import pyarrow as pa

from raysys.core import io
from raysys.core.config import ScoreConfig
from raysys.core.schema import list_parts
from raysys.ray.parts import map_parts
from raysys.scoring.difficulty import DifficultyScorer, score_part


class ScoringActor:
    """Ray Data callable class: loads the classifiers once, scores one manifest part per call."""

    def __init__(self, model_dirs: dict[str, str], keys: dict[str, str], splits: list[str], output: str,
                 batch_size: int, with_full: bool, use_gpu: bool = False):
        import torch

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        with contextlib.ExitStack() as copies:  # copies of models under a URI: removed once loaded
            self.scorer = DifficultyScorer({k: copies.enter_context(io.local_copy(v)) for k, v in model_dirs.items()},
                                           device)
        self.keys, self.splits, self.output = keys, set(splits), output
        self.batch_size, self.with_full = batch_size, with_full

    def __call__(self, batch: pa.Table) -> pa.Table:
        source = batch["part"][0].as_py()
        name = source.rstrip("/").rsplit("/", 1)[-1]
        return score_part(self.scorer, source, io.join(self.output, name), self.keys, self.splits,
                          self.batch_size, self.with_full)


def score_manifest(source: str, output: str, model_dirs: dict[str, str], keys: dict[str, str], splits: list[str],
                   cfg: ScoreConfig, total: int, with_full: bool = False) -> pa.Table:
    """Score every part of the manifest folder `source` into `output` (same part names) on an actor
    pool of score.min_actors..max_actors; returns the per-row summaries of the scored rows."""
    parts = list_parts(source)
    if not parts:
        raise ValueError(f"{source}: no manifest parts to score")
    return map_parts(pa.table({"part": parts}), ScoringActor, desc="[score]", total=total,
                     num_cpus=cfg.cpus_per_actor, num_gpus=cfg.num_gpus, actors=(cfg.min_actors, cfg.max_actors),
                     constructor_kwargs={"model_dirs": model_dirs, "keys": keys, "splits": splits, "output": output,
                                         "batch_size": cfg.batch_size, "with_full": with_full,
                                         "use_gpu": cfg.num_gpus > 0})
