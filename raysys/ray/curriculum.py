"""Curriculum training on Ray Train: a TorchTrainer around the plain-torch pieces of
raysys.training.curriculum, data-parallel, with the curriculum in the checkpoint.

Each epoch: the schedule's selection (the adaptive schedule first measures and chooses, on rank
0, and broadcasts its choice), the epoch's mix of real and synthetic rows (the same on every
rank: it depends only on (seed, epoch)), one shard per rank, then evaluation. The checkpoint
holds the model, optimizer, LR schedule, epoch, history and the schedule's state (the adaptive
choices); everything random derives from (seed, epoch, rank). A killed run therefore resumes at
the same stage with the same choices and continues as the uninterrupted run would.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.train
import torch

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.curriculum.registry import create_schedule
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.ray.session import use_assigned_cpus
from raysys.ray.train import classifier_trainer, run_concurrently
from raysys.training.classifier import evaluate, images_from_manifest, make_optimizer, train_epoch
from raysys.training.curriculum import (
    build_guidance_val,
    build_pool,
    check_selections_match,
    difficulty_weights,
    epoch_mix,
    guidance_accuracy,
    log_prior,
    mix_size,
    probe_gains_inputs,
    select_measured,
    split_guidance_val,
    worst_k_accuracy,
)


@dataclass
class CurriculumJob:
    cfg: RaysysConfig
    manifest: str
    """Scored manifest (real rows)."""
    plan_dirs: list[str]
    """Synthesis plan folders whose kept rows form the synthetic pool."""
    num_classes: int
    groups: dict
    storage: str
    name: str


def read_synthetic(plan_dirs: list[str]) -> pa.Table:
    from raysys.core.schema import to_table
    from raysys.generation.synthesis import read_plan

    tables = [read_plan(d) for d in plan_dirs]
    tables = [t for t in tables if len(t)]
    return pa.concat_tables(tables) if tables else to_table({})


def curriculum_seed(cfg: RaysysConfig) -> int:
    return cfg.curriculum.seed if cfg.curriculum.seed is not None else cfg.run.seed


def schedule_for(cfg: RaysysConfig, guidance_levels: list[float]):
    c = cfg.curriculum
    epochs = c.epochs or cfg.train.epochs
    curriculum_epochs = c.curriculum_epochs if c.curriculum_epochs is not None else epochs - max(1, epochs // 13)
    levels = c.guidance_levels if c.guidance_levels is not None else guidance_levels
    return create_schedule(c.schedule, epochs=epochs, curriculum_epochs=curriculum_epochs, guidance_levels=levels,
                           difficulty_bins=c.difficulty_bins, stage_epochs=c.stage_epochs, seed=curriculum_seed(cfg))


def _broadcast(obj):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _worker(job: CurriculumJob) -> None:
    cfg, c = job.cfg, job.cfg.curriculum
    seed = curriculum_seed(cfg)
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_assigned_cpus()
    size, chans = cfg.data.image_size, cfg.data.channels

    table = read_manifest(job.manifest, columns=["sample_id", "image", "label", "split"])
    real_train = table.filter(pc.equal(table["split"], "train"))
    synthetic = read_synthetic(job.plan_dirs) if c.schedule != "real_only" else read_synthetic([])
    if c.measured_difficulty is not None:
        synthetic = select_measured(synthetic, *c.measured_difficulty)
    real_train, synthetic, held_real, held_syn = split_guidance_val(real_train, synthetic, c.guidance_val_sources,
                                                                    seed)
    gval = build_guidance_val(held_real, held_syn, size, chans) if len(held_real) else None
    pool = build_pool(real_train, synthetic, size, chans, job.groups["few"], c.difficulty_bins)
    real_only_data = images_from_manifest(real_train, None, size, chans)
    val = images_from_manifest(table, "val", size, chans)
    test = images_from_manifest(table, "test", size, chans)
    lam = pool.guidance[~np.isnan(pool.guidance)]
    schedule = schedule_for(cfg, sorted(set(np.round(lam, 4).tolist())))
    epochs = c.epochs or cfg.train.epochs
    if gval is not None and c.guidance_levels is not None:
        gval = gval.only_levels(c.guidance_levels)  # adaptive measures (and chooses among) these only

    weights = difficulty_weights(pool.requested, c.difficulty_distribution, c.difficulty_params) \
        if c.difficulty_distribution else None
    check_selections_match(schedule, pool, epochs, weights, [os.path.basename(d) for d in job.plan_dirs])

    torch.manual_seed(seed)  # the same initial weights in every run of this config
    model = create_classifier(cfg.classifier.name, job.num_classes, chans, width=cfg.classifier.width,
                              weights=cfg.classifier.weights, image_size=size)
    model = ray.train.torch.prepare_model(model)
    bare = getattr(model, "module", model)
    steps = -(-(mix_size(pool, c.synthetic_per_epoch, c.undersample, c.equal_steps) // world) // cfg.train.batch_size)
    opt, sched = make_optimizer(model, replace(cfg.train, epochs=epochs), steps)

    start, history, resumes = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
        bare.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        schedule.load_state(state["schedule"])
        start, history = state["epoch"] + 1, state["history"]
        resumes = state.get("resumes", []) + [start]
        if rank == 0:
            print(f"[{job.name}] resuming at epoch {start + 1}/{epochs}, stage {schedule.stage(start)}", flush=True)

    meta = {"name": cfg.classifier.name, "num_classes": job.num_classes, "in_chans": chans,
            "width": cfg.classifier.width, "image_size": size}
    for epoch in range(start, epochs):
        t0 = time.time()
        record = {"epoch": epoch + 1, "stage": schedule.stage(epoch)}
        if schedule.adaptive and schedule.needs_choice(epoch):
            choice = None
            if rank == 0:
                before, after = probe_gains_inputs(bare, gval, real_only_data, c.probe_steps, cfg.train.batch_size,
                                                   cfg.train.lr, seed, epoch, device)
                choice = {"before": before, "after": after}
            choice = _broadcast(choice)
            chosen = schedule.record(epoch, choice["before"], choice["after"])
            record["adaptive"] = {"chosen": chosen, "gains": schedule.gains[schedule.stage(epoch)]}
        selection = schedule.selection(epoch)
        mix = epoch_mix(pool, selection, epoch, seed, c.synthetic_per_epoch, c.undersample, weights, c.equal_steps)
        if rank == 0 and not selection.real_only and mix.matching == 0:
            print(f"[{job.name}] warning: epoch {epoch + 1} selects [{selection}], but no synthetic image of "
                  f"plans {[os.path.basename(d) for d in job.plan_dirs]} matches it: a real-only epoch", flush=True)
        per_rank = len(mix.indices) // world
        shard = torch.from_numpy(mix.indices[rank * per_rank:(rank + 1) * per_rank])
        torch.manual_seed(seed * 1_000_003 + epoch * 101 + rank)
        gen = torch.Generator().manual_seed(seed * 104729 + epoch * 31 + rank)
        prior = log_prior(pool.data.labels[torch.from_numpy(mix.indices)], job.num_classes) \
            if c.loss == "balanced_softmax" else None
        loss = train_epoch(model, pool.data, shard, opt, sched, batch_size=cfg.train.batch_size,
                           augment=cfg.train.augment, generator=gen, device=device, log_prior=prior)
        val_m = evaluate(bare, val, job.num_classes, job.groups, device)
        val_m[f"worst_{c.worst_k}_acc"] = worst_k_accuracy(val_m["per_class_acc"], c.worst_k)
        record.update({"selection": str(selection), "real": mix.real, "synthetic": mix.synthetic,
                       "matching": mix.matching, "train_loss": round(loss, 6), "val": val_m})
        if gval is not None:
            record["guidance_val_acc"] = guidance_accuracy(bare, gval, device)
        last = epoch == epochs - 1
        if last:
            test_m = evaluate(bare, test, job.num_classes, job.groups, device)
            test_m[f"worst_{c.worst_k}_acc"] = worst_k_accuracy(test_m["per_class_acc"], c.worst_k)
            record["test"] = test_m
        record["seconds"] = round(time.time() - t0, 3)
        history.append(record)
        if rank == 0:
            few = val_m["acc_few"]
            print(f"[{job.name}] epoch {epoch + 1}/{epochs} [{selection}] real {mix.real} + synthetic {mix.synthetic} "
                  f"loss {loss:.4f} val acc {val_m['acc']:.4f} few {few if few is None else round(few, 4)}", flush=True)
        metrics = {"epoch": epoch + 1, "train_loss": loss,
                   **{f"val_{k}": val_m[k] for k in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")},
                   **({f"test_{k}": test_m[k] for k in ("acc", "acc_few", "macro_f1")} if last else {})}
        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": bare.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "epoch": epoch, "history": history, "resumes": resumes,
                            "schedule": schedule.state()}, os.path.join(d, "state.pt"))
                save_classifier(bare, os.path.join(d, "model"), meta)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


@dataclass
class CurriculumResult:
    history: list[dict]
    resumed_at_epochs: list[int]
    schedule_state: dict


def fit_curriculum(job: CurriculumJob, model_dir: str) -> CurriculumResult:
    cfg = job.cfg
    trainer = classifier_trainer(_worker, job, cfg.train, cfg.curriculum.num_workers or cfg.train.num_workers)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"curriculum run {job.name} finished without a checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        local = result.checkpoint.to_directory(tmp)
        io.copy_dir(os.path.join(local, "model"), model_dir)
        state = torch.load(os.path.join(local, "state.pt"), map_location="cpu", weights_only=False)
    return CurriculumResult(state["history"], state.get("resumes", []), state["schedule"])



def run_curricula(cfgs: list[RaysysConfig], concurrent: int) -> list[dict]:
    """`stages.curriculum.run` for every config, `concurrent` at a time (see run_concurrently)."""
    from raysys.stages import curriculum as stage

    return run_concurrently(stage.run, [(c,) for c in cfgs], concurrent,
                            [f"curriculum {stage.variant_name(c)}" for c in cfgs])
