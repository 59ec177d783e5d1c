"""Real image sources, listed without their bytes: the built-in digits, an image folder, list
files (ImageNet-LT's format), a metadata table (CSV or Parquet, WILDS-style), a raysys manifest.

`list_source(data_config)` returns a `Listing`: one small row per image (where it is, its class,
its split and domain if the dataset gives them), never the image bytes. `read_image(uri, ref)`
reads one image's bytes where a listing row says it is; prepare calls it in Ray Data workers.
Every location may be a local path or a pyarrow filesystem URI (s3://, gs://, ...).

Problems that make the whole input unusable (a missing folder, an empty class, a bad label,
a column the table lacks) raise `DataError` naming the input, before any image is read.

Each source kind (`data.source: <kind>:<arg>`) is one module here with one lister,
`list_<kind>(arg, data_config, class_names) -> Listing` (labels ranked 0..C-1), registered below;
what they share is in `base`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from raysys.core import io
from raysys.data.images import encode_png
from raysys.data.sources.base import (LISTING_SCHEMA, DataError, Listing, keep_train_classes, rename_splits,
                                      shared_strings)
from raysys.data.sources.builtin import (BUILTINS, BUILTINS_WITH_SPLITS, DIGIT_NAMES, SourceData, builtin_pixels,
                                         list_builtin, load_builtin, load_builtin_digits)
from raysys.data.sources.folder import IMAGE_SUFFIXES, list_folder
from raysys.data.sources.lists import list_lists
from raysys.data.sources.parquet import list_parquet
from raysys.data.sources.table import list_table, read_table

__all__ = ["BUILTINS", "BUILTINS_WITH_SPLITS", "DIGIT_NAMES", "IMAGE_SUFFIXES", "KINDS", "LISTING_SCHEMA", "DataError",
           "Listing", "SourceData", "keep_train_classes", "list_source", "load_builtin", "load_builtin_digits",
           "read_image", "rename_splits", "shared_strings"]

_REGISTRY: dict[str, Callable[[str, Any, Optional[list[str]]], Listing]] = {
    "builtin": list_builtin,
    "folder": list_folder,
    "lists": list_lists,
    "table": list_table,
    "parquet": list_parquet,
}
KINDS = tuple(_REGISTRY)


def list_source(d) -> Listing:
    """The listing of `d.source` (a DataConfig's): classes ranked by label (or name), rows in a stable order."""
    kind, _, arg = d.source.partition(":")
    class_names = _read_class_names(d.class_names)
    if kind not in _REGISTRY:
        raise DataError(f"data.source '{d.source}': expected one of {', '.join(k + ':' for k in KINDS)}")
    return _REGISTRY[kind](arg, d, class_names)


def _read_class_names(location: str | None) -> list[str] | None:
    """Line i names label i; or a CSV with a `y` (or `label`) and a `name` column (WILDS' categories.csv)."""
    if not location:
        return None
    if not io.exists(location):
        raise DataError(f"data.class_names: {location} not found")
    if location.lower().endswith(".csv"):
        table = read_table(location, [])
        label = next((c for c in ("y", "label") if c in table.column_names), None)
        if label is None or "name" not in table.column_names:
            raise DataError(f"data.class_names: {location} needs a 'y' (or 'label') and a 'name' column")
        pairs = dict(zip((int(v) for v in table[label].to_pylist()), (str(v) for v in table["name"].to_pylist())))
        return [pairs.get(i, str(i)) for i in range(max(pairs) + 1)] if pairs else []
    return [line.strip() for line in io.read_text(location).splitlines() if line.strip()]


# ---- reading one image --------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _row_group(location: str, column: str, group: int) -> pa.Array:
    import pyarrow.parquet as pq

    fs, path = io.filesystem(location)

    def read() -> pa.Array:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(group, columns=[column])[column].combine_chunks()

    return io.retrying(f"read {location}", read)


@functools.lru_cache(maxsize=16)
def _row_group_starts(location: str) -> np.ndarray:
    import pyarrow.parquet as pq

    fs, path = io.filesystem(location)

    def read():
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    meta = io.retrying(f"read {location}", read)
    return np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])


def read_image(uri: str | None, ref: str | None) -> bytes:
    """The encoded bytes of one listed image: its file, a built-in's PNG, or a table row's bytes."""
    if uri:
        return io.read_bytes(uri)
    if not ref:
        raise DataError("a listing row has neither a file nor a reference")
    kind, _, rest = ref.partition(":")
    location, _, index = rest.rpartition("#")
    i = int(index)
    if kind == "builtin":
        return encode_png(builtin_pixels(location)[0][i])
    if kind == "rows":
        table_file, _, column = location.rpartition("@")
        starts = _row_group_starts(table_file)
        group = int(np.searchsorted(starts, i, side="right") - 1)
        value = _row_group(table_file, column, group)[i - int(starts[group])].as_py()
        if value is None:
            raise ValueError("no image bytes in this row")
        return value
    raise DataError(f"unknown image reference '{ref}'")
