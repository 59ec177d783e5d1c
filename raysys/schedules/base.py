"""What a curriculum decides: which synthetic data each epoch trains on, beside the real data.

A *level* is one cell of synthetic data: an image guidance λ (DisCL), a bin of requested
difficulty s (Wang et al.), or both; `None` on an axis means "any value". A `Selection` is the
set of levels an epoch draws synthetic images from; an empty selection is a real-only epoch.

Every schedule maps an epoch index (0-based) to a Selection. Static schedules decide from the
epoch alone; the adaptive schedule decides at each stage from measurements and records its
choices in `state()`, which the trainer checkpoints so that a resumed run makes the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True, order=True)
class Level:
    guidance: Optional[float] = None
    """λ in [0, 1] (0: text only); None: any."""
    difficulty_bin: Optional[int] = None
    """Index into the difficulty bins; None: any."""

    def __str__(self) -> str:
        parts = []
        if self.guidance is not None:
            parts.append(f"λ={self.guidance:g}")
        if self.difficulty_bin is not None:
            parts.append(f"s-bin {self.difficulty_bin}")
        return ", ".join(parts) or "any"


@dataclass(frozen=True)
class Selection:
    levels: tuple[Level, ...] = ()

    @property
    def real_only(self) -> bool:
        return not self.levels

    def __str__(self) -> str:
        return "real only" if self.real_only else " + ".join(str(level) for level in self.levels)


REAL_ONLY = Selection()


@dataclass
class Phases:
    """The usual shape: `curriculum_epochs` split into equal stages over an ordered list of
    selections, then real data only until `epochs` (DisCL: E_CL = 60 of E = 65)."""

    stages: list[Selection]
    epochs: int
    curriculum_epochs: int
    stage_of_epoch: list[Optional[int]] = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.curriculum_epochs <= self.epochs:
            raise ValueError(f"curriculum_epochs {self.curriculum_epochs} must lie in [0, epochs={self.epochs}]")
        if self.stages and self.curriculum_epochs < len(self.stages):
            raise ValueError(f"{len(self.stages)} stages need curriculum_epochs >= {len(self.stages)}, "
                             f"got {self.curriculum_epochs}")
        n = len(self.stages)
        self.stage_of_epoch = [
            (epoch * n // self.curriculum_epochs if n and epoch < self.curriculum_epochs else None)
            for epoch in range(self.epochs)
        ]

    def selection(self, epoch: int) -> Selection:
        stage = self.stage_of_epoch[epoch]
        return REAL_ONLY if stage is None else self.stages[stage]


class Schedule:
    """Base class: `selection(epoch)`; `state()` / `load_state()` for checkpoints."""

    name = "schedule"
    adaptive = False

    def selection(self, epoch: int) -> Selection:
        raise NotImplementedError

    def stage(self, epoch: int) -> Optional[int]:
        """Curriculum stage of `epoch` (None: the real-only tail)."""
        return None

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def trace(self, epochs: int) -> list[str]:
        """The selection of every epoch, as text (for logs and the report)."""
        return [str(self.selection(e)) for e in range(epochs)]
