"""Feature extraction on Ray Data: an actor pool turns manifest parts into features, part by part.

Each actor loads its extractor once (in __init__), then for each part it is given reads the rows
it is told to (the real splits named, or a synthetic plan's kept rows), decodes and embeds them
`batch_size` at a time, and returns sample ids and features (a list of float32 per row, with 64-bit
offsets: a million 2048-d rows fit). The driver holds ids and features, never an image.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io
from raysys.core.config import QualityConfig
from raysys.core.schema import read_manifest, with_image_bytes
from raysys.quality.features import FeatureExtractor
from raysys.ray.parts import map_parts

KEPT = "kept"
"""The `rows` value of a synthetic plan's part: its kept rows."""


class FeatureActor:
    """Ray Data callable class: loads the extractor once, embeds one manifest part per call."""

    def __init__(self, extractor: str, classifier_dir: Optional[str], weights: Optional[str], pretrained: bool,
                 batch_size: int, use_gpu: bool = False):
        import torch

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        with contextlib.ExitStack() as copies:  # a classifier under a URI: a local copy while it loads
            local = copies.enter_context(io.local_copy(classifier_dir)) if classifier_dir else None
            self.extract = FeatureExtractor(extractor, local, weights, pretrained, device)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        part, rows = batch["part"][0].as_py(), batch["rows"][0].as_py()
        where = pc.field("keep") == True if rows == KEPT else pc.field("split").isin(rows.split(","))  # noqa: E712
        table = read_manifest(part, columns=["sample_id", "image", "uri"], where=where, resolve=False)
        chunks = []
        for start in range(0, len(table), self.batch_size):
            block = with_image_bytes(table.slice(start, self.batch_size))
            chunks.append(self.extract(block["image"].to_pylist()))
        features = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        offsets = pa.array(np.arange(len(features) + 1, dtype=np.int64) * features.shape[1], pa.int64())
        flat = pa.array(features.reshape(-1), pa.float32())
        return pa.table({"part": pa.array([part] * len(table), pa.string()), "sample_id": table["sample_id"],
                         "features": pa.LargeListArray.from_arrays(offsets, flat)})  # one type for every part, empty ones too


def extract_features(parts: list[tuple[str, str]], cfg: QualityConfig, classifier_dir: Optional[str],
                     total: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """Features of every (part, rows) pair, rows being comma-separated split names or KEPT, on an actor
    pool of quality.min_actors..max_actors: part -> (sample ids, (N, d) float32 features)."""
    table = pa.table({"part": [p for p, _ in parts], "rows": [r for _, r in parts]})
    out = map_parts(table, FeatureActor, desc="[quality]", total=total, num_cpus=cfg.cpus_per_actor,
                    num_gpus=cfg.num_gpus, actors=(cfg.min_actors, cfg.max_actors),
                    constructor_kwargs={"extractor": cfg.extractor, "classifier_dir": classifier_dir,
                                        "weights": cfg.weights, "pretrained": cfg.pretrained,
                                        "batch_size": cfg.batch_size, "use_gpu": cfg.num_gpus > 0})
    result: dict[str, tuple[list[str], np.ndarray]] = {p: ([], np.zeros((0, 0), np.float32)) for p, _ in parts}
    if len(out) == 0:
        return result
    names = np.asarray(out["part"].to_pylist(), dtype=object)
    ids = np.asarray(out["sample_id"].to_pylist(), dtype=object)
    flat = out["features"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    matrix = flat.reshape(len(out), -1)
    for part in result:
        rows = np.flatnonzero(names == part)
        result[part] = (ids[rows].tolist(), matrix[rows])
    return result
