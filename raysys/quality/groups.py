"""A synthetic set measured as a whole and by group: per image-guidance level λ, per requested-s
tenth, per class group (many / medium / few) and per class.

Every group is measured against the real images *of the classes it holds*: the `train` split (what
the generator and the classifier learn from) and, as a held-out view, the `test` split. A set of
tail-class images compared with the whole train set would mostly measure that it holds other
classes. Memorisation is measured against every train image (a copy of any of them is a copy).
A figure computed on fewer than `min_images` images on either side is marked `reliable: False`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from raysys.quality.measures import diversity_ratio, fid, kid, memorisation, prdc

FIGURES = ("fid", "kid", "precision", "recall", "density", "coverage")
"""The figures measured against train, and with a `test_` prefix against test."""


@dataclass
class FeatureSet:
    """Images as features: (N, d) float32 features and their labels (and, for a synthetic set, what it
    was asked for)."""

    features: torch.Tensor
    labels: np.ndarray
    guidance: Optional[np.ndarray] = None
    """λ of each row (NaN: text only); None for real images."""
    requested: Optional[np.ndarray] = None
    """Requested s of each row (NaN: none asked)."""
    source: Optional[np.ndarray] = None
    """Index into the train set of each row's guiding image (-1: none)."""
    clip_text: Optional[np.ndarray] = None
    """CLIP image-text similarity of each row (NaN: not measured)."""

    def take(self, rows: np.ndarray) -> "FeatureSet":
        pick = (lambda a: None if a is None else a[rows])
        return FeatureSet(self.features[torch.from_numpy(rows)], self.labels[rows], pick(self.guidance),
                          pick(self.requested), pick(self.source), pick(self.clip_text))

    def of_classes(self, classes: np.ndarray) -> "FeatureSet":
        return self.take(np.flatnonzero(np.isin(self.labels, classes)))


def s_bin(s: float) -> str:
    """The tenth of [0, 1] that s falls in, as '0.3-0.4' (1.0 falls in the last)."""
    low = min(int(np.floor(s * 10 + 1e-9)), 9) / 10
    return f"{low:.1f}-{low + 0.1:.1f}"


def groups(fake: FeatureSet, class_group: dict[int, str], class_names: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(by, group, rows) for the whole set, then per λ, per s tenth, per class group and per class."""
    out = [("overall", "all", np.arange(len(fake.labels)))]
    if fake.guidance is not None:
        lam = fake.guidance
        out += [("lambda", f"{v:g}", np.flatnonzero(np.isclose(lam, v))) for v in np.unique(lam[~np.isnan(lam)])]
    if fake.requested is not None:
        s = fake.requested
        bins = np.array([s_bin(v) if not np.isnan(v) else "" for v in s], dtype=object)
        out += [("s", b, np.flatnonzero(bins == b)) for b in sorted(set(bins) - {""})]
    group_of = np.array([class_group.get(int(c), "") for c in fake.labels], dtype=object)
    out += [("class_group", g, np.flatnonzero(group_of == g)) for g in ("many", "medium", "few") if (group_of == g).any()]
    out += [("class", class_names[int(c)], np.flatnonzero(fake.labels == c)) for c in np.unique(fake.labels)]
    return out


def _against(prefix: str, reference: FeatureSet, fake: FeatureSet, k: int) -> dict:
    kid_mean, kid_std = kid(reference.features, fake.features)
    return {f"{prefix}images": len(reference.labels), f"{prefix}fid": fid(reference.features, fake.features),
            f"{prefix}kid": kid_mean, f"{prefix}kid_std": kid_std,
            **{f"{prefix}{name}": v for name, v in prdc(reference.features, fake.features, k).items()}}


def measure(fake: FeatureSet, train: FeatureSet, test: Optional[FeatureSet], class_group: dict[int, str],
            class_names: list[str], k: int = 5, copy_threshold: float = 0.5, min_images: int = 50) -> list[dict]:
    """One row per group of `groups`: its size, every figure against the train images of its classes (and
    with `test_` against the test images of its classes), memorisation, diversity and CLIP score."""
    memo = memorisation(train.features, fake.features, fake.source)
    rows = []
    for by, group, pick in groups(fake, class_group, class_names):
        part = fake.take(pick)
        classes = np.unique(part.labels)
        ref = train.of_classes(classes)
        row: dict = {"by": by, "group": group, "images": len(pick), **_against("train_", ref, part, k)}
        if test is not None:
            row.update(_against("test_", test.of_classes(classes), part, k))
        ratio = memo["nearest_ratio"][pick]
        closer = memo["closer_than_source_gap"][pick]
        diversity, _ = diversity_ratio(part.features, part.labels, ref.features, ref.labels)
        clip = part.clip_text[~np.isnan(part.clip_text)] if part.clip_text is not None else np.array([])
        row.update({
            "copies": float(np.mean(ratio < copy_threshold)) if len(ratio) else None,
            "nearest_ratio_median": float(np.median(ratio)) if len(ratio) else None,
            "closer_than_source": float(np.nanmean(closer)) if np.isfinite(closer).any() else None,
            "diversity": diversity,
            "clip_text": float(clip.mean()) if len(clip) else None,
            "reliable": bool(len(pick) >= min_images and row["train_images"] >= min_images),
        })
        rows.append(row)
    return rows


def closest_pairs(fake_ids: list[str], train_ids: list[str], fake: FeatureSet, train: FeatureSet,
                  count: int) -> list[tuple[str, str, float]]:
    """The `count` synthetic images nearest to a train image: (synthetic id, train id, distance ratio),
    nearest first."""
    memo = memorisation(train.features, fake.features)
    order = np.argsort(memo["nearest_ratio"], kind="stable")[:count]
    return [(fake_ids[i], train_ids[int(memo["nearest_train"][i])], float(memo["nearest_ratio"][i])) for i in order]
