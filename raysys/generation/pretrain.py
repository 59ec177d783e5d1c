"""Pretrain a small text-to-image model from scratch: the quickstart's stand-in for a web-scale
base model such as Stable Diffusion.

Trains the UNet and the CLIP text encoder of a pixel-space pipeline (SD layout, no VAE) with the
ε-prediction loss on (image, "a photo of the digit seven") pairs of the `pretrain` split, then
writes a directory that `DifficultyDiffusionPipeline.from_pretrained` (and `load_pipeline`) loads.
Plain torch; no difficulty encoder (fine-tuning adds it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.training import diffusion_loss, training_scheduler


@dataclass
class PretrainConfig:
    """The built-in base generator and how long it trains."""

    image_size: int = 20
    """Generated image side in pixels (classifiers resize to their own input size)."""
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    """UNet channels per level."""
    cross_attention_levels: list[bool] = field(default_factory=lambda: [False, False, True])
    """UNet levels with cross-attention (the mid block always has it); high-resolution attention
    is what costs most on a CPU."""
    cross_attention_dim: int = 64
    """Text encoder width."""
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 0.002
    """Peak AdamW learning rate (one-cycle schedule)."""
    condition_dropout: float = 0.1
    """Share of rows trained with an empty prompt (for classifier-free guidance)."""
    prompt_template: str = "a photo of the digit {name}"
    """Prompt per image; {name} is the class name."""


def pretrain_base(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    cfg: PretrainConfig,
    out_dir: str,
    *,
    seed: int = 0,
    log: Optional[Callable[[str], None]] = print,
) -> dict:
    """Train on uint8 images (N, C, size, size) already at cfg.image_size; save to out_dir."""
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        raise ValueError(f"images are {images.shape[-2:]} but pretrain.image_size is {cfg.image_size}")
    torch.manual_seed(seed)
    words = cfg.prompt_template.replace("{name}", " ").split() + [w for n in class_names for w in n.split()]
    pipe = build_components(ComponentSpec(
        image_size=cfg.image_size, image_channels=int(images.shape[1]),
        block_out_channels=list(cfg.block_out_channels), cross_attention_levels=list(cfg.cross_attention_levels),
        cross_attention_dim=cfg.cross_attention_dim, vocabulary=words,
    ))
    scheduler = training_scheduler(pipe)
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    x = torch.from_numpy(images).float().div_(127.5).sub_(1.0)
    prompts = [cfg.prompt_template.format(name=n) for n in class_names]
    g = torch.Generator().manual_seed(seed)
    pipe.unet.train()
    pipe.text_encoder.train()
    losses, t0 = [], time.time()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        loss = diffusion_loss(pipe, scheduler, x[idx], [prompts[int(labels[i])] for i in idx],
                              condition_dropout=cfg.condition_dropout, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step % 100 == 0 or step == cfg.steps):
            rate = step / (time.time() - t0)
            log(f"[pretrain] step {step}/{cfg.steps} loss {np.mean(losses[-100:]):.4f} "
                f"{rate:.2f} steps/s, ETA {(cfg.steps - step) / rate:.0f}s")
    pipe.unet.eval()
    pipe.text_encoder.eval()
    pipe.save_pretrained(out_dir)
    window = max(1, min(100, cfg.steps // 5))
    return {
        "steps": cfg.steps,
        "seconds": round(time.time() - t0, 2),
        "loss_start": float(np.mean(losses[:window])),
        "loss_end": float(np.mean(losses[-window:])),
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
        "prompts": prompts,
    }
