"""A fault-injecting pyarrow filesystem for tests: a real filesystem (a local folder) behind a
`PyFileSystem` whose handler fails on purpose, by a small plan.

    plan = FaultPlan(fail_writes={1}, fail_moves={2}, failing_reads=2)
    with faulty_store(tmp_path, plan) as root:      # root: "faulty://store"
        io.write_bytes(f"{root}/a/b.bin", data)     # raysys.core.io routes faulty:// here

- `fail_writes`: the n-th output stream opened (1-based, counted over the store's life) writes
  the first half of what it is given, then fails: a write cut off mid-file.
- `fail_moves`: the n-th move (rename) fails and moves nothing.
- `failing_reads`: the first k opens for reading fail, as an object store's 503 would.
- `failing_lists`: the first k file-info calls (exists, listing) fail the same way.

Every injected error is an OSError (transient by raysys.core.io.transient); `plan` counts the
calls it has seen (`writes`, `moves`, `reads`, `lists`) and the faults it injected (`injected`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from raysys.core import io


@dataclass
class FaultPlan:
    """Which calls of a `FaultyHandler` fail."""

    fail_writes: set[int] = field(default_factory=set)
    """Output streams (1-based, in opening order) that fail after half their bytes."""
    fail_moves: set[int] = field(default_factory=set)
    """Moves (1-based) that fail without moving."""
    failing_reads: int = 0
    """How many of the first opens for reading fail."""
    failing_lists: int = 0
    """How many of the first file-info calls (a stat or a listing) fail."""
    write_errno: int | None = None
    """The errno of a cut-off write's error (None: a reset connection; errno.ENOSPC: a full disk)."""
    writes: int = 0
    moves: int = 0
    reads: int = 0
    lists: int = 0
    injected: list[str] = field(default_factory=list)
    """One entry per injected fault: what failed, and which call it was."""


class _CutOffWriter:
    """A writable file that keeps the first half of its first write, then fails."""

    def __init__(self, target, plan: FaultPlan, path: str):
        self.target, self.plan, self.path, self.closed = target, plan, path, False

    def write(self, data) -> int:
        data = bytes(data)
        self.target.write(data[: len(data) // 2])
        self.target.flush()
        self.plan.injected.append(f"write {self.plan.writes} cut off: {self.path}")
        if self.plan.write_errno is not None:
            raise OSError(self.plan.write_errno, f"injected: {os.strerror(self.plan.write_errno)}")
        raise OSError(f"injected: connection reset after {len(data) // 2} of {len(data)} bytes")

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self.target.close()
        self.closed = True

    def writable(self) -> bool:
        return True


class FaultyHandler(pafs.FileSystemHandler):
    """Every call goes to `inner` (paths relative to it), except those `plan` makes fail."""

    def __init__(self, inner: pafs.FileSystem, plan: FaultPlan):
        self.inner, self.plan = inner, plan

    def _list_fault(self, what: str) -> None:
        self.plan.lists += 1
        if self.plan.lists <= self.plan.failing_lists:
            self.plan.injected.append(f"{what} {self.plan.lists}")
            raise OSError("injected: 503 Slow Down (file info)")

    def _read_fault(self, path: str) -> None:
        self.plan.reads += 1
        if self.plan.reads <= self.plan.failing_reads:
            self.plan.injected.append(f"read {self.plan.reads}: {path}")
            raise OSError(f"injected: 503 Service Unavailable reading {path}")

    def get_type_name(self) -> str:
        return "faulty"

    def normalize_path(self, path: str) -> str:
        return path

    def equals(self, other) -> bool:
        return self is other

    def get_file_info(self, paths):
        self._list_fault("stat")
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self._list_fault("listing")
        return self.inner.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.inner.delete_dir_contents("", accept_root_dir=True)

    def delete_file(self, path):
        self.inner.delete_file(path)

    def move(self, src, dest):
        self.plan.moves += 1
        if self.plan.moves in self.plan.fail_moves:
            self.plan.injected.append(f"move {self.plan.moves}: {src} -> {dest}")
            raise OSError(f"injected: rename {src} -> {dest} failed")
        self.inner.move(src, dest)

    def copy_file(self, src, dest):
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path):
        self._read_fault(path)
        return self.inner.open_input_stream(path)

    def open_input_file(self, path):
        self._read_fault(path)
        return self.inner.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.plan.writes += 1
        out = self.inner.open_output_stream(path)
        if self.plan.writes in self.plan.fail_writes:
            return pa.PythonFile(_CutOffWriter(out, self.plan, path), mode="w")
        return out

    def open_append_stream(self, path, metadata):
        return self.inner.open_append_stream(path)


@contextlib.contextmanager
def faulty_store(directory, plan: FaultPlan, scheme: str = "faulty") -> Iterator[str]:
    """`<scheme>://store`, served from the local `directory` through a FaultyHandler with `plan`,
    for raysys.core.io in this process (io.register_filesystem) while the block runs."""
    inner = pafs.SubTreeFileSystem(str(directory), pafs.LocalFileSystem())
    fs = pafs.PyFileSystem(FaultyHandler(inner, plan))
    io.register_filesystem(scheme, lambda location: (fs, location.split("://", 1)[1]))
    try:
        yield f"{scheme}://store"
    finally:
        io.register_filesystem(scheme, None)
