"""Ray Tune sweeps over the curriculum: each trial is a function trainable that builds and fits a
TorchTrainer (raysys.training.curriculum.curriculum_loop) and forwards its per-epoch reports
to Tune, where ASHA stops the weak trials at its rungs.

- The trial function is only the Ray Train driver: it holds no CPU (1 MiB of logical memory), the Train
  workers hold the cores, and `max_concurrent_trials` (derived from the cluster) keeps the drivers from starting
  runs that would wait for resources.
- Trials read the synthetic manifests; nothing is generated.
- The sweep is stored under `<stage>/ray/<name>`: rerunning an interrupted sweep restores it
  (`Tuner.restore`): finished trials are kept, unfinished ones restart and their Ray Train run
  resumes from its last checkpoint (`<stage>/ray/trials/<trial id>`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Optional

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raysys.core.config import RaysysConfig
from raysys.core.stage import Interrupted
from raysys.schedules.search import apply_tune_params
from raysys.ray.tracking import Tracking, end_run, for_trial, scalars
from raysys.ray.train import Workers, trainer
from raysys.training.classifier import ClassifierSetup
from raysys.training.curriculum import CurriculumJob, curriculum_loop


@dataclass
class SweepJob:
    cfg: RaysysConfig
    manifest: str
    plan_dirs: dict[str, str]
    """Synthesis plan name -> the folder of its version."""
    num_classes: int
    groups: dict
    storage: str
    """Absolute folder: the Tune experiment and every trial's Ray Train run live under it."""
    name: str
    """Tune experiment name (the same name restores the sweep)."""
    tracking: Optional[Tracking] = None
    """The stage's tracking (raysys.ray.tracking.tracked): each trial's Train run logs to it."""


def trials_storage(job: SweepJob) -> str:
    """Where every trial's Ray Train run is stored (named by its trial id)."""
    return os.path.join(job.storage, "trials")


def sweep_tracking(job: SweepJob) -> Optional[Tracking]:
    """The trials' tracking: their own MLflow experiment, `<experiment>/tune/<tune.name>`, one run per trial."""
    t = job.tracking
    if t is None or t.experiment is None:
        return t
    return replace(t, experiment=f"{t.experiment}/tune/{job.cfg.tune.name}")


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """tune.space -> Tune's param_space (flat: the keys stay `curriculum.field[.i]`)."""
    out = {}
    for key, domain in space.items():
        kind, values = next(iter(domain.items()))
        if kind == "choice":
            out[key] = tune.choice(list(values))
        elif kind == "grid":
            out[key] = tune.grid_search(list(values))
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*values)
        elif kind == "randint":
            out[key] = tune.randint(*values)
        else:
            raise ValueError(f"tune.space.{key}: unknown domain '{kind}'")
    return out


def derive_concurrency(resources: dict[str, float], workers: int, cpus_per_worker: float, use_gpu: bool) -> int:
    """Trials that can train at once: the cluster's CPUs (and GPUs) over one trial's Ray Train
    workers (the trial drivers themselves hold nothing)."""
    n = resources.get("CPU", 0) // max(workers * cpus_per_worker, 1e-9)
    if use_gpu:
        n = min(n, resources.get("GPU", 0) // workers)
    return max(1, int(n))


def trial_job(job: SweepJob, cfg: RaysysConfig, trial_id: str) -> CurriculumJob:
    """The curriculum run of a trial whose config (the sweep's, its params applied) is `cfg`."""
    return CurriculumJob(setup=ClassifierSetup.of(cfg), curriculum=cfg.curriculum, manifest=job.manifest,
                         plan_dirs=job.plan_dirs, num_classes=job.num_classes, groups=job.groups, name=trial_id)


def _trial(params: dict[str, Any], job: SweepJob) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_tune_params(job.cfg, params, name=f"trial-{trial_id}")
    workers = Workers.for_training(cfg.train, cfg.curriculum.num_workers)
    t = sweep_tracking(job)
    trainer(curriculum_loop, trial_job(job, cfg, trial_id), workers, trial_id, trials_storage(job),
            callbacks=[TuneReportCallback()], tracking=None if t is None else for_trial(t, cfg, trial_id)).fit()


class _Progress(tune.Callback):
    """One line per trial that ends: completed, stopped by ASHA (at which epoch) or failed."""

    def __init__(self, total: int, epochs: int, metric: str):
        self.total, self.epochs, self.metric, self.ended = total, epochs, metric, 0

    def _line(self, trial, what: str) -> None:
        self.ended += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"[tune] {self.ended}/{self.total} trials ended: {trial.trial_id} {what} at epoch "
              f"{last.get('epoch', 0)}/{self.epochs}, {self.metric} {shown}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "completed" if (trial.last_result or {}).get("epoch", 0) >= self.epochs else "stopped by ASHA")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")


