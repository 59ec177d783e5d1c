"""Classifier training and evaluation in plain torch (no Ray): one epoch, prediction, metrics.

The Ray Train adapter (raysys/ray/train.py) wraps these with data-parallel setup,
checkpoints and reporting; tests call them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from raysys.core.config import TrainConfig
from raysys.data.images import decode_batch
from raysys.training.metrics import classification_metrics


@dataclass
class LabelledImages:
    images: torch.Tensor
    """uint8 (N, C, H, W)."""
    labels: torch.Tensor
    """int64 (N,)."""

    def __len__(self) -> int:
        return len(self.labels)


def images_from_manifest(table: pa.Table, split: str | None, size: int, channels: int) -> LabelledImages:
    """Decode the rows of `split` (all rows if None) into uint8 tensors."""
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    pixels = decode_batch(table["image"].to_pylist(), size, channels)
    labels = np.asarray(table["label"].to_numpy(zero_copy_only=False), dtype=np.int64)
    return LabelledImages(torch.from_numpy(pixels), torch.from_numpy(labels))


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to +-max_shift pixels (zero padding): cheap digit augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    return opt, sched


def train_epoch(
    model: nn.Module,
    data: LabelledImages,
    indices: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched,
    *,
    batch_size: int,
    augment: bool,
    generator: torch.Generator,
    device: torch.device,
    log_prior: torch.Tensor | None = None,
) -> float:
    """One pass over data[indices] (already shuffled/sharded by the caller); mean loss.

    `log_prior` (log class frequencies) turns cross-entropy into Balanced Softmax: the logits
    are shifted by the prior during training only, so predictions are prior-free."""
    model.train()
    total, count = 0.0, 0
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        if len(idx) < 2 and start > 0:
            break  # BatchNorm cannot train on one image; every rank has the same shard length
        x = normalize(data.images[idx])
        if augment:
            x = random_shift(x, 2, generator)
        x, y = x.to(device, non_blocking=True), data.labels[idx].to(device, non_blocking=True)
        logits = model(x)
        if log_prior is not None:
            logits = logits + log_prior.to(logits.device)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, images_uint8: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Softmax probabilities (N, num_classes) on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(images_uint8), batch_size):
        x = normalize(images_uint8[start : start + batch_size]).to(device)
        out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def evaluate(
    model: nn.Module, data: LabelledImages, num_classes: int, groups: dict[str, list[int]], device: torch.device
) -> dict:
    if len(data) == 0:
        raise ValueError("evaluate: no images to evaluate on")
    probs = predict_proba(model, data.images, 512, device)
    pred = probs.argmax(1).numpy()
    return classification_metrics(data.labels.numpy(), pred, num_classes, groups)
