"""Memory planning: the peak GPU memory of generation and of LoRA fine-tuning, predicted before
any work from parameter counts and the measured activation profile (`memory_table`).

**Weights** are the layout's parameter counts (`layouts.parameter_counts`, stored in `PROFILES`)
times the dtype's size. Generation holds the UNet, the text encoder(s), the VAE and the (tiny)
difficulty encoder. Fine-tuning holds the same frozen base in the weight dtype plus, in float32,
the trainable LoRA and difficulty-encoder parameters, their gradients and AdamW's two states
(16 bytes a trainable parameter).

**Activations** per image row are the profile's `c + a·side²` float32 bytes of each phase, on a
GPU times `GPU_ACTIVATIONS`. Other dtypes scale them by their size (bf16 / fp16: half); under
bf16 autocast a few ops (group norm, softmax statistics) stay in float32, so that is slightly
optimistic for fine-tuning.

**Peak** = weights + the largest phase (phases run one after another):
generation: text encoder (rows = 2·batch with guidance), UNet (2·batch rows with classifier-free
guidance, as `DifficultyDiffusionPipeline._denoise` concatenates both branches, batch rows
without), VAE decode of the whole batch at once (`decode_latents`, as diffusers does without
`enable_vae_slicing`); fine-tuning: VAE encode and text encoder of the batch (frozen: no graph),
then the UNet forward + backward. On a GPU add `RUNTIME_BYTES` (CUDA context and library
workspaces, an assumption: not measured here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from raysys.generation.memory_table import (
    DIFFICULTY_ENCODER_PARAMS,
    DTYPE_BYTES,
    GPU_ACTIVATIONS,
    GPUS,
    HEADROOM,
    RUNTIME_BYTES,
    GiB,
    profile,
)


def dtype_bytes(dtype) -> int:
    """Bytes per element of a dtype given as 'fp16' / 'bf16' / 'fp32' (or torch's names, or a torch.dtype)."""
    name = str(dtype).replace("torch.", "").lower()
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from fp32, fp16, bf16)")
    return DTYPE_BYTES[name]


def latent_side(resolution: int) -> float:
    return resolution / 8  # every released layout's VAE downsamples by 8


def activation_bytes(layout: str, phase: str, resolution: int, rows: int, dtype="fp32") -> int:
    """Peak live activation bytes of one phase for `rows` image rows at `resolution` pixels, on a
    GPU (the profile x GPU_ACTIVATIONS)."""
    c, a = profile(layout)["phases"][phase]
    return int(GPU_ACTIVATIONS * rows * max(0.0, c + a * latent_side(resolution) ** 2) * dtype_bytes(dtype) / 4)


def vae_dtype(dtype) -> str:
    """What the VAE runs in: float32 when the rest is float16, since every released layout's VAE
    says `force_upcast` (DifficultyDiffusionPipeline._upcast_vae_if_needed), else `dtype`."""
    return "fp32" if str(dtype).replace("torch.", "").lower() in ("fp16", "float16") else str(dtype)


@dataclass
class MemoryEstimate:
    """A predicted peak, in bytes, by part."""

    what: str
    weights: int
    activations: int
    """The largest phase's live activations."""
    phase: str
    """Which phase that is (unet, vae_decode, ...)."""
    trainable: int = 0
    """LoRA + difficulty encoder parameters, gradients and AdamW states (float32)."""
    runtime: int = 0
    parts: dict = field(default_factory=dict)
    """Every phase's activation bytes."""

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.runtime

    def describe(self) -> str:
        extra = f", trainable {self.trainable / GiB:.2f}" if self.trainable else ""
        runtime = f", runtime {self.runtime / GiB:.1f}" if self.runtime else ""
        return (f"{self.what}: {self.total / GiB:.1f} GiB (weights {self.weights / GiB:.1f}{extra}, "
                f"activations {self.activations / GiB:.1f} in {self.phase}{runtime})")


def weight_bytes(layout: str, dtype, folders: Optional[list[str]] = None) -> int:
    """Bytes of the components the pipeline loads (every one but the safety checker) in `dtype`."""
    params = profile(layout)["params"]
    folders = folders or [f for f in params if f != "safety_checker"]
    return sum(params[f] for f in folders) * dtype_bytes(dtype)


