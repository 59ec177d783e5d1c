"""The ε-prediction diffusion loss, shared by base-model pretraining and LoRA fine-tuning.

Plain torch: the Ray Train adapters call `diffusion_loss` inside their worker loops.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from raysys.generation.pipeline import DifficultyDiffusionPipeline


def training_scheduler(pipe: DifficultyDiffusionPipeline) -> DDPMScheduler:
    """The noise schedule the pipeline was trained with, as a DDPM scheduler for add_noise."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for the scheduler's prediction type:
    min(SNR, γ) / SNR for ε, min(SNR, γ) / (SNR + 1) for v, min(SNR, γ) for x0 ("sample")."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1.0 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped


def diffusion_loss(
    pipe: DifficultyDiffusionPipeline,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    class_labels: Optional[torch.Tensor] = None,
    difficulty: Optional[torch.Tensor] = None,
    condition_dropout: float = 0.1,
    difficulty_dropout: float = 0.0,
    snr_gamma: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Mean diffusion MSE on a batch of images in [-1, 1].

    The target follows the scheduler's `prediction_type`: the noise ε (Stable Diffusion 1.x),
    the velocity v (SD 2.x), or the clean image x0 ("sample", the built-in pixel model).

    With probability `condition_dropout` a row's condition is dropped (prompt -> "",
    difficulty -> none, i.e. the null tokens), which trains the unconditional branch that
    classifier-free guidance uses. With probability `difficulty_dropout` a row that keeps its
    prompt loses only its difficulty (prompt + null tokens): the branch that a separate
    difficulty guidance scale compares against.
    """
    n = len(images)
    device = images.device
    latents = pipe.encode_images(images)
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, t)

    drop = (torch.rand(n, generator=generator) < condition_dropout).tolist()
    prompts = ["" if d else p for p, d in zip(prompts, drop)]
    if difficulty is not None:
        drop_s = torch.tensor(drop, dtype=torch.bool)
        if difficulty_dropout > 0:
            drop_s |= torch.rand(n, generator=generator) < difficulty_dropout
        difficulty = difficulty.clone().float()
        difficulty[drop_s] = float("nan")
    cond = pipe.condition(prompts, class_labels, difficulty)
    pred = pipe.predict(noisy, t, cond.to(pipe.unet.dtype))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        target = latents
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, t, snr_gamma)
    return per_sample.mean()
