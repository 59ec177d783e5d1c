"""Output locations as URIs (a local path or any pyarrow filesystem) and atomic writes.

Every file raysys writes goes through `write_bytes`: the bytes land in a temporary file
beside the target, which is then renamed over it, so a reader never sees half a file and
a crash leaves the old file (or none) in place.

**Retries.** An object store fails for a moment now and then (a 503, a reset connection). The
operations here that are safe to repeat retry such a *transient* error (see `transient`) with
exponential backoff, `RETRY` times in all, and print one line per retry: a whole-file write (a
fresh temporary file and the rename, which leaves the target whole or untouched), a read, and
`exists`/listing (`retrying` does it for a caller's own read). Deleting, and anything that
appends, is not retried here.

**Other filesystems in-process.** `register_filesystem("faulty", factory)` routes `faulty://...`
locations to `factory(location) -> (filesystem, path)` in this process only (tests use it for a
fault-injecting filesystem, tests/faults.py); every other URI goes to `pafs.FileSystem.from_uri`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import pyarrow.fs as pafs

FOLDER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
"""What a name that becomes a folder (a plan, a variant, a sweep) may hold."""


T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, an operation that is safe to repeat is retried."""

    attempts: int = 5
    """Tries in all (1: no retry)."""
    base_delay: float = 0.5
    """Seconds before the second try; each later wait doubles."""
    max_delay: float = 10.0
    """Longest wait between two tries, in seconds."""


RETRY = RetryPolicy()
"""The policy every retried operation here uses (tests set shorter delays)."""

_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_PERMANENT_MESSAGES = tuple(os.strerror(e) for e in sorted(_PERMANENT_ERRNOS))  # pyarrow may keep only the text


def transient(exc: BaseException) -> bool:
    """Whether an error may go away by itself: an OSError (pyarrow's filesystems raise OSError for
    a failed request, a reset connection, a timeout) other than a missing or existing file, a
    permission refused, a file/folder mix-up, a full disk, a quota exceeded or a read-only
    filesystem, which a retry would only repeat. A ValueError
    (pyarrow's ArrowInvalid: bytes that are not what they should be) is never transient. pyarrow
    reports some lasting errors as a plain OSError too (an object store's access denied, a Parquet
    page that does not decode): those are retried, and raised after the last try."""
    if not isinstance(exc, OSError) or isinstance(exc, _PERMANENT):
        return False
    return exc.errno not in _PERMANENT_ERRNOS and not any(m in str(exc) for m in _PERMANENT_MESSAGES)


def retrying(what: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """`fn()`, tried again after a transient error (with backoff, one printed line per retry), up to
    `policy.attempts` tries (default `RETRY`); other errors, and the last one, are raised. Only for
    an `fn` that is safe to repeat (a read, or a write that replaces a whole file)."""
    policy = policy or RETRY
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except OSError as exc:
            if not transient(exc) or attempt >= policy.attempts:
                raise
            delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
            print(f"[io] {what}: {type(exc).__name__}: {exc}; retry {attempt} of {policy.attempts - 1} in "
                  f"{delay:.3g} s", flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


_FILESYSTEMS: dict[str, Callable[[str], tuple[pafs.FileSystem, str]]] = {}


def register_filesystem(scheme: str, factory: Callable[[str], tuple[pafs.FileSystem, str]] | None) -> None:
    """Route `<scheme>://...` locations to `factory(location) -> (filesystem, path)` in this process
    (None: route them to pyarrow again). Tests use it for a filesystem of their own."""
    if factory is None:
        _FILESYSTEMS.pop(scheme, None)
    else:
        _FILESYSTEMS[scheme] = factory


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
        factory = _FILESYSTEMS.get(location.split("://", 1)[0])
        return factory(location) if factory else pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), resolve(location)


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return retrying(f"exists {location}", lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def makedirs(location: str) -> None:
    fs, path = filesystem(location)
    retrying(f"makedirs {location}", lambda: fs.create_dir(path, recursive=True))


def _write_once(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """One try of an atomic write: a fresh temporary file beside the target, renamed over it. A try
    that fails removes its temporary file where it can (a leftover `*.tmp-*` is never a part)."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # the try's own error is the one to see
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)


def write_bytes(location: str, data: bytes) -> None:
    """Write atomically: temporary file beside the target, then rename; the whole write is retried
    after a transient error (it replaces the whole file, so a retry is safe)."""
    fs, path = filesystem(location)
    retrying(f"write {location}", lambda: _write_once(fs, path, data))


def read_bytes(location: str) -> bytes:
    """The file's bytes; retried after a transient error."""
    fs, path = filesystem(location)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retrying(f"read {location}", read)


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
        retrying(f"download {location}", lambda: pafs.copy_files(  # overwrites: safe to repeat
            path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()))
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)