def _encoder_params(layout: str) -> int:
    return DIFFICULTY_ENCODER_PARAMS[profile(layout)["cross_attention_dim"]]


def predict_generation(layout: str, resolution: Optional[int] = None, batch_size: int = 1, dtype="fp16",
                       guidance: bool = True, branches: Optional[int] = None, img2img: bool = False,
                       runtime: int = RUNTIME_BYTES) -> MemoryEstimate:
    """Peak memory of `DifficultyDiffusionPipeline.__call__` for `batch_size` images: the weights and
    the largest of text encoding, VAE encode of the sources (`img2img`), the UNet and VAE decode.
    The UNet runs `branches` × batch rows: 2 with classifier-free guidance (`guidance`, i.e.
    generator.guidance_scale > 1), 1 without, 3 with a separate difficulty_guidance_scale."""
    from raysys.generation.layouts import get_layout

    resolution = resolution or get_layout(layout).resolution
    rows = (branches or (2 if guidance else 1)) * batch_size
    vae = vae_dtype(dtype)
    parts = {
        "text": activation_bytes(layout, "text", resolution, rows, dtype),
        "unet": activation_bytes(layout, "unet", resolution, rows, dtype),
        "vae_decode": activation_bytes(layout, "vae_decode", resolution, batch_size, vae),
    }
    if img2img:
        parts["vae_encode"] = activation_bytes(layout, "vae_encode", resolution, batch_size, vae)
    phase = max(parts, key=parts.get)
    loaded = [f for f in profile(layout)["params"] if f not in ("safety_checker", "vae")]
    weights = (weight_bytes(layout, dtype, loaded) + weight_bytes(layout, vae, ["vae"])
               + _encoder_params(layout) * dtype_bytes(dtype))
    return MemoryEstimate(f"{layout} generation {resolution} px batch {batch_size} {dtype}, "
                          f"{rows // batch_size} UNet branch{'es' if rows > batch_size else ''}",
                          weights, parts[phase], phase, runtime=runtime, parts=parts)


def lora_parameters(layout: str, rank: int) -> int:
    return profile(layout)["lora_per_rank"] * rank


def predict_finetune(layout: str, resolution: Optional[int] = None, batch_size: int = 1, dtype="bf16",
                     gradient_checkpointing: bool = True, lora_rank: int = 4, weight_dtype=None,
                     difficulty_encoder: bool = True, runtime: int = RUNTIME_BYTES) -> MemoryEstimate:
    """Peak memory of one LoRA (+ difficulty encoder) step at `batch_size`: the frozen base in
    `weight_dtype` (default `dtype`; raysys' finetune_loop today loads float32 weights and autocasts to
    bf16: weight_dtype='fp32', dtype='bf16'), float32 trainable parameters + gradients + AdamW
    states, and the largest of VAE encode, text encoding and the UNet forward + backward with
    activations in `dtype`."""
    from raysys.generation.layouts import get_layout

    resolution = resolution or get_layout(layout).resolution
    weight_dtype = weight_dtype or dtype
    trainable = lora_parameters(layout, lora_rank) + (_encoder_params(layout) if difficulty_encoder else 0)
    unet_phase = "unet_train_ckpt" if gradient_checkpointing else "unet_train"
    parts = {
        "vae_encode": activation_bytes(layout, "vae_encode", resolution, batch_size, dtype),
        "text": activation_bytes(layout, "text", resolution, batch_size, dtype),
        unet_phase: activation_bytes(layout, unet_phase, resolution, batch_size, dtype),
    }
    phase = max(parts, key=parts.get)
    what = (f"{layout} LoRA r{lora_rank} fine-tuning {resolution} px batch {batch_size} {dtype}"
            f"{'' if weight_dtype == dtype else f' (weights {weight_dtype})'}"
            f"{' checkpointed' if gradient_checkpointing else ''}")
    return MemoryEstimate(what, weight_bytes(layout, weight_dtype), parts[phase], phase,
                          trainable=16 * trainable, runtime=runtime, parts=parts)


