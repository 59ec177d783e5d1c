"""Pretrain a small text-to-image model from scratch: the quickstart's stand-in for a web-scale
base model such as Stable Diffusion.

Trains the UNet and the CLIP text encoder of a pixel-space pipeline (SD layout, no VAE) on
(image, "a photo of the digit seven") pairs of the `pretrain` split, keeps an exponential
moving average of the weights, and writes the averaged model to a directory that
`DifficultyDiffusionPipeline.from_pretrained` (and `load_pipeline`) loads. Plain torch; no
difficulty encoder (fine-tuning adds it).

`pretrain_loop` is the whole run against a `TrainContext` (raysys.core.context): a checkpoint
every `checkpoint_every` steps holds the model, its moving average, the optimiser, the LR
schedule and the state of the random generator the batches and noise are drawn from, so a
resumed run draws what the uninterrupted one would and ends with the same weights. Ray Train
runs it in the `pretrain_generator` stage; `pretrain_base` runs it in this process.

At 20 px on two CPU cores the UNet predicts the clean image (x0, `prediction_type="sample"`):
with ε-prediction, a model this small and this briefly trained leaves a faint grey haze on
MNIST's black background, which classifiers trained on real digits read as a different digit.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import pyarrow as pa
import torch

from raysys.core import io
from raysys.core.config import PretrainConfig
from raysys.core.context import Checkpoint, LocalContext, read_checkpoint
from raysys.data.stream import Decode, stream_refs
from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.prompts import fill_prompt, template_words
from raysys.generation.training import diffusion_loss, training_scheduler

if TYPE_CHECKING:
    from raysys.core.context import TrainContext

PIPELINE_DIR = "pipeline"
"""The saved pipeline's folder in the last checkpoint."""


class StreamedImages:
    """Row indices -> uint8 images (N, C, size, size) of those manifest rows, read and decoded when
    asked (a picklable `images` for PretrainJob: the split is never held)."""

    def __init__(self, files: list[str], rows: pa.Table, size: int, channels: int) -> None:
        self.rows, self.decode = rows, Decode(files, size, channels)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        return self.decode(stream_refs(self.rows, idx))["image"]


@dataclass
class PretrainJob:
    """One pretraining run: its images, their classes and prompts, its settings."""

    images: Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]
    """uint8 (N, C, size, size), or a function from row indices to those rows' images."""
    labels: np.ndarray
    """int (N,) class indices."""
    class_names: list[str]
    cfg: PretrainConfig
    prompt_template: str
    seed: int = 0
    log: Optional[Callable[[str], None]] = None
    """Where progress lines go (None: nowhere); a Ray Train run's must pickle (print_progress)."""


def print_progress(line: str) -> None:
    print(line, flush=True)


