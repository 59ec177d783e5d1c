"""Curriculum training in plain torch (no Ray): one curriculum run against a `TrainContext`
(raysys.core.context), epoch by epoch, with the long-tail metrics it reports.

No image is held: the pool, the guidance-validation set and the evaluation splits are rows
without images (raysys.data.stream), and every epoch's shard, probe and evaluation streams
through `ctx.batches`. The pool and each epoch's mix come from raysys.training.synthetic_pool,
the held-out hard images from raysys.training.guidance_validation, and the adaptive schedule's
measurements from raysys.training.adaptive_probe.

- `load_run`: what a run trains and evaluates on (rows, pool, schedule, guidance-validation set).
- `curriculum_loop`: the whole run; each epoch chooses (adaptive), trains on its mix, evaluates,
  reports.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from raysys.core.config import CurriculumConfig
from raysys.core.context import Checkpoint, step_seed
from raysys.schedules.base import Schedule, Selection
from raysys.schedules.registry import create_schedule
from raysys.data.stream import Decode, row_seeds, split_rows, stream_refs
from raysys.models.classifiers import save_classifier
from raysys.training.adaptive_probe import probe_gains_inputs
from raysys.training.classifier import (ClassifierSetup, evaluate, for_device, make_optimizer, manifest_rows,
                                        restore_training, train_epoch)
from raysys.training.guidance_validation import GuidanceVal, build_guidance_val, guidance_accuracy, split_guidance_val
from raysys.training.synthetic_pool import (Mix, Pool, build_pool, check_selections_match, difficulty_weights,
                                            epoch_mix, select_measured, steps_per_epoch, subsample_pool,
                                            synthetic_rows)

if TYPE_CHECKING:
    from raysys.core.context import TrainContext


@dataclass
class CurriculumJob:
    """One curriculum run: the real rows, the synthetic plans, the class groups."""

    setup: ClassifierSetup
    """The model, its recipe (`train`), images, splits and run.seed."""
    curriculum: CurriculumConfig
    """The `curriculum` section: schedule, pool, each epoch's mix, loss."""
    manifest: str
    """Scored manifest (real rows)."""
    plan_dirs: dict[str, str]
    """Synthesis plan name -> the folder of its version, whose kept rows form the synthetic pool."""
    num_classes: int
    groups: dict
    name: str = "curriculum"
    """Shown in progress lines."""


def curriculum_seed(c: CurriculumConfig, run_seed: int) -> int:
    """The run's seed: curriculum.seed, or else run.seed."""
    return c.seed if c.seed is not None else run_seed


def run_epochs(c: CurriculumConfig, train_epochs: int) -> int:
    """The run's epochs: curriculum.epochs, or else train.epochs."""
    return c.epochs or train_epochs


