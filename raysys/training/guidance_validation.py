"""The guidance-validation set (DisCL): hard real train images held out of training, with their
synthetic images at every λ, and what a model scores on them. Rows only, without images
(raysys.data.stream); every measurement streams through `ctx.batches`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from raysys.data.stream import REF_COLUMNS, Decode, stream_refs
from raysys.training.classifier import predict

if TYPE_CHECKING:
    from raysys.core.context import TrainContext


@dataclass
class GuidanceVal:
    real: pa.Table
    """The held-out hard real images (index rows: file, row, label)."""
    by_level: dict[float, pa.Table]
    """Their synthetic images at every λ (index rows)."""

    def only_levels(self, levels: Sequence[float]) -> "GuidanceVal":
        """The same set with the synthetic images of `levels` only (the λ a schedule walks, when
        `curriculum.guidance_levels` names fewer than the pool holds)."""
        keep = {g: d for g, d in self.by_level.items() if np.isclose(np.asarray(levels, dtype=float), g, atol=1e-4).any()}
        return GuidanceVal(self.real, keep)

    def groups(self, with_real: bool) -> tuple[list[str], pa.Table, list[int]]:
        """(group names: "real" and each λ, their rows one after the other, each group's row count):
        one stream for every group."""
        named = ([("real", self.real)] if with_real else []) + [(f"{g:g}", t) for g, t in self.by_level.items()]
        named = [(n, t.select(list(REF_COLUMNS))) for n, t in named if len(t)]
        if not named:
            return [], self.real.select(list(REF_COLUMNS)).slice(0, 0), []
        return [n for n, _ in named], pa.concat_tables([t for _, t in named]), [len(t) for _, t in named]


def split_guidance_val(real_train: pa.Table, synthetic: pa.Table, n_sources: int, seed: int
                       ) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """Hold out `n_sources` real train images that guided synthetic rows at every λ present.

    Returns (real train rest, synthetic rest, held-out real rows, their synthetic rows).
    Chosen by a seeded hash of the source id among the sources with every λ, hardest first
    is not required: the plan's sources are already the hard images. When the real rows have
    domains (cameras, sites), the sources are taken from each domain in turn, so that no domain
    with such sources is left out of the guidance validation.
    """
    empty = real_train.slice(0, 0), synthetic.slice(0, 0)
    if n_sources <= 0 or len(synthetic) == 0:
        return real_train, synthetic, *empty
    source = synthetic["source_id"].to_pylist()
    lam = synthetic["guidance"].to_pylist()
    levels = {g for g in lam if g is not None}
    by_source: dict[str, set] = {}
    for sid, g in zip(source, lam):
        if sid is not None and g is not None:
            by_source.setdefault(sid, set()).add(g)
    domains = real_train["domain"].to_pylist() if "domain" in real_train.column_names else [None] * len(real_train)
    domain_of = dict(zip(real_train["sample_id"].to_pylist(), domains))
    ranked = sorted((sid for sid, got in by_source.items() if got == levels and sid in domain_of),
                    key=lambda sid: hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest())
    per_domain: dict = {}
    for sid in ranked:
        per_domain.setdefault(domain_of[sid] or "", []).append(sid)
    groups = [per_domain[d] for d in sorted(per_domain)]
    complete = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]  # in turn
    if len(complete) < n_sources:
        raise ValueError(f"curriculum.guidance_val_sources={n_sources}, but only {len(complete)} source images "
                         f"have synthetic images at every λ {sorted(levels)}: lower it or generate more")
    held = set(complete[:n_sources])
    held_real = pa.array([sid in held for sid in real_train["sample_id"].to_pylist()])
    held_syn = pa.array([sid in held for sid in source])
    return (real_train.filter(pc.invert(held_real)), synthetic.filter(pc.invert(held_syn)),
            real_train.filter(held_real), synthetic.filter(held_syn))


def build_guidance_val(held_real: pa.Table, held_syn: pa.Table) -> GuidanceVal:
    lam = np.round(held_syn["guidance"].to_numpy(zero_copy_only=False).astype(np.float64), 4)  # float32 -> 0.3
    by_level = {float(level): held_syn.filter(pa.array(lam == level))
                for level in sorted(set(lam[~np.isnan(lam)].tolist()))}
    return GuidanceVal(held_real, by_level)


def _per_group(values: np.ndarray, names: list[str], counts: list[int]) -> dict[str, np.ndarray]:
    bounds = np.cumsum([0, *counts])
    return {name: values[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}


def guidance_accuracy(model: nn.Module, ctx: "TrainContext", gval: GuidanceVal, decode: Decode,
                      device: torch.device) -> dict[str, float]:
    """Accuracy on the held-out real images and on their synthetic images per λ (one stream)."""
    names, rows, counts = gval.groups(with_real=True)
    pred, _ = predict(model, ctx, stream_refs(rows), decode, device)
    right = pred == rows["label"].to_numpy().astype(np.int64)
    return {name: float(r.mean()) for name, r in _per_group(right, names, counts).items()}


def p_true_by_level(model: nn.Module, ctx: "TrainContext", gval: GuidanceVal, decode: Decode,
                    device: torch.device) -> dict[float, np.ndarray]:
    names, rows, counts = gval.groups(with_real=False)
    _, p = predict(model, ctx, stream_refs(rows), decode, device)
    by_name = _per_group(p, names, counts)
    return {g: by_name[f"{g:g}"] for g, t in gval.by_level.items() if len(t)}
