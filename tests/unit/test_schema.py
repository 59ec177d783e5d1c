import os

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from raysys.core.schema import MANIFEST_SCHEMA, read_manifest, sample_id, to_table, write_manifest


def _rows(n):
    return {
        "sample_id": [sample_id("real", f"p{i}") for i in range(n)],
        "image": [b"\x89PNG" + bytes([i]) for i in range(n)],
        "label": list(range(n)),
        "class_name": [f"c{i}" for i in range(n)],
        "split": ["train"] * n,
        "origin": ["real"] * n,
        "difficulty": [0.1 * i for i in range(n)],
    }


class _FailingFilesystem:
    """A pyarrow filesystem whose writes stop half way through the bytes ("write") or whose
    rename fails ("rename"); everything else is the wrapped filesystem's."""

    def __init__(self, fs, fault: str):
        self.fs, self.fault = fs, fault

    def open_output_stream(self, path):
        stream = self.fs.open_output_stream(path)
        return _HalfWrite(stream) if self.fault == "write" else stream

    def move(self, src, dest):
        if self.fault == "rename":
            raise OSError("injected: the rename failed")
        self.fs.move(src, dest)

    def __getattr__(self, name):
        return getattr(self.fs, name)


class _HalfWrite:
    """An output stream that writes the first half of what it is given, then fails (a full disk)."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def write(self, data):
        self.stream.write(data[: len(data) // 2])
        raise OSError("injected: no space left half way through the file")


@pytest.mark.parametrize("fault", ["write", "rename"])
def test_write_is_atomic_when_the_write_or_the_rename_fails(tmp_path, monkeypatch, fault):
    """A write that fails half way through, or at the rename, leaves the old complete file (or
    none) in place and no temporary file beside it."""
    from raysys.core import io

    folder = tmp_path / "m"
    path = str(folder / "manifest.parquet")
    write_manifest(to_table(_rows(5)), path)
    old = (folder / "manifest.parquet").read_bytes()

    local = io.filesystem
    monkeypatch.setattr(io, "RETRY", io.RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.001))  # no 7.5 s of backoff
    monkeypatch.setattr(io, "filesystem", lambda location: (_FailingFilesystem(local(location)[0], fault),
                                                            local(location)[1]))
    with pytest.raises(OSError, match="injected"):
        write_manifest(to_table(_rows(2)), path)  # over an existing file
    with pytest.raises(OSError, match="injected"):
        write_manifest(to_table(_rows(2)), str(folder / "new.parquet"))  # a file that did not exist
    monkeypatch.undo()

    assert os.listdir(folder) == ["manifest.parquet"]
    assert (folder / "manifest.parquet").read_bytes() == old
    assert read_manifest(path)["label"].to_pylist() == [0, 1, 2, 3, 4]


def test_manifest_is_readable_by_pandas_and_duckdb(tmp_path):
    path = str(tmp_path / "m" / "manifest.parquet")
    write_manifest(to_table(_rows(5)), path)
    assert os.listdir(tmp_path / "m") == ["manifest.parquet"]  # no temporary file left behind
    table = read_manifest(path)
    assert table.schema == MANIFEST_SCHEMA and len(table) == 5
    df = pd.read_parquet(path)
    assert list(df["label"]) == [0, 1, 2, 3, 4]
    assert df["prompt"].isna().all()
    n, mean = duckdb.sql(f"SELECT count(*), avg(difficulty) FROM '{path}'").fetchall()[0]
    assert n == 5 and mean == pytest.approx(0.2, abs=1e-6)


def test_rewrite_replaces_whole_file(tmp_path):
    path = str(tmp_path / "manifest.parquet")
    write_manifest(to_table(_rows(5)), path)
    write_manifest(to_table(_rows(2)), path)
    assert len(read_manifest(path)) == 2


def test_schema_refuses_unknown_columns_and_null_required():
    with pytest.raises(ValueError, match="not in the manifest schema"):
        to_table({**_rows(1), "colour": ["red"]})
    rows = _rows(2)
    rows["label"] = [1, None]
    with pytest.raises((ValueError, pa.ArrowInvalid)):
        to_table(rows)


def test_sample_id_is_stable_and_distinct():
    r"""Ids are pinned: the same on every machine, run and PYTHONHASHSEED (a salted hash() would
    change them from one process to the next). The values are SHA-256 of the parts joined by
    0x1f, e.g. `printf 'real\x1fa/b.png' | sha256sum | cut -c1-20`."""
    assert sample_id("real", "a/b.png") == "07df63e87bf0b2bb2134"
    assert sample_id("real", "a/c.png") == "96bab68d82a7c46141eb"
    assert sample_id("x") == "2d711642b726b0440162"
    assert sample_id("synthetic", "plan", 3, 0.5) == "e7ef44611b233aa0e836"


def test_a_folder_of_parts_reads_as_one_manifest(tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from raysys.core.schema import claim_folder, list_parts, write_part

    folder = str(tmp_path / "manifest")
    assert claim_folder(folder, "digest-a") is False
    write_part(to_table(_rows(5)), folder, "part-00000.parquet")
    rows = _rows(3)
    rows["split"] = ["test"] * 3
    write_part(to_table(rows), folder, "part-00001.parquet")
    (tmp_path / "manifest" / "part-00002.parquet.tmp-1234").write_bytes(b"half a file")  # not a part
    assert len(list_parts(folder)) == 2
    table = read_manifest(folder)
    assert table.schema == MANIFEST_SCHEMA and len(table) == 8
    test = read_manifest(folder, columns=["sample_id", "label"], where=pc.field("split") == "test")
    assert test.column_names == ["sample_id", "label"] and test["label"].to_pylist() == [0, 1, 2]
    # an older manifest without the uri and domain columns: they read as nulls
    old = to_table(_rows(2)).drop_columns(["uri", "domain"])
    pq.write_table(old, str(tmp_path / "old.parquet"))
    assert read_manifest(str(tmp_path / "old.parquet"), columns=["uri", "label"])["uri"].null_count == 2
    # the same digest keeps the parts (a resumed run); another empties the folder
    assert claim_folder(folder, "digest-a") is True and len(list_parts(folder)) == 2
    assert claim_folder(folder, "digest-b") is False and list_parts(folder) == []


def test_row_groups_hold_about_row_group_bytes_of_images(tmp_path):
    """A reader that wants one image reads its row group: large images get small groups, tiny
    images (or rows that only point at files) one group per part."""
    import numpy as np
    import pyarrow.parquet as pq

    from raysys.core.schema import ROW_GROUP_BYTES
    from raysys.data.stream import RowGroupCache, read_images

    rng = np.random.default_rng(0)
    big = {**_rows(40), "image": [rng.bytes(ROW_GROUP_BYTES // 8) for _ in range(40)]}  # 8 images per group
    path = str(tmp_path / "big.parquet")
    write_manifest(to_table(big), path)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 5 and {meta.row_group(g).num_rows for g in range(5)} == {8}
    cache = RowGroupCache()
    assert read_images([path], np.zeros(2, np.int64), np.array([33, 35]), cache) == [big["image"][33], big["image"][35]]
    assert list(cache.groups) == [(0, 4)] and cache.size <= ROW_GROUP_BYTES + 1024  # one group read, not the part

    small_path, uri_path = str(tmp_path / "small.parquet"), str(tmp_path / "uri.parquet")
    write_manifest(to_table(_rows(40)), small_path)
    write_manifest(to_table({**_rows(40), "image": [None] * 40, "uri": [f"/x/{i}.png" for i in range(40)]}), uri_path)
    assert pq.ParquetFile(small_path).metadata.num_row_groups == 1
    assert pq.ParquetFile(uri_path).metadata.num_row_groups == 1
