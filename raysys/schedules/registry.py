"""Schedules by name, built from the curriculum settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from raysys.core.io import FOLDER_NAME
from raysys.schedules.adaptive import Adaptive
from raysys.schedules.all_levels import AllLevels
from raysys.schedules.base import Level, Schedule
from raysys.schedules.difficulty import DifficultyOrder
from raysys.schedules.fixed import ORDERS, FixedOrder
from raysys.schedules.real_only import RealOnly
from raysys.schedules.two_axis import TwoAxis


@dataclass(frozen=True)
class ScheduleArgs:
    """What a schedule is built from: the curriculum settings and the pool's levels."""

    epochs: int
    curriculum_epochs: int
    guidance_levels: Sequence[float]
    difficulty_bins: Sequence[float]
    stage_epochs: int
    seed: int


def _all_levels(a: ScheduleArgs) -> Schedule:
    # Every λ level if the pool has image-guided rows, else every synthetic row (Level() is "any").
    levels = [Level(guidance=g) for g in sorted(set(a.guidance_levels))] or [Level()]
    return AllLevels(levels, a.epochs, a.curriculum_epochs)


BY_GUIDANCE = (*ORDERS, "adaptive", "all_levels")
"""Schedules that draw synthetic rows by their guidance λ once the pool has image-guided rows: rows
without one (text plans') are then never drawn."""

_BUILDERS: dict[str, Callable[[ScheduleArgs], Schedule]] = {
    "real_only": lambda a: RealOnly(a.epochs),
    "all_levels": _all_levels,
    **{order: (lambda a, order=order: FixedOrder(order, a.guidance_levels, a.epochs, a.curriculum_epochs, a.seed))
       for order in ORDERS},
    **{order: (lambda a, order=order: DifficultyOrder(order, a.difficulty_bins, a.epochs, a.curriculum_epochs))
       for order in ("easy_to_hard", "hard_to_easy")},
    "two_axis": lambda a: TwoAxis(a.guidance_levels, a.difficulty_bins, a.epochs, a.curriculum_epochs),
    "adaptive": lambda a: Adaptive(a.guidance_levels, a.epochs, a.curriculum_epochs, a.stage_epochs),
}

SCHEDULES = tuple(_BUILDERS)
"""Every schedule's name, in the order the docs list them."""


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
    if name not in _BUILDERS:
        raise ValueError(f"unknown curriculum schedule '{name}' (choose from {', '.join(SCHEDULES)})")
    return _BUILDERS[name](ScheduleArgs(epochs, curriculum_epochs, guidance_levels, difficulty_bins, stage_epochs,
                                        seed))


def check_curriculum(cfg) -> list[str]:
    """Problems of the `curriculum` section of a RaysysConfig (with the plans and epochs it refers to)."""
    c = cfg.curriculum
    problems = []
    if c.schedule not in SCHEDULES:
        problems.append(f"curriculum.schedule must be one of {', '.join(SCHEDULES)}, got '{c.schedule}'")
    names = [p.name for p in cfg.synthesis.plans]
    problems += [f"curriculum.plans: '{p}' is not a synthesis plan (plans: {names})" for p in c.plans if p not in names]
    epochs = c.epochs or cfg.train.epochs
    if c.epochs is not None and c.epochs < 1:
        problems.append("curriculum.epochs must be >= 1 (or null)")
    if c.curriculum_epochs is not None and not 0 <= c.curriculum_epochs <= epochs:
        problems.append(f"curriculum.curriculum_epochs must lie in [0, {epochs}]")
    if len(c.difficulty_bins) < 2 or any(a >= b for a, b in zip(c.difficulty_bins, c.difficulty_bins[1:])):
        problems.append("curriculum.difficulty_bins must be at least 2 rising edges")
    if c.stage_epochs < 1 or c.probe_steps < 1 or c.worst_k < 1:
        problems.append("curriculum.stage_epochs, probe_steps and worst_k must be >= 1")
    if c.synthetic_per_epoch < 0 or not 0 < c.undersample <= 1:
        problems.append("curriculum.synthetic_per_epoch must be >= 0 and curriculum.undersample in (0, 1]")
    dist, params = c.difficulty_distribution, c.difficulty_params
    if dist is not None:
        if len(params) != 2:
            problems.append(f"curriculum.difficulty_params: {dist} takes 2 values, got {params}")
        elif dist in ("normal", "beta") and min(params[1:]) <= 0 or (dist == "beta" and params[0] <= 0) or (
                dist == "uniform" and not 0 <= params[0] < params[1] <= 1):
            problems.append(f"curriculum.difficulty_params {params} do not define a {dist} distribution on "
                            "[0, 1] (sigma, alpha, beta > 0; 0 <= lo < hi <= 1)")
    if c.synthetic_loss_weight < 0 or (c.synthetic_pool_share is not None and c.synthetic_pool_share <= 0):
        problems.append("curriculum.synthetic_loss_weight must be >= 0 and curriculum.synthetic_pool_share > 0 (or null)")
    if c.synthetic_loss_weight != 1.0 and (cfg.train.mixup > 0 or cfg.train.cutmix > 0):
        problems.append("curriculum.synthetic_loss_weight != 1 needs train.mixup = train.cutmix = 0 (a mixed image "
                        "has two rows' weights)")
    bad = [s for s in c.extra_real_splits if s in ("train", cfg.data.val_split, *cfg.data.test_splits)]
    if bad:
        problems.append(f"curriculum.extra_real_splits {bad}: train, the validation and the test splits cannot be "
                        "added to the training rows")
    m = c.measured_difficulty
    if m is not None and not (len(m) == 2 and 0 <= m[0] < m[1] <= 1):
        problems.append(f"curriculum.measured_difficulty must be [lo, hi] with 0 <= lo < hi <= 1, got {m}")
    if c.name is not None and not FOLDER_NAME.match(c.name):
        problems.append("curriculum.name may hold only letters, digits, - and _")
    if c.num_workers is not None and c.num_workers < 1:
        problems.append("curriculum.num_workers must be >= 1 (or null)")
    if c.guidance_val_sources < 0:
        problems.append("curriculum.guidance_val_sources must be >= 0")
    if c.schedule == "adaptive" and c.guidance_val_sources < 1:
        problems.append("curriculum.schedule adaptive needs curriculum.guidance_val_sources >= 1 (its measurements)")
    listed = [p for p in cfg.synthesis.plans if p.name in c.plans]
    text = [p.name for p in listed if p.kind == "text"]
    if text and len(text) < len(listed) and c.schedule in BY_GUIDANCE:  # beside image-guided rows
        problems.append(f"curriculum.plans {text}: text plans' rows have no guidance λ, and schedule "
                        f"'{c.schedule}' draws synthetic rows by λ here, so they would never be drawn: leave them "
                        "out, or give them a run of their own (all_levels or a difficulty schedule)")
    return problems
