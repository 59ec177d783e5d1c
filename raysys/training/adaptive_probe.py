"""DisCL's adaptive probe: p(y|x) of the guidance-validation images per λ before and after a short
real-only training probe, what `raysys.schedules.adaptive.Adaptive.record` chooses each stage's λ from.
It runs a model (prediction from raysys.training), so it sits here, a layer above its schedule.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from raysys.data.stream import Decode, stream_refs
from raysys.models.classifiers import normalize
from raysys.training.guidance_validation import GuidanceVal, p_true_by_level
from raysys.training.synthetic_pool import _rng

if TYPE_CHECKING:
    from raysys.core.context import TrainContext


def probe_gains_inputs(model: nn.Module, ctx: "TrainContext", gval: GuidanceVal, real: pa.Table, decode: Decode,
                       steps: int, batch_size: int, lr: float, seed: int, epoch: int, device: torch.device
                       ) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """p(y|x) of the guidance-validation images per λ before and after `steps` real-only
    training steps on a copy of the model (the model itself is not changed); the steps' rows
    are drawn at random from `real` and streamed, one batch per step. Every random draw (rows,
    dropout) is a function of (seed, epoch) alone, not of the caller's torch RNG state: a run
    resumed at this epoch measures what the uninterrupted run measured."""
    before = p_true_by_level(model, ctx, gval, decode, device)
    probe = copy.deepcopy(model).to(device)
    probe.train()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(_rng("probe", seed, epoch).integers(2**31)))
    per_step = min(batch_size, len(real))
    drawn = torch.cat([torch.randint(0, len(real), (per_step,), generator=gen) for _ in range(steps)]).numpy()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(_rng("probe dropout", seed, epoch).integers(2**31)))
        for batch in ctx.batches(stream_refs(real, drawn), decode, per_step):
            x = normalize(batch["image"], probe).to(device)
            loss = F.cross_entropy(probe(x), batch["label"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    after = p_true_by_level(probe, ctx, gval, decode, device)
    return before, after
