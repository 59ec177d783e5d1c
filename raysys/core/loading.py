"""Reading a config: YAML over the defaults, then `key=value` overrides, with types and keys checked.

`read_config` raises `ConfigError` naming the key path and where it came from (the file, or
"command line") for an unknown key or a value of the wrong type or outside its `Literal`
choices. The checks of values that depend on more than a field's type live beside their
components and run as the stages' `check` (`raysys.stages.load_config` does both).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from raysys.core.config import RUNTIME, RaysysConfig


class ConfigError(ValueError):
    """A configuration problem found before any work started."""


def _all_keys(dc_type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(dc_type):
        path = f"{prefix}{f.name}"
        keys.append(path)
        default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(_all_keys(type(default), path + "."))
        elif isinstance(default, list) and default and is_dataclass(default[0]):
            keys.extend(_all_keys(type(default[0]), path + "[0]."))
    return keys


def _explain(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        index = re.search(r"\[(\d+)\]", key)  # a list item's key: matched as item 0's, named with its own index
        hint = difflib.get_close_matches(re.sub(r"\[\d+\]", "[0]", key), _all_keys(RaysysConfig), n=1)
        named = hint[0].replace("[0]", f"[{index.group(1)}]") if hint and index else hint[0] if hint else ""
        suggestion = f" Did you mean '{named}'?" if hint else ""
        return ConfigError(f"{origin}: unknown config key '{key}'.{suggestion}")
    msg = str(exc).splitlines()[0]
    return ConfigError(f"{origin}: bad value for '{key}': {msg}")


def _to_config(merged: DictConfig, origin: str) -> RaysysConfig:
    try:
        cfg: RaysysConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise _explain(exc, origin) from None
    # Workers run in their own directories: hand them absolute paths.
    if cfg.classifier.weights is not None and "://" not in cfg.classifier.weights:
        cfg.classifier.weights = os.path.abspath(os.path.expanduser(cfg.classifier.weights))
    base = os.path.expanduser(cfg.generator.base)
    if cfg.generator.base != "builtin" and "://" not in base and os.path.exists(base):
        cfg.generator.base = os.path.abspath(base)  # a local directory, not a hub id
    for plan in cfg.synthesis.plans:
        if plan.prompts.startswith("file:") and "://" not in plan.prompts:
            plan.prompts = "file:" + os.path.abspath(os.path.expanduser(plan.prompts[5:]))
    store = cfg.tracking.mlflow_uri
    if store and store.startswith("file:") and not store.startswith("file://"):  # file:relative/mlruns
        cfg.tracking.mlflow_uri = Path(os.path.abspath(os.path.expanduser(store[5:]))).as_uri()
    elif store and store.startswith("sqlite:///") and not store.startswith("sqlite:////"):  # sqlite:///relative.db
        cfg.tracking.mlflow_uri = "sqlite:///" + os.path.abspath(os.path.expanduser(store[10:]))
    return cfg


def read_file(path: str | Path) -> DictConfig:
    """The defaults with YAML `path` merged over them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return OmegaConf.merge(OmegaConf.structured(RaysysConfig), OmegaConf.load(path))
    except OmegaConfBaseException as exc:
        raise _explain(exc, str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def _check_list_indices(merged: DictConfig, key: str) -> None:
    """A ConfigError naming `key` when it steps into a list by anything but an index it has."""
    node: Any = merged
    walked: list[str] = []
    for part in key.replace("[", ".").replace("]", "").split("."):
        if isinstance(node, ListConfig):
            where = ".".join(walked)
            if not part.isdigit():
                item = f"{where}.0.<field>" if len(node) and isinstance(node._get_node(0), DictConfig) else f"{where}.0"
                raise ConfigError(f"command line: '{key}': {where} is a list; set an item by its index, e.g. "
                                  f"'{item}=...', or the whole list, e.g. '{where}=[...]'")
            if int(part) >= len(node):
                raise ConfigError(f"command line: '{key}': {where} has {len(node)} items (indices 0 to "
                                  f"{len(node) - 1}); to add one, set the whole list, e.g. '{where}=[...]'")
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        else:
            return  # an unknown key: OmegaConf names it
        walked.append(part)


def _override_value(item: str) -> Any:
    """The value of a `key=value` override, parsed as YAML the way OmegaConf parses a dotlist."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={item.split('=', 1)[1]}"]))["value"]
    except yaml.YAMLError as exc:
        raise ConfigError(f"command line: the value of '{item}' is not valid YAML ({str(exc).splitlines()[0]}); "
                          "flow mappings need a space after ':', e.g. 'compare.variants={a: {schedule: real_only}}'") from None


def read_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RaysysConfig:
    """YAML `path` (optional) over the defaults, then `key=value` overrides, in order; keys and types
    checked. A list item is set by its index: `synthesis.plans.0.ratio=0.2` (or `plans[0]`)."""
    merged = read_file(path) if path is not None else OmegaConf.structured(RaysysConfig)
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        value = _override_value(item)
        _check_list_indices(merged, key)
        try:
            OmegaConf.update(merged, key, value, merge=True)
        except (OmegaConfBaseException, ValidationError) as exc:
            raise _explain(exc, "command line") from None
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError(f"command line: cannot set '{key}' to {value!r}: {exc}") from None
    return _to_config(merged, "command line" if overrides else str(path or "config"))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(obj: Any, hint: Any = Any) -> Any:
    """JSON-ready `obj`, less its `runtime` fields: what `OmegaConf.to_container(OmegaConf.structured(obj))` gives for our
    config dataclasses, including its one coercion that reaches a digest, an int in a float field
    (a variant's `synthetic_per_epoch: 1` is 1.0), without OmegaConf's cost (a digest of every
    stage of a 70-unit comparison took 30 s through it)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        hints = _field_types(type(obj))
        return {f.name: _plain(getattr(obj, f.name), hints.get(f.name, Any)) for f in fields(obj)
                if not f.metadata.get(RUNTIME)}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:  # Optional[X], X | None
        hint, args = args[0], list(typing.get_args(args[0]))
    if isinstance(obj, (list, tuple)):
        item = args[0] if typing.get_origin(hint) in (list, tuple) and args else Any
        return [_plain(v, item) for v in obj]
    if isinstance(obj, dict):
        value = args[1] if typing.get_origin(hint) is dict and len(args) == 2 else Any
        return {str(k): _plain(v, value) for k, v in obj.items()}
    if hint is float and isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    return obj


def digest(*parts: Any) -> str:
    """Stable short digest of config sections (dataclasses, also inside lists) and plain values; a
    section's `runtime` fields are left out, so they change no digest."""
    return hashlib.sha256(json.dumps(_plain(parts), sort_keys=True, default=str).encode()).hexdigest()[:16]


def value_at(cfg: Any, path: str) -> Any:
    """The section or field at a dotted path: `value_at(cfg, "generator.prompt_template")`."""
    value = cfg
    for name in path.split("."):
        value = getattr(value, name)
    return value
