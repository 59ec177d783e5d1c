"""Ray Train for any raysys training loop: a TrainContext on Ray Train, the TorchTrainer that runs a
loop on data-parallel workers, and runs of several at once.

A loop (`raysys.training.classifier.classifier_loop`, `...curriculum.curriculum_loop`,
`raysys.generation.finetune.finetune_loop`) is called as `loop(ctx, job)` on every worker. A run
is named and stored by its caller (the stage digest is in the name), so rerunning the same
command after a kill restores the run and the loop resumes from its last reported checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import ray
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysys.core import io
from raysys.core.config import TrainConfig
from raysys.ray.session import use_assigned_cpus
from raysys.ray.tracking import Tracker, Tracking
from raysys.core.context import Checkpoint, read_checkpoint
from raysys.data.stream import decoded_batches


@dataclass
class Workers:
    """The Ray Train workers of one run."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1
    max_failures: int = 0
    """Worker failures tolerated within one run (a rerun resumes regardless)."""
    input_tasks: int = 0
    """Ray Data tasks decoding each worker's input at once (a DataLoader's num_workers); 0: the worker decodes."""
    input_cpus: float = 0.0
    """CPUs each decoding task reserves (0: it shares the CPUs the Train workers hold)."""
    prefetch_batches: int = 2
    """Batches decoded ahead of the one training."""

    @staticmethod
    def for_training(t: TrainConfig, num_workers: Optional[int] = None) -> "Workers":
        """The workers of `train.*` (num_workers: instead of train.num_workers)."""
        return Workers(num_workers or t.num_workers, t.use_gpu, t.cpus_per_worker, t.max_failures,
                       t.input_tasks, t.input_cpus, t.prefetch_batches)