def pretrain_loop(ctx: "TrainContext", job: PretrainJob) -> None:
    """Pretrain (or resume) on one worker, one report every `checkpoint_every` steps; the last
    checkpoint holds `pipeline/` (the averaged model) and the state `pretrain_metrics` reads."""
    cfg, labels = job.cfg, job.labels
    fetch = job.images if callable(job.images) else (lambda idx: job.images[idx])
    first = np.asarray(fetch(np.zeros(1, np.int64)))
    if first.shape[-1] != cfg.image_size or first.shape[-2] != cfg.image_size:
        raise ValueError(f"images are {first.shape[-2:]} but pretrain.image_size is {cfg.image_size}")
    device = ctx.device
    torch.manual_seed(job.seed)
    words = template_words(job.prompt_template) + [w for n in job.class_names for w in n.split()]
    pipe = build_components(ComponentSpec(
        image_size=cfg.image_size, image_channels=int(first.shape[1]),
        block_out_channels=list(cfg.block_out_channels), cross_attention_levels=list(cfg.cross_attention_levels),
        cross_attention_dim=cfg.cross_attention_dim, vocabulary=words, prediction_type=cfg.prediction_type,
    )).to(device)
    scheduler = training_scheduler(pipe)
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    average = copy.deepcopy(pipe) if cfg.ema_decay > 0 else pipe
    average_params = list(average.unet.parameters()) + list(average.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    prompts = [fill_prompt(job.prompt_template, n) for n in job.class_names]
    g = torch.Generator().manual_seed(job.seed)

    start, losses, resumes, seconds = _restore(ctx, job, pipe, average, opt, sched, g)

    pipe.unet.train()
    pipe.text_encoder.train()
    t0 = time.time()
    for step in range(start + 1, cfg.steps + 1):
        idx = torch.randint(0, len(labels), (cfg.batch_size,), generator=g)
        x = torch.from_numpy(np.array(fetch(idx.numpy()))).float().div_(127.5).sub_(1.0)  # [-1, 1]
        loss = diffusion_loss(pipe, scheduler, x.to(device), [prompts[int(labels[i])] for i in idx],
                              condition_dropout=cfg.condition_dropout, snr_gamma=cfg.snr_gamma, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if cfg.ema_decay > 0:  # warm-up: early averages forget the random init quickly
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for avg, p in zip(average_params, params):
                    avg.lerp_(p, 1.0 - decay)
        losses.append(float(loss.detach()))
        last = step == cfg.steps
        if job.log and ctx.rank == 0 and (step % 100 == 0 or last):
            rate = (step - start) / (time.time() - t0)
            job.log(f"[pretrain] step {step}/{cfg.steps} loss {np.mean(losses[-100:]):.4f} "
                    f"{rate:.2f} steps/s, ETA {(cfg.steps - step) / rate:.0f}s")
        if step % cfg.checkpoint_every and not last:
            continue
        checkpoint = None
        if ctx.rank == 0:
            tensors = {"unet": pipe.unet.state_dict(), "text_encoder": pipe.text_encoder.state_dict(),
                       "opt": opt.state_dict(), "sched": sched.state_dict(),
                       "generator": g.get_state(), "torch_rng": torch.get_rng_state()}
            if average is not pipe:
                tensors.update(average_unet=average.unet.state_dict(),
                               average_text_encoder=average.text_encoder.state_dict())
            state = {"step": step, "losses": losses, "resumes": resumes,
                     "train_seconds": round(seconds + time.time() - t0, 2), "prompts": prompts,
                     "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
                     "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters())}
            checkpoint = Checkpoint(tensors=tensors, state=state,
                                    files=(lambda d: _save(average, os.path.join(d, PIPELINE_DIR))) if last else None)
        ctx.report({"step": step, "loss": float(np.mean(losses[-cfg.checkpoint_every:]))}, checkpoint)


def _restore(ctx: "TrainContext", job: PretrainJob, pipe, average, opt, sched, g) -> tuple[int, list, list, float]:
    """Load the latest checkpoint into the models, optimizer, LR schedule and generators; (steps done, losses,
    steps resumed at, train seconds) so far, zeros for a fresh run."""
    restored = ctx.restore()
    if restored is None:
        return 0, [], [], 0.0
    tensors, state = restored
    for name, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        model.load_state_dict(tensors[name])
        if average is not pipe:
            getattr(average, name).load_state_dict(tensors[f"average_{name}"])
    opt.load_state_dict(tensors["opt"])
    sched.load_state_dict(tensors["sched"])
    g.set_state(tensors["generator"])
    torch.set_rng_state(tensors["torch_rng"])
    start, steps = state["step"], job.cfg.steps
    if ctx.rank == 0 and job.log:
        job.log(f"[pretrain] resuming at step {start + 1}/{steps}" if start < steps
                else f"[pretrain] restored the finished run ({start} steps)")
    return start, state["losses"], state["resumes"] + [start], state["train_seconds"]


def _save(average, directory: str) -> None:
    average.unet.eval()
    average.text_encoder.eval()
    average.to("cpu").save_pretrained(directory)


def pretrain_metrics(state: dict[str, Any]) -> dict:
    """The metrics of a finished run, from its last checkpoint's state."""
    losses = state["losses"]
    window = max(1, min(100, len(losses) // 5))
    return {
        "steps": state["step"],
        "train_seconds": state["train_seconds"],
        "loss_start": float(np.mean(losses[:window])),
        "loss_end": float(np.mean(losses[-window:])),
        "resumed_at_steps": state["resumes"],
        "unet_parameters": state["unet_parameters"],
        "text_encoder_parameters": state["text_encoder_parameters"],
        "prompts": state["prompts"],
    }


def pretrain_base(
    images: "np.ndarray | Callable[[np.ndarray], np.ndarray]",
    labels: np.ndarray,
    class_names: list[str],
    cfg: PretrainConfig,
    prompt_template: str,
    out_dir: str,
    *,
    seed: int = 0,
    device: str = "cpu",
    log: Optional[Callable[[str], None]] = print,
    checkpoint_dir: Optional[str] = None,
) -> dict:
    """Train on uint8 images (N, C, size, size) at cfg.image_size, of classes `labels` (N,), in this
    process; save to out_dir. `images` is an array, or a function from row indices to those rows'
    images: then each step's batch is read when it is drawn and the images are never held
    together. Checkpoints go to `checkpoint_dir` (the latest is kept, and a call with the same
    folder resumes from it); None: a temporary folder."""
    job = PretrainJob(images=images, labels=labels, class_names=class_names, cfg=cfg,
                      prompt_template=prompt_template, seed=seed, log=log)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = LocalContext(checkpoint_dir or os.path.join(tmp, "checkpoint"), device=torch.device(device))
        pretrain_loop(ctx, job)
        _, state = read_checkpoint(ctx.directory)
        io.copy_dir(os.path.join(ctx.directory, PIPELINE_DIR), out_dir)
    return pretrain_metrics(state)


def check_pretrain(pt) -> list[str]:
    """Problems of the `pretrain` section (a PretrainConfig)."""
    problems = []
    if len(pt.cross_attention_levels) != len(pt.block_out_channels):
        problems.append("pretrain.cross_attention_levels needs one entry per pretrain.block_out_channels")
    if pt.steps < 1 or pt.batch_size < 1 or pt.image_size < 8:
        problems.append("pretrain.steps and pretrain.batch_size must be >= 1, pretrain.image_size >= 8")
    if pt.checkpoint_every < 1 or pt.max_failures < 0:
        problems.append(f"pretrain.checkpoint_every must be >= 1 and pretrain.max_failures >= 0, "
                        f"got {pt.checkpoint_every} and {pt.max_failures}")
    if not 0 <= pt.ema_decay < 1:
        problems.append("pretrain.ema_decay must be in [0, 1)")
    if not 0 <= pt.condition_dropout < 1:
        problems.append(f"pretrain.condition_dropout is a share of rows, in [0, 1) (e.g. 0.1), "
                        f"got {pt.condition_dropout}")
    return problems
