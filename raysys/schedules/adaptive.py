"""adaptive (DisCL): each curriculum stage picks the image guidance level λ that helps most now.

A *guidance-validation set* holds hard real images that are not trained on, each with synthetic
images at every λ. At the start of each stage the trainer (raysys.training.adaptive_probe) measures,
for every λ, p(y|x) of those synthetic images before and after a short real-only training step
(`level_gains` gets both), drops per-image gains outside 1.5·IQR, and the stage trains on the λ
with the largest mean gain (`choose_level`; ties go to the lower λ). After `curriculum_epochs`,
real data only.

The choices live in `state()`: a resumed run reloads them and never re-measures a stage that
already chose.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from raysys.schedules.base import REAL_ONLY, Level, Schedule, Selection


def inlier_mask(values: np.ndarray, k: float = 1.5) -> np.ndarray:
    """True for values inside [Q1 - k·IQR, Q3 + k·IQR]."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    q1, q3 = np.percentile(values, [25, 75])
    reach = k * (q3 - q1) + 1e-9  # + a hair, so float noise around equal values is no outlier
    return (values >= q1 - reach) & (values <= q3 + reach)


def level_gains(p_before: dict[float, np.ndarray], p_after: dict[float, np.ndarray]) -> dict[float, float]:
    """Mean per-image gain p_after - p_before for every λ, outliers (1.5·IQR) dropped."""
    gains = {}
    for level in sorted(p_before):
        before = np.asarray(p_before[level], dtype=np.float64)
        after = np.asarray(p_after[level], dtype=np.float64)
        if before.shape != after.shape or before.size == 0:
            raise ValueError(f"λ={level}: {before.shape} images before, {after.shape} after (need the same, > 0)")
        delta = after - before
        gains[float(level)] = float(delta[inlier_mask(delta)].mean())
    return gains


def choose_level(gains: dict[float, float]) -> float:
    """The λ with the largest gain (the lowest λ among equals)."""
    if not gains:
        raise ValueError("no guidance level to choose from")
    best = max(gains.values())
    return min(level for level, gain in gains.items() if gain == best)


class Adaptive(Schedule):
    name = "adaptive"
    adaptive = True

    def __init__(self, guidance_levels: Sequence[float], epochs: int, curriculum_epochs: int, stage_epochs: int = 1):
        if stage_epochs < 1 or not 0 <= curriculum_epochs <= epochs:
            raise ValueError("adaptive needs stage_epochs >= 1 and 0 <= curriculum_epochs <= epochs")
        self.levels = sorted(set(float(g) for g in guidance_levels))
        self.epochs, self.curriculum_epochs, self.stage_epochs = epochs, curriculum_epochs, stage_epochs
        self.chosen: dict[int, float] = {}
        self.gains: dict[int, dict[float, float]] = {}

    def stage(self, epoch: int) -> Optional[int]:
        return epoch // self.stage_epochs if epoch < self.curriculum_epochs else None

    def needs_choice(self, epoch: int) -> bool:
        stage = self.stage(epoch)
        return stage is not None and stage not in self.chosen

    def record(self, epoch: int, p_before: dict[float, np.ndarray], p_after: dict[float, np.ndarray]) -> float:
        """Measure the gains for the stage of `epoch`, choose its λ, and return it."""
        stage = self.stage(epoch)
        if stage is None:
            raise ValueError(f"epoch {epoch} is after the curriculum phase: nothing to choose")
        unknown = set(p_before) - set(self.levels)
        if unknown:
            raise ValueError(f"measured levels {sorted(unknown)} are not among {self.levels}")
        gains = level_gains(p_before, p_after)
        self.gains[stage] = gains
        self.chosen[stage] = choose_level(gains)
        return self.chosen[stage]

    def selection(self, epoch: int) -> Selection:
        stage = self.stage(epoch)
        if stage is None:
            return REAL_ONLY
        if stage not in self.chosen:
            raise RuntimeError(f"adaptive stage {stage} (epoch {epoch}) has not chosen its level yet: call record()")
        return Selection((Level(guidance=self.chosen[stage]),))

    def state(self) -> dict:
        return {"chosen": {str(k): v for k, v in self.chosen.items()},
                "gains": {str(k): {str(l): g for l, g in v.items()} for k, v in self.gains.items()}}

    def load_state(self, state: dict) -> None:
        self.chosen = {int(k): float(v) for k, v in state.get("chosen", {}).items()}
        self.gains = {int(k): {float(l): float(g) for l, g in v.items()} for k, v in state.get("gains", {}).items()}

    def trace(self, epochs: int) -> list[str]:
        return [str(self.selection(e)) if not self.needs_choice(e) else "not chosen yet" for e in range(epochs)]
