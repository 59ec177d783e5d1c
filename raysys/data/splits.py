"""Which listed image goes to which split: a long-tailed resampling, or the dataset's own splits.

`plan_splits(listing, data_config, seed)` decides from labels and the dataset's split names
alone (no image is read), so prepare can select rows by id before any bytes move.

- `longtail`: every image is pooled and `raysys.data.longtail.assign_splits` draws a long-tailed
  train split and balanced val / test / pretrain splits.
- `given`: the dataset's splits are kept under their own names (renamed by `split_names`); when
  the validation split is absent, `val_per_class` images per class are drawn from train, as are
  `pretrain_per_class` for the built-in generator. Each draw takes at most `carve_out_share` of a
  class's train images (at least one; each class keeps one), so a tail class keeps most of its
  train images; the plan names the classes whose draws were cut.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysys.data.longtail import SplitPlan, assign_splits
from raysys.data.sources import (BUILTINS_WITH_SPLITS, KINDS, DataError, Listing, keep_train_classes, rename_splits,
                                 shared_strings)


def _draw_from_train(split: np.ndarray, labels: np.ndarray, given_train: np.ndarray, name: str, per_class: int,
                     share: float, rng: np.random.Generator) -> list[int]:
    """Move up to `per_class` train images of each class to split `name`, at most `share` of the
    class's `given_train` count (at least 1; each class keeps one); returns the classes cut by `share`."""
    capped = []
    for c, given in enumerate(given_train):
        rows = np.flatnonzero((labels == c) & (split == "train"))
        cap = max(1, int(share * given))
        n = min(per_class, cap, len(rows) - 1)
        if min(per_class, len(rows) - 1) > cap:
            capped.append(c)
        if n > 0:
            split[rows[rng.permutation(len(rows))[:n]]] = name
    return capped


def given_splits(listing: Listing, d, seed: int) -> tuple[Listing, SplitPlan]:
    """The dataset's own splits, with val (and pretrain) drawn from train where asked."""
    listing = rename_splits(listing, d.split_names)
    given = shared_strings(listing.table["split"])
    if (given == "").any():
        raise DataError(f"data.splits: given, but {int((given == '').sum())} image(s) of {d.source} have no split "
                        "(use root/<split>/<class>/<image>, a table's split column, or data.splits: longtail)")
    names = sorted(set(given))
    if "train" not in names:
        raise DataError(f"{d.source}: no 'train' split (its splits: {names}); rename one with data.split_names")
    missing = [s for s in d.test_splits if s not in names]
    if missing:
        raise DataError(f"data.test_splits {missing} are not splits of {d.source} (its splits: {names})")
    listing = keep_train_classes(listing)
    split = shared_strings(listing.table["split"])
    labels = listing.table["label"].to_numpy()
    num_classes = len(listing.class_names)
    rng = np.random.default_rng(seed)
    given_train = np.bincount(labels[split == "train"], minlength=num_classes)
    capped = {}
    if d.val_split not in names:
        capped[d.val_split] = _draw_from_train(split, labels, given_train, d.val_split, d.val_per_class,
                                               d.carve_out_share, rng)
    if d.pretrain_per_class > 0 and "pretrain" not in names:
        capped["pretrain"] = _draw_from_train(split, labels, given_train, "pretrain", d.pretrain_per_class,
                                              d.carve_out_share, rng)
    train_counts = np.bincount(labels[split == "train"], minlength=num_classes).tolist()
    return listing, SplitPlan(split=split, train_counts=[int(n) for n in train_counts],
                              capped={s: c for s, c in capped.items() if c})


def plan_splits(listing: Listing, d, seed: int) -> tuple[Listing, SplitPlan]:
    """(the listing, possibly with classes dropped, and each of its rows' split: '' = unused)."""
    if d.splits == "given":
        return given_splits(listing, d, seed)
    labels = listing.table["label"].to_numpy().astype(np.int64)
    plan = assign_splits(labels, len(listing.class_names), max_per_class=d.max_per_class,
                         imbalance_ratio=d.imbalance_ratio, val_per_class=d.val_per_class,
                         test_per_class=d.test_per_class, pretrain_per_class=d.pretrain_per_class, seed=seed)
    return listing, plan


def with_splits(listing: Listing, plan: SplitPlan) -> pa.Table:
    """The listing rows that are used, each with its split."""
    used = plan.split != ""
    t = listing.table.filter(pa.array(used))
    return t.set_column(t.schema.get_field_index("split"), "split", pa.array(plan.split[used], pa.string()))


def check_data(d) -> list[str]:
    """Problems of the `data` section (a DataConfig)."""
    problems = []
    kind = d.source.partition(":")[0]
    if kind not in KINDS:
        problems.append(f"data.source '{d.source}': expected one of {', '.join(k + ':' for k in KINDS)}")
    if d.lists and kind != "lists":
        problems.append("data.lists is read by data.source lists:<image root> only")
    if kind == "lists" and not d.lists:
        problems.append("data.source lists: needs data.lists (split name -> list file)")
    if kind == "builtin" and d.source.partition(":")[2] in BUILTINS_WITH_SPLITS and d.splits != "given":
        problems.append(f"data.source {d.source} comes with its own splits (train, val, id_test, ood_test, pretrain) "
                        "and a camera per image: set data.splits: given and data.test_splits: [id_test, ood_test]")
    if d.store == "uri" and kind == "builtin":
        problems.append("data.store: uri needs image files; the built-in datasets are stored as bytes")
    if d.store == "uri" and d.store_size is not None:
        problems.append("data.store_size resizes stored bytes: it needs data.store: bytes")
    if d.store_size is not None and d.store_size < 1:
        problems.append("data.store_size must be >= 1 (or null)")
    if d.rows_per_part < 1:
        problems.append("data.rows_per_part must be >= 1")
    if d.imbalance_ratio < 1:
        problems.append("data.imbalance_ratio must be >= 1")
    if not 0 < d.carve_out_share <= 1:
        problems.append(f"data.carve_out_share must be in (0, 1], got {d.carve_out_share}")
    if d.channels not in (1, 3):
        problems.append("data.channels must be 1 or 3")
    if d.image_size < 4:
        problems.append("data.image_size must be >= 4")
    if not d.test_splits:
        problems.append("data.test_splits must name at least one split")
    if d.val_split in d.test_splits or "train" in d.test_splits or d.val_split == "train":
        problems.append("data.val_split, data.test_splits and train must be different splits")
    if d.splits == "longtail":
        if d.val_split != "val" or list(d.test_splits) != ["test"]:
            problems.append("data.splits: longtail makes the splits val and test: leave data.val_split and "
                            "data.test_splits as they are (or use data.splits: given)")
        if d.val_per_class < 1 or d.test_per_class < 1:
            problems.append("data.val_per_class and data.test_per_class must be >= 1 (metrics need both splits)")
        if d.split_names:
            problems.append("data.split_names renames given splits: it needs data.splits: given")
    if d.val_per_class < 0 or d.max_per_class < 0 or d.pretrain_per_class < 0:
        problems.append("data.max_per_class, data.val_per_class and data.pretrain_per_class must be >= 0")
    if d.few_threshold > d.many_threshold:
        problems.append("data.few_threshold must be <= data.many_threshold")
    return problems
