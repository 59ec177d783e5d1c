"""Long-tailed splits: an exponential train profile, balanced val/test, a disjoint pretrain split.

Class c (in label order) gets n_c = round(max * ratio^(-c/(C-1))) train images, so the
largest class has `max` and the smallest `max / ratio`. Every split is drawn without
replacement from the same per-class shuffle, so no image is in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raysys.data.sources import DataError


def longtail_counts(num_classes: int, max_per_class: int, imbalance_ratio: float) -> list[int]:
    if num_classes == 1:
        return [max_per_class]
    return [
        max(1, int(round(max_per_class * imbalance_ratio ** (-c / (num_classes - 1)))))
        for c in range(num_classes)
    ]


@dataclass
class SplitPlan:
    split: np.ndarray
    """Per source image: 'train', 'val', 'test', 'pretrain', or '' (unused)."""
    train_counts: list[int]
    capped: dict[str, list[int]] = field(default_factory=dict)
    """given splits: split drawn from train -> the classes of which data.carve_out_share cut its draw."""


def assign_splits(
    labels: np.ndarray,
    num_classes: int,
    *,
    max_per_class: int,
    imbalance_ratio: float,
    val_per_class: int,
    test_per_class: int,
    pretrain_per_class: int,
    seed: int,
) -> SplitPlan:
    """Assign each image to one split. Raises DataError naming the first class that is too small.

    max_per_class = 0 keeps every image left after val/test/pretrain as train (the data's own,
    natural distribution).
    """
    available = np.bincount(labels, minlength=num_classes)
    natural = max_per_class == 0
    targets = (
        [0] * num_classes if natural else longtail_counts(num_classes, max_per_class, imbalance_ratio)
    )
    for c in range(num_classes):
        need = targets[c] + val_per_class + test_per_class + pretrain_per_class + (1 if natural else 0)
        if available[c] < need:
            raise DataError(
                f"class {c} has {available[c]} images but the split needs {need} "
                f"(train {targets[c]} + val {val_per_class} + test {test_per_class} + "
                f"pretrain {pretrain_per_class}); lower data.max_per_class or the per-class counts"
            )
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "", dtype=object)
    train_counts = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        pieces = [("test", test_per_class), ("val", val_per_class), ("pretrain", pretrain_per_class)]
        start = 0
        for name, n in pieces:
            split[idx[start : start + n]] = name
            start += n
        n_train = len(idx) - start if natural else targets[c]
        split[idx[start : start + n_train]] = "train"
        train_counts.append(int(n_train))
    return SplitPlan(split=split, train_counts=train_counts)


def class_groups(train_counts: list[int], many_threshold: int, few_threshold: int) -> dict[str, list[int]]:
    """many: > many_threshold train images; few: < few_threshold; medium: the rest."""
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(train_counts):
        if n > many_threshold:
            groups["many"].append(c)
        elif n < few_threshold:
            groups["few"].append(c)
        else:
            groups["medium"].append(c)
    return groups
