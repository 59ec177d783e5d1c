"""Schedules over requested difficulty s (Wang et al.'s images): the s range is cut into bins
(`difficulty_bins` edges) and the curriculum walks them, one bin per stage, then real only:

- easy_to_hard: low s first.
- hard_to_easy: high s first.
"""

from typing import Sequence

import numpy as np

from raysys.schedules.base import Level, Phases, Schedule, Selection


def bin_of(s: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each s for bins [e0, e1), [e1, e2), ..., [e_{n-1}, e_n] (last one closed)."""
    edges = np.asarray(edges, dtype=np.float64)
    return np.clip(np.searchsorted(edges, np.asarray(s, dtype=np.float64), side="right") - 1, 0, len(edges) - 2)


class DifficultyOrder(Schedule):
    def __init__(self, order: str, difficulty_bins: Sequence[float], epochs: int, curriculum_epochs: int):
        if order not in ("easy_to_hard", "hard_to_easy"):
            raise ValueError(f"unknown difficulty order '{order}'")
        self.name = order
        bins = list(range(len(difficulty_bins) - 1))
        self.order = bins if order == "easy_to_hard" else bins[::-1]
        self.phases = Phases([Selection((Level(difficulty_bin=b),)) for b in self.order], epochs, curriculum_epochs)

    def selection(self, epoch: int) -> Selection:
        return self.phases.selection(epoch)

    def stage(self, epoch: int):
        return self.phases.stage_of_epoch[epoch]
