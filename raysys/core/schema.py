"""The manifest: one pyarrow schema shared by every stage (one row per image, real or synthetic).

Manifests are Parquet files written atomically. pandas (`pd.read_parquet`) and DuckDB
(`SELECT * FROM 'manifest.parquet'`) read them as they are.
"""

from __future__ import annotations

import hashlib
import io as _io

import pyarrow as pa
import pyarrow.parquet as pq

from raysys.core import io

SPLITS = ("train", "val", "test", "guidance_val", "pretrain")
ORIGINS = ("real", "synthetic")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # hash of source path / plan row
        pa.field("image", pa.binary()),  # encoded PNG/JPEG/WebP bytes
        pa.field("path", pa.string()),  # where the image came from (file, builtin:<name>#<index>)
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # one of SPLITS
        pa.field("origin", pa.string(), nullable=False),  # real | synthetic
        pa.field("difficulty", pa.float32()),  # measured 1 - p(y|x)
        pa.field("p_true", pa.float32()),  # p(y|x) of the true class
        pa.field("loss", pa.float32()),  # cross-entropy of the true class
        pa.field("pred", pa.int32()),  # argmax class
        pa.field("entropy", pa.float32()),  # entropy of p(.|x), nats
        pa.field("score_mode", pa.string()),  # oof-k<folds>-fold<i> | full
        pa.field("prompt", pa.string()),  # text the generator saw
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


def write_manifest(table: pa.Table, location: str) -> None:
    """Write a manifest Parquet file atomically (temporary file, then rename)."""
    table = conform(table)
    buf = _io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    io.write_bytes(location, buf.getvalue())


def read_manifest(location: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = io.filesystem(location)
    table = pq.read_table(path, filesystem=fs, columns=columns)
    return table if columns else conform(table)


def list_parts(directory: str) -> list[str]:
    """Locations of the complete parts (part-*.parquet) of a sharded manifest folder, in name order
    (temporary files are not parts)."""
    import pyarrow.fs as pafs

    fs, path = io.filesystem(directory)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    return [io.join(directory, name) for name in names]
