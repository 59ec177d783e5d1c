"""Source kind folder:<root>: an image folder, root/<class>/<image> or root/<split>/<class>/<image>,
local or behind a pyarrow filesystem URI."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raysys.core import io
from raysys.data.sources.base import LISTING_SCHEMA, DataError, Listing, rank_classes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _not_utf8(root: str) -> DataError:
    """The refusal for a local folder that holds a file or folder name that is not UTF-8 (Arrow
    strings, hence listings, manifests and sample ids, are UTF-8; such a name could be neither stored
    nor opened again through pyarrow): it names the first such entry, as its bytes."""
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in sorted(dirnames + filenames):
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                rel = os.path.relpath(os.path.join(dirpath, name), os.fsencode(root))
                shown = rel.decode("utf-8", "backslashreplace")
                return DataError(f"{root}: the name '{shown}' is not UTF-8; rename it (e.g. `convmv -r -f latin1 "
                                 f"-t utf8 --notest {root}`) or remove it, then run again")
    return DataError(f"{root}: a file or folder name is not UTF-8; rename it, then run again")


def _files_under(root: str) -> pa.Array:
    """Relative paths (with '/') of the image files anywhere under `root`, sorted (an Arrow array).
    A name that is not UTF-8 is refused (`_not_utf8`) before any image is read."""
    fs, path = io.filesystem(root)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise DataError(f"image folder not found: {root}")
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    try:  # every entry's path is read: a folder whose name is not UTF-8 is found here too
        files = pa.array([p for p, t in ((f.path, f.type) for f in infos) if t == pafs.FileType.File], pa.string())
    except UnicodeDecodeError:
        raise _not_utf8(root) from None
    del infos
    files = pc.utf8_slice_codeunits(files, len(base))
    suffixes = "|".join(s.lstrip(".") for s in sorted(IMAGE_SUFFIXES))
    files = files.filter(pc.match_substring_regex(pc.utf8_lower(files), rf"\.({suffixes})$"))
    return files.take(pc.array_sort_indices(files))


def _subfolders(root: str) -> list[str]:
    fs, path = io.filesystem(root)
    return sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(path, recursive=False))
                  if f.type == pafs.FileType.Directory)


def list_folder(root: str, d, class_names: list[str] | None) -> Listing:
    """root/<class>/<image>, or root/<split>/<class>/<image> when root has a `train` folder of class folders.

    A local file or folder whose name is not UTF-8 (e.g. Latin-1 bytes) is refused before any image is
    read, naming it: it is not read under an escaped name, as its path could then be neither stored in
    the manifest's UTF-8 strings nor opened again through pyarrow (store: uri). Rename it."""
    root = io.resolve(root).rstrip("/")
    files = _files_under(root)
    top = _subfolders(root)
    if not top:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image> or root/<split>/<class>/<image>)")
    by_split = "train" in top and bool(_subfolders(io.join(root, "train")))
    depth = 3 if by_split else 2
    parts = pc.split_pattern(files, "/")
    keep = pc.equal(pc.list_value_length(parts), depth)
    kept, parts = files.filter(keep), parts.filter(keep)
    if len(kept) == 0:
        layout = "root/<split>/<class>/<image>" if by_split else "root/<class>/<image>"
        raise DataError(f"{root}: no image files laid out as {layout}")
    names = pc.list_element(parts, depth - 2)
    classes = pc.unique(names)
    classes = classes.take(pc.array_sort_indices(classes))
    if not by_split:  # every class folder must hold an image (an empty one is a mistake)
        empty = sorted(set(top) - set(classes.to_pylist()))
        if empty:
            raise DataError(f"{root}: class(es) {empty} have no image files")
    n = len(kept)
    table = pa.table({
        "path": kept, "uri": pc.binary_join_element_wise(root + "/", kept, ""), "ref": pa.nulls(n, pa.string()),
        "label": pc.index_in(names, classes).cast(pa.int32()), "class_name": names,
        "split": pc.list_element(parts, 0) if by_split else pa.array([""] * n, pa.string()),
        "domain": pa.nulls(n, pa.string()),
    }, schema=LISTING_SCHEMA)
    return rank_classes(Listing(table, classes.to_pylist()))
