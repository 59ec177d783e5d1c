"""A stage's output folder: resolved config, metrics.json, and a completion marker.

`<run root>/<stage>/config.yaml` holds the resolved config the stage ran with and
`metrics.json` its metrics. A stage is complete when `metrics.json` records
`status: done` for the same config digest; rerunning a complete stage is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from raysys.core import io
from raysys.core.config import RaysysConfig, to_yaml


class MissingInput(RuntimeError):
    """A stage's input (an upstream stage's output) is not there: the message names the command
    that makes it. The CLI prints it as one line and exits with status 2."""


class Interrupted(RuntimeError):
    """Work stopped before it finished (Ctrl-C); what is done is kept and the same command
    resumes it. The CLI prints it as one line and exits with status 130."""


@dataclass
class StageDir:
    root: str
    """Run root (local path or URI)."""
    name: str
    """Stage name: the folder under the run root."""
    digest: str
    """Digest of the config sections this stage depends on."""
    started: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return io.join(io.resolve(self.root), self.name)

    def file(self, *parts: str) -> str:
        return io.join(self.path, *parts)

    def is_complete(self) -> bool:
        if not io.exists(self.file("metrics.json")):
            return False
        metrics = io.read_json(self.file("metrics.json"))
        return metrics.get("status") == "done" and metrics.get("config_digest") == self.digest

    def begin(self, cfg: RaysysConfig) -> None:
        """Mark the stage as running (replacing any old 'done' marker) before touching outputs."""
        io.makedirs(self.path)
        io.write_json(self.file("metrics.json"), {"stage": self.name, "status": "running",
                                                  "config_digest": self.digest})
        io.write_text(self.file("config.yaml"), to_yaml(cfg))

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        out = {"stage": self.name, "status": "done", "config_digest": self.digest,
               "seconds": round(time.time() - self.started, 3), **metrics}
        io.write_json(self.file("metrics.json"), _finite(out))
        return out

    def metrics(self) -> dict[str, Any]:
        return io.read_json(self.file("metrics.json"))


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
