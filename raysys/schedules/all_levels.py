"""all_levels: every synthetic level mixed in every curriculum epoch, then real only (DisCL's
"all-level" baseline, and the usual way to add synthetic data without a curriculum)."""

from typing import Sequence

from raysys.schedules.base import Level, Phases, Schedule, Selection


class AllLevels(Schedule):
    name = "all_levels"

    def __init__(self, levels: Sequence[Level], epochs: int, curriculum_epochs: int):
        self.phases = Phases([Selection(tuple(levels))], epochs, curriculum_epochs)

    def selection(self, epoch: int) -> Selection:
        return self.phases.selection(epoch)

    def stage(self, epoch: int):
        return self.phases.stage_of_epoch[epoch]
