"""The manifest: one pyarrow schema shared by every stage (one row per image, real or synthetic).

A manifest is a folder of Parquet parts (`part-00000.parquet`, ...), each of a bounded number
of rows and each written atomically, or (a user's own input) one Parquet file. An image is
either its encoded bytes in `image` or a file at `uri`, read when a reader asks for `image`.
pandas (`pd.read_parquet(folder)`) and DuckDB (`SELECT * FROM 'folder/*.parquet'`) read them
as they are.

**Corrupt parts.** A part whose bytes are not a whole Parquet file (an unreadable footer or page,
or fewer rows than its footer says) is a `CorruptPart`, decided from its bytes (never from a read
that failed for a moment: those are retried, raysys.core.io). `quarantine` moves such a part
into the folder's `_corrupt/` (which no reader lists); synthesis does that and regenerates its
rows, and reading a manifest with one fails with a line naming the part and the way out.
"""

from __future__ import annotations

import hashlib
import io as _io
import uuid
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysys.core import io

ORIGINS = ("real", "synthetic")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # hash of source path / plan row
        pa.field("image", pa.binary()),  # encoded PNG/JPEG/WebP bytes (null: read from `uri`)
        pa.field("uri", pa.string()),  # the image file (a path or URI) when its bytes are not in `image`
        pa.field("path", pa.string()),  # where the image came from (file, builtin:<name>#<index>)
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train, val, test, pretrain or the dataset's own
        pa.field("domain", pa.string()),  # group the image belongs to (a camera location, a site)
        pa.field("origin", pa.string(), nullable=False),  # real | synthetic
        pa.field("difficulty", pa.float32()),  # measured 1 - p(y|x)
        pa.field("p_true", pa.float32()),  # p(y|x) of the true class
        pa.field("loss", pa.float32()),  # cross-entropy of the true class
        pa.field("pred", pa.int32()),  # argmax class
        pa.field("entropy", pa.float32()),  # entropy of p(.|x), nats
        pa.field("score_mode", pa.string()),  # oof-k<folds>-fold<i> | full
        pa.field("prompt", pa.string()),  # text the generator saw
        pa.field("caption", pa.string()),  # what the image shows: the caption stage's, or the dataset's own
        pa.field("source_id", pa.string()),  # real image used for image guidance
        pa.field("guidance", pa.float32()),  # image guidance lambda in [0, 1]
        pa.field("requested_difficulty", pa.float32()),  # s asked of the generator
        pa.field("seed", pa.int64()),  # per-sample seed
        pa.field("generator", pa.string()),  # base model id + fine-tune checkpoint digest
        pa.field("clip_text", pa.float32()),
        pa.field("clip_image", pa.float32()),
        pa.field("keep", pa.bool_()),
    ]
)

SCORE_COLUMNS = ("difficulty", "p_true", "loss", "pred", "entropy", "score_mode")