def _predict(kind: str, layout: str, resolution, batch_size: int, dtype, **kwargs) -> MemoryEstimate:
    if kind == "generation":
        return predict_generation(layout, resolution, batch_size, dtype, **kwargs)
    if kind == "finetune":
        return predict_finetune(layout, resolution, batch_size, dtype, **kwargs)
    raise ValueError(f"kind is generation or finetune, got '{kind}'")


def gpu_bytes(gpu) -> int:
    """A GPU's memory in bytes: a name from `GPUS`, or a number of bytes."""
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise ValueError(f"unknown GPU '{gpu}' (known: {', '.join(GPUS)}; or give its memory in bytes)")
        return GPUS[gpu] * GiB
    return int(gpu)


def largest_batch(layout: str, resolution: Optional[int], dtype, memory_bytes, headroom: float = HEADROOM,
                  kind: str = "generation", limit: int = 4096, **kwargs) -> int:
    """The largest batch whose predicted peak fits in (1 - headroom) of `memory_bytes` (a GPU name
    or bytes): `synthesis.batch_size: auto`. 0 if not even batch 1 fits."""
    budget = gpu_bytes(memory_bytes) * (1 - headroom)
    fits = lambda b: _predict(kind, layout, resolution, b, dtype, **kwargs).total <= budget  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # fits(lo), not fits(hi) (or hi past the limit)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_fits(layout: str, resolution: Optional[int], batch_size: int, dtype, gpu, *,
               kind: str = "generation", key: str = "synthesis.batch_size", headroom: float = HEADROOM,
               **kwargs) -> list[str]:
    """Problems, in the style of the config checks: empty if `batch_size` is predicted to fit `gpu`
    (a name from GPUS or bytes) with `headroom` kept free; else one line with the config key, the
    predicted GiB against the GPU's, and what fits."""
    from raysys.generation.layouts import get_layout

    px = resolution or get_layout(layout).resolution
    est = _predict(kind, layout, resolution, batch_size, dtype, **kwargs)
    memory = gpu_bytes(gpu)
    if est.total <= memory * (1 - headroom):
        return []
    name = f" ({gpu})" if isinstance(gpu, str) else ""
    gpu_gib = f"{memory / GiB:.0f}"
    parts = f"weights {est.weights / GiB:.1f}, "
    if est.trainable:
        parts += f"trainable + optimizer {est.trainable / GiB:.2f}, "
    parts += f"activations {est.activations / GiB:.1f} in {est.phase}"
    if est.runtime:
        parts += f", runtime {est.runtime / GiB:.1f}"
    fixes = []
    best = largest_batch(layout, resolution, dtype, memory, headroom, kind, **kwargs)
    if best:
        fixes.append(f"batch_size <= {best} fits")
    if dtype_bytes(dtype) == 4:
        half = largest_batch(layout, resolution, "bf16", memory, headroom, kind, **kwargs)
        if half > best:
            fixes.append(f"{'or ' if best else ''}use dtype bf16 (batch_size <= {half} fits then)")
    if kind == "finetune" and not kwargs.get("gradient_checkpointing", True):
        ckpt = largest_batch(layout, resolution, dtype, memory, headroom, kind,
                             **{**kwargs, "gradient_checkpointing": True})
        if ckpt > best:
            fixes.append(f"with gradient_checkpointing batch_size <= {ckpt} fits")
    if not fixes:
        bigger = [g for g, size in sorted(GPUS.items(), key=lambda kv: kv[1])
                  if largest_batch(layout, resolution, dtype, size * GiB, headroom, kind, **kwargs) >= batch_size]
        fixes.append(f"not even batch_size 1 fits; {bigger[0]} ({GPUS[bigger[0]]} GiB) fits batch_size {batch_size}"
                     if bigger else "not even batch_size 1 fits, nor on any GPU listed")
    return [f"{key}={batch_size} needs {est.total / GiB:.1f} GiB predicted on a {gpu_gib} GiB GPU{name} "
            f"({parts}) for {layout} at {px} px {dtype}; "
            + ", ".join(fixes)]
