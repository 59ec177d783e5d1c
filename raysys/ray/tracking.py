"""Experiment tracking: every Ray Train run (and so every Tune trial) logs its parameters, every
report's metrics and, at its end, its final metrics to MLflow and to TensorBoard event files.

The hook is the adapter's `RayTrainContext.report` (raysys.ray.train), the one place that sees
every metric of every loop: rank 0 of a run opens a `Tracker` when the run starts, logs each
report to it, and closes it when the loop returns (or fails). Nothing here changes what a stage
writes: `tracking.*` is runtime configuration (docs/tracking.md).

- **MLflow** (`tracking.mlflow_uri`, off by default) through Ray's own integration
  (`ray.air.integrations.mlflow.setup_mlflow`, rank 0 only). The Train runs of one raysys run go
  to one experiment (`tracking.mlflow_experiment`, default the run root's folder name), one MLflow
  run per Ray Train run, named as the Train run is; a sweep's trials to `<experiment>/tune/<name>`,
  one MLflow run per trial. A killed run that resumes on the rerun logs on into the same MLflow run
  (found by its `raysys.run_key` tag: the Train run's storage and name).
- **TensorBoard** (`tracking.tensorboard`, on by default): event files under
  `<root>/tensorboard/<stage>/<run name>/`, written with tensorboardX (a dependency of Ray Train
  and Tune, 0.6 MB; `tensorboard` itself is only needed to view them). A root that is a URI
  (s3://) gets them copied after every report.

Parameters are the sections of the config the run's stage declares, flattened (`train.lr`). A
report's step is its `epoch` (or `step`) metric. The final metrics are the scalars of the last
history record the run checkpointed (test metrics included), else its last report, as `final/...`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field, is_dataclass, replace
from typing import Any, Optional

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.loading import value_at

TENSORBOARD = "tensorboard"
"""The folder under the run root that holds every run's TensorBoard event files."""
INSTALL = "pip install raysys[tracking]"
RUN_KEY = "raysys.run_key"
"""The tag that names an MLflow run's Ray Train run (storage/name): a resumed run logs on into it."""
MAX_PARAM_CHARS = 6000
"""MLflow's longest parameter value (mlflow >= 2.3); longer values are cut."""


def check_tracking(cfg: RaysysConfig) -> list[str]:
    """The problems of `tracking.*` that would stop a run (checked before any work)."""
    t = cfg.tracking
    problems = []
    if t.mlflow_uri and importlib.util.find_spec("mlflow") is None:
        problems.append(f"tracking.mlflow_uri is set but mlflow is not installed: {INSTALL}")
    if t.mlflow_uri is not None and not t.mlflow_uri.strip():
        problems.append("tracking.mlflow_uri is empty: give an http://host:port server or a file: store, or null")
    if t.mlflow_experiment is not None and not t.mlflow_experiment.strip():
        problems.append("tracking.mlflow_experiment is empty: give a name, or null for the run root's folder name")
    if t.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        problems.append("tracking.tensorboard needs tensorboardX: pip install tensorboardX "
                        "(or set tracking.tensorboard=false)")
    return problems


def experiment_name(cfg: RaysysConfig) -> str:
    """The MLflow experiment of the run's Ray Train runs."""
    return cfg.tracking.mlflow_experiment or io.resolve(cfg.run.root).rstrip("/").rsplit("/", 1)[-1]


def _param(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 1] + "…"


def flat_params(cfg: RaysysConfig, sections: tuple[str, ...]) -> dict[str, str]:
    """The config at each of `sections` (a section, `train`, or a field, `run.seed`) as flat
    `section.field` -> text (a list of sections: `synthesis.plans.0.ratio`)."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{key}.{f.name}")
        elif isinstance(value, list) and value and is_dataclass(value[0]):
            for i, item in enumerate(value):
                walk(item, f"{key}.{i}")
        else:
            out[key] = _param(value)

    for section in sections:
        walk(value_at(cfg, section), section)
    return out


def scalars(obj: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) metrics dict as flat `a/b` -> float; lists, text and None are left out."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


@dataclass(frozen=True)
class Tracking:
    """What the Train runs of one stage (or one sweep) log, and where. Built on the driver
    (`tracked`), handed to each run (`raysys.ray.train.fit(..., tracking=...)`)."""

    stage: str
    """Their folder under <root>/tensorboard/ (the stage's folder: `train_classifier`, `tune/sweep`)."""
    root: str
    """The run root (resolved)."""
    sections: tuple[str, ...]
    """The config the params come from."""
    params: dict[str, str]
    tensorboard: bool = True
    mlflow_uri: Optional[str] = None
    experiment: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)

    def tracker(self, name: str, storage: str) -> "Tracker":
        """The (unopened) tracker of the Train run `name` under `storage`."""
        return Tracker(self, name, f"{storage.rstrip('/')}/{name}")


