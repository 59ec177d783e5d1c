"""Source kind table:<file>: a metadata table (CSV or Parquet, WILDS-style) with a path or image-bytes
column, a label or class-name column and optional split and domain columns; and the table reading
the other kinds share (data.class_names' CSV, the parquet: kind)."""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa

from raysys.core import io
from raysys.data.sources.base import DataError, Listing, listing_table, names_for, rank_classes


def read_table(location: str, columns: list[str]) -> pa.Table:
    """A CSV or Parquet table (a file or a folder of parts) with at least `columns`."""
    if not io.exists(location):
        raise DataError(f"metadata table not found: {location}")
    fs, path = io.filesystem(location)
    if location.lower().endswith(".csv"):
        import pyarrow.csv as pcsv

        with fs.open_input_stream(path) as f:
            table = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    else:
        dataset = parquet_dataset(location)
        table = dataset.to_table(columns=[c for c in columns if c in dataset.schema.names])
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{location}: no column(s) {missing} (it has {table.column_names}); set data.columns")
    return table


def table_listing(location: str, cols, image_root: str | None, class_names: list[str] | None,
                  real_only: bool = False) -> Listing:
    """A metadata table: a path (or image bytes) column, a label or class-name column, optional split/domain."""
    if cols.path is None and cols.image is None:
        raise DataError("data.columns: set `path` (image files) or `image` (a column of image bytes)")
    if cols.label is None and cols.class_name is None:
        raise DataError("data.columns: set `label` or `class_name`")
    if cols.image is not None and location.lower().endswith(".csv"):
        raise DataError(f"{location}: a CSV table cannot hold image bytes; give data.columns.path")
    wanted = [c for c in (cols.path, cols.label, cols.class_name, cols.split, cols.domain) if c]
    optional = ["uri", "origin", "sample_id"] if real_only else []
    table = read_table(location, wanted + [c for c in optional if c in schema_names(location)])
    n = len(table)
    rows = np.arange(n)
    if real_only and "origin" in table.column_names:
        rows = np.flatnonzero(np.asarray(table["origin"].to_pylist(), dtype=object) == "real")
        table = table.take(pa.array(rows))
        n = len(table)
        if n == 0:
            raise DataError(f"{location}: no real rows")

    def column(name):
        return table[name].to_pylist()

    if cols.label is not None:
        raw = column(cols.label)
        if any(v is None for v in raw):
            raise DataError(f"{location}: column '{cols.label}' has empty labels")
        try:
            labels = [int(v) for v in raw]
        except (TypeError, ValueError):
            raise DataError(f"{location}: column '{cols.label}' must hold integer labels (or set data.columns.class_name)")
        bad = sorted({v for v in labels if v < 0})
        if bad:
            raise DataError(f"{location}: unknown label {bad[0]} (labels must be >= 0)")
    if cols.class_name is not None:
        names = [str(v) if v is not None else None for v in column(cols.class_name)]
        if any(v is None for v in names):
            raise DataError(f"{location}: column '{cols.class_name}' has empty class names")
        if cols.label is None:
            rank = {v: i for i, v in enumerate(sorted(set(names)))}
            labels = [rank[v] for v in names]
        pairs: dict[int, str] = {}
        for lab, name in zip(labels, names):
            if pairs.setdefault(lab, name) != name:
                raise DataError(f"{location}: label {lab} is both '{pairs[lab]}' and '{name}'")
    else:
        mapping = names_for(labels, None, class_names, location)
        names = [mapping[lab] for lab in labels]
    splits = [str(v) if v is not None else "" for v in column(cols.split)] if cols.split and cols.split in table.column_names else [""] * n
    domains = [str(v) if v is not None else None for v in column(cols.domain)] if cols.domain else [None] * n
    if cols.path is not None:
        root = (io.resolve(image_root) if image_root else posixpath.dirname(io.resolve(location))).rstrip("/")
        rel = column(cols.path)
        if any(not p for p in rel):
            raise DataError(f"{location}: column '{cols.path}' has empty paths")
        uris = [p if ("://" in p or p.startswith("/")) else io.join(root, p) for p in rel]
        paths, refs = rel, [None] * n
    elif "uri" in table.column_names and all(table["uri"].to_pylist()):  # a raysys manifest stored by reference
        uris = column("uri")
        paths = column("sample_id") if "sample_id" in table.column_names else uris
        refs = [None] * n
    else:
        files = _manifest_file_rows(location)
        uris = [None] * n
        refs = [f"rows:{files[r][0]}@{cols.image}#{files[r][1]}" for r in rows]
        paths = column("sample_id") if "sample_id" in table.column_names else [f"{location}#{r}" for r in rows]
    return Listing(listing_table(paths=paths, uris=uris, refs=refs, labels=labels, names=names, splits=splits,
                                 domains=domains), [])


def schema_names(location: str) -> list[str]:
    """The column names of a Parquet table (none for a CSV)."""
    if location.lower().endswith(".csv"):
        return []
    return parquet_dataset(location).schema.names


def parquet_dataset(location: str):
    """A pyarrow dataset over a Parquet file or a folder of parts."""
    import pyarrow.dataset as pads

    from raysys.core.schema import manifest_files

    fs, _ = io.filesystem(location)
    return pads.dataset([io.filesystem(f)[1] for f in manifest_files(location)], filesystem=fs, format="parquet")


def _manifest_file_rows(location: str) -> list[tuple[str, int]]:
    """(file, row within it) of every row of a Parquet table that may be a folder of parts."""
    import pyarrow.parquet as pq

    from raysys.core.schema import manifest_files

    out = []
    for f in manifest_files(location):
        fs, path = io.filesystem(f)
        with fs.open_input_file(path) as h:
            out += [(f, i) for i in range(pq.ParquetFile(h).metadata.num_rows)]
    return out


def list_table(location: str, d, class_names: list[str] | None) -> Listing:
    """table:<file>: its columns named by data.columns, relative paths under data.image_root (else the table's folder)."""
    return rank_classes(table_listing(location, d.columns, d.image_root, class_names))
