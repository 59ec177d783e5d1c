"""An unreliable store (tests/faults.py): a write cut off mid-file, a rename that fails, reads and
listings that fail for a moment. Whole-file writes and reads are retried; a write that keeps failing
leaves no partial or visible target; a corrupt part is moved aside and its rows written again,
exactly once."""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pytest

from raysys.core import io
from raysys.core.schema import CorruptPart, list_parts, part_problem, read_manifest, to_table, write_part
from raysys.generation import synthesis
from tests.faults import FaultPlan, faulty_store

FAST = io.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(io, "RETRY", FAST)


def stored_files(directory) -> list[str]:
    """Every file under the local folder behind the store, relative to it."""
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, files in os.walk(directory) for f in files)


def rows(ids: list[str]) -> pa.Table:
    n = len(ids)
    return to_table({"sample_id": ids, "label": [0] * n, "class_name": ["c0"] * n, "split": ["train"] * n,
                     "origin": ["synthetic"] * n, "keep": [True] * n, "image": [os.urandom(2000) for _ in ids]})


def test_a_write_cut_off_mid_file_is_retried(tmp_path, capsys):
    plan = FaultPlan(fail_writes={1})
    with faulty_store(tmp_path, plan) as root:
        io.write_bytes(f"{root}/a/b.bin", b"x" * 1000)
        assert io.read_bytes(f"{root}/a/b.bin") == b"x" * 1000
    assert plan.writes == 2 and len(plan.injected) == 1
    assert stored_files(tmp_path) == ["store/a/b.bin"]  # the cut-off temporary file is gone
    assert "retry 1 of 2" in capsys.readouterr().out


def test_a_rename_that_fails_is_retried(tmp_path):
    plan = FaultPlan(fail_moves={1})
    with faulty_store(tmp_path, plan) as root:
        io.write_bytes(f"{root}/a.bin", b"new")
        assert io.read_bytes(f"{root}/a.bin") == b"new"
    assert plan.moves == 2 and plan.writes == 2
    assert stored_files(tmp_path) == ["store/a.bin"]


@pytest.mark.parametrize("fault", ["write", "move"])
def test_a_write_that_keeps_failing_leaves_the_old_file_whole(tmp_path, fault):
    plan = FaultPlan()
    with faulty_store(tmp_path, plan) as root:
        io.write_bytes(f"{root}/a.bin", b"old")
        io.write_bytes(f"{root}/b/c.bin", b"old")
        if fault == "write":
            plan.fail_writes = set(range(1, 100))
        else:
            plan.fail_moves = set(range(1, 100))
        for target in (f"{root}/a.bin", f"{root}/new.bin"):
            with pytest.raises(OSError, match="injected"):
                io.write_bytes(target, b"n" * 100)
        assert io.read_bytes(f"{root}/a.bin") == b"old"
        assert not io.exists(f"{root}/new.bin")
    assert len(plan.injected) == 2 * FAST.attempts  # every try of both writes failed, none more
    assert stored_files(tmp_path) == ["store/a.bin", "store/b/c.bin"]  # no partial or temporary file


def test_a_full_disk_is_not_retried_and_leaves_the_old_file_whole(tmp_path):
    plan = FaultPlan(write_errno=errno.ENOSPC)
    with faulty_store(tmp_path, plan) as root:
        io.write_bytes(f"{root}/a.bin", b"old")
        plan.fail_writes = {2, 3}
        with pytest.raises(OSError, match="No space left on device"):
            io.write_bytes(f"{root}/a.bin", b"n" * 100)
        assert io.read_bytes(f"{root}/a.bin") == b"old"
    assert plan.writes == 2 and len(plan.injected) == 1  # one try: a retry would only fill it again
    assert stored_files(tmp_path) == ["store/a.bin"]


def test_transient_reads_and_listings_are_retried_and_missing_files_are_not(tmp_path, capsys):
    plan = FaultPlan()
    with faulty_store(tmp_path, plan) as root:
        io.write_bytes(f"{root}/d/a.bin", b"abc")
        plan.failing_reads, plan.reads = 2, 0
        assert io.read_bytes(f"{root}/d/a.bin") == b"abc"
        assert plan.reads == 3
        plan.failing_lists, plan.lists = 2, 0
        assert io.exists(f"{root}/d/a.bin")
        assert plan.lists == 3
        plan.failing_lists, plan.lists = 2, 0
        write_part(rows(["x"]), f"{root}/m", "part-00000.parquet")
        plan.failing_lists, plan.lists = 2, 0
        assert [p.rsplit("/", 1)[1] for p in list_parts(f"{root}/m")] == ["part-00000.parquet"]

        plan.failing_reads, plan.reads = 0, 0
        with pytest.raises(FileNotFoundError):
            io.read_bytes(f"{root}/d/missing.bin")
        assert plan.reads == 1  # not found is not transient: one try

        plan.failing_reads, plan.reads = 100, 0
        with pytest.raises(OSError, match="injected"):
            io.read_bytes(f"{root}/d/a.bin")
        assert plan.reads == FAST.attempts
    assert capsys.readouterr().out.count("[io] read ") == 2 + FAST.attempts - 1


