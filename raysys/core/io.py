"""Output locations as URIs (a local path or any pyarrow filesystem) and atomic writes.

Every file raysys writes goes through `write_bytes`: the bytes land in a temporary file
beside the target, which is then renamed over it, so a reader never sees half a file and
a crash leaves the old file (or none) in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import pyarrow.fs as pafs

FOLDER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
"""What a name that becomes a folder (a plan, a variant, a sweep) may hold."""


def _is_uri(location: str) -> bool:
    return "://" in location


def resolve(location: str) -> str:
    """Absolute local path for a local location; URIs are returned unchanged."""
    if _is_uri(location):
        return location
    return os.path.abspath(os.path.expanduser(location))


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or URI."""
    if _is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), resolve(location)


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def write_bytes(location: str, data: bytes) -> None:
    """Write atomically: temporary file beside the target, then rename."""
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_json(location: str, obj: Any) -> None:
    write_text(location, json.dumps(obj, indent=2, sort_keys=False, default=float, allow_nan=False) + "\n")


def read_json(location: str) -> Any:
    return json.loads(read_text(location))


def copy_dir(local_dir: str, location: str) -> None:
    """Copy a local directory's files to `location` (local path or URI), each file atomically."""
    for dirpath, _, files in os.walk(local_dir):
        rel = os.path.relpath(dirpath, local_dir)
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            target = join(location, name) if rel == "." else join(location, rel, name)
            write_bytes(target, data)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local directory with the contents of `location` for the `with` block: itself if local, else
    a downloaded copy (a `raysys-*` temporary folder) that is removed when the block ends. Load what
    you need inside the block (an actor in its `__init__`)."""
    if not _is_uri(location):
        yield resolve(location)
        return
    fs, path = filesystem(location)
    dest = tempfile.mkdtemp(prefix="raysys-")
    try:
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)
