"""A synthetic set measured as a whole and by group: per image-guidance level λ, per requested-s
tenth, per class group (many / medium / few) and per class.

Every group is measured against the real images *of the classes it holds*: the `train` split (what
the generator and the classifier learn from) and, as a held-out view, the `test` split. A set of
tail-class images compared with the whole train set would mostly measure that it holds other
classes. Memorisation is measured against every train image (a copy of any of them is a copy).
A figure computed on fewer than `min_images` images on either side is marked unreliable
(`train_reliable`, `test_reliable`; `reliable` is the train side's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from raysys.quality.measures import diversity_ratio, fid, kid, kth_neighbour_distance, memorisation, nearest, prdc

FIGURES = ("fid", "kid", "precision", "recall", "density", "coverage")
"""The figures measured against train, and with a `test_` prefix against test."""
REAL = "real"
"""The name of the real test set's rows (the real-versus-real level) beside the plans' rows."""


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


def groups(fake: FeatureSet, class_group: dict[int, str],
           class_names: list[str]) -> list[tuple[str, str, Optional[float], np.ndarray]]:
    """(by, group, value, rows) for the whole set, then per λ (value: λ), per s tenth (value: the tenth's
    middle; rows without λ or s fall in no such group), per class group and per class (value: None)."""
    out: list[tuple[str, str, Optional[float], np.ndarray]] = [("overall", "all", None, np.arange(len(fake.labels)))]
    if fake.guidance is not None:
        lam = fake.guidance
        out += [("lambda", f"{v:g}", float(v), np.flatnonzero(np.isclose(lam, v))) for v in np.unique(lam[~np.isnan(lam)])]
    if fake.requested is not None:
        s = fake.requested
        bins = np.array([s_bin(v) if not np.isnan(v) else "" for v in s], dtype=object)
        out += [("s", b, float(b.split("-")[0]) + 0.05, np.flatnonzero(bins == b)) for b in sorted(set(bins) - {""})]
    group_of = np.array([class_group.get(int(c), "") for c in fake.labels], dtype=object)
    out += [("class_group", g, None, np.flatnonzero(group_of == g)) for g in ("many", "medium", "few")
            if (group_of == g).any()]
    out += [("class", class_names[int(c)], None, np.flatnonzero(fake.labels == c)) for c in np.unique(fake.labels)]
    return out


class Reference:
    """The real images a set is measured against, with what every group reuses: the k-NN radii of each
    class subset (the balls of precision and coverage) and each image's distance to its nearest other one."""

    def __init__(self, images: FeatureSet, k: int):
        self.images = FeatureSet(images.features.double(), images.labels)
        self.k = k
        self._radii: dict[tuple, torch.Tensor] = {}
        self._gap: Optional[torch.Tensor] = None

    def of_classes(self, classes: np.ndarray) -> tuple[FeatureSet, Optional[torch.Tensor]]:
        """The images of `classes` and their k-NN radii (None when k or fewer)."""
        part = self.images.of_classes(classes)
        key = tuple(int(c) for c in classes)
        if key not in self._radii and len(part.labels) > self.k:
            self._radii[key] = kth_neighbour_distance(part.features, self.k)
        return part, self._radii.get(key)

    def gap(self) -> torch.Tensor:
        """Each image's distance to its nearest other image."""
        if self._gap is None:
            self._gap, _ = nearest(self.images.features, self.images.features, exclude_self=True)
        return self._gap


def _against(prefix: str, reference: Reference, fake: FeatureSet, classes: np.ndarray, min_images: int) -> dict:
    ref, radius = reference.of_classes(classes)
    kid_mean, kid_std = kid(ref.features, fake.features)
    return {f"{prefix}images": len(ref.labels), f"{prefix}fid": fid(ref.features, fake.features),
            f"{prefix}kid": kid_mean, f"{prefix}kid_std": kid_std,
            **{f"{prefix}{name}": v for name, v in prdc(ref.features, fake.features, reference.k, radius).items()},
            f"{prefix}reliable": bool(len(fake.labels) >= min_images and len(ref.labels) >= min_images)}


def measure(fake: FeatureSet, train: Reference, test: Optional[Reference], class_group: dict[int, str],
            class_names: list[str], copy_threshold: float = 0.5, min_images: int = 50) -> list[dict]:
    """One row per group of `groups`: its size, every figure against the train images of its classes (and
    with `test_` against the test images of its classes), memorisation, diversity and CLIP score.
    `reliable` is `train_reliable`: the group and its train images both hold `min_images` or more."""
    fake = FeatureSet(fake.features.double(), fake.labels, fake.guidance, fake.requested, fake.source, fake.clip_text)
    memo = memorisation(train.images.features, fake.features, fake.source, train.gap())
    rows = []
    for by, group, value, pick in groups(fake, class_group, class_names):
        part = fake.take(pick)
        classes = np.unique(part.labels)
        row: dict = {"by": by, "group": group, "value": value, "images": len(pick),
                     **_against("train_", train, part, classes, min_images)}
        if test is not None:
            row.update(_against("test_", test, part, classes, min_images))
        ratio = memo["nearest_ratio"][pick]
        closer = memo["closer_than_source_gap"][pick]
        ref = train.images.of_classes(classes)
        diversity, _ = diversity_ratio(part.features, part.labels, ref.features, ref.labels)
        clip = part.clip_text[~np.isnan(part.clip_text)] if part.clip_text is not None else np.array([])
        row.update({
            "copies": float(np.mean(ratio < copy_threshold)) if len(ratio) else None,
            "nearest_ratio_median": float(np.median(ratio)) if len(ratio) else None,
            "closer_than_source": float(np.nanmean(closer)) if np.isfinite(closer).any() else None,
            "diversity": diversity,
            "clip_text": float(clip.mean()) if len(clip) else None,
            "reliable": row["train_reliable"],
        })
        rows.append(row)
    return rows


def closest_pairs(fake_ids: list[str], train_ids: list[str], fake: FeatureSet, train: Reference,
                  count: int) -> list[tuple[str, str, float]]:
    """The `count` synthetic images nearest to a train image: (synthetic id, train id, distance ratio),
    nearest first."""
    memo = memorisation(train.images.features, fake.features.double(), train_gap_each=train.gap())
    order = np.argsort(memo["nearest_ratio"], kind="stable")[:count]
    return [(fake_ids[i], train_ids[int(memo["nearest_train"][i])], float(memo["nearest_ratio"][i])) for i in order]
