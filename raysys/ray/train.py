"""Classifier training on Ray Train: a TorchTrainer around the plain-torch loop.

The run is named after the config digest and stored under the stage folder, so rerunning
the same command after a kill resumes from the last reported checkpoint (Ray Train restores
a run with the same name and storage path); a changed config starts a fresh run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Optional

import pyarrow.compute as pc
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysys.core import io
from raysys.core.config import RaysysConfig, TrainConfig
from raysys.core.schema import read_manifest
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.ray.session import use_assigned_cpus
from raysys.scoring.difficulty import assign_folds
from raysys.training.classifier import evaluate, images_from_manifest, make_optimizer, train_epoch


@dataclass
class ClassifierJob:
    """One classifier fit: which rows it trains on and where it keeps its checkpoints."""

    cfg: RaysysConfig
    manifest: str
    """Prepared manifest (local path or URI)."""
    num_classes: int
    groups: dict
    """Class groups (many/medium/few) for the metrics."""
    storage: str
    """Ray Train storage_path (absolute local path or URI)."""
    name: str
    """Run name under storage: the same name resumes."""
    epochs: int
    fold: Optional[int] = None
    """Out-of-fold mode: train on every train row except fold `fold` of `folds`."""
    folds: int = 0


def _train_worker(job: ClassifierJob) -> None:
    cfg = job.cfg
    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs every report at INFO
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_assigned_cpus()
    torch.manual_seed(cfg.run.seed)

    table = read_manifest(job.manifest, columns=["sample_id", "image", "label", "split"])
    train_table = table.filter(pc.equal(table["split"], "train"))
    if job.fold is not None:
        folds = assign_folds(
            train_table["sample_id"].to_pylist(), train_table["label"].to_numpy(), job.folds, cfg.run.seed
        )
        train_table = train_table.filter(folds != job.fold)
    size, chans = cfg.data.image_size, cfg.data.channels
    train = images_from_manifest(train_table, None, size, chans)
    val = images_from_manifest(table, "val", size, chans)
    test = images_from_manifest(table, "test", size, chans)

    model = create_classifier(
        cfg.classifier.name, job.num_classes, chans, width=cfg.classifier.width, weights=cfg.classifier.weights,
        image_size=size,
    )
    model = ray.train.torch.prepare_model(model)
    bare = getattr(model, "module", model)
    per_rank = len(train) // world
    steps = -(-per_rank // cfg.train.batch_size)
    train_cfg = replace(cfg.train, epochs=job.epochs)  # fold models may train for other epochs
    opt, sched = make_optimizer(model, train_cfg, steps)

    start_epoch, history, resumes = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
        bare.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        resumes = state.get("resumes", []) + [start_epoch]  # epochs already done when resumed
        if rank == 0:
            print(f"[{job.name}] resuming at epoch {start_epoch + 1}/{job.epochs}", flush=True)

    meta = {
        "name": cfg.classifier.name,
        "num_classes": job.num_classes,
        "in_chans": chans,
        "width": cfg.classifier.width,
        "image_size": size,
    }
    for epoch in range(start_epoch, job.epochs):
        t0 = time.time()
        # Everything random depends only on (seed, epoch, rank), never on what ran before, so a
        # resumed run continues exactly as the uninterrupted one would (batch order, shifts, dropout).
        torch.manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + rank)
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.run.seed * 7919 + epoch))
        shard = perm[rank * per_rank : (rank + 1) * per_rank]
        gen = torch.Generator().manual_seed(cfg.run.seed * 104729 + epoch * 31 + rank)
        loss = train_epoch(
            model, train, shard, opt, sched,
            batch_size=cfg.train.batch_size, augment=cfg.train.augment, generator=gen, device=device,
        )
        val_m = evaluate(bare, val, job.num_classes, job.groups, device)
        record = {"epoch": epoch + 1, "train_loss": round(loss, 6), "seconds": round(time.time() - t0, 3),
                  "val": val_m}
        last = epoch == job.epochs - 1
        if last:
            record["test"] = evaluate(bare, test, job.num_classes, job.groups, device)
        history.append(record)
        if rank == 0:
            few = val_m["acc_few"]
            print(
                f"[{job.name}] epoch {epoch + 1}/{job.epochs} loss {loss:.4f} val acc {val_m['acc']:.4f}"
                f" few {few if few is None else round(few, 4)} ({record['seconds']:.1f}s)",
                flush=True,
            )
        metrics = {"epoch": epoch + 1, "train_loss": loss, "val_acc": val_m["acc"], "val_acc_few": val_m["acc_few"]}
        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": bare.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "epoch": epoch, "history": history, "resumes": resumes}, os.path.join(d, "state.pt"))
                save_classifier(bare, os.path.join(d, "model"), meta)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def classifier_trainer(worker, job, train: TrainConfig, num_workers: int, callbacks: Optional[list] = None
                       ) -> TorchTrainer:
    """A TorchTrainer running `worker(job)` on `num_workers` workers as `train` says, named
    `job.name` under `job.storage` (the same name and storage resume the run); `callbacks` go to
    its RunConfig (a Tune trial passes TuneReportCallback)."""
    return TorchTrainer(
        worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=job.name,
            storage_path=job.storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=train.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
    )


def run_concurrently(fn, calls: list[tuple], concurrent: int, labels: list[str]) -> list:
    """`fn(*args)` for every args in `calls`, `concurrent` at a time, each inside a Ray task that
    holds no CPU: the Ray Train runs `fn` starts hold the resources (one 1-CPU worker each keeps
    one core busy, so 2 at a time fill a 2-core machine). With concurrent=1, calls run here in
    turn. Returns results in order. A failure does not stop the others; the first one is raised
    once all have ended (finished work stays complete on disk and is skipped on the rerun)."""
    if concurrent <= 1:
        return [fn(*args) for args in calls]
    remote_fn = ray.remote(num_cpus=0, max_retries=0)(fn)
    results: list = [None] * len(calls)
    errors: list[BaseException] = []
    pending, in_flight = list(range(len(calls))), {}
    while pending or in_flight:
        while pending and len(in_flight) < concurrent:
            i = pending.pop(0)
            in_flight[remote_fn.remote(*calls[i])] = i
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


@dataclass
class FitResult:
    history: list[dict]
    """One record per epoch: train_loss, seconds, val metrics (and test metrics on the last)."""
    resumed_at_epochs: list[int]
    """Epochs already done each time the run was resumed from a checkpoint (empty: never)."""


def fit_classifier(job: ClassifierJob, model_dir: str) -> FitResult:
    """Fit (or resume) on Ray Train; copy the final classifier to `model_dir`."""
    result = classifier_trainer(_train_worker, job, job.cfg.train, job.cfg.train.num_workers).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"classifier run {job.name} finished without a checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        local = result.checkpoint.to_directory(tmp)
        io.copy_dir(os.path.join(local, "model"), model_dir)
        state = torch.load(os.path.join(local, "state.pt"), map_location="cpu", weights_only=False)
    history = state["history"]
    if len(history) != job.epochs:
        raise RuntimeError(f"{job.name}: history has {len(history)} epochs, expected {job.epochs}")
    return FitResult(history, state.get("resumes", []))


def history_summary(history: list[dict]) -> dict:
    """Final-epoch metrics flattened to the names tools rely on (acc, acc_many, ..., macro_f1)."""
    final = history[-1]
    out = {}
    for split in ("val", "test"):
        if split in final:
            m = final[split]
            for key in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1", "worst_class_acc"):
                out[f"{split}_{key}" if split == "val" else key] = m[key]
            out[f"{split}_per_class_acc"] = m["per_class_acc"]
    return out

