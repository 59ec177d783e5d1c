"""The prepare stage's choice of rows, before any image is read, and its count of what was read.

`select_rows` lists a source and draws its splits (the rows go on; the full listing ends there);
`split_counts` counts the readable images per split and class and refuses a class with no train
image or an empty validation or test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core.config import DataConfig
from raysys.data.sources import DataError, list_source, shared_strings
from raysys.data.splits import plan_splits, with_splits


@dataclass
class Listed:
    """What the metrics keep of the source's listing, once its rows are selected."""

    class_names: list[str]
    listed: int
    """Images listed in the source."""
    dropped: dict[str, int]
    has_domains: bool
    capped: dict[str, list[str]]
    """Split drawn from train -> the classes whose draw data.carve_out_share capped."""


def select_rows(d: DataConfig, seed: int) -> tuple[pa.Table, Listed]:
    """(the rows the splits select, what the metrics keep of the listing); raises DataError on
    unusable input, before any image is read."""
    listing = list_source(d)
    listing, plan = plan_splits(listing, d, seed)
    selected = with_splits(listing, plan)
    if pc.count_distinct(selected["path"]).as_py() != len(selected):  # ids are hashes of the paths
        counts = pc.value_counts(selected["path"])
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise DataError(f"{d.source}: the image '{dup}' is listed twice")
    class_names, listed = listing.class_names, len(listing)
    has_domains = bool(pc.any(pc.is_valid(listing.table["domain"])).as_py()) if listed else False
    capped = {s: [class_names[c] for c in classes] for s, classes in plan.capped.items()}
    if capped:
        print(f"[prepare] data.carve_out_share {d.carve_out_share} capped what was drawn from train, to keep the "
              "tail's train images: " + "; ".join(f"{s} for {len(names)} classes ({_first(names)})"
                                                   for s, names in capped.items()), flush=True)
    # The full listing and the plan end here: from here on the driver holds the selected rows and small summaries.
    return selected, Listed(class_names, listed, listing.dropped, has_domains, capped)


def split_counts(d: DataConfig, good: pa.Table, class_names: list[str]) -> dict[str, list[int]]:
    """Readable images per split and class (train first); raises DataError when a class has no
    readable train image or the validation or a test split none at all."""
    num_classes = len(class_names)
    split_arr = shared_strings(good["split"])
    labels_arr = good["label"].to_numpy()
    split_names = sorted(set(split_arr.tolist()), key=lambda s: (s != "train", s))
    counts = {s: np.bincount(labels_arr[split_arr == s], minlength=num_classes).tolist() for s in split_names}
    train_counts = counts.get("train", [0] * num_classes)
    empty = [class_names[c] for c in range(num_classes) if train_counts[c] == 0]
    if empty:
        raise DataError(f"{d.source}: class(es) {empty[:10]} have no readable train image (all their files are corrupt)")
    for s in [d.val_split, *d.test_splits]:
        if s not in counts:
            raise DataError(f"{d.source}: the split '{s}' has no readable image")
    return counts


def _first(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
