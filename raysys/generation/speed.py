"""Making the generation actor fast on a GPU, without changing which images it generates.

`prepare_for_gpu(pipe, speed)` is what `GenerateBatch` does to a pipeline it has loaded onto a
GPU (nothing on a CPU, where the quickstart's images stay exactly as they were). Which options
are on by default follows what they measured on an H100 (docs/PERFORMANCE.md, "GPU throughput"):

- **bf16 / fp16**: `generator.dtype` (the pipeline is loaded in it; not here).
- **SDPA**: diffusers' default attention processors call `F.scaled_dot_product_attention`
  (flash / memory-efficient kernels); `attention_backends` reports which ones a UNet uses.
- **channels_last** (`speed.channels_last`): the UNet and VAE weights in NHWC, the layout
  cuDNN's convolutions run fastest in under bf16/fp16.
- **Fused QKV** (`speed.fuse_qkv`): `fuse_qkv_projections` (diffusers): one matmul for Q, K, V
  of each self-attention and one for K, V of each cross-attention. A LoRA adapter is merged into
  the weights first (`fuse_lora`, then the LoRA layers are dropped), as diffusers recommends for
  inference; the difficulty encoder is untouched.
- **torch.compile** (`speed.compile`): the UNet's and the VAE decoder's `forward` compiled in
  place (`nn.Module.compile`), shapes static. `GenerateBatch` pads a short batch to the full one
  (`pad_rows`) so the shapes stay fixed; each row's noise comes from its own seed, so the padding
  changes no image. `speed.compile_cache` points torch's compile cache (Inductor's FX graph and
  kernel caches) at a folder, so an actor restarted on the same machine (or any machine sharing
  that folder) loads the compiled kernels instead of compiling again.
- **Encoding overlapped with GPU work** (`speed.encode_threads`): `GenerateBatch` hands each
  micro-batch's images to a thread pool for PNG/WebP encoding and goes on to the next micro-batch.

Rounding aside (a fused matmul, another kernel), the images are the plain pipeline's. Options that
change the images (fewer steps, another scheduler) are the sampling options
(`generator.num_inference_steps`, `generator.scheduler`), off the default path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import numpy as np
import pyarrow as pa
import torch

if TYPE_CHECKING:
    from raysys.core.config import SpeedConfig
    from raysys.generation.pipeline import DifficultyDiffusionPipeline


def merge_lora(pipe: "DifficultyDiffusionPipeline") -> bool:
    """Merge the UNet's LoRA adapter into its weights and drop the LoRA layers (True if it had one)."""
    from raysys.generation.pipeline import lora_adapter_name

    if lora_adapter_name(pipe.unet) is None:
        return False
    pipe.fuse_lora(components=["unet"])
    pipe.unload_lora_weights()
    return True


def fuse_qkv(pipe: "DifficultyDiffusionPipeline") -> None:
    """Fused Q/K/V projections in the UNet and the VAE (a LoRA adapter merged first)."""
    merge_lora(pipe)
    pipe.unet.fuse_qkv_projections()
    if pipe.vae is not None:
        pipe.vae.fuse_qkv_projections()


def channels_last(pipe: "DifficultyDiffusionPipeline") -> None:
    pipe.unet.to(memory_format=torch.channels_last)
    if pipe.vae is not None:
        pipe.vae.to(memory_format=torch.channels_last)


def use_compile_cache(folder: str) -> None:
    """Point torch's compile caches at `folder` (before the first compile of the process)."""
    os.makedirs(folder, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True


def compile_pipeline(pipe: "DifficultyDiffusionPipeline", cache: Optional[str] = None) -> None:
    """Compile the UNet's and the VAE decoder's forward in place, shapes static."""
    if cache:
        use_compile_cache(cache)
    pipe.unet.compile(dynamic=False)
    if pipe.vae is not None:
        pipe.vae.decoder.compile(dynamic=False)


def prepare_for_gpu(pipe: "DifficultyDiffusionPipeline", speed: "SpeedConfig") -> "DifficultyDiffusionPipeline":
    """Apply `speed` to a pipeline already on its device; a pipeline on a CPU is left as it is."""
    if pipe.unet.device.type != "cuda":
        return pipe
    if speed.fuse_qkv:
        fuse_qkv(pipe)
    if speed.channels_last:
        channels_last(pipe)
    if speed.compile:
        compile_pipeline(pipe, speed.compile_cache)
    return pipe


def attention_backends(unet) -> dict[str, int]:
    """How many of the UNet's attention layers use each processor class (AttnProcessor2_0 and
    FusedAttnProcessor2_0 call scaled_dot_product_attention)."""
    counts: dict[str, int] = {}
    for processor in unet.attn_processors.values():
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def pad_rows(rows: pa.Table, size: int) -> pa.Table:
    """`rows` padded to `size` rows with copies of its last row (a full batch for a compiled
    UNet); the caller keeps the first len(rows) outputs."""
    missing = size - len(rows)
    if missing <= 0 or len(rows) == 0:
        return rows
    return rows.take(pa.array(np.r_[np.arange(len(rows)), np.full(missing, len(rows) - 1)]))
