"""Fixed orders over image guidance λ (DisCL), one level per stage, equal epochs per stage for
the first `curriculum_epochs`, then real data only:

- diverse_to_specific: low λ first (prototypical, far from the real image) up to high λ
  (close to it); DisCL's choice for long-tailed data.
- specific_to_diverse: the reverse.
- random_order: a seeded permutation of the levels.
- text_only: λ = 0 only (text-to-image, no image guidance) for the whole curriculum phase.
"""

from typing import Sequence

import numpy as np

from raysys.schedules.base import Level, Phases, Schedule, Selection

ORDERS = ("diverse_to_specific", "specific_to_diverse", "random_order", "text_only")


def ordered_levels(order: str, guidance_levels: Sequence[float], seed: int = 0) -> list[float]:
    levels = sorted(set(float(g) for g in guidance_levels))
    if order == "diverse_to_specific":
        return levels
    if order == "specific_to_diverse":
        return levels[::-1]
    if order == "random_order":
        return [levels[i] for i in np.random.default_rng(seed).permutation(len(levels))]
    if order == "text_only":
        if 0.0 not in levels:
            raise ValueError("text_only needs λ = 0 among the guidance levels (text-to-image rows)")
        return [0.0]
    raise ValueError(f"unknown order '{order}' (choose from {ORDERS})")


class FixedOrder(Schedule):
    def __init__(self, order: str, guidance_levels: Sequence[float], epochs: int, curriculum_epochs: int,
                 seed: int = 0):
        self.name = order
        self.order = ordered_levels(order, guidance_levels, seed)
        self.phases = Phases([Selection((Level(guidance=g),)) for g in self.order], epochs, curriculum_epochs)

    def selection(self, epoch: int) -> Selection:
        return self.phases.selection(epoch)

    def stage(self, epoch: int):
        return self.phases.stage_of_epoch[epoch]
