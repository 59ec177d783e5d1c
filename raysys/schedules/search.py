"""The search space of `raysys tune`: curriculum.* fields and their domains, checked value by value.

A space maps `curriculum.field` (or `curriculum.field.i`, an item of a list field) to one domain:
{choice: [...]}, {grid: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} or {randint: [lo, hi]}.
`apply_tune_params` sets a trial's sampled values on a config; `check_tune` checks that every
listed value, and both ends of every range, make a valid curriculum section.
"""

from __future__ import annotations

import difflib
from dataclasses import fields, replace
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raysys.core.config import CurriculumConfig, RaysysConfig
from raysys.core.io import FOLDER_NAME
from raysys.schedules.registry import check_curriculum

DOMAINS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2}
"""Domain kind -> how many values it takes (None: a non-empty list)."""
FLOAT_DOMAINS = ("uniform", "loguniform")
"""The domains that draw floats: for float fields only (an integer field takes randint or choice)."""


def _without_none(hint: Any) -> Any:
    if get_origin(hint) in (Union, UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def value_type(field_name: str, item: bool) -> Any:
    """The type of curriculum field `field_name` (`item`: of an item of that list field), without Optional."""
    hint = _without_none(get_type_hints(CurriculumConfig)[field_name])
    return _without_none(get_args(hint)[0]) if item else hint


def tune_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled `curriculum.field[.i]` values -> curriculum field -> {item index or None: value}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        parts = key.split(".")
        out.setdefault(parts[1], {})[int(parts[2]) if len(parts) == 3 else None] = value
    return out


def apply_tune_params(cfg: RaysysConfig, params: dict[str, Any], name: str) -> RaysysConfig:
    """`cfg` with a trial's sampled `curriculum.*` values set, its curriculum run named `name`."""
    fields_: dict[str, Any] = {}
    for field_name, items in tune_overrides(params).items():
        if None in items:
            fields_[field_name] = items[None]
        else:
            values = list(getattr(cfg.curriculum, field_name))
            for i, v in items.items():
                values[i] = v
            fields_[field_name] = values
    return replace(cfg, curriculum=replace(cfg.curriculum, **fields_, name=name))


def check_tune(cfg: RaysysConfig) -> list[str]:
    """Problems of the `tune` section."""
    t = cfg.tune
    problems = []
    if not FOLDER_NAME.match(t.name):
        problems.append("tune.name may hold only letters, digits, - and _")
    if t.num_samples < 1 or t.grace_period < 1 or t.reduction_factor < 2:
        problems.append("tune.num_samples and tune.grace_period must be >= 1, tune.reduction_factor >= 2")
    if t.max_concurrent_trials is not None and t.max_concurrent_trials < 1:
        problems.append("tune.max_concurrent_trials must be >= 1 (or null)")
    known = {f.name: f for f in fields(CurriculumConfig)}
    for key, domain in t.space.items():
        at = f"tune.space.{key}"
        parts = key.split(".")
        if parts[0] != "curriculum" or len(parts) not in (2, 3) or parts[1] not in known or parts[1] in ("name", "seed"):
            hint = difflib.get_close_matches(parts[-1] if len(parts) > 1 else key, sorted(known), n=1)
            problems.append(f"{at}: not a searchable field; the space holds curriculum.* fields (trials reuse the "
                            "synthetic images, never regenerate)" + (f"; did you mean 'curriculum.{hint[0]}'?" if hint else ""))
            continue
        if len(parts) == 3:
            current = getattr(cfg.curriculum, parts[1])
            if not isinstance(current, list) or not parts[2].isdigit() or int(parts[2]) >= len(current):
                problems.append(f"{at}: curriculum.{parts[1]} has no item {parts[2]} (it is {current!r})")
                continue
        if not isinstance(domain, dict) or len(domain) != 1 or next(iter(domain)) not in DOMAINS:
            problems.append(f"{at}: must be one of {{choice: [...]}}, {{grid: [...]}}, {{uniform: [lo, hi]}}, "
                            f"{{loguniform: [lo, hi]}}, {{randint: [lo, hi]}}; got {domain!r}")
            continue
        kind, values = next(iter(domain.items()))
        if not isinstance(values, list) or not values or (DOMAINS[kind] and len(values) != 2):
            problems.append(f"{at}: {kind} takes " + ("[lo, hi]" if DOMAINS[kind] else "a non-empty list")
                            + f", got {values!r}")
            continue
        if DOMAINS[kind] and not values[0] < values[1]:
            problems.append(f"{at}: {kind} needs lo < hi, got {values}")
            continue
        takes = value_type(parts[1], len(parts) == 3)
        if kind in FLOAT_DOMAINS and takes is not float:
            use = "{randint: [lo, hi]} (hi excluded) or {choice: [...]}" if takes is int else "{choice: [...]}"
            problems.append(f"{at}: {kind} draws floats, but the field takes "
                            f"{'integers' if takes is int else 'no floats'}: use {use}")
            continue
        for value in values:  # every listed value, and both ends of a range
            try:
                trial = apply_tune_params(cfg, {key: value}, "tune-check")
                OmegaConf.structured(trial.curriculum)  # the field's type
            except (TypeError, ValueError, OmegaConfBaseException) as exc:
                problems.append(f"{at}: value {value!r}: {str(exc).splitlines()[0]}")
                continue
            problems += [f"{at}: value {value!r}: {p}" for p in check_curriculum(trial)]
    return problems