def schedule_for(c: CurriculumConfig, train_epochs: int, run_seed: int, guidance_levels: list[float]) -> Schedule:
    """The schedule of the run of section `c` (with train.epochs and run.seed), over
    `curriculum.guidance_levels` or else the λ levels of its pool."""
    epochs = run_epochs(c, train_epochs)
    curriculum_epochs = c.curriculum_epochs if c.curriculum_epochs is not None else epochs - max(1, epochs // 13)
    levels = c.guidance_levels if c.guidance_levels is not None else guidance_levels
    return create_schedule(c.schedule, epochs=epochs, curriculum_epochs=curriculum_epochs, guidance_levels=levels,
                           difficulty_bins=c.difficulty_bins, stage_epochs=c.stage_epochs,
                           seed=curriculum_seed(c, run_seed))


def reported_metrics(record: dict) -> dict:
    """What an epoch reports to Ray Train (and, in a sweep, to Tune) from its history record: the
    epoch, the training loss, validation metrics, and test metrics after the last epoch."""
    metrics = {"epoch": record["epoch"], "train_loss": record["train_loss"],
               **{f"val_{k}": record["val"][k] for k in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")}}
    if "test" in record:
        metrics.update({f"test_{k}": record["test"][k] for k in ("acc", "acc_few", "macro_f1")})
    return metrics


def log_prior(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """log of the class frequencies of `labels` (Balanced Softmax adds it to the logits)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=num_classes).float().clamp_min(1.0)
    return torch.log(counts / counts.sum())


def worst_k_accuracy(per_class_acc: Sequence[Optional[float]], k: int) -> Optional[float]:
    values = sorted(a for a in per_class_acc if a is not None and a == a)
    return float(np.mean(values[:k])) if values else None


@dataclass
class CurriculumRun:
    """What one run trains and evaluates on, loaded before its model exists."""

    real_train: pa.Table
    """The real train rows, guidance-validation images held out (the probe draws from them)."""
    evals: dict[str, pa.Table]
    """Validation and test rows by split."""
    pool: Pool
    gval: Optional[GuidanceVal]
    schedule: Schedule
    epochs: int
    weights: Optional[np.ndarray]
    """Synthetic draw weights (`curriculum.difficulty_distribution`), or None."""
    decode_train: Decode
    decode_eval: Decode


def load_run(job: CurriculumJob, seed: int) -> CurriculumRun:
    """The run's rows without images, its pool, schedule and guidance-validation set; raises when
    the manifest lacks an extra real split or no selection of the schedule can draw a synthetic row."""
    s, c = job.setup, job.curriculum
    size, chans = s.image_size, s.channels
    plan_names = list(job.plan_dirs)
    files, rows = manifest_rows(job.manifest, ["train", *c.extra_real_splits, *s.eval_splits()], extra=["domain"])
    real_train = pa.concat_tables([split_rows(rows, split) for split in ["train", *c.extra_real_splits]])
    missing = [split for split in c.extra_real_splits if not len(split_rows(rows, split))]
    if missing:
        raise ValueError(f"curriculum.extra_real_splits: the manifest {job.manifest} has no rows of split(s) {missing}")
    evals = {name: split_rows(rows, name) for name in s.eval_splits()}
    plan_folders = list(job.plan_dirs.values()) if c.schedule != "real_only" else []
    plan_files, synthetic = synthetic_rows(plan_folders, len(files))
    files = files + plan_files
    if c.measured_difficulty is not None:
        synthetic = select_measured(synthetic, *c.measured_difficulty)
    real_train, synthetic, held_real, held_syn = split_guidance_val(real_train, synthetic, c.guidance_val_sources, seed)
    if c.synthetic_pool_share is not None:
        synthetic = subsample_pool(synthetic, int(round(c.synthetic_pool_share * len(real_train))), seed)
    gval = build_guidance_val(held_real, held_syn) if len(held_real) else None
    pool = build_pool(real_train, synthetic, job.groups["few"], c.difficulty_bins)
    decode_train, decode_eval = Decode(files, size, chans, tuple(s.train.augment)), Decode(files, size, chans)
    lam = pool.guidance[~np.isnan(pool.guidance)]
    schedule = schedule_for(c, s.train.epochs, s.seed, sorted(set(np.round(lam, 4).tolist())))
    epochs = run_epochs(c, s.train.epochs)
    if gval is not None and c.guidance_levels is not None:
        gval = gval.only_levels(c.guidance_levels)  # adaptive measures (and chooses among) these only
    weights = difficulty_weights(pool.requested, c.difficulty_distribution, c.difficulty_params) \
        if c.difficulty_distribution else None
    check_selections_match(schedule, pool, epochs, weights, plan_names)
    return CurriculumRun(real_train, evals, pool, gval, schedule, epochs, weights, decode_train, decode_eval)


def choose_stage_level(ctx: "TrainContext", job: CurriculumJob, run: CurriculumRun, model: nn.Module, seed: int,
                       epoch: int) -> dict:
    """The adaptive schedule's choice for the stage that starts at `epoch`: measured by the probe on
    rank 0, broadcast, recorded in the schedule. Returns the epoch's record of it."""
    t, schedule = job.setup.train, run.schedule
    choice = None
    if ctx.rank == 0:
        before, after = probe_gains_inputs(model, ctx, run.gval, run.real_train, run.decode_eval,
                                           job.curriculum.probe_steps, t.batch_size, t.lr, seed, epoch, ctx.device)
        choice = {"before": before, "after": after}
    choice = ctx.broadcast(choice)
    chosen = schedule.record(epoch, choice["before"], choice["after"])
    return {"chosen": chosen, "gains": schedule.gains[schedule.stage(epoch)]}


def train_on_mix(ctx: "TrainContext", job: CurriculumJob, run: CurriculumRun, model: nn.Module, opt, sched,
                 selection: Selection, epoch: int, seed: int) -> tuple[Mix, float]:
    """The epoch's mix, this rank's shard of it, and one epoch of training on the shard: (mix, loss)."""
    c, pool = job.curriculum, run.pool
    rank, world = ctx.rank, ctx.world_size
    mix = epoch_mix(pool, selection, epoch, seed, c.synthetic_per_epoch, c.undersample, run.weights, c.equal_steps)
    if rank == 0 and not selection.real_only and mix.matching == 0:
        print(f"[{job.name}] warning: epoch {epoch + 1} selects [{selection}], but no synthetic image of "
              f"plans {list(job.plan_dirs)} matches it: a real-only epoch", flush=True)
    per_rank = len(mix.indices) // world
    shard = mix.indices[rank * per_rank:(rank + 1) * per_rank]
    weights_of_rows = np.where(shard >= pool.n_real, c.synthetic_loss_weight, 1.0) \
        if c.synthetic_loss_weight != 1.0 else None
    refs = stream_refs(pool.rows, shard, row_seeds(len(shard), seed, epoch, rank, 2), weights_of_rows)
    torch.manual_seed(step_seed(seed, epoch, rank))
    gen = torch.Generator().manual_seed(step_seed(seed, epoch, rank, 2))
    prior_rows = mix.indices if c.balanced_softmax_prior == "mix" else mix.indices[mix.indices < pool.n_real]
    prior = log_prior(pool.labels[prior_rows], job.num_classes) if c.loss == "balanced_softmax" else None
    loss = train_epoch(model, ctx, refs, run.decode_train, opt, sched, recipe=job.setup.train,
                       num_classes=job.num_classes, generator=gen, device=ctx.device, log_prior=prior)
    return mix, loss


def evaluate_split(model: nn.Module, ctx: "TrainContext", job: CurriculumJob, run: CurriculumRun, split: str) -> dict:
    """Classification metrics on `split`, with the worst-k class accuracy."""
    k = job.curriculum.worst_k
    m = evaluate(model, ctx, run.evals[split], run.decode_eval, job.num_classes, job.groups, ctx.device)
    m[f"worst_{k}_acc"] = worst_k_accuracy(m["per_class_acc"], k)
    return m


def epoch_checkpoint(job: CurriculumJob, model: nn.Module, opt, sched, epoch: int, history: list, resumes,
                     schedule: Schedule) -> Checkpoint:
    """Model, optimizer, LR schedule, history and the schedule's state, and the model as a classifier folder."""
    meta = job.setup.meta(job.num_classes)
    return Checkpoint(
        tensors={"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
        state={"epoch": epoch, "history": history, "resumes": resumes, "schedule": schedule.state()},
        files=lambda d: save_classifier(model, os.path.join(d, "model"), meta))


def curriculum_loop(ctx: "TrainContext", job: CurriculumJob) -> None:
    """Train (or resume) one curriculum run, one report per epoch.

    Each epoch: the schedule's selection (the adaptive schedule first measures and chooses on rank
    0 and broadcasts its choice), the epoch's mix (the same on every rank: it depends only on
    (seed, epoch)), one shard per rank, then evaluation. The checkpoint holds the model, optimizer,
    LR schedule, history and the schedule's state, so a resumed run makes the same choices and
    continues as the uninterrupted one would."""
    s, c = job.setup, job.curriculum
    seed = curriculum_seed(c, s.seed)
    run = load_run(job, seed)
    schedule, epochs = run.schedule, run.epochs

    torch.manual_seed(seed)  # the same initial weights in every run of this config
    model = ctx.prepare_model(for_device(s.create_model(job.num_classes), ctx.device))
    bare = getattr(model, "module", model)
    steps = steps_per_epoch(run.pool, schedule, epochs, c.synthetic_per_epoch, c.undersample, c.equal_steps,
                            ctx.world_size, s.train.batch_size)
    opt, sched = make_optimizer(model, replace(s.train, epochs=epochs), steps)
    start, history, resumes = restore_training(ctx, bare, opt, sched, job.name, epochs, schedule)
    if start >= epochs and history:  # a finished run restored: its caller (a Tune trial) may have missed the
        ctx.report(reported_metrics(history[-1]))  # last report (a hard kill), so it hears it again

    for epoch in range(start, epochs):
        t0 = time.time()
        record = {"epoch": epoch + 1, "stage": schedule.stage(epoch)}
        if schedule.adaptive and schedule.needs_choice(epoch):
            record["adaptive"] = choose_stage_level(ctx, job, run, bare, seed, epoch)
        selection = schedule.selection(epoch)
        mix, loss = train_on_mix(ctx, job, run, model, opt, sched, selection, epoch, seed)
        val_m = evaluate_split(bare, ctx, job, run, s.val_split)
        record.update({"selection": str(selection), "real": mix.real, "synthetic": mix.synthetic,
                       "matching": mix.matching, "train_loss": round(loss, 6), "val": val_m})
        if run.gval is not None:
            record["guidance_val_acc"] = guidance_accuracy(bare, ctx, run.gval, run.decode_eval, ctx.device)
        last = epoch == epochs - 1
        if last:
            record["tests"] = {}
            for split in s.test_splits:
                record["tests"][split] = evaluate_split(bare, ctx, job, run, split)
            record["test"] = record["tests"][s.test_splits[0]]
        record["seconds"] = round(time.time() - t0, 3)
        history.append(record)
        if ctx.rank == 0:
            few = val_m["acc_few"]
            print(f"[{job.name}] epoch {epoch + 1}/{epochs} [{selection}] real {mix.real} + synthetic {mix.synthetic} "
                  f"loss {loss:.4f} val acc {val_m['acc']:.4f} few {few if few is None else round(few, 4)}", flush=True)
        metrics = reported_metrics(record)
        checkpoint = None
        if ctx.rank == 0 and (last or (epoch + 1) % s.train.checkpoint_every == 0):
            checkpoint = epoch_checkpoint(job, bare, opt, sched, epoch, history, resumes, schedule)
        ctx.report(metrics, checkpoint)
