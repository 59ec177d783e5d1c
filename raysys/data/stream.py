"""Training input that never holds a split in memory: rows without their images, and the images
of one block of rows read, decoded and augmented when a loop asks for them (plain numpy, no Ray).

- `index_rows`: the rows of manifest or plan parts, without images: the columns asked for plus
  `file` (an index into the files list) and `row` (the row in that file).
- `read_images`: the encoded bytes of a block of such rows, each Parquet row group read once
  (an image stored by reference is read from its `uri`); a `Decode` keeps the last row groups it
  read, up to `CACHE_BYTES` whatever the data's size, so small data is read once per run.
- `Decode`: the callable a loop streams with. It takes a block (columns `file`, `row`, `label`
  and, when augmenting, `seed`) and returns uint8 images (N, C, H, W) and int64 labels. Every
  random draw of a row comes from that row's `seed` alone, so the images do not depend on which
  process decodes which block, or on what ran before: a resumed run sees what the uninterrupted
  one saw.
- `stream_refs` / `row_seeds`: a loop's rows in the order it trains on them, with their seeds.

The loop gets its batches from `TrainContext.batches(refs, decode, batch_size)`: on Ray Train
(raysys.ray.train) from Ray Data tasks (`train.input_tasks` > 0) or from `decoded_batches` in
the worker with a decode-ahead thread (0); in the calling process itself on a `LocalContext`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io
from raysys.data.images import decode_batch

REF_COLUMNS = ("file", "row", "label")
"""What a block handed to `Decode` holds (plus `seed` when it augments)."""


def index_rows(files: Sequence[str], columns: Sequence[str], where=None, first_file: int = 0) -> pa.Table:
    """The rows of the Parquet files `files` that match `where` (an expression over `columns`),
    without images: `columns` plus `file` (first_file + the file's position in `files`) and
    `row` (the row in that file).
    Columns a file lacks come back as nulls (of the manifest schema's type)."""
    import pyarrow.parquet as pq

    from raysys.core.schema import MANIFEST_SCHEMA

    tables = []
    for i, location in enumerate(files):
        fs, path = io.filesystem(location)

        def read(path=path, fs=fs) -> pa.Table:
            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                present = set(pf.schema_arrow.names)
                return pf.read(columns=[c for c in columns if c in present])

        table = io.retrying(f"read {location}", read)
        for name in columns:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(len(table), MANIFEST_SCHEMA.field(name).type))
        table = table.select(list(columns))
        table = table.append_column("file", pa.array(np.full(len(table), first_file + i, np.int32)))
        table = table.append_column("row", pa.array(np.arange(len(table), dtype=np.int64)))
        if where is not None:
            table = table.filter(where)
        tables.append(table)
    if not tables:
        schema = pa.schema([MANIFEST_SCHEMA.field(c) for c in columns] + [("file", pa.int32()), ("row", pa.int64())])
        return schema.empty_table()
    return pa.concat_tables(tables).combine_chunks()


CACHE_BYTES = 32 * 2**20
"""Encoded image bytes a `Decode` keeps of the row groups it read (per process, whatever the data's size)."""


class RowGroupCache:
    """The image (and uri) columns of the row groups read last, up to `limit` bytes, oldest out first."""

    def __init__(self, limit: int = CACHE_BYTES):
        self.limit, self.size = limit, 0
        self.groups: "OrderedDict[tuple[int, int], tuple[pa.Array, pa.Array, int]]" = OrderedDict()
        self.starts: dict[int, tuple[np.ndarray, list[str]]] = {}

    def get(self, key):
        if key in self.groups:
            self.groups.move_to_end(key)
            return self.groups[key][:2]
        return None

    def put(self, key, images: pa.Array, uris: pa.Array) -> None:
        nbytes = images.nbytes + uris.nbytes
        self.groups[key] = (images, uris, nbytes)
        self.size += nbytes
        while self.size > self.limit and len(self.groups) > 1:
            _, (_, _, freed) = self.groups.popitem(last=False)
            self.size -= freed


def read_images(files: Sequence[str], file_index: np.ndarray, row_index: np.ndarray,
                cache: Optional[RowGroupCache] = None) -> list[bytes]:
    """The encoded bytes of rows (file_index[i], row_index[i]), in that order: each file opened and
    each of its row groups read once however many of the rows lie in it (and not again while
    `cache` still holds it)."""
    import pyarrow.parquet as pq

    cache = cache or RowGroupCache(0)
    file_index, row_index = np.asarray(file_index), np.asarray(row_index)
    out: list[Optional[bytes]] = [None] * len(file_index)
    for f in np.unique(file_index):
        f = int(f)
        which = np.flatnonzero(file_index == f)
        location = files[f]
        handle = pf = None
        if f not in cache.starts:
            fs, path = io.filesystem(location)
            handle = fs.open_input_file(path)
            pf = pq.ParquetFile(handle)
            meta = pf.metadata
            cache.starts[f] = (np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]),
                               [c for c in ("image", "uri") if c in pf.schema_arrow.names])
        starts, columns = cache.starts[f]
        groups = np.searchsorted(starts, row_index[which], side="right") - 1
        try:
            for g in np.unique(groups):
                g = int(g)
                got = cache.get((f, g))
                if got is None:
                    if pf is None:
                        fs, path = io.filesystem(location)
                        handle = fs.open_input_file(path)
                        pf = pq.ParquetFile(handle)
                    group = pf.read_row_group(g, columns=columns)
                    got = (group["image"].combine_chunks() if "image" in columns else pa.nulls(len(group), pa.binary()),
                           group["uri"].combine_chunks() if "uri" in columns else pa.nulls(len(group), pa.string()))
                    cache.put((f, g), *got)
                images, uris = got
                for i in which[groups == g]:
                    local = int(row_index[i] - starts[g])
                    data = images[local].as_py()
                    if data is None:
                        uri = uris[local].as_py()
                        if not uri:
                            raise ValueError(f"{location} row {row_index[i]}: no image bytes and no uri")
                        data = io.read_bytes(uri)
                    out[i] = data
        finally:
            if handle is not None:
                handle.close()
    return out  # type: ignore[return-value]


