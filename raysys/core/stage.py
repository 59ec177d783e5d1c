"""The Stage contract and the one runner that owns skip, resume, missing inputs, timing and order.

A `Stage` declares its name, the stages it reads, the config it reads (`config`: sections or
fields), a `version` bumped when a code change changes its outputs, `check(cfg)` (its own config
problems) and `run(ctx)`. Everything else is the runner's:

- **The cache.** A stage's *fingerprint* is the values of the config it declares, less the fields
  declared `runtime` (raysys.core.config: resources, concurrency, checkpoint frequency), and what
  `derived` computes from the config. Its digest hashes its name, version, fingerprint and the
  digests of the stages it reads. So a field added to a section is in the fingerprint of every
  stage that reads the section, with no list to keep; a test checks that every field that is not
  `runtime` changes some stage's digest. `<root>/<stage>/metrics.json` records `status: done` and
  that digest when the stage finished; a stage whose recorded digest matches is skipped, and so
  is every change to a `runtime` field. A different digest reruns
  the stage in the same folder and replaces its outputs. Resumable work inside a stage (Ray
  Train runs, fold models, synthesis plan parts) is keyed by `ctx.digest`, so a killed run
  resumes when the same command is run again, and a changed config starts that work afresh.
- **The graph.** A stage names the stages it reads (`reads`, `needs`); `register` makes the
  registry's stages known by name (raysys/stages/__init__.py does, once), and `stage_named`
  finds one, so that no stage module imports another.
- **Order.** `chain` sorts stages so that each comes after the stages it reads.
- **Checks.** `check_chain` runs `check` of every stage of a chain before any work.
- **Inputs.** A stage starts only when every stage it reads for this config is complete;
  otherwise `MissingInput` names the command that makes the missing one.
- **Units.** A stage may run as several units, each its own folder and digest (the curriculum
  runs of a comparison): `units(cfg)` gives one config per unit, `folder(cfg)` its folder, and
  `batch(calls, cfg)` how the incomplete ones run (in turn, or several at once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.loading import ConfigError
from raysys.core.loading import digest, to_yaml, value_at


class MissingInput(RuntimeError):
    """A stage's input (an upstream stage's output) is not there: the message names the command
    that makes it. The CLI prints it as one line and exits with status 2."""


class Interrupted(RuntimeError):
    """Work stopped before it finished (Ctrl-C); what is done is kept and the same command
    resumes it. The CLI prints it as one line and exits with status 130."""


@dataclass
class StageDir:
    """One stage's (or unit's) output folder: resolved config.yaml, metrics.json, artefacts."""

    root: str
    """Run root (local path or URI)."""
    name: str
    """Folder under the run root (`score`, `curriculum/<variant>-seed<n>`)."""
    digest: str
    """The stage's digest for this config (see the module docstring)."""

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

    def metrics(self) -> dict[str, Any]:
        return io.read_json(self.file("metrics.json"))


@dataclass
class StageRun:
    """One run of a stage (or of one of its units): what `Stage.run` gets, its config and its output folder."""

    cfg: RaysysConfig
    dir: StageDir

    @property
    def digest(self) -> str:
        return self.dir.digest

    def file(self, *parts: str) -> str:
        return self.dir.file(*parts)


def _no_problems(cfg: RaysysConfig) -> list[str]:
    return []


def _always(cfg: RaysysConfig) -> bool:
    return True


_REGISTRY: dict[str, "Stage"] = {}


def register(stages: Sequence["Stage"]) -> None:
    """Make `stages` known by name to `stage_named` (and to the `reads` of other stages)."""
    _REGISTRY.update({s.name: s for s in stages})


def stage_named(name: str) -> "Stage":
    if name not in _REGISTRY:
        raise KeyError(f"no stage named '{name}' is registered (import raysys.stages first)")
    return _REGISTRY[name]


def _stage(ref: "str | Stage") -> "Stage":
    return stage_named(ref) if isinstance(ref, str) else ref


