"""two_axis: a curriculum over (λ, s) together, which neither paper has. Stage k of K walks both
axes at once, diverse -> specific in λ and easy -> hard in s: it trains on the λ level
floor(k·L/K) and the s bin floor(k·B/K), with K = max(L, B) stages; then real data only.
"""

from typing import Sequence

from raysys.schedules.base import Level, Phases, Schedule, Selection


class TwoAxis(Schedule):
    name = "two_axis"

    def __init__(self, guidance_levels: Sequence[float], difficulty_bins: Sequence[float], epochs: int,
                 curriculum_epochs: int):
        lambdas = sorted(set(float(g) for g in guidance_levels))
        n_bins = len(difficulty_bins) - 1
        k = max(len(lambdas), n_bins)
        self.cells = [Level(guidance=lambdas[i * len(lambdas) // k], difficulty_bin=i * n_bins // k) for i in range(k)]
        self.phases = Phases([Selection((c,)) for c in self.cells], epochs, curriculum_epochs)

    def selection(self, epoch: int) -> Selection:
        return self.phases.selection(epoch)

    def stage(self, epoch: int):
        return self.phases.stage_of_epoch[epoch]