class RayTrainContext:
    """A TrainContext on a Ray Train worker: its input streams from Ray Data tasks. On rank 0 every
    report also goes to the run's tracker (raysys.ray.tracking: MLflow, TensorBoard), if it has one."""

    def __init__(self, workers: Workers, tracker: Optional[Tracker] = None) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.workers = workers
        self.tracker = tracker.open() if tracker is not None and self.rank == 0 else None

    def batches(self, refs: pa.Table, decode: Callable[[pa.Table], dict], batch_size: int) -> Iterator[dict]:
        """The rows `refs` as a Ray Dataset of blocks of `batch_size` rows, decoded by `decode` in
        `input_tasks` Ray Data tasks at once and iterated in order, `prefetch_batches` ahead (pinned
        for a GPU). The rows are the loop's own (its shard of the epoch's mix, or an evaluation
        split): they change every epoch, so they cannot be a dataset fixed when the run starts.
        With input_tasks 0 the worker decodes them itself, a thread `prefetch_batches` ahead."""
        w = self.workers
        if len(refs) == 0:
            return iter(())
        if w.input_tasks == 0:
            return decoded_batches(refs, decode, batch_size, prefetch=w.prefetch_batches)
        data_ctx = ray.data.DataContext.get_current()
        data_ctx.enable_progress_bars = False
        data_ctx.execution_options.preserve_order = True  # the order the loop asked for
        data_ctx.execution_options.verbose_progress = False
        data_ctx.print_on_execution_start = False
        # Decoded blocks wait in the object store (mapped into this process as it reads them) only
        # as far ahead as the decoding tasks and the prefetch need, however long the epoch. Ray
        # Data lets an operator's outputs fill only part of the limit (it reserves half of it and
        # splits that between the tasks and their outputs), hence the limit is a multiple of it.
        ahead = 2 * w.input_tasks + w.prefetch_batches + 2
        data_ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
            object_store_memory=LIMIT_PER_BLOCK_AHEAD * ahead * decoded_block_bytes(decode, batch_size))
        # The dataset holds block starts; each task slices its block of `refs` (sent once with the
        # function). from_items builds its blocks here; from_arrow would ask a remote task (1 CPU)
        # for each block's metadata, which never starts while the Train workers hold every CPU.
        starts = [{"start": s} for s in range(0, len(refs), batch_size)]
        ds = ray.data.from_items(starts, override_num_blocks=len(starts)).map_batches(
            DecodeBlocks(refs, decode, batch_size), batch_size=None, batch_format="pyarrow", num_cpus=w.input_cpus,
            compute=ray.data.TaskPoolStrategy(size=w.input_tasks))
        return ds.iter_torch_batches(batch_size=batch_size, prefetch_batches=w.prefetch_batches, device="cpu",
                                     pin_memory=self.device.type == "cuda")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return obj

    def report(self, metrics: dict[str, Any], checkpoint: Optional[Checkpoint] = None) -> None:
        if self.tracker is not None:
            self.tracker.log(metrics, None if checkpoint is None else checkpoint.state)
        if checkpoint is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.write(d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def restore(self):
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            restored = read_checkpoint(d)
        if self.tracker is not None:
            self.tracker.restored(restored[1])
        return restored

    def close(self, failed: bool = False) -> None:
        """The loop has ended (or failed): the tracker logs the final metrics and ends its run."""
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.close(failed)


LIMIT_PER_BLOCK_AHEAD = 4
"""Ray Data's object-store limit for an epoch's input, in blocks per decoded block meant to wait
(see docs/PERFORMANCE.md, training input, for the measured choice)."""


class DecodeBlocks:
    """A Ray Data map function: blocks of block starts -> the `batch_size` rows of `refs` from each
    start, decoded by `decode` (one output block per start)."""

    def __init__(self, refs: pa.Table, decode: Callable[[pa.Table], dict], batch_size: int) -> None:
        self.refs, self.decode, self.batch_size = refs, decode, batch_size

    def __call__(self, block: pa.Table) -> dict:
        import numpy as np

        outs = [self.decode(self.refs.slice(start, self.batch_size)) for start in block["start"].to_pylist()]
        return outs[0] if len(outs) == 1 else {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def decoded_block_bytes(decode, batch_size: int) -> int:
    """Bytes of one decoded block: uint8 images at the decoder's size, int64 labels."""
    return batch_size * (decode.channels * decode.size * decode.size + 8)


def _worker(config: dict) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs every report at INFO
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # and Ray Data every epoch's dataset
    use_assigned_cpus()
    ctx = RayTrainContext(config["workers"], config.get("tracker"))
    try:
        config["loop"](ctx, config["job"])
    except BaseException:
        with contextlib.suppress(Exception):  # the loop's error is the one to see
            ctx.close(failed=True)
        raise
    ctx.close()


RUN_RECORD = "checkpoint_manager_snapshot.json"
"""The file under `<storage>/<name>/` from which Ray Train restores a run: the checkpoints it has recorded."""


def set_aside_unreadable_record(storage: str, name: str) -> bool:
    """Ray Train writes a run's record (RUN_RECORD) in place, so a kill while it is written can
    leave it empty or cut, and then every rerun fails as Ray Train starts. Such a record is renamed
    `<record>.unreadable-<unix time>` (the checkpoint folders stay) and the run starts again from
    its first epoch, saying so. Returns whether a record was set aside."""
    import json
    import time

    record = io.join(storage, name, RUN_RECORD)
    if not io.exists(record):
        return False
    try:
        json.loads(io.read_bytes(record))
        return False
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        pass
    fs, path = io.filesystem(record)
    aside = f"{path}.unreadable-{int(time.time())}"
    fs.move(path, aside)
    print(f"[{name}] Ray Train's record of this run's checkpoints ({record}) is unreadable (a kill while it was "
          f"written); set aside as {aside.rsplit('/', 1)[-1]}: the run starts again from its first epoch", flush=True)
    return True


def trainer(loop: Callable, job: Any, workers: Workers, name: str, storage: str,
            callbacks: Optional[list] = None, tracking: Optional[Tracking] = None) -> TorchTrainer:
    """A TorchTrainer running `loop(ctx, job)` on `workers`, named `name` under `storage` (the same
    name and storage restore the run); `callbacks` go to its RunConfig (a Tune trial passes
    TuneReportCallback); with `tracking` its rank 0 logs params and reports (raysys.ray.tracking)."""
    set_aside_unreadable_record(storage, name)
    tracker = tracking.tracker(name, storage) if tracking is not None else None
    return TorchTrainer(
        _worker,
        train_loop_config={"loop": loop, "job": job, "workers": workers, "tracker": tracker},
        scaling_config=ScalingConfig(
            num_workers=workers.num_workers, use_gpu=workers.use_gpu,
            resources_per_worker={"CPU": workers.cpus_per_worker, **({"GPU": 1} if workers.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name, storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=workers.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"), callbacks=callbacks,
        ),
    )


def fit(loop: Callable, job: Any, workers: Workers, name: str, storage: str,
        outputs: Optional[dict[str, str]] = None, tracking: Optional[Tracking] = None) -> dict[str, Any]:
    """Fit (or resume) on Ray Train; copy each folder `outputs` names from the last checkpoint
    (e.g. {"model": model_dir}) and return that checkpoint's state (history, resumes, ...).
    `tracking` (raysys.ray.tracking.tracked): log the run to MLflow and TensorBoard."""
    result = trainer(loop, job, workers, name, storage, tracking=tracking).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        local = result.checkpoint.to_directory(tmp)
        for folder, target in (outputs or {}).items():
            if not os.path.isdir(os.path.join(local, folder)):
                raise RuntimeError(f"run {name}: its last checkpoint has no {folder}/")
            io.copy_dir(os.path.join(local, folder), target)
        _, state = read_checkpoint(local)
    return state


def _call(call: Callable[[], Any]) -> Any:
    return call()


def run_concurrently(calls: list[Callable[[], Any]], concurrent: int, labels: list[str]) -> list:
    """`call()` for every call, `concurrent` at a time, each inside a Ray task that holds no CPU: the
    Ray Train runs the calls start hold the resources. With concurrent=1, calls run here in turn.
    Returns results in order. A failure does not stop the others; the first one is raised once all
    have ended (finished work stays complete on disk and is skipped on the rerun)."""
    if concurrent <= 1:
        return [call() for call in calls]
    remote_call = ray.remote(num_cpus=0, max_retries=0)(_call)
    results: list = [None] * len(calls)
    errors: list[BaseException] = []
    pending, in_flight = list(range(len(calls))), {}
    while pending or in_flight:
        while pending and len(in_flight) < concurrent:
            i = pending.pop(0)
            in_flight[remote_call.remote(calls[i])] = i
        done, _ = ray.wait(list(in_flight), num_returns=1)
        i = in_flight.pop(done[0])
        try:
            results[i] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - raised after the others have ended
            errors.append(exc)
            print(f"[{labels[i]}] failed: {str(exc).splitlines()[0]}", flush=True)
    if errors:
        raise errors[0]
    return results


def _with_assigned_cpus(fn, *args, **kwargs):
    use_assigned_cpus()
    return fn(*args, **kwargs)


def remote_task(fn, *, num_cpus: float, num_gpus: float = 0.0):
    """Run `fn` as one Ray task (on a worker node, not the driver), on as many torch threads as it
    holds CPUs, and wait for its result."""

    def call(*args, **kwargs):
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_with_assigned_cpus)
        return ray.get(task.options(name=fn.__name__).remote(fn, *args, **kwargs))

    return call