REPORTED = ("epoch", "train_loss")
"""What a trial's result holds of the curriculum loop's reports, beside its val_* and test_* metrics."""


class _EndTrialRuns(tune.Callback):
    """Ends each trial's MLflow run from the driver with the trial's outcome (tag `raysys.tune_status`):
    a trial ASHA stops is killed with its Train run, which then cannot end its own MLflow run."""

    def __init__(self, job: SweepJob, epochs: int):
        self.tracking, self.storage, self.epochs = sweep_tracking(job), trials_storage(job), epochs

    def _end(self, trial, status: str, outcome: str) -> None:
        last = trial.last_result or {}
        # A stopped trial's final metrics are its result (what ASHA saw); a completed one logged its own.
        final = {} if outcome == "completed" else scalars({k: v for k, v in last.items() if k in REPORTED or
                                                           k.startswith(("val_", "test_"))})
        try:
            end_run(self.tracking, f"{self.storage}/{trial.trial_id}", status, {"raysys.tune_status": outcome},
                    final, int(last.get("epoch") or 0))
        except Exception as exc:  # noqa: BLE001 - tracking never stops a sweep
            print(f"[tune] {trial.trial_id}: could not end its MLflow run: {str(exc).splitlines()[0]}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        completed = (trial.last_result or {}).get("epoch", 0) >= self.epochs
        self._end(trial, "FINISHED" if completed else "KILLED", "completed" if completed else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED", "error")


def _fit_noting_interrupt(tuner: tune.Tuner):
    """tuner.fit(), or None when Ctrl-C stopped it. Tune catches the first SIGINT itself, saves the
    sweep and returns the trials it has, marking the running ones as ended; the only trace is that
    it puts back the handler it found. So a marker handler goes in first: finding it again after
    fit means the sweep was interrupted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()

    def marker(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, marker)
    try:
        grid = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)
    return None if interrupted else grid


def run_sweep(job: SweepJob) -> tuple[list[dict], int]:
    """Run (or resume) the sweep; returns one row per trial (trial_id, params, status, epochs, last
    reported metrics, error) and the trials run at once."""
    cfg, t = job.cfg, job.cfg.tune
    workers = cfg.curriculum.num_workers or cfg.train.num_workers
    concurrent = t.max_concurrent_trials or derive_concurrency(ray.cluster_resources(), workers,
                                                               cfg.train.cpus_per_worker, cfg.train.use_gpu)
    epochs = cfg.curriculum.epochs or cfg.train.epochs
    # A trial needs a non-empty resource request; 1 MiB of (logical) memory leaves every CPU to the
    # Train workers (a fraction of a CPU would leave 2 cores less than 2 whole 1-CPU workers).
    trainable = tune.with_resources(tune.with_parameters(_trial, job=job), {"cpu": 0, "memory": 2**20})
    path = os.path.join(job.storage, job.name)
    grid_points = 1
    for domain in t.space.values():
        kind, values = next(iter(domain.items()))
        grid_points *= len(values) if kind == "grid" else 1
    total = t.num_samples * grid_points
    if tune.Tuner.can_restore(path):
        print(f"[tune] resuming the interrupted sweep in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        print(f"[tune] {total} trials over {len(t.space)} parameters, ASHA on {t.metric} ({t.mode}) "
              f"every epoch: grace {t.grace_period}, reduction {t.reduction_factor}, {epochs} epochs at most; "
              f"{concurrent} trials at a time", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(t.space),
            tune_config=tune.TuneConfig(
                metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                scheduler=ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=t.grace_period,
                                        reduction_factor=t.reduction_factor),
                # Tune ignores max_concurrent_trials with a search_alg given: the generator limits it.
                search_alg=BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrent),
            ),
            run_config=tune.RunConfig(name=job.name, storage_path=job.storage, verbose=0, callbacks=[
                _Progress(total, epochs, t.metric),
                *([_EndTrialRuns(job, epochs)] if job.tracking is not None and job.tracking.mlflow_uri else [])]),
        )
    grid = _fit_noting_interrupt(tuner)
    if grid is None or len(grid) < total:
        raise Interrupted(f"the sweep was stopped before its {total} trials ended; the finished ones are kept: run "
                          f"the same command again to resume it ({path})")
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or "_".join(os.path.basename(result.path).split("_")[2:4])  # _trial_<id>_...
        epoch = int(metrics.get("epoch") or 0)
        status = "error" if result.error else ("completed" if epoch >= epochs else "stopped")
        rows.append({"trial_id": trial_id, "params": {k: (result.config or {}).get(k) for k in t.space}, "status": status,
                     "epochs": epoch, "metrics": {k: v for k, v in metrics.items()
                                                  if k.startswith(("val_", "test_", "train_loss"))},
                     "error": str(result.error).strip().splitlines()[-1][:300] if result.error else None})
    return rows, concurrent