def sample_id(*parts: object) -> str:
    """Stable id from the parts that identify a sample (never Python's salted hash())."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


def empty_columns() -> dict[str, list]:
    return {name: [] for name in MANIFEST_SCHEMA.names}


def to_table(columns: dict[str, list]) -> pa.Table:
    """Build a manifest table from a dict of columns; missing columns are filled with nulls."""
    extra = set(columns) - set(MANIFEST_SCHEMA.names)
    if extra:
        raise ValueError(f"columns not in the manifest schema: {sorted(extra)}")
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for f in MANIFEST_SCHEMA:
        values = columns.get(f.name)
        arrays.append(pa.array(values if values is not None else [None] * n, type=f.type))
    return conform(pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA))


def conform(table: pa.Table) -> pa.Table:
    """Cast a table to the manifest schema: columns in order, absent ones as nulls, extras refused."""
    extra = set(table.column_names) - set(MANIFEST_SCHEMA.names)
    if extra:
        raise ValueError(f"columns not in the manifest schema: {sorted(extra)}")
    cols = []
    for f in MANIFEST_SCHEMA:
        if f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(len(table), type=f.type))
    out = pa.Table.from_arrays(cols, schema=MANIFEST_SCHEMA)
    for f in MANIFEST_SCHEMA:
        if not f.nullable and out[f.name].null_count:
            raise ValueError(f"manifest column '{f.name}' has {out[f.name].null_count} nulls")
    return out


ROW_GROUP_BYTES = 2**18
"""About how many bytes of encoded images one Parquet row group of a manifest holds: a reader that
wants one image (training input, raysys.data.stream) reads its row group, so this bounds what one
randomly drawn image costs to read."""


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group for `table`: ROW_GROUP_BYTES of its encoded images (at least one row);
    all its rows in one group when it holds no image bytes (only uris)."""
    n = len(table)
    image_bytes = (pc.sum(pc.binary_length(table["image"])).as_py() or 0) if "image" in table.column_names else 0
    if n == 0 or image_bytes == 0:
        return max(n, 1)
    return max(1, min(n, int(ROW_GROUP_BYTES * n // image_bytes)))


def write_manifest(table: pa.Table, location: str) -> None:
    """Write a manifest Parquet file atomically (temporary file, then rename), its row groups of
    about ROW_GROUP_BYTES of images each."""
    table = conform(table)
    buf = _io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_rows(table), compression="zstd")
    io.write_bytes(location, buf.getvalue())


def part_file(index: int) -> str:
    """Name of the index-th part of a manifest folder."""
    return f"part-{index:05d}.parquet"


def write_part(table: pa.Table, directory: str, name: str) -> str:
    """Write one part of a manifest folder atomically; returns its location."""
    location = io.join(directory, name)
    write_manifest(table, location)
    return location


def is_folder(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = io.filesystem(location)
    return io.retrying(f"stat {location}", lambda: fs.get_file_info(path).type == pafs.FileType.Directory)


def manifest_files(location: str) -> list[str]:
    """The Parquet files of a manifest: its parts (a folder) or itself (a file)."""
    if is_folder(location):
        return list_parts(location)
    if not io.exists(location):
        raise FileNotFoundError(f"{location}: no such manifest file or folder")
    return [location]


def read_manifest(location: str, columns: list[str] | None = None, where=None, resolve: bool = True) -> pa.Table:
    """Read a manifest folder (its parts) or file: all columns, or `columns`, of the rows that
    match `where` (a pyarrow compute expression, e.g. `pc.field("split") == "train"`).

    Asking for `image` gives every row its bytes: rows stored by reference are read from `uri`
    (`resolve=False`: as stored). Columns a file lacks (an older manifest) come back as nulls.
    """
    import pyarrow.dataset as pads

    files = manifest_files(location)
    fs, _ = io.filesystem(location)
    paths = [io.filesystem(f)[1] for f in files]
    try:
        dataset = io.retrying(f"read {location}", lambda: pads.dataset(paths, filesystem=fs, format="parquet")
                              ) if paths else None
    except (OSError, ValueError) as exc:  # pyarrow reads every footer here
        if isinstance(exc, FileNotFoundError):
            raise
        raise_if_corrupt(files)
        raise
    present = set(dataset.schema.names) if dataset is not None else set()
    wanted = list(MANIFEST_SCHEMA.names) if columns is None else list(columns)
    if "image" in wanted and "uri" not in wanted:
        read = wanted + ["uri"]
    else:
        read = wanted
    if dataset is None:
        table = to_table({})
    else:
        try:
            table = io.retrying(f"read {location}",
                                lambda: dataset.to_table(columns=[c for c in read if c in present], filter=where))
        except (OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise_if_corrupt(files)
            raise
    for name in read:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), MANIFEST_SCHEMA.field(name).type))
    if "image" in wanted and resolve:
        table = with_image_bytes(table)
    table = table.select(wanted)
    return conform(table) if columns is None else table


def with_image_bytes(table: pa.Table) -> pa.Table:
    """`table` with the bytes of every image stored by reference (`uri`, no `image`) read in."""
    if "uri" not in table.column_names or table["image"].null_count == 0:
        return table
    images = table["image"].to_pylist()
    uris = table["uri"].to_pylist()
    for i, (data, uri) in enumerate(zip(images, uris)):
        if data is None and uri:
            images[i] = io.read_bytes(uri)
    index = table.schema.get_field_index("image")
    return table.set_column(index, table.schema.field(index), pa.array(images, pa.binary()))


def list_parts(directory: str) -> list[str]:
    """Locations of the complete parts (part-*.parquet) of a sharded manifest folder, in name order
    (temporary files are not parts)."""
    import pyarrow.fs as pafs

    fs, path = io.filesystem(directory)
    if not io.exists(directory):
        return []
    infos = io.retrying(f"list {directory}", lambda: fs.get_file_info(pafs.FileSelector(path, recursive=False)))
    names = sorted(i.base_name for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    return [io.join(directory, name) for name in names]


class CorruptPart(ValueError):
    """A Parquet part whose bytes are not a whole Parquet file."""


def part_problem(data: bytes) -> Optional[str]:
    """Why `data` is not a whole Parquet part (its footer or a page does not decode, or it holds
    other than the rows its footer counts), or None when it is one."""
    try:
        f = pq.ParquetFile(pa.BufferReader(data))
        rows = f.read().num_rows
    except (OSError, ValueError) as exc:  # pyarrow raises either for bytes that do not decode
        return f"{type(exc).__name__}: {exc}".strip()
    counted = sum(f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups))
    if not rows == counted == f.metadata.num_rows:
        return f"{rows} rows read, its footer counts {f.metadata.num_rows} ({counted} in its row groups)"
    return None


def raise_if_corrupt(parts: list[str]) -> None:
    """Raise CorruptPart for the first of `parts` whose bytes are not a whole part (each is read
    whole: for after a read has failed), naming it and how to get past it: for a stage's manifest
    (`<stage>/manifest/part-*.parquet`, beside `<stage>/metrics.json`), running that stage again."""
    for part in parts:
        problem = part_problem(io.read_bytes(part))
        if problem is None:
            continue
        folder = part.rstrip("/").rsplit("/", 1)[0]
        metrics = io.join(folder.rsplit("/", 1)[0], "metrics.json")
        if io.exists(metrics):
            fix = (f"move it aside (into {folder}/_corrupt/), delete {metrics} if that stage is done, and run "
                   "the stage again: it writes the part again")
        else:
            fix = "replace it with a whole copy, or remove it"
        raise CorruptPart(f"{part}: corrupt Parquet part ({problem}); {fix}")


def read_part(location: str, columns: Optional[list[str]] = None) -> pa.Table:
    """One Parquet part (all its columns, or `columns`), read again after a transient error; its row
    count is checked against its footer. CorruptPart when its bytes are not a whole part."""
    fs, path = io.filesystem(location)

    def read() -> pa.Table:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            table = parquet.read(columns=columns)
            if table.num_rows != parquet.metadata.num_rows:
                raise ValueError(f"{table.num_rows} rows read, its footer counts {parquet.metadata.num_rows}")
            return table

    try:
        return io.retrying(f"read {location}", read)
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        problem = part_problem(io.read_bytes(location))  # what its bytes say, not what one read met
        if problem is None:
            raise
        raise CorruptPart(f"{location}: corrupt Parquet part ({problem})") from None


def quarantine(location: str) -> str:
    """Move a (corrupt) part into `_corrupt/` of its folder, keeping its bytes (a copy, then the
    delete: object stores move no folders, and some no files); returns where it went."""
    folder, name = location.rstrip("/").rsplit("/", 1)
    target = io.join(folder, "_corrupt", name)
    if io.exists(target):
        target = io.join(folder, "_corrupt", f"{name}.{uuid.uuid4().hex[:8]}")
    io.write_bytes(target, io.read_bytes(location))
    fs, path = io.filesystem(location)
    fs.delete_file(path)
    return target


def claim_folder(directory: str, digest: str) -> bool:
    """Make `directory` hold the outputs of `digest` only: a folder written for another digest is
    emptied first. Returns whether parts of this digest were already there (a resumed run)."""
    marker = io.join(directory, "_digest.json")
    if io.exists(marker) and io.read_json(marker).get("digest") == digest:
        return True
    if io.exists(directory):
        fs, path = io.filesystem(directory)
        fs.delete_dir_contents(path)
    io.makedirs(directory)
    io.write_json(marker, {"digest": digest})
    return False
