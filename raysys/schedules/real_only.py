"""real_only: the baseline; no synthetic image in any epoch."""

from raysys.schedules.base import REAL_ONLY, Schedule, Selection


class RealOnly(Schedule):
    name = "real_only"

    def __init__(self, epochs: int):
        self.epochs = epochs

    def selection(self, epoch: int) -> Selection:
        return REAL_ONLY
