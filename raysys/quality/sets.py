"""The sets the quality stage measures, built from the rows it reads and the features its pool
extracted for them (sample id -> feature row): the real train images as the reference, the held-out
test images, and each plan's kept rows with what they were asked for; and quality.csv, one row per
set x group.
"""

from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raysys.core.schema import read_manifest
from raysys.quality.groups import FIGURES, FeatureSet, Reference

COLUMNS = ("plan", "by", "group", "value", "images", "reliable",
           *[f"{side}{f}" for side in ("train_", "test_") for f in ("images", *FIGURES, "kid_std", "reliable")],
           "copies", "nearest_ratio_median", "closer_than_source", "diversity", "clip_text")
"""quality.csv's columns."""


def real_rows(manifest: str, test_split: str) -> pa.Table:
    """The ids, labels and splits of the real train and test rows."""
    return read_manifest(manifest, columns=["sample_id", "label", "split"],
                         where=pc.field("split").isin(["train", test_split]))


def kept_rows(directory: str) -> pa.Table:
    """A plan's kept rows: ids, labels and what they were asked for."""
    return read_manifest(directory, columns=["sample_id", "label", "guidance", "requested_difficulty", "source_id",
                                             "clip_text"], where=pc.field("keep") == True)  # noqa: E712


def aligned(ids: list[str], found: dict[str, np.ndarray]) -> torch.Tensor:
    """The features of `ids`, in their order (RuntimeError if any did not come back)."""
    missing = [i for i in ids if i not in found]
    if missing:
        raise RuntimeError(f"no features came back for {len(missing)} rows (e.g. {missing[:3]}); rerun")
    return torch.from_numpy(np.stack([found[i] for i in ids]).astype(np.float32)) if ids else torch.zeros(0, 1)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64)


@dataclass
class RealSets:
    """The real images every set is measured against."""

    train_ids: list[str]
    test_ids: list[str]
    train: Reference
    """The train images and their neighbourhoods."""
    test_images: Optional[FeatureSet]
    """The held-out test images (None: the test split has none)."""
    test: Optional[Reference]

    def train_index(self) -> dict[str, int]:
        """sample id -> its row in the train reference."""
        return {sid: i for i, sid in enumerate(self.train_ids)}


def real_sets(real: pa.Table, found: dict[str, np.ndarray], test_split: str, k: int) -> RealSets:
    """The train reference and the test images of `real` (see `real_rows`), with `k` neighbours."""
    split = np.asarray(real["split"].to_pylist(), dtype=object)
    labels = real["label"].to_numpy().astype(np.int64)
    ids = np.asarray(real["sample_id"].to_pylist(), dtype=object)
    train_ids, test_ids = ids[split == "train"].tolist(), ids[split == test_split].tolist()
    if len(train_ids) <= k:
        raise RuntimeError(f"quality: the train split has {len(train_ids)} images; it needs more than quality.k = {k}")
    train = Reference(FeatureSet(aligned(train_ids, found), labels[split == "train"]), k)
    test_images = FeatureSet(aligned(test_ids, found), labels[split == test_split]) if test_ids else None
    test = Reference(test_images, k) if test_images is not None else None
    return RealSets(train_ids, test_ids, train, test_images, test)


def plan_set(table: pa.Table, found: dict[str, np.ndarray], train_index: dict[str, int]) -> FeatureSet:
    """A plan's kept rows (see `kept_rows`) as a set: features, labels, λ, requested s, the train row of
    each guiding image (-1: none) and CLIP score."""
    sources = [train_index.get(s, -1) if s is not None else -1 for s in table["source_id"].to_pylist()]
    return FeatureSet(aligned(table["sample_id"].to_pylist(), found), table["label"].to_numpy().astype(np.int64),
                      _floats(table, "guidance"), _floats(table, "requested_difficulty"),
                      np.asarray(sources, np.int64), _floats(table, "clip_text"))


def quality_csv(rows: dict[str, list[dict]]) -> str:
    """quality.csv: every set's rows (`rows`: set name -> its measured rows), missing figures empty."""
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for name, set_rows in rows.items():
        for row in set_rows:
            writer.writerow({k: ("" if v is None else v) for k, v in {"plan": name, **row}.items()})
    return buf.getvalue()


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def overall_line(name: str, overall: dict) -> str:
    """One set's overall figures, as the stage prints them."""
    o = overall
    return (f"{name}: {o['images']} images, FID {_fmt(o['train_fid'])} (test {_fmt(o.get('test_fid'))}), "
            f"precision {_fmt(o['train_precision'])}, recall {_fmt(o['train_recall'])}, "
            f"copies {_fmt(o['copies'])}, diversity {_fmt(o['diversity'])}")