@dataclass
class Decode:
    """Block of rows -> {"image": uint8 (N, C, H, W), "label": int64 (N,)}, and "weight" float32 (N,)
    when the rows carry one: read, decode, resize, and augment with the names in `augment` (each
    row by its own `seed`)."""

    files: list[str]
    """The Parquet files the blocks' `file` column indexes."""
    size: int
    """Square side the images are resized to."""
    channels: int
    """1 (grey) or 3 (RGB)."""
    augment: tuple[str, ...] = field(default_factory=tuple)
    """Augmentation names (raysys.data.augment), applied in order; () for evaluation."""
    cache_bytes: int = CACHE_BYTES
    """Encoded bytes of the last row groups read kept for the next blocks (this process's copy only)."""

    def __post_init__(self) -> None:
        self._cache = RowGroupCache(self.cache_bytes)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}  # a copy sent to a task starts empty

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = RowGroupCache(self.cache_bytes)

    def __call__(self, block: pa.Table) -> dict[str, np.ndarray]:
        file_index = block["file"].to_numpy()
        encoded = read_images(self.files, file_index, block["row"].to_numpy(), self._cache)
        images = decode_batch(encoded, self.size, self.channels)
        if self.augment:
            from raysys.data.augment import augment_batch

            images = augment_batch(images, self.augment, block["seed"].to_numpy())
        out = {"image": images, "label": block["label"].to_numpy().astype(np.int64)}
        if "weight" in block.column_names:
            out["weight"] = block["weight"].to_numpy().astype(np.float32)
        return out


def row_seeds(n: int, *parts: int) -> np.ndarray:
    """n augmentation seeds that depend only on `parts` (run seed, epoch, rank, ...) and position."""
    return np.random.default_rng([int(p) for p in parts]).integers(0, 2**62, size=n, dtype=np.int64)


def stream_refs(rows: pa.Table, indices: Optional[np.ndarray] = None, seeds: Optional[np.ndarray] = None,
                weights: Optional[np.ndarray] = None) -> pa.Table:
    """`rows` (all, or `indices` of them, in that order) cut to what `Decode` reads, with `seeds`
    and a loss `weight` per row (None: every row weighs 1)."""
    refs = rows.select(list(REF_COLUMNS))
    if indices is not None:
        refs = refs.take(pa.array(np.asarray(indices, dtype=np.int64)))
    if seeds is not None:
        refs = refs.append_column("seed", pa.array(seeds, pa.int64()))
    if weights is not None:
        refs = refs.append_column("weight", pa.array(np.asarray(weights, dtype=np.float32), pa.float32()))
    return refs


def decoded_batches(refs: pa.Table, decode: Decode, batch_size: int, prefetch: int = 0) -> Iterator[dict]:
    """The batches of `refs` decoded in this process, in order, as torch tensors; with `prefetch`
    > 0 a background thread decodes up to that many batches ahead of the consumer (PIL and
    pyarrow release the GIL while they decode and read)."""
    import queue
    import threading

    import torch

    def produce():
        for start in range(0, len(refs), batch_size):
            yield {k: torch.from_numpy(v) for k, v in decode(refs.slice(start, batch_size)).items()}

    if prefetch <= 0:
        yield from produce()
        return
    ahead: queue.Queue = queue.Queue(maxsize=prefetch)
    done, stop = object(), threading.Event()

    def run():
        try:
            for batch in produce():
                while not stop.is_set():
                    try:
                        ahead.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(done)
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer
            ahead.put(exc)

    worker = threading.Thread(target=run, daemon=True, name="decode-ahead")
    worker.start()
    try:
        while True:
            item = ahead.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def split_rows(rows: pa.Table, split: str) -> pa.Table:
    return rows.filter(pc.equal(rows["split"], split))
