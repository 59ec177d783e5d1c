"""Export manifest rows to an image folder that any tool reads: OUT/<class folder>/<sample_id>.<ext>
plus OUT/labels.csv (file, label, class_name, origin, difficulty, requested_difficulty, guidance,
prompt, seed). torchvision's ImageFolder and most training scripts take the folder as it is.

Nothing is written outside OUT: a `sample_id` that is not a plain file name (empty, absolute, with
a path separator, `..` or a control character) is refused, and so is any path that resolves
outside OUT (a class folder that is a link elsewhere). Class folders keep a class's name where it
is a safe folder name (unicode letters included), else a readable form of it plus a short digest
of the name, so distinct classes never share a folder and a class always gets the same folder.
labels.csv is written under a temporary name of its own, then renamed into place.

A synthesis plan's folder (`<output>/<plan>`) holds one folder per version of the plan, and
latest.json naming the version the last synthesize run completed: such a folder is read through
that pointer.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
from collections import Counter
from typing import Iterable

import pyarrow.compute as pc
from tqdm import tqdm

from raysys.core import io
from raysys.core.schema import manifest_files, read_manifest
from raysys.data.images import image_format

CSV_COLUMNS = ("file", "sample_id", "label", "class_name", "origin", "difficulty", "requested_difficulty",
               "guidance", "prompt", "seed")
FOLDER_CHARS = 64
"""The most characters of a class name a folder keeps (longer names are cut, a digest added)."""


def image_extension(data: bytes) -> str:
    return {"png": "png", "jpeg": "jpg", "webp": "webp"}.get(image_format(data), "bin")


LATEST = "latest.json"
"""In a synthesis plan's folder: {"version": <the folder of the version last completed>}."""


def latest_version(folder: str) -> str | None:
    """The version folder that `folder`/latest.json names, or None where there is no latest.json."""
    pointer = io.join(folder, LATEST)
    if not io.exists(pointer):
        return None
    version = io.read_json(pointer).get("version")
    if not isinstance(version, str) or not io.FOLDER_NAME.match(version):
        raise ValueError(f"{pointer}: 'version' must name a folder beside it (letters, digits, - and _), got {version!r}")
    return io.join(folder, version)


def source_files(source: str) -> list[str]:
    """The Parquet files of a manifest file or folder of parts (a synthesis plan's version, prepare's,
    score's), or, for a synthesis plan's folder (one with latest.json), of the version it names."""
    version = None if source.endswith(".parquet") else latest_version(source)
    if version is not None:
        print(f"[export] {source}: the version its latest.json names, {version}")
    files = manifest_files(version or source)
    if not files:
        raise FileNotFoundError(f"{version or source}: a folder without part-*.parquet files")
    return files


def id_problem(sample_id: str | None) -> str | None:
    """Why `sample_id` cannot be a file name, or None when it can."""
    if not sample_id:
        return "it is empty"
    if os.path.isabs(sample_id) or "/" in sample_id or "\\" in sample_id:
        return "it is a path, not a file name"
    if ".." in sample_id:
        return "it holds '..'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in sample_id):
        return "it holds a control character"
    return None


def check_sample_id(sample_id: str | None, location: str) -> str:
    """`sample_id` as it is, if it is a plain file name; a ValueError naming it and `location` otherwise."""
    problem = id_problem(sample_id)
    if problem:
        raise ValueError(f"{location}: sample_id {sample_id!r} cannot name an exported file ({problem}); a valid "
                         "id is a plain file name without '/', '\\', '..' or control characters, "
                         "e.g. 3f9a0c27d1b84e6a5c02")
    return sample_id


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _readable(name: str) -> str:
    """`name` as a folder name: letters (any script), digits, '_', '-' and '.', without leading dots."""
    return re.sub(r"[^\w.-]+", "_", name).lstrip("._").rstrip("_")[:FOLDER_CHARS] or "class"


def class_folders(names: Iterable[str]) -> dict[str, str]:
    """Class name -> its folder: the name itself where it is a safe folder name that no other class
    shares (ignoring case, as some filesystems do), else its readable form plus a digest of the name."""
    readable = {name: _readable(name) for name in set(names)}
    shared = Counter(folder.casefold() for folder in readable.values())
    folders = {name: folder if folder == name and shared[folder.casefold()] == 1 else f"{folder}-{_digest(name)}"
               for name, folder in readable.items()}
    if len({f.casefold() for f in folders.values()}) != len(folders):  # only a digest collision gets here
        raise ValueError(f"class names {sorted(folders)} give clashing folder names {sorted(folders.values())}")
    return folders


def inside(out_dir: str, rel: str) -> str:
    """`out_dir`/`rel`, if it resolves (links followed) to a place inside `out_dir`; a ValueError otherwise."""
    root = os.path.realpath(out_dir)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"export: {rel!r} resolves to {path}, outside the output folder {root}")
    return path


def checked_folders(files: list[str]) -> dict[str, str]:
    """Class name -> folder for the rows of `files`, after checking every row's sample_id: a bad id
    stops the export before anything is written."""
    names: set[str] = set()
    for location in files:
        table = read_manifest(location, columns=["sample_id", "class_name"])
        for sample_id in table["sample_id"].to_pylist():
            check_sample_id(sample_id, location)
        names.update(table["class_name"].to_pylist())
    return class_folders(names)


def export_images(source: str, out_dir: str, kept_only: bool = True, split: str | None = None) -> int:
    """Write every image row of `source` under `out_dir`, one part at a time; returns the number written."""
    files = source_files(source)
    folders = checked_folders(files)
    os.makedirs(out_dir, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out_dir, prefix="labels.csv.", suffix=".tmp")
    written = 0
    try:
        with os.fdopen(handle, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            bar = tqdm(desc="[export]", unit="img", mininterval=2.0)
            for location in files:
                table = read_manifest(location)
                if kept_only:
                    table = table.filter(pc.fill_null(table["keep"], True))
                if split:
                    table = table.filter(pc.equal(table["split"], split))
                table = table.filter(pc.is_valid(table["image"]))
                images = table["image"]
                for i, row in enumerate(table.drop_columns(["image"]).to_pylist()):
                    data = images[i].as_py()
                    rel = f"{folders[row['class_name']]}/{row['sample_id']}.{image_extension(data)}"
                    io.write_bytes(inside(out_dir, rel), data)
                    writer.writerow({**row, "file": rel})
                    bar.update(1)
                written += len(table)
            bar.close()
        os.chmod(tmp, 0o644)  # mkstemp's file is the owner's alone; labels.csv is read like the images
        os.replace(tmp, os.path.join(out_dir, "labels.csv"))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return written
