"""The memory plan's measured table: GPU and dtype sizes, the GPU allowances (runtime,
headroom, GPU_ACTIVATIONS), and each released layout's parameter counts and activation profile
(`PROFILES`), which `memory` predicts from.

**Activations** per image row are `c + a·side²` bytes in float32, `side` the latent side
(image side / 8), for each phase of the work: the UNet forward (no grad), the UNet forward +
backward of a LoRA step with and without gradient checkpointing, VAE decode and encode, and
the text encoder. The constants were measured by running the real full-size component (random
weights, float32, on the CPU) at latent sides 16, 24, 32 and 40 and fitting (`python -m
raysys.generation.memory_profiler` regenerates them; that module says how bytes are measured).
"""

from __future__ import annotations

GiB = 2**30

DTYPE_BYTES = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}

GPUS = {"A10G": 24, "L4": 24, "A100-40": 40, "A100-80": 80, "H100": 80, "H200": 141}
"""GPU memory by name, in GiB (nominal; the driver reports a little less, which the headroom covers)."""

RUNTIME_BYTES = 1 * GiB
"""CUDA context + cuBLAS / cuDNN workspaces on a GPU: an assumed allowance, not measured here."""
HEADROOM = 0.10
"""Share of the GPU kept free by `largest_batch` / `check_fits` (allocator fragmentation)."""
GPU_ACTIVATIONS = 1.19
"""The profile's activation bytes (tensors measured on a CPU) times this is what a GPU holds: its
kernels keep intermediates the CPU's do not (measured on an H100 for SD 1.5's VAE decode in bf16,
batches 8 to 32, the phase that sets generation's peak; docs/PERFORMANCE.md)."""

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet modules `finetune.add_lora` adapts (its LORA_TARGETS)."""

# ---- the measured profile -------------------------------------------------------------------
# Regenerate with:  nice -n 19 python -m raysys.generation.memory_profiler  (about 15 minutes, 2 CPU cores,
# at most one full-size component in memory; prints this dict).
# params: parameters per component; lora_per_rank: LoRA parameters per unit of rank;
# phases: per image row, float32, bytes = c + a * side**2 (side = latent side), as (c, a).
PROFILES: dict[str, dict] = {'sd15': {'params': {'safety_checker': 303981588,
                     'text_encoder': 123060480,
                     'unet': 859520964,
                     'vae': 83653863},
          'phases': {'unet': (6400, 33280),
                     'unet_train_ckpt': (-2969304, 112744),
                     'unet_train': (4954376, 400322),
                     'vae_decode': (0, 196624),
                     'vae_encode': (0, 163840),
                     'text': (6150144, 0)},
          'residual': {'unet': 0.0,
                       'unet_train_ckpt': 0.0,
                       'unet_train': 0.0,
                       'vae_decode': 0.0,
                       'vae_encode': 0.0},
          'cross_attention_dim': 768,
          'lora_per_rank': 199296},
 'sd21-base': {'params': {'text_encoder': 340387840, 'unet': 865910724, 'vae': 83653863},
               'phases': {'unet': (6400, 33280),
                          'unet_train_ckpt': (-3100376, 92720),
                          'unet_train': (4823304, 380254),
                          'vae_decode': (0, 196624),
                          'vae_encode': (0, 163840),
                          'text': (10407936, 0)},
               'residual': {'unet': 0.0,
                            'unet_train_ckpt': 0.0,
                            'unet_train': 0.0,
                            'vae_decode': 0.0,
                            'vae_encode': 0.0},
               'cross_attention_dim': 1024,
               'lora_per_rank': 207488},
 'sdxl-refiner': {'params': {'text_encoder_2': 694659840, 'unet': 2259526660, 'vae': 83653863},
                  'phases': {'unet': (13824, 24192),
                             'unet_train_ckpt': (-10956482, 70217),
                             'unet_train': (20482432, 655824),
                             'vae_decode': (0, 196624),
                             'vae_encode': (0, 163840),
                             'text': (16558080, 0)},
                  'residual': {'unet': 0.0,
                               'unet_train_ckpt': 0.1546,
                               'unet_train': 0.0,
                               'vae_decode': 0.0,
                               'vae_encode': 0.0},
                  'cross_attention_dim': 1280,
                  'lora_per_rank': 843776},
}
# ---------------------------------------------------------------------------------------------

DIFFICULTY_ENCODER_PARAMS = {768: 940_288, 1024: 1_204_480, 1280: 1_468_672}
"""DifficultyEncoder parameters (1000 classes, 4 tokens, the defaults) by cross-attention width."""


def profile(layout: str) -> dict:
    from raysys.generation.layouts import get_layout

    get_layout(layout)  # the error for an unknown name
    if layout not in PROFILES:
        raise ValueError(f"no memory profile for layout '{layout}' (profiled: {', '.join(PROFILES)}); "
                         "run python -m raysys.generation.memory_profiler")
    return PROFILES[layout]
