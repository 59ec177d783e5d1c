"""Training augmentations by name (plain numpy / torch, no Ray).

Image augmentations run on CPU on uint8 batches (N, C, H, W) where the input is decoded (Ray Data
tasks on Ray Train): `augment_batch(images, names, seeds)` applies `names` in order, every random
draw of row i from `seeds[i]` alone, so a row comes out the same whoever decodes it and whatever
else is in its block.
  shift                 +-2 px in x and y, zero-filled (digits)
  random_resized_crop   torchvision's RandomResizedCrop: scale (0.08, 1), ratio (3/4, 4/3), back to H x W
  hflip                 a horizontal flip, with probability 0.5
  randaugment           torchvision's RandAugment (2 ops, magnitude 9)

Mixup and CutMix mix pairs of a batch, so they run in the train loop on the normalised batch:
`mix_batch` returns the mixed images and soft targets (label smoothing folded in), as timm's
`Mixup` does (partner: the batch reversed; with both on, one of the two per batch).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("shift", "random_resized_crop", "hflip", "randaugment")
"""The names `train.augment` lists."""

MAX_SHIFT = 2


def _shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, h, w = img.shape
    dy, dx = (int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2))
    out = np.zeros_like(img)
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
             ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop: 10 tries at a random area and aspect
    ratio, then the centre crop of the nearest allowed ratio (torchvision's rule)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _random_resized_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, h, w = img.shape
    top, left, ch, cw = crop_box(h, w, rng)
    crop = torch.from_numpy(np.ascontiguousarray(img[:, top:top + ch, left:left + cw])).float()[None]
    out = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8).numpy()


def _hflip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return img[:, :, ::-1].copy() if rng.random() < 0.5 else img


def _randaugment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """torchvision's RandAugment on one image, drawing from a torch RNG seeded from `rng` (the
    caller's global torch RNG is left as it was). A grey image is augmented as RGB and the first
    channel kept (the colour ops then act on equal channels, as on a grey photo)."""
    from torchvision.transforms import v2

    x = torch.from_numpy(np.ascontiguousarray(img))
    grey = x.shape[0] == 1
    if grey:
        x = x.expand(3, -1, -1).contiguous()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(0, 2**62)))
        out = v2.RandAugment(num_ops=2, magnitude=9)(x)
    return (out[:1] if grey else out).numpy()


_OPS = {"shift": _shift, "random_resized_crop": _random_resized_crop, "hflip": _hflip, "randaugment": _randaugment}


def augment_batch(images: np.ndarray, names: Sequence[str], seeds: np.ndarray) -> np.ndarray:
    """`names` applied in order to every row of uint8 `images` (N, C, H, W); row i draws from
    `seeds[i]` only. Returns a new array."""
    bad = [name for name in names if name not in _OPS]
    if bad:
        raise ValueError(f"unknown augmentation(s) {bad}; known: {list(AUGMENTATIONS)}")
    out = np.empty_like(images)
    for i in range(len(images)):
        rng = np.random.default_rng(int(seeds[i]))
        img = images[i]
        for name in names:
            img = _OPS[name](img, rng)
        out[i] = img
    return out


def smoothed_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing as timm does: off = smoothing / classes, on = 1 - smoothing + off."""
    off = smoothing / num_classes
    out = torch.full((len(y), num_classes), off, device=y.device)
    return out.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup_alpha: float, cutmix_alpha: float,
              label_smoothing: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, soft targets (N, num_classes)) of a batch: mixup (a blend) or CutMix (a box
    pasted from the partner, lam corrected to the box's actual area); the partner of row i is row
    N - 1 - i. With both alphas on, each batch uses one of the two, with even odds."""
    targets = smoothed_one_hot(y, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    partner = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    else:
        x = x * lam + partner * (1.0 - lam)
    return x, targets * lam + targets.flip(0) * (1.0 - lam)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits))."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
