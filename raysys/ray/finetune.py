"""Generator fine-tuning on Ray Train (a TorchTrainer around `raysys.generation.finetune`), and
the Ray tasks that pretrain the built-in base model and generate the proof-of-control grid.

Like the classifier run, a fine-tune run is named after the config digest and stored under the
stage folder: rerunning the same command after a kill resumes from the last checkpoint.
Workers draw each step's rows from (seed, step, rank) alone, so a resumed run continues as the
uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raysys.core import io
from raysys.core.config import FinetuneConfig
from raysys.core.schema import read_manifest
from raysys.data.images import decode_batch
from raysys.generation import finetune as ft
from raysys.generation.components import load_pipeline
from raysys.generation.training import training_scheduler
from raysys.ray.session import use_assigned_cpus


@dataclass
class FinetuneJob:
    """One fine-tune run: which variant, on which rows, and where its checkpoints live."""

    variant: str
    """difficulty (LoRA + difficulty encoder) or plain (LoRA only)."""
    base: str
    """Base pipeline: absolute local directory or hub id."""
    manifest: str
    """Scored manifest (its train rows, with measured difficulty)."""
    class_names: list[str]
    prompt_template: str
    cfg: FinetuneConfig
    seed: int
    storage: str
    """Ray Train storage_path (absolute local path or URI)."""
    name: str
    """Run name under storage: the same name resumes."""


def _load_rows(job: FinetuneJob, image_size: int, channels: int, rank: int, world: int) -> ft.FinetuneRows:
    table = read_manifest(job.manifest, columns=["image", "label", "split", "difficulty"])
    table = table.filter(pc.equal(table["split"], "train"))
    shard = np.arange(rank, table.num_rows, world)  # every worker a disjoint share of the rows
    images = decode_batch([table["image"][int(i)].as_py() for i in shard], image_size, channels)
    labels = table["label"].to_numpy()[shard].astype(np.int64)
    difficulty = table["difficulty"].to_numpy(zero_copy_only=False)[shard].astype(np.float32)
    if np.isnan(difficulty).any():
        raise ValueError(f"{job.manifest}: train rows without a measured difficulty; run the score stage first")
    return ft.FinetuneRows(
        images=torch.from_numpy(images).float().div_(127.5).sub_(1.0),
        prompts=ft.prompts_for(labels, job.class_names, job.prompt_template),
        labels=torch.from_numpy(labels),
        difficulty=torch.from_numpy(difficulty),
    )


def _finetune_worker(job: FinetuneJob) -> None:
    cfg = job.cfg
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_assigned_cpus()
    torch.manual_seed(job.seed)

    pipe = load_pipeline(job.base).to(device)
    use_difficulty = job.variant == "difficulty"
    ft.add_lora(pipe, cfg.lora_rank, cfg.lora_alpha)
    if use_difficulty:
        ft.add_difficulty_encoder(pipe, len(job.class_names), cfg.difficulty_tokens, cfg.class_input,
                                  cfg.difficulty_frequencies)
    on_gpu = device.type == "cuda"
    if on_gpu and cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    autocast = torch.bfloat16 if on_gpu and cfg.mixed_precision == "bf16" else None
    rows = _load_rows(job, pipe.image_size, pipe.image_channels, rank, world)
    weights = ft.sampling_weights(rows.difficulty, cfg.sampling)
    scheduler = training_scheduler(pipe)
    params = ft.trainable_parameters(pipe)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps))
    )

    start, losses, resumes = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
        ft.load_adapter_state(pipe, state["adapters"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, losses = state["step"], state["losses"]
        resumes = state["resumes"] + [start]
        if rank == 0:
            print(f"[{job.name}] resuming at step {start + 1}/{cfg.steps}", flush=True)

    pipe.unet.train()
    t0, done_here = time.time(), 0
    for step in range(start, cfg.steps):
        idx = ft.batch_indices(len(rows), cfg.batch_size, job.seed, step, rank, weights)
        g = torch.Generator().manual_seed(job.seed * 7919 + step * 31 + rank)
        loss = ft.finetune_step(
            pipe, scheduler, rows, idx, use_difficulty=use_difficulty, condition_dropout=cfg.condition_dropout,
            difficulty_dropout=cfg.difficulty_dropout,
            snr_gamma=cfg.snr_gamma, generator=g, autocast_dtype=autocast,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ft.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done_here += 1
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.checkpoint_every and not last:
            continue
        rate = done_here / (time.time() - t0)
        window = float(np.mean(losses[-cfg.checkpoint_every:]))
        metrics = {"step": step + 1, "loss": window, "steps_per_s": rate}
        if rank == 0:
            print(f"[{job.name}] step {step + 1}/{cfg.steps} loss {window:.4f} {rate:.2f} steps/s "
                  f"ETA {(cfg.steps - step - 1) / rate:.0f}s", flush=True)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"adapters": ft.adapter_state(pipe), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step + 1, "losses": losses, "resumes": resumes}, os.path.join(d, "state.pt"))
                if last:
                    ft.save_adapters(pipe, os.path.join(d, "adapters"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


@dataclass
class FinetuneResult:
    losses: list[float]
    """Training loss per step (rank 0's batch)."""
    resumed_at_steps: list[int]
    """Steps already done each time the run was resumed (empty: never)."""


def fit_generator(job: FinetuneJob, adapters_dir: str) -> FinetuneResult:
    """Fine-tune (or resume) on Ray Train; copy the adapter directory to `adapters_dir`."""
    cfg = job.cfg
    trainer = TorchTrainer(
        _finetune_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=job.name,
            storage_path=job.storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tune run {job.name} finished without a checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        local = result.checkpoint.to_directory(tmp)
        state = torch.load(os.path.join(local, "state.pt"), map_location="cpu", weights_only=False)
        if state["step"] != cfg.steps or not os.path.isdir(os.path.join(local, "adapters")):
            raise RuntimeError(f"{job.name}: last checkpoint is at step {state['step']}, expected {cfg.steps}")
        io.copy_dir(os.path.join(local, "adapters"), adapters_dir)
    return FinetuneResult(state["losses"], state["resumes"])


def _with_assigned_cpus(fn, *args, **kwargs):
    use_assigned_cpus()
    return fn(*args, **kwargs)


def remote_task(fn, *, num_cpus: float, num_gpus: float = 0.0):
    """Run `fn` as one Ray task (on a worker node, not the driver), on as many torch threads as
    it holds CPUs, and wait for its result."""

    def call(*args, **kwargs):
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_with_assigned_cpus)
        return ray.get(task.options(name=fn.__name__).remote(fn, *args, **kwargs))

    return call