@dataclass(eq=False)
class Stage:
    name: str
    """Folder under the run root; the CLI command is the name with '-' for '_'."""
    reads: tuple["str | Stage", ...]
    """The stages whose outputs it reads, by name (those that apply to the config)."""
    config: tuple[str, ...]
    """The config it reads: sections (`train`) or fields (`generator.prompt_template`). Their values,
    less `runtime` fields, are its fingerprint; what reaches it through `reads` need not be named."""
    run: Callable[[StageRun], dict]
    """Does the work and returns the metrics; the runner writes metrics.json after it."""
    derived: Optional[Callable[[RaysysConfig], Any]] = None
    """What the fingerprint needs beyond `config`: values computed from it (the baseline variant
    when none is named) or read from files it names (a prompts file's content)."""
    version: int = 1
    """Bumped when a code change changes the stage's outputs."""
    check: Callable[[RaysysConfig], list[str]] = _no_problems
    """The config problems that would make the stage fail: run for the whole chain first."""
    ready: Callable[[RaysysConfig], list[str]] = _no_problems
    """Problems that stop this stage itself, in a config valid for the others (tune without a space)."""
    applies: Callable[[RaysysConfig], bool] = _always
    """Whether the stage is part of a run for this config (pretrain-generator: builtin only)."""
    needs: Optional[Callable[[RaysysConfig], Sequence["str | Stage"]]] = None
    """The stages of `reads` this config needs, by name (None: every one that applies)."""
    in_run: bool = True
    """Part of `raysys run` (tune is started on its own)."""
    needs_ray: bool = True
    units: Optional[Callable[[RaysysConfig], list[RaysysConfig]]] = None
    """One config per unit (None: the stage is one unit, with the config as it is)."""
    folder: Optional[Callable[[RaysysConfig], str]] = None
    """A unit's folder under the run root (None: `name`)."""
    batch: Optional[Callable[[list[Callable[[], dict]], RaysysConfig], list[dict]]] = None
    """How a stage's incomplete units run, given one call per unit (None: in turn)."""
    describe: str = ""
    """One line for the CLI's help and the report's stage table."""

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    def fingerprint(self, cfg: RaysysConfig) -> Any:
        """The declared config's values (a digest leaves out their `runtime` fields) and `derived`'s."""
        declared = {path: value_at(cfg, path) for path in self.config}
        return declared if self.derived is None else (declared, self.derived(cfg))

    def upstream_stages(self) -> list["Stage"]:
        """The stages it reads."""
        return [_stage(r) for r in self.reads]

    def inputs(self, cfg: RaysysConfig) -> list["Stage"]:
        chosen = self.needs(cfg) if self.needs is not None else self.reads
        return [s for s in map(_stage, chosen) if s.applies(cfg)]

    def unit_configs(self, cfg: RaysysConfig) -> list[RaysysConfig]:
        return self.units(cfg) if self.units is not None else [cfg]

    def unit_dir(self, unit_cfg: RaysysConfig) -> StageDir:
        """The folder and digest of one unit, for its own config."""
        upstream = [s.digest(unit_cfg) for s in self.inputs(unit_cfg)]
        name = self.folder(unit_cfg) if self.folder is not None else self.name
        return StageDir(unit_cfg.run.root, name, digest(self.name, self.version, self.fingerprint(unit_cfg), upstream))

    def dirs(self, cfg: RaysysConfig) -> list[StageDir]:
        return [self.unit_dir(c) for c in self.unit_configs(cfg)]

    def dir(self, cfg: RaysysConfig) -> StageDir:
        """The folder of a one-unit stage."""
        dirs = self.dirs(cfg)
        if len(dirs) != 1:
            raise ValueError(f"stage {self.name} has {len(dirs)} units: use dirs(cfg)")
        return dirs[0]

    def digest(self, cfg: RaysysConfig) -> str:
        dirs = self.dirs(cfg)
        return dirs[0].digest if self.units is None else digest(self.name, [(d.name, d.digest) for d in dirs])

    def is_complete(self, cfg: RaysysConfig) -> bool:
        return all(d.is_complete() for d in self.dirs(cfg))


def chain(stages: Sequence[Stage], cfg: RaysysConfig) -> list[Stage]:
    """The stages of a `raysys run` for this config, each after the stages it reads (registry order
    among those that do not depend on each other)."""
    todo = [s for s in stages if s.in_run and s.applies(cfg)]
    ordered: list[Stage] = []
    while todo:
        ready = next((s for s in todo if all(r in ordered or r not in todo for r in s.upstream_stages())), None)
        if ready is None:
            raise RuntimeError(f"stage graph has a cycle among {[s.name for s in todo]}")
        ordered.append(ready)
        todo.remove(ready)
    return ordered