def tracked(cfg: RaysysConfig, stage: Any, *extra: str) -> Optional[Tracking]:
    """The tracking of the Train runs of `stage` (a raysys.core.stage.Stage) for `cfg`: params from
    the config sections the stage declares and `extra` ones; None when tracking is off."""
    t = cfg.tracking
    if not t.mlflow_uri and not t.tensorboard:
        return None
    folder = stage.folder(cfg) if stage.units is None and stage.folder is not None else stage.name
    sections = tuple(dict.fromkeys((*extra, *stage.config)))
    return Tracking(stage=folder, root=io.resolve(cfg.run.root), sections=sections, params=flat_params(cfg, sections),
                    tensorboard=t.tensorboard, mlflow_uri=t.mlflow_uri or None,
                    experiment=experiment_name(cfg) if t.mlflow_uri else None,
                    tags={"raysys.stage": folder, "raysys.root": io.resolve(cfg.run.root)})


def for_trial(tracking: Tracking, cfg: RaysysConfig, trial_id: str) -> Tracking:
    """A sweep's tracking for one trial: the params of the trial's own config."""
    return replace(tracking, params=flat_params(cfg, tracking.sections),
                   tags={**tracking.tags, "raysys.trial_id": trial_id})


# --- MLflow -------------------------------------------------------------------------------------

def _use_store(mlflow, uri: str) -> None:
    """Point this process's MLflow at `uri`. A `file:` store is asked for by name, so it is allowed
    (MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set)."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)


def _experiment_id(mlflow, name: str) -> str:
    """The experiment's id, created if missing (runs starting at once may race to create it)."""
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow.create_experiment(name)
        except MlflowException:  # another run created it first
            found = mlflow.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        mlflow.MlflowClient().restore_experiment(found.experiment_id)
    return found.experiment_id


def _find_run(client, experiment_id: str, key: str) -> Optional[str]:
    """The id of the MLflow run of the Train run `key`, if one was started before."""
    if "'" in key:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{key}'", max_results=1)
    return runs[0].info.run_id if runs else None


def end_run(tracking: Tracking, key: str, status: str, tags: Optional[dict[str, str]] = None,
            final: Optional[dict[str, float]] = None, step: int = 0) -> None:
    """Mark the MLflow run of the Train run `key` ended with `status` (FINISHED, FAILED, KILLED),
    with `tags` and the `final` metrics (logged as `final/<name>` at `step`), from the driver: a Tune
    trial stopped by its scheduler is killed with its Train run, which never ends its own MLflow run."""
    import mlflow

    _use_store(mlflow, tracking.mlflow_uri)
    found = mlflow.get_experiment_by_name(tracking.experiment)
    client = mlflow.MlflowClient(tracking_uri=tracking.mlflow_uri)
    run_id = _find_run(client, found.experiment_id, key) if found is not None else None
    if run_id is None:
        return
    for name, value in (tags or {}).items():
        client.set_tag(run_id, name, value)
    if final:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(f"final/{k}", v, now, step) for k, v in final.items()])
    client.set_terminated(run_id, status=status)


# --- the hook -----------------------------------------------------------------------------------