def test_parquet_reads_of_the_data_plane_are_retried(tmp_path):
    """prepare's selection rows, the training stream's index and a source's row group are read
    again after a transient error."""
    from raysys.data.ingest import selection_rows, write_selection
    from raysys.data.sources import _row_group, _row_group_starts
    from raysys.data.stream import index_rows

    plan = FaultPlan()
    with faulty_store(tmp_path, plan) as root:
        write_part(rows(["a", "b", "c"]), f"{root}/m", "part-00000.parquet")
        write_selection(pa.table({"path": ["p0", "p1", "p2"]}), f"{root}/selection.parquet", 2)
        reads = [
            lambda: selection_rows(f"{root}/selection.parquet", 1)["path"].to_pylist() == ["p2"],
            lambda: index_rows([f"{root}/m/part-00000.parquet"], ["sample_id"])["sample_id"].to_pylist() == ["a", "b", "c"],
            lambda: _row_group(f"{root}/m/part-00000.parquet", "sample_id", 0).to_pylist() == ["a", "b", "c"],
            lambda: _row_group_starts(f"{root}/m/part-00000.parquet").tolist() == [0, 3],
        ]
        for read in reads:
            plan.failing_reads, plan.reads = 2, 0
            assert read()
            assert plan.reads == 3


def test_part_problem_reads_the_footer_pages_and_row_count(tmp_path):
    good = tmp_path / "good.parquet"
    write_part(rows(["a", "b", "c"]), str(tmp_path), "good.parquet")
    data = good.read_bytes()
    assert part_problem(data) is None
    assert "magic bytes" in part_problem(data[: len(data) // 2])  # cut off: no footer
    garbled = data[:100] + bytes(b ^ 0xFF for b in data[100:4000]) + data[4000:]
    assert part_problem(garbled) is not None  # footer whole, a page does not decode


def test_a_manifest_with_a_corrupt_part_fails_with_one_line_naming_it(tmp_path):
    plan = FaultPlan()
    with faulty_store(tmp_path, plan) as root:
        folder = f"{root}/score/manifest"
        io.write_json(f"{root}/score/metrics.json", {"status": "done"})
        write_part(rows(["a", "b"]), folder, "part-00000.parquet")
        write_part(rows(["c"]), folder, "part-00001.parquet")
        plan.failing_reads, plan.reads = 2, 0  # transient: retried
        assert sorted(read_manifest(folder, columns=["sample_id"])["sample_id"].to_pylist()) == ["a", "b", "c"]
        path = tmp_path / "store/score/manifest/part-00001.parquet"
        path.write_bytes(path.read_bytes()[:-30])
        with pytest.raises(CorruptPart) as error:
            read_manifest(folder, columns=["sample_id"])
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{folder}/part-00001.parquet: corrupt Parquet part")
        assert f"delete {root}/score/metrics.json if that stage is done" in message
        io.write_bytes(f"{root}/own.parquet", path.read_bytes())  # a user's own manifest file: no stage to rerun
        with pytest.raises(CorruptPart, match=r"own.parquet: corrupt Parquet part .*; replace it with a whole copy"):
            read_manifest(f"{root}/own.parquet")


def synthesize_once(directory: str, planned: list[str]) -> bool:
    """What the synthesis stage does with a plan folder, without the diffusion: the planned ids not
    written are generated (in two batches cut differently, as a retry would), duplicates removed,
    and the written set compared with the planned set. Returns whether they are equal, each id once."""
    done = synthesis.written_ids(directory)
    todo = [sid for sid in planned if sid not in done]
    if todo:
        synthesis.write_part(rows(todo[:3]), directory)
        synthesis.write_part(rows(todo[1:]), directory)
    synthesis.remove_duplicates(directory)
    return synthesis.written_ids(directory) == {sid: 1 for sid in planned}


@pytest.mark.parametrize("corruption", ["truncated", "garbled"])
def test_a_corrupt_plan_part_is_moved_aside_and_regenerated_exactly_once(tmp_path, capsys, corruption):
    """A cut-off part (no footer) is found when a run starts and regenerated in that run; a part
    with a garbled page is found by the final check, which fails, and the rerun regenerates it.
    Every fault of the store is injected meanwhile."""
    planned = [f"s{i:02d}" for i in range(12)]
    plan = FaultPlan()
    with faulty_store(tmp_path, plan) as root:
        directory = f"{root}/synthesize/plan"
        parts = [synthesis.write_part(rows(planned[i:i + 4]), directory) for i in range(0, 12, 4)]
        name = parts[1].rsplit("/", 1)[1]
        local = tmp_path / "store/synthesize/plan" / name
        data = local.read_bytes()
        bad = data[: len(data) // 2] if corruption == "truncated" else data[:100] + b"\x00" * 3000 + data[3100:]
        local.write_bytes(bad)
        plan.fail_writes, plan.fail_moves = {plan.writes + 1}, {plan.moves + 2}
        plan.failing_reads, plan.reads, plan.failing_lists, plan.lists = 2, 0, 1, 0

        runs = [synthesize_once(directory, planned)]
        if not runs[-1]:
            assert sorted(synthesis.written_ids(directory)) == planned[:4] + planned[8:]  # its rows: not written
            runs.append(synthesize_once(directory, planned))
        assert runs == ([True] if corruption == "truncated" else [False, True])
        assert synthesis.written_ids(directory) == {sid: 1 for sid in planned}  # nothing missing, nothing twice
        assert sorted(synthesis.read_plan(directory)["sample_id"].to_pylist()) == planned
    assert (tmp_path / "store/synthesize/plan/_corrupt" / name).read_bytes() == bad  # kept, not deleted
    assert not local.exists()
    assert len(plan.injected) == 5  # a cut-off write, a failed rename, two failed reads, one failed listing
    out = capsys.readouterr().out
    assert out.count(f"{name}: corrupt Parquet part") == 1 and "moved to" in out
    assert not [f for f in stored_files(tmp_path) if ".tmp-" in f]
