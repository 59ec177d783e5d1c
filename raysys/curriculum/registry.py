"""Schedules by name, built from the curriculum settings."""

from __future__ import annotations

from typing import Sequence

from raysys.curriculum.adaptive import Adaptive
from raysys.curriculum.all_levels import AllLevels
from raysys.curriculum.base import Level, Schedule
from raysys.curriculum.difficulty import DifficultyOrder
from raysys.curriculum.fixed import ORDERS, FixedOrder
from raysys.curriculum.real_only import RealOnly
from raysys.curriculum.two_axis import TwoAxis

SCHEDULES = ("real_only", "all_levels", *ORDERS, "easy_to_hard", "hard_to_easy", "two_axis", "adaptive")


def create_schedule(
    name: str,
    *,
    epochs: int,
    curriculum_epochs: int,
    guidance_levels: Sequence[float] = (),
    difficulty_bins: Sequence[float] = (),
    stage_epochs: int = 1,
    seed: int = 0,
) -> Schedule:
    if name == "real_only":
        return RealOnly(epochs)
    if name == "all_levels":
        # Every λ level if the pool has image-guided rows, else every synthetic row (Level() is "any").
        levels = [Level(guidance=g) for g in sorted(set(guidance_levels))] or [Level()]
        return AllLevels(levels, epochs, curriculum_epochs)
    if name in ORDERS:
        return FixedOrder(name, guidance_levels, epochs, curriculum_epochs, seed)
    if name in ("easy_to_hard", "hard_to_easy"):
        return DifficultyOrder(name, difficulty_bins, epochs, curriculum_epochs)
    if name == "two_axis":
        return TwoAxis(guidance_levels, difficulty_bins, epochs, curriculum_epochs)
    if name == "adaptive":
        return Adaptive(guidance_levels, epochs, curriculum_epochs, stage_epochs)
    raise ValueError(f"unknown curriculum schedule '{name}' (choose from {', '.join(SCHEDULES)})")