class Tracker:
    """The tracking of one Ray Train run, on its rank 0: `open` when the run starts, `log` every
    report, `close` when the loop ends. MLflow errors after `open` are printed once and logging to
    MLflow stops; the run goes on."""

    def __init__(self, tracking: Tracking, name: str, key: str) -> None:
        self.tracking, self.name, self.key = tracking, name, key
        self.writer = None
        self.tb_local: Optional[str] = None
        self.tb_target: Optional[str] = None
        self.mlflow = None
        self.client = None
        self.run_id: Optional[str] = None
        self.reports = 0
        self.step = 0
        self.last_metrics: dict[str, Any] = {}
        self.last_state: Optional[dict] = None

    @property
    def tensorboard_dir(self) -> str:
        return io.join(self.tracking.root, TENSORBOARD, self.tracking.stage, self.name)

    def open(self) -> "Tracker":
        t = self.tracking
        if t.tensorboard:
            # tensorboardX's own EventsWriter, written and flushed in this thread at every report (its
            # SummaryWriter queues events for a thread: a killed run would lose the last ones). One
            # file per opening: a resumed run adds its own beside the killed one's.
            from tensorboardX.event_file_writer import EventsWriter

            self.tb_target = self.tensorboard_dir
            local = "://" not in self.tb_target
            self.tb_local = self.tb_target if local else tempfile.mkdtemp(prefix="raysys-tensorboard-")
            os.makedirs(self.tb_local, exist_ok=True)
            self.writer = EventsWriter(os.path.join(self.tb_local, "events"), f".{uuid.uuid4().hex[:8]}")
        if t.mlflow_uri:
            self._open_mlflow()
        return self

    def _open_mlflow(self) -> None:
        import mlflow
        from ray.air.integrations.mlflow import setup_mlflow

        t = self.tracking
        _use_store(mlflow, t.mlflow_uri)
        experiment_id = _experiment_id(mlflow, t.experiment)
        client = mlflow.MlflowClient(tracking_uri=t.mlflow_uri)
        resumed = _find_run(client, experiment_id, self.key)
        if resumed is not None:
            os.environ["MLFLOW_RUN_ID"] = resumed  # start_run takes it (and removes it): the same run goes on
        try:
            self.mlflow = setup_mlflow(tracking_uri=t.mlflow_uri, experiment_id=experiment_id, run_name=self.name,
                                       tags={**t.tags, RUN_KEY: self.key, "raysys.train_run": self.name})
        finally:
            os.environ.pop("MLFLOW_RUN_ID", None)
        self.run_id, self.client = self.mlflow.active_run().info.run_id, client
        logged = client.get_run(self.run_id).data.params if resumed else {}
        new = [mlflow.entities.Param(k, v) for k, v in t.params.items() if k not in logged]
        if new:
            client.log_batch(self.run_id, params=new)

    def _mlflow_call(self, what: str, call) -> None:
        if self.run_id is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - tracking never stops a run
            self._gave_up(f"MLflow {what}", exc)
            self.run_id = None

    def _tensorboard_call(self, call) -> None:
        if self.writer is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - tracking never stops a run
            self._gave_up("writing TensorBoard events", exc)
            self.writer = None

    def _gave_up(self, what: str, exc: Exception) -> None:
        print(f"[tracking] {self.name}: {what} failed, no more of it for this run: "
              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", flush=True)

    def _write_events(self, values: dict[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()
        if self.tb_local != self.tb_target:
            io.copy_dir(self.tb_local, self.tb_target)

    def _write(self, values: dict[str, float], step: int) -> None:
        if values:
            self._tensorboard_call(lambda: self._write_events(values, step))
        if values and self.run_id is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step) for k, v in values.items()]
            self._mlflow_call("logging", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log(self, metrics: dict[str, Any], state: Optional[dict] = None) -> None:
        """One report: its scalars at its step (its `epoch`, else `step`, else the report's number)."""
        self.reports += 1
        step = metrics.get("epoch", metrics.get("step", self.reports))
        self.step = int(step) if isinstance(step, (int, float)) else self.reports
        self.last_metrics = metrics
        if state is not None:
            self.last_state = state
        self._write(scalars(metrics), self.step)

    def restored(self, state: Optional[dict]) -> None:
        """The state of the checkpoint the run resumed from (its history, for the final metrics)."""
        if state is not None:
            self.last_state = state

    def final_metrics(self) -> dict[str, float]:
        """The last checkpointed history record's scalars (test metrics included), else the last report's."""
        history = (self.last_state or {}).get("history")
        last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else None
        return scalars(last if last is not None else self.last_metrics)

    def close(self, failed: bool = False) -> None:
        final = {} if failed else self.final_metrics()
        self._write({f"final/{k}": v for k, v in final.items()}, self.step)
        if self.writer is not None:
            self._tensorboard_call(self.writer.close)
            if self.tb_local != self.tb_target:
                self._tensorboard_call(lambda: io.copy_dir(self.tb_local, self.tb_target))
            self.writer = None
        if self.tb_local is not None and self.tb_local != self.tb_target:
            shutil.rmtree(self.tb_local, ignore_errors=True)
        status = "FAILED" if failed else "FINISHED"
        self._mlflow_call("end", lambda: self.mlflow.end_run(status=status))
        self.run_id = None
