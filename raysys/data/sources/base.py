"""What every source kind shares: the listing's schema and type, the input error, and the steps
applied to a listing whatever its kind (class ranking, split renaming, train-class filtering)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LISTING_SCHEMA = pa.schema([
    pa.field("path", pa.string()),  # stable name of the image within the source (its sample id's input)
    pa.field("uri", pa.string()),  # the image file (absolute path or URI), or null
    pa.field("ref", pa.string()),  # where the bytes are when there is no file: builtin:<name>#<i>, rows:<file>#<i>
    pa.field("label", pa.int32()),
    pa.field("class_name", pa.string()),
    pa.field("split", pa.string()),  # the dataset's own split ("" when it gives none)
    pa.field("domain", pa.string()),
])


class DataError(ValueError):
    """The input data cannot be used as given."""


@dataclass
class Listing:
    """Every image a source offers, one small row each (LISTING_SCHEMA), in a stable order."""

    table: pa.Table
    class_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows left out, by reason (e.g. a class that has no train image)."""

    def __len__(self) -> int:
        return len(self.table)


def listing_table(*, paths, uris, refs, labels, names, splits, domains) -> pa.Table:
    """A listing's table from its columns (Python lists)."""
    return pa.table({"path": paths, "uri": uris, "ref": refs, "label": labels, "class_name": names,
                     "split": splits, "domain": domains}, schema=LISTING_SCHEMA)


def shared_strings(column) -> np.ndarray:
    """A string column as a numpy object array whose equal values share one Python string (a few
    bytes per row, not one string object per row: split names, class names)."""
    encoded = pc.dictionary_encode(column).combine_chunks() if isinstance(column, pa.ChunkedArray) \
        else pc.dictionary_encode(column)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return names[encoded.indices.to_numpy(zero_copy_only=False)] if len(names) else np.full(len(column), None, object)


def names_for(labels: list[int], paths: list[str] | None, class_names: list[str] | None, what: str) -> dict[int, str]:
    """label -> class name: data.class_names' line, else the one parent folder all its images share, else the label."""
    distinct = sorted(set(labels))
    if class_names is not None:
        missing = [lab for lab in distinct if lab >= len(class_names)]
        if missing:
            raise DataError(f"{what}: labels {missing[:5]} have no line in data.class_names ({len(class_names)} names)")
        return {lab: class_names[lab] for lab in distinct}
    folders: dict[int, set] = {}
    if paths is not None:
        for lab, p in zip(labels, paths):
            folders.setdefault(lab, set()).add(posixpath.basename(posixpath.dirname(p)))
    return {lab: next(iter(folders[lab])) if len(folders.get(lab, ())) == 1 and next(iter(folders[lab])) else str(lab)
            for lab in distinct}


def rank_classes(listing: Listing) -> Listing:
    """Labels 0..C-1 in the order of the source's labels; class names kept."""
    t = listing.table
    labels = t["label"].to_numpy()
    distinct, first = np.unique(labels, return_index=True)
    names = t["class_name"].take(pa.array(first)).to_pylist()
    rank = np.searchsorted(distinct, labels)
    t = t.set_column(t.schema.get_field_index("label"), LISTING_SCHEMA.field("label"), pa.array(rank, pa.int32()))
    return Listing(t, [str(n) for n in names], listing.dropped)


def rename_splits(listing: Listing, names: dict[str, str]) -> Listing:
    """The dataset's splits renamed by `names` (data.split_names)."""
    if not names:
        return listing
    t = listing.table
    split = t["split"]
    for old, new in names.items():
        split = pc.if_else(pc.equal(split, old), new, split)
    t = t.set_column(t.schema.get_field_index("split"), LISTING_SCHEMA.field("split"), split)
    return Listing(t, listing.class_names, listing.dropped)


def keep_train_classes(listing: Listing) -> Listing:
    """Given splits: the classes are those with a train image; other splits' rows of any other class are
    dropped (and counted), and the labels ranked again."""
    t = listing.table
    labels = t["label"].to_numpy()
    train_classes = np.unique(labels[pc.equal(t["split"], "train").to_numpy(zero_copy_only=False)])
    keep = np.isin(labels, train_classes)
    dropped = dict(listing.dropped)
    if (~keep).any():
        dropped["class_without_train_images"] = int((~keep).sum())
        t = t.filter(pa.array(keep))
    names = [listing.class_names[c] for c in train_classes]
    rank = np.searchsorted(train_classes, t["label"].to_numpy())
    t = t.set_column(t.schema.get_field_index("label"), LISTING_SCHEMA.field("label"), pa.array(rank, pa.int32()))
    return Listing(t, names, dropped)
