"""How a config field says that it changes how a stage runs, never what it writes."""

from __future__ import annotations

from dataclasses import field
from typing import Any

RUNTIME = "runtime"
"""The field metadata key of `runtime` fields."""


def runtime(default: Any) -> Any:
    """A field that changes how a stage runs, never what it writes: it is in no fingerprint."""
    return field(default=default, metadata={RUNTIME: True})
