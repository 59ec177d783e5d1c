"""Fingerprints by declaration: every config field either changes some stage's digest or is declared
`runtime` (raysys.core.config) and changes none. A field added to a section that no stage reads, or
a stage that reads a `runtime` field through `derived`, fails here; a field wrongly declared
`runtime` fails the stage-graph tests that name what each knob reruns."""

import copy
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Iterator, Literal, Union

from raysys.core.config import RUNTIME, RaysysConfig
from raysys.core.stage import Stage
from raysys.stages import STAGES, load_config
from tests.conftest import TINY
from tests.unit.test_stage_graph import COMPARE

EVERY_STAGE = [*COMPARE, "compare.seeds=[0]", "tune.space={curriculum.loss: {choice: [ce, balanced_softmax]}}",
               "captions.model=Salesforce/blip-image-captioning-base"]


def _leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any, str, Any, bool]]:
    """(dotted path, the dataclass holding it, field name, type, runtime) of every leaf field; a list
    of sections contributes its first item's fields (`synthesis.plans.0.ratio`)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from _leaves(value, f"{path}{f.name}.")
        elif isinstance(value, list) and value and is_dataclass(value[0]):
            yield from _leaves(value[0], f"{path}{f.name}.0.")
        else:
            yield f"{path}{f.name}", obj, f.name, hints[f.name], bool(f.metadata.get(RUNTIME))


def _sample(hint: Any) -> Any:
    """A value of type `hint` (for a field that is None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return args[0]
    if origin is list:
        return [_sample(args[0])]
    if origin is dict:
        return {} if args[1] is Any else {"zz": _sample(args[1])}
    return {int: 1, float: 0.5, str: "x", bool: True}.get(hint, {})


def _other(value: Any, hint: Any) -> Any:
    """A value of type `hint` that differs from `value`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None:
            return _sample(next(a for a in args if a is not type(None)))
        literal = [a for a in args if typing.get_origin(a) is Literal and value in typing.get_args(a)]
        plain = [a for a in args if a is not type(None) and typing.get_origin(a) is not Literal]
        return _other(value, literal[0] if literal else plain[0])
    if origin is Literal:
        return next(a for a in args if a != value)
    if origin is list:
        return value[:-1] if len(value) > 1 else [*value, _sample(args[0])]
    if origin is dict:
        return {**value, "zz": _sample(args[1])}
    if hint is bool:
        return not value
    if hint in (int, float):
        return value + 1
    if hint is str:
        return value + "x"
    raise TypeError(f"no other value for {hint}")


def _digests(cfg: RaysysConfig) -> dict[str, str]:
    return {d.name: d.digest for s in STAGES if s.applies(cfg) for d in s.dirs(cfg)}


def test_every_field_changes_a_stage_digest_unless_declared_runtime():
    cfg = load_config(TINY, EVERY_STAGE)
    before = _digests(cfg)
    assert {"prepare", "caption", "pretrain_generator", "finetune", "control", "synthesize", "quality", "evaluate", "report",
            "tune/sweep"} <= set(before), "the config must apply every stage, or some fields go unchecked"
    unread, runtime_that_reruns, runtime = [], [], 0
    for path, _, name, hint, is_runtime in _leaves(cfg):
        changed_cfg = copy.deepcopy(cfg)
        holder = changed_cfg
        for part in path.split(".")[:-1]:
            holder = holder[int(part)] if part.isdigit() else getattr(holder, part)
        setattr(holder, name, _other(getattr(holder, name), hint))
        after = _digests(changed_cfg)
        changed = {unit for unit in before if after.get(unit) != before[unit]} | (set(after) - set(before))
        runtime += is_runtime
        if is_runtime and changed:
            runtime_that_reruns.append(f"{path} -> {sorted(changed)}")
        if not is_runtime and not changed:
            unread.append(path)
    assert unread == [], f"fields in no stage's fingerprint (declare the section in a stage's config, or the field runtime): {unread}"
    assert runtime_that_reruns == [], f"runtime fields that change a digest: {runtime_that_reruns}"
    assert runtime >= 40  # the resources and concurrency knobs of every section


def test_a_digest_holds_the_declared_sections_less_their_runtime_fields():
    reader = Stage(name="reader", reads=(), config=("train",), run=lambda ctx: {})
    cfg = load_config(TINY)
    other = copy.deepcopy(cfg)
    other.score.folds += 1  # score is a section this stage does not declare
    assert reader.digest(other) == reader.digest(cfg)
    other.train.lr *= 2
    assert reader.digest(other) != reader.digest(cfg)
    other = copy.deepcopy(cfg)
    other.train.cpus_per_worker += 1  # runtime: in no digest
    assert reader.digest(other) == reader.digest(cfg)
