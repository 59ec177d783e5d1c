"""Source kind lists:<image root>: list files in ImageNet-LT's format, one per split, naming images
under the root."""

from __future__ import annotations

from raysys.core import io
from raysys.data.sources.base import DataError, Listing, listing_table, names_for, rank_classes


def list_lists(image_root: str, d, class_names: list[str] | None) -> Listing:
    """ImageNet-LT's list files (data.lists): one per split, lines `relative/path label`."""
    lists = d.lists
    if not lists:
        raise DataError("data.source lists:<image root> needs data.lists: {train: <file>, test: <file>, ...}")
    root = io.resolve(image_root).rstrip("/")
    paths, labels, splits = [], [], []
    for split, location in lists.items():
        if not io.exists(location):
            raise DataError(f"data.lists.{split}: {location} not found")
        for n, line in enumerate(io.read_text(location).splitlines(), 1):
            if not line.strip():
                continue
            path, _, label = line.strip().rpartition(" ")
            try:
                lab = int(label)
            except ValueError:
                lab = -1
            if not path or lab < 0:
                raise DataError(f"{location}, line {n}: expected 'relative/path label' (label >= 0), got {line!r}")
            paths.append(path.strip())
            labels.append(lab)
            splits.append(split)
    if not paths:
        raise DataError(f"data.lists: no lines in {sorted(lists.values())}")
    names = names_for(labels, paths, class_names, "data.lists")
    table = listing_table(paths=paths, uris=[io.join(root, p) for p in paths], refs=[None] * len(paths),
                          labels=labels, names=[names[lab] for lab in labels], splits=splits, domains=[None] * len(paths))
    return rank_classes(Listing(table, []))
