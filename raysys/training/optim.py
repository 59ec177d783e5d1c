"""Optimizers and learning-rate schedules by name (plain torch).

`make_optimizer` returns the optimizer and a `LambdaLR` stepped once per optimizer step:
  adamw | sgd (momentum, optionally Nesterov)
  cosine: 0.5 (1 + cos(pi t / T)) over the steps after warmup (to 0 at the end of the run)
  step:   x step_gamma at each milestone epoch (MultiStepLR, counted in steps)
and a linear warmup from 0 over `warmup_epochs` before either. The multiplier depends on the
step alone, so a resumed run (the LambdaLR's step count restored) continues the same curve.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")


def lr_multiplier(step: int, *, schedule: str, total: int, warmup: int, milestones: Sequence[int],
                  gamma: float) -> float:
    """The learning rate at optimizer step `step` (0-based) as a share of the peak."""
    if schedule == "step":
        warm = (step + 1) / warmup if step < warmup else 1.0
        return warm * gamma ** sum(step >= m for m in milestones)
    if step < warmup:
        return (step + 1) / warmup
    if warmup == 0:
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def make_optimizer(model: nn.Module, *, optimizer: str, lr: float, weight_decay: float, momentum: float,
                   nesterov: bool, schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                   step_milestones: Sequence[int], step_gamma: float):
    """(optimizer, per-step LambdaLR) for `model`'s parameters."""
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    else:
        raise ValueError(f"train.optimizer must be one of {list(OPTIMIZERS)}, got '{optimizer}'")
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {list(SCHEDULES)}, got '{schedule}'")
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in step_milestones]

    def multiplier(step: int) -> float:
        return lr_multiplier(step, schedule=schedule, total=total, warmup=warmup, milestones=milestones,
                             gamma=step_gamma)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, multiplier)


def check_recipe(optimizer: str, schedule: str, lr: float, momentum: float, warmup_epochs: float, epochs: int,
                 step_milestones: Sequence[int], step_gamma: float, label_smoothing: float, mixup_alpha: float,
                 cutmix_alpha: float, augment: Sequence[str]) -> list[str]:
    """Problems of a training recipe, each naming its `train.` field and what would do."""
    from raysys.data.augment import AUGMENTATIONS

    problems = []
    if optimizer not in OPTIMIZERS:
        problems.append(f"train.optimizer must be one of {list(OPTIMIZERS)}, got '{optimizer}'")
    if schedule not in SCHEDULES:
        problems.append(f"train.schedule must be one of {list(SCHEDULES)}, got '{schedule}'")
    if not 0 <= momentum < 1:
        problems.append(f"train.momentum must be in [0, 1), got {momentum}")
    if not 0 <= warmup_epochs < max(epochs, 1):
        problems.append(f"train.warmup_epochs must be in [0, train.epochs={epochs}), got {warmup_epochs}")
    if schedule == "step":
        m = list(step_milestones)
        if not m or any(b <= a for a, b in zip(m, m[1:])) or m[0] < 1 or m[-1] >= epochs:
            problems.append(f"train.step_milestones must be increasing epochs in 1..{epochs - 1} for schedule step, "
                            f"got {m}")
        if not 0 < step_gamma <= 1:
            problems.append(f"train.step_gamma must be in (0, 1], got {step_gamma}")
    if not 0 <= label_smoothing < 1:
        problems.append(f"train.label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        problems.append(f"train.mixup and train.cutmix are Beta alphas >= 0 (0: off), got {mixup_alpha}, {cutmix_alpha}")
    bad = [name for name in augment if name not in AUGMENTATIONS]
    if bad:
        problems.append(f"train.augment: unknown augmentation(s) {bad}; known: {list(AUGMENTATIONS)}")
    return problems
