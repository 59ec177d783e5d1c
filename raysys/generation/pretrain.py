"""Pretrain a small text-to-image model from scratch: the quickstart's stand-in for a web-scale
base model such as Stable Diffusion.

Trains the UNet and the CLIP text encoder of a pixel-space pipeline (SD layout, no VAE) on
(image, "a photo of the digit seven") pairs of the `pretrain` split, keeps an exponential
moving average of the weights, and writes the averaged model to a directory that
`DifficultyDiffusionPipeline.from_pretrained` (and `load_pipeline`) loads. Plain torch; no
difficulty encoder (fine-tuning adds it).

At 20 px on two CPU cores the UNet predicts the clean image (x0, `prediction_type="sample"`):
with ε-prediction, a model this small and this briefly trained leaves a faint grey haze on
MNIST's black background, which classifiers trained on real digits read as a different digit.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Optional

import numpy as np
import torch

from raysys.core.config import PretrainConfig
from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.training import diffusion_loss, training_scheduler


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
) -> dict:
    """Train on uint8 images (N, C, size, size) at cfg.image_size, of classes `labels` (N,); save to
    out_dir. `images` is an array, or a function from row indices to those rows' images: then
    each step's batch is read when it is drawn and the images are never held together."""
    fetch = images if callable(images) else (lambda idx: images[idx])
    first = np.asarray(fetch(np.zeros(1, np.int64)))
    if first.shape[-1] != cfg.image_size or first.shape[-2] != cfg.image_size:
        raise ValueError(f"images are {first.shape[-2:]} but pretrain.image_size is {cfg.image_size}")
    torch.manual_seed(seed)
    words = prompt_template.replace("{name}", " ").split() + [w for n in class_names for w in n.split()]
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
    prompts = [prompt_template.format(name=n) for n in class_names]
    g = torch.Generator().manual_seed(seed)
    pipe.unet.train()
    pipe.text_encoder.train()
    losses, t0 = [], time.time()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(labels), (cfg.batch_size,), generator=g)
        x = torch.from_numpy(np.array(fetch(idx.numpy()))).float().div_(127.5).sub_(1.0)  # [-1, 1]
        loss = diffusion_loss(pipe, scheduler, x.to(device), [prompts[int(labels[i])] for i in idx],
                              condition_dropout=cfg.condition_dropout, generator=g)
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
        if log and (step % 100 == 0 or step == cfg.steps):
            rate = step / (time.time() - t0)
            log(f"[pretrain] step {step}/{cfg.steps} loss {np.mean(losses[-100:]):.4f} "
                f"{rate:.2f} steps/s, ETA {(cfg.steps - step) / rate:.0f}s")
    average.unet.eval()
    average.text_encoder.eval()
    average.to("cpu").save_pretrained(out_dir)
    window = max(1, min(100, cfg.steps // 5))
    return {
        "steps": cfg.steps,
        "train_seconds": round(time.time() - t0, 2),
        "loss_start": float(np.mean(losses[:window])),
        "loss_end": float(np.mean(losses[-window:])),
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
        "prompts": prompts,
    }


def check_pretrain(pt) -> list[str]:
    """Problems of the `pretrain` section (a PretrainConfig)."""
    problems = []
    if len(pt.cross_attention_levels) != len(pt.block_out_channels):
        problems.append("pretrain.cross_attention_levels needs one entry per pretrain.block_out_channels")
    if pt.steps < 1 or pt.batch_size < 1 or pt.image_size < 8:
        problems.append("pretrain.steps and pretrain.batch_size must be >= 1, pretrain.image_size >= 8")
    if not 0 <= pt.ema_decay < 1:
        problems.append("pretrain.ema_decay must be in [0, 1)")
    if not 0 <= pt.condition_dropout < 1:
        problems.append(f"pretrain.condition_dropout is a share of rows, in [0, 1) (e.g. 0.1), "
                        f"got {pt.condition_dropout}")
    return problems
