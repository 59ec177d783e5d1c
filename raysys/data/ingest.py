"""One part of the real manifest: read the listed images, check them, store them, write the part.

`write_part_of_selection` is what each Ray Data task of prepare runs (`raysys.ray.parts.map_parts`):
it reads its part's listing rows from the selection file (`write_selection`) and hands them to
`write_real_part`, which a plain loop can run the same way: plain Python, no Ray. (The task
function lives here, not in the stage, so that a worker imports this module only.) Every image
is decoded in full; one that cannot be read or decoded is left out of the part and reported in
the summary, never fatal.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from raysys.core import io
from raysys.core.schema import sample_id, to_table, write_part
from raysys.data.images import check_image, resize_encoded
from raysys.data.sources import read_image

SUMMARY_SCHEMA = pa.schema([
    pa.field("path", pa.string()),  # an unreadable image's path (null for the images stored)
    pa.field("label", pa.int32()),
    pa.field("split", pa.string()),
    pa.field("ok", pa.bool_()),
    pa.field("error", pa.string()),
    pa.field("stored_bytes", pa.int64()),
])
"""What a part tells the driver about each of its images: small per-row values, never bytes."""


def real_sample_id(path: str) -> str:
    """The sample id of a real image, from its stable path within the source."""
    return sample_id("real", path)


def bad_files_location(directory: str, part: str) -> str:
    return io.join(directory, "_bad_files", part.replace(".parquet", ".json"))


def write_real_part(rows: pa.Table, directory: str, part: str, store: str = "bytes",
                    store_size: int | None = None) -> pa.Table:
    """Read, check and store the images of `rows` (listing rows with their split) as part `part` of
    the manifest folder `directory`; returns one SUMMARY_SCHEMA row per input row.

    store: bytes (the encoded bytes, or a copy resized to `store_size` on its shorter side) or uri
    (only the file's location). The unreadable images' {path, error} also go to
    `<directory>/_bad_files/<part>.json`, written before the part, so a finished part always has them.
    """
    listed = rows.to_pylist()
    ids = [real_sample_id(r["path"]) for r in listed]
    keep, images, errors, stored = [], [], [], []
    for r in listed:
        try:
            data = read_image(r["uri"], r["ref"])
            check_image(data)
            if store_size is not None:
                data = resize_encoded(data, store_size)
        except Exception as exc:  # unreadable or corrupt: counted and listed, never fatal
            keep.append(False)
            errors.append(f"{type(exc).__name__}: {exc}"[:500])
            stored.append(0)
            continue
        keep.append(True)
        errors.append(None)
        images.append(data if store == "bytes" else None)
        stored.append(len(data) if store == "bytes" else 0)
    good = [r for r, k in zip(listed, keep) if k]
    bad = [{"path": r["path"], "error": e} for r, k, e in zip(listed, keep, errors) if not k]
    io.write_json(bad_files_location(directory, part), bad)
    table = to_table({
        "sample_id": [i for i, k in zip(ids, keep) if k],
        "image": images,
        "uri": [r["uri"] for r in good],
        "path": [r["path"] for r in good],
        "label": [r["label"] for r in good],
        "class_name": [r["class_name"] for r in good],
        "split": [r["split"] for r in good],
        "domain": [r["domain"] for r in good],
        "origin": ["real"] * len(good),
    })
    write_part(table, directory, part)
    return summary(listed, keep, errors, stored)


def summary(listed, keep, errors, stored) -> pa.Table:
    return pa.table({"path": [None if k else r["path"] for r, k in zip(listed, keep)],
                     "label": [r["label"] for r in listed],
                     "split": [r["split"] for r in listed], "ok": keep, "error": errors, "stored_bytes": stored},
                    schema=SUMMARY_SCHEMA)


def finished_part_summary(rows: pa.Table, directory: str, part: str) -> pa.Table:
    """The summary of a part a killed run already wrote (from its bad-file list: nothing is read again)."""
    bad = {b["path"]: b["error"] for b in io.read_json(bad_files_location(directory, part))}
    listed = rows.to_pylist()
    keep = [r["path"] not in bad for r in listed]
    return summary(listed, keep, [bad.get(r["path"]) for r in listed], [0] * len(listed))


def write_selection(selected: pa.Table, location: str, rows_per_part: int) -> int:
    """The selected listing rows as one Parquet file, row group i = part i's rows; returns the parts."""
    buf = pa.BufferOutputStream()
    pq.write_table(selected, buf, row_group_size=rows_per_part, compression="zstd")
    io.write_bytes(location, buf.getvalue().to_pybytes())
    return -(-len(selected) // rows_per_part)


def selection_rows(location: str, part_index: int) -> pa.Table:
    """The listing rows of part `part_index` of a selection file."""
    fs, path = io.filesystem(location)

    def read() -> pa.Table:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(part_index)

    return io.retrying(f"read {location}", read)


def write_part_of_selection(batch: pa.Table, selection: str, directory: str, store: str,
                            store_size: int | None) -> pa.Table:
    """One prepare task: a batch of one row (part name, part index) -> that part of the manifest."""
    part, index = batch["part"][0].as_py(), batch["index"][0].as_py()
    return write_real_part(selection_rows(selection, index), directory, part, store, store_size)