def check_chain(stages: Sequence[Stage], cfg: RaysysConfig, origin: str = "config") -> None:
    """Every problem of every stage of the chain, as one ConfigError, before any work."""
    problems: list[str] = []
    for stage in stages:
        problems += [p for p in stage.check(cfg) if p not in problems]
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run_unit(stage: Stage, unit_cfg: RaysysConfig) -> dict:
    """One unit: skipped if complete for this digest, else run; its resolved config.yaml and a 'done'
    metrics.json are written last, after every artefact."""
    out = stage.unit_dir(unit_cfg)
    if out.is_complete():
        unit = f" {out.name.split('/', 1)[1]}:" if "/" in out.name else ""
        print(f"[{stage.name}]{unit} complete for this config, skipped ({out.path})", flush=True)
        return out.metrics()
    started = time.time()
    if io.exists(out.file("metrics.json")):  # outputs of another config: no longer done once touched
        io.write_json(out.file("metrics.json"), {"stage": stage.name, "status": "running", "config_digest": out.digest})
    metrics = stage.run(StageRun(unit_cfg, out))  # nothing is written before the stage writes (bad input: no folder)
    io.write_text(out.file("config.yaml"), to_yaml(unit_cfg))
    done = {"stage": stage.name, "status": "done", "config_digest": out.digest,
            "seconds": round(time.time() - started, 3), **metrics}
    io.write_json(out.file("metrics.json"), _finite(done))
    return done


def missing_inputs(stage: Stage, unit_cfgs: Sequence[RaysysConfig]) -> None:
    """Raise MissingInput naming the first input these units need that is not complete."""
    for unit_cfg in unit_cfgs:
        for upstream in stage.inputs(unit_cfg):
            if not upstream.is_complete(unit_cfg):
                where = ", ".join(d.path for d in upstream.dirs(unit_cfg) if not d.is_complete())
                raise MissingInput(f"{stage.command} needs the output of {upstream.command}: run "
                                   f"`raysys {upstream.command} CONFIG` (or `raysys run CONFIG`) first ({where})")


def run_stage(stage: Stage, cfg: RaysysConfig) -> list[dict]:
    """Run every incomplete unit of `stage` (after its checks and its inputs); returns every unit's metrics."""
    problems = stage.check(cfg) + stage.ready(cfg)
    if problems:
        raise ConfigError(f"{stage.command}: " + "; ".join(problems))
    units = stage.unit_configs(cfg)
    todo = [c for c in units if not stage.unit_dir(c).is_complete()]
    if stage.units is not None:
        print(f"[{stage.name}] {len(units)} runs: {len(units) - len(todo)} complete, {len(todo)} to run", flush=True)
    for c in units:
        if c not in todo:
            run_unit(stage, c)  # prints the skip line
    if todo:
        missing_inputs(stage, todo)
        started = time.time()
        calls = [_UnitCall(stage, c) for c in todo]
        if stage.batch is not None and len(calls) > 1:
            stage.batch(calls, cfg)
        else:
            for call in calls:
                call()
        if stage.units is not None:  # units overlap: the sum of their own times overstates the stage's
            io.write_json(wall_time_path(stage, cfg), {"units_run": [call.label for call in calls],
                                                       "wall_seconds": round(time.time() - started, 3)})
    return [d.metrics() for d in stage.dirs(cfg)]


def wall_time_path(stage: Stage, cfg: RaysysConfig) -> str:
    """<root>/<stage>/wall_time.json: the wall time of the last run of a stage of several units."""
    return io.join(io.resolve(cfg.run.root), stage.name, "wall_time.json")


def stage_seconds(stage: Stage, cfg: RaysysConfig) -> Optional[float]:
    """The wall time of a complete stage (None: not complete, or never timed)."""
    if not stage.is_complete(cfg):
        return None
    if stage.units is None:
        seconds = stage.dir(cfg).metrics().get("seconds")
    else:
        path = wall_time_path(stage, cfg)
        seconds = io.read_json(path)["wall_seconds"] if io.exists(path) else None
    return None if seconds is None else round(seconds, 1)


def upstream(stage: Stage, cfg: RaysysConfig) -> list[Stage]:
    """Every stage `stage` depends on, directly or not, that applies to the config, in run order."""
    found: list[Stage] = []
    todo = stage.upstream_stages()
    while todo:
        s = todo.pop()
        if s not in found:
            found.append(s)
            todo.extend(s.upstream_stages())
    return chain(found, cfg)


@dataclass
class _UnitCall:
    """`run_unit(stage, cfg)` as a picklable call (a batch may run it in a Ray task)."""

    stage: Stage
    cfg: RaysysConfig
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = f"{self.stage.name} {self.stage.unit_dir(self.cfg).name}"

    def __call__(self) -> dict:
        return run_unit(self.stage, self.cfg)
