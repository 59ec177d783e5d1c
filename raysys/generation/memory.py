"""Memory planning: the peak GPU memory of generation and of LoRA fine-tuning, predicted before
any work from parameter counts and a measured activation profile.

**Weights** are the layout's parameter counts (`layouts.parameter_counts`, stored in `PROFILES`)
times the dtype's size. Generation holds the UNet, the text encoder(s), the VAE and the (tiny)
difficulty encoder. Fine-tuning holds the same frozen base in the weight dtype plus, in float32,
the trainable LoRA and difficulty-encoder parameters, their gradients and AdamW's two states
(16 bytes a trainable parameter).

**Activations** per image row are `c + a·side²` bytes in float32, `side` the latent side
(image side / 8), for each phase of the work: the UNet forward (no grad), the UNet forward +
backward of a LoRA step with and without gradient checkpointing, VAE decode and encode, and
the text encoder. The constants were measured by running the real full-size component (random
weights, float32, on the CPU) at latent sides 16, 24, 32 and 40 and fitting (`python -m
raysys.generation.memory` regenerates them). Other dtypes scale them by their size (bf16 / fp16:
half); under bf16 autocast a few ops (group norm, softmax statistics) stay in float32, so that
is slightly optimistic for fine-tuning.

How bytes are measured: `LiveTensorBytes`, a `TorchDispatchMode` that sees every aten op's
outputs and keeps the sum of the bytes of the tensor storages alive (a weak reference per
storage takes its bytes off when it is freed), and its peak. It counts what a caching GPU
allocator has to hold (tensors), is independent of the device and of the CPU allocator (glibc
arenas, oneDNN caches, page faults of RSS), and sees the backward pass. It does not see a
kernel's internal workspace (cuDNN / cuBLAS scratch), which `RUNTIME_BYTES` and the headroom
cover. No side⁴ term is needed: torch's CPU SDPA (`_scaled_dot_product_flash_attention_for_cpu`)
and the CUDA flash / memory-efficient kernels that fp16 / bf16 use never materialise the
(tokens × tokens) attention map; the c + a·side² fit is exact to < 0.01% at the measured sides
for every phase but the refiner's checkpointed step (15% at side 16, where its peak is another
tensor; 5% at 24, < 1% from 32 on).
(The math SDPA backend, used for float32 on old GPUs, would add it; not modelled.)

**Peak** = weights + the largest phase (phases run one after another):
generation: text encoder (rows = 2·batch with guidance), UNet (2·batch rows with classifier-free
guidance, as `DifficultyDiffusionPipeline._denoise` concatenates both branches, batch rows
without), VAE decode of the whole batch at once (`decode_latents`, as diffusers does without
`enable_vae_slicing`); fine-tuning: VAE encode and text encoder of the batch (frozen: no graph),
then the UNet forward + backward. On a GPU add `RUNTIME_BYTES` (CUDA context and library
workspaces, an assumption: not measured here).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Optional

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
# Regenerate with:  nice -n 19 python -m raysys.generation.memory  (about 15 minutes, 2 CPU cores,
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


def dtype_bytes(dtype) -> int:
    """Bytes per element of a dtype given as 'fp16' / 'bf16' / 'fp32' (or torch's names, or a torch.dtype)."""
    name = str(dtype).replace("torch.", "").lower()
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from fp32, fp16, bf16)")
    return DTYPE_BYTES[name]


def profile(layout: str) -> dict:
    from raysys.generation.layouts import get_layout

    get_layout(layout)  # the error for an unknown name
    if layout not in PROFILES:
        raise ValueError(f"no memory profile for layout '{layout}' (profiled: {', '.join(PROFILES)}); "
                         "run python -m raysys.generation.memory")
    return PROFILES[layout]


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


DIFFICULTY_ENCODER_PARAMS = {768: 940_288, 1024: 1_204_480, 1280: 1_468_672}
"""DifficultyEncoder parameters (1000 classes, 4 tokens, the defaults) by cross-attention width."""


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


def layout_of(folder: str) -> Optional[str]:
    """The released layout a pipeline folder (model_index.json + unet/config.json) has, matched on
    the UNet's config (channels, cross-attention width, added conditioning); None if none matches
    (the built-in generator, another architecture)."""
    import json
    import os

    from raysys.generation.layouts import CONFIG_ROOT, LAYOUTS

    keys = ("block_out_channels", "cross_attention_dim", "addition_embed_type", "attention_head_dim",
            "transformer_layers_per_block", "down_block_types")

    def unet_config(root):
        path = os.path.join(root, "unet", "config.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            config = json.load(f)
        return tuple(json.dumps(config.get(k)) for k in keys)

    if not os.path.isdir(folder):  # a hub id: the released repositories by name
        return next((name for name, layout in LAYOUTS.items() if layout.hub_id.lower() == folder.lower()
                     or layout.hub_id.split("/")[-1].lower() == folder.split("/")[-1].lower()), None)
    mine = unet_config(folder)
    if mine is None:
        return None
    return next((name for name in LAYOUTS if unet_config(os.path.join(CONFIG_ROOT, name)) == mine), None)


def generation_problems(cfg) -> list[str]:
    """`synthesis.batch_size` (a number, or auto) against `synthesis.gpu`, before any work: the
    actors generate at the model's own size in generator.dtype, with 2 UNet branches under
    classifier-free guidance (3 with a separate difficulty guidance scale), and a GPU shared by
    num_gpus < 1 of an actor gives it that share of its memory. Not checked (no problems) without
    synthesis.gpu, on CPUs, or for a generator.base of no released layout."""
    sy, g = cfg.synthesis, cfg.generator
    if sy.batch_size == "auto" and not (sy.gpu and sy.num_gpus > 0):
        return ["synthesis.batch_size=auto needs synthesis.gpu (one of " + ", ".join(GPUS) + ") and "
                "synthesis.num_gpus > 0: the memory plan sizes the batch for that GPU; else give a number"]
    if not sy.gpu or sy.num_gpus <= 0:
        return []
    if sy.gpu not in GPUS:
        return [f"synthesis.gpu '{sy.gpu}' is not a GPU the memory plan knows ({', '.join(GPUS)})"]
    layout = layout_of(g.base) if g.base != "builtin" else None
    if layout is None:
        if sy.batch_size == "auto":
            return [f"synthesis.batch_size=auto: generator.base '{g.base}' is none of the released layouts the "
                    "memory plan knows (sd15, sd21-base, sdxl-refiner); give a number"]
        return []
    args = _generation_args(cfg, layout)
    if sy.batch_size == "auto":
        if largest_batch(**args) == 0:
            return [f"synthesis.batch_size=auto: not even one image fits synthesis.gpu={sy.gpu} "
                    f"({predict_generation(layout, None, 1, args['dtype'], branches=args['branches'], img2img=args['img2img']).describe()}); "
                    "use generator.dtype=float16 or bfloat16, or a larger GPU"]
        return []
    gpu = sy.gpu if sy.num_gpus >= 1 else args["memory_bytes"]  # a shared GPU: the actor's share
    return check_fits(layout, None, sy.batch_size, args["dtype"], gpu, key="synthesis.batch_size",
                      branches=args["branches"], img2img=args["img2img"])


def _generation_args(cfg, layout: str) -> dict:
    sy, g = cfg.synthesis, cfg.generator
    branches = 1 if g.guidance_scale <= 1 else 2
    if g.difficulty_guidance_scale is not None and any(p.model != "base" for p in sy.plans):
        branches += 1
    return {"layout": layout, "resolution": None, "dtype": g.dtype, "branches": branches,
            "memory_bytes": int(gpu_bytes(sy.gpu) * min(1.0, sy.num_gpus)),
            "img2img": any(p.kind == "discl" for p in sy.plans)}


def generation_batch_size(cfg) -> int:
    """synthesis.batch_size as a number: itself, or for auto the largest batch the plan fits."""
    if cfg.synthesis.batch_size != "auto":
        return int(cfg.synthesis.batch_size)
    return largest_batch(**_generation_args(cfg, layout_of(cfg.generator.base)))


def finetune_problems(cfg) -> list[str]:
    """`finetune.batch_size` against `finetune.gpu` (per worker), before any work: LoRA of
    finetune.lora_rank and the difficulty encoder over float32 weights, bf16 autocast if
    finetune.mixed_precision says so, gradient checkpointing as configured."""
    f, g = cfg.finetune, cfg.generator
    if not f.gpu or not f.use_gpu:
        return []
    if f.gpu not in GPUS:
        return [f"finetune.gpu '{f.gpu}' is not a GPU the memory plan knows ({', '.join(GPUS)})"]
    layout = layout_of(g.base) if g.base != "builtin" else None
    if layout is None:
        return []
    return check_fits(layout, None, f.batch_size, "bf16" if f.mixed_precision == "bf16" else "fp32", f.gpu,
                      kind="finetune", key="finetune.batch_size", weight_dtype="fp32",
                      gradient_checkpointing=f.gradient_checkpointing, lora_rank=f.lora_rank,
                      difficulty_encoder="difficulty" in f.variants)


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


# ---- measuring (torch needed only from here on) -----------------------------------------------

def _torch_dispatch_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


class LiveTensorBytes:
    """Context manager: the peak bytes of tensor storages alive while it is active, counting only
    storages created inside it (weights made before it, and views of them, are not counted).
    Device-independent: it sees each aten op's outputs through a TorchDispatchMode, backward
    included; an output that shares an input's storage (a view, an in-place op) is not new."""

    def __new__(cls):
        import torch
        from torch.utils._pytree import tree_flatten

        class _Mode(_torch_dispatch_mode()):
            def __init__(self):
                super().__init__()
                self.live = 0
                self.peak = 0
                self._refs: dict[int, weakref.ref] = {}

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                          if isinstance(t, torch.Tensor)}
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                        self._track(t)  # not a view of an input, nor an in-place result
                self.peak = max(self.peak, self.live)
                return out

            def _track(self, t):
                storage = t.untyped_storage()
                key = id(storage)
                ref = self._refs.get(key)
                if ref is not None and ref() is storage:
                    return  # a view or an in-place result
                n = storage.nbytes()
                self.live += n
                self._refs[key] = weakref.ref(storage, lambda _, key=key, n=n: self._free(key, n))

            def _free(self, key, n):
                self.live -= n
                self._refs.pop(key, None)

        return _Mode()


def measure(fn) -> int:
    """Peak live tensor bytes created while `fn()` runs."""
    mode = LiveTensorBytes()
    with mode:
        fn()
    return mode.peak


def _context(layout: str, rows: int, unet):
    import torch

    width = unet.config.cross_attention_dim
    tokens = torch.randn(rows, 77 + 4, width)  # 77 text tokens + 4 difficulty tokens
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 5 * unet.config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(rows, pooled), "time_ids": torch.tensor([[512.0, 512, 0, 0, 6]] * rows)}
    return tokens, added


def measure_unet(unet, layout: str, side: int, train: bool, rows: int = 1) -> int:
    """Peak activation bytes of a UNet forward (no grad) or of a LoRA step's forward + backward
    (the UNet must have its adapter; gradient checkpointing as set on it). The LoRA gradients
    that outlive the step are not counted (they are in MemoryEstimate.trainable)."""
    import torch

    x = torch.randn(rows, unet.config.in_channels, side, side)
    t = torch.full((rows,), 500)
    tokens, added = _context(layout, rows, unet)
    if not train:
        with torch.no_grad():
            return measure(lambda: unet(x, t, encoder_hidden_states=tokens, added_cond_kwargs=added))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    unet.train()

    def step():
        unet(x, t, encoder_hidden_states=tokens, added_cond_kwargs=added).sample.float().pow(2).mean().backward()

    peak = measure(step)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    for p in params:
        p.grad = None
    unet.eval()
    return peak - grads


def measure_vae(vae, side: int, decode: bool, rows: int = 1) -> int:
    import torch

    with torch.no_grad():
        if decode:
            z = torch.randn(rows, vae.config.latent_channels, side, side)
            return measure(lambda: vae.decode(z).sample)
        x = torch.randn(rows, vae.config.in_channels, side * 8, side * 8)
        return measure(lambda: vae.encode(x).latent_dist.mean)


def measure_text(encoder, rows: int = 1) -> int:
    import torch

    ids = torch.randint(0, 49407, (rows, 77))
    with torch.no_grad():
        return measure(lambda: encoder(ids, output_hidden_states=True))


def fit(sides, values) -> tuple[float, float]:
    """Least-squares (c, a) of value = c + a·side². c may come out negative (a phase whose peak
    moves between tensors at small sides); predictions are clamped at 0."""
    n = len(sides)
    xs = [s * s for s in sides]
    mx, my = sum(xs) / n, sum(values) / n
    a = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / sum((x - mx) ** 2 for x in xs)
    return my - a * mx, a


def lora_per_rank(unet) -> int:
    """LoRA parameters per unit of rank: Σ (in + out) over the adapted Linear layers."""
    import torch

    return sum(m.in_features + m.out_features for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and name.endswith(LORA_TARGETS))


SIDES = (16, 24, 32, 40)
"""Latent sides the profile is measured at (128 to 320 px): large enough that every phase's peak
is the s² one it has at 512 px (at side 8 the checkpointed backward peaks elsewhere)."""


def profile_layout(layout: str, sides=SIDES, progress=print) -> dict:
    """Measure a layout's activation profile at full size (float32, random weights, one component
    in memory at a time) and fit each phase."""
    import gc

    import torch
    from peft import LoraConfig

    from raysys.generation.layouts import build_component, parameter_counts

    out = {"params": parameter_counts(layout), "phases": {}, "residual": {}}
    folders = out["params"]

    def record(phase, values):
        c, a = fit(sides, values)
        out["phases"][phase] = (round(c), round(a))
        worst = max(abs(c + a * s * s - v) / v for s, v in zip(sides, values))
        out["residual"][phase] = round(worst, 4)
        progress(f"[{layout}] {phase}: {[round(v / 2**20, 1) for v in values]} MiB at sides {list(sides)}; "
                 f"c={c / 2**20:.1f} MiB a={a / 2**10:.1f} KiB/side², worst residual {worst:.2%}")

    torch.set_grad_enabled(True)
    unet = build_component(layout, "unet")
    out["cross_attention_dim"] = unet.config.cross_attention_dim
    out["lora_per_rank"] = lora_per_rank(unet)
    record("unet", [measure_unet(unet, layout, s, train=False) for s in sides])
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
    unet.enable_gradient_checkpointing()
    record("unet_train_ckpt", [measure_unet(unet, layout, s, train=True) for s in sides])
    unet.disable_gradient_checkpointing()
    record("unet_train", [measure_unet(unet, layout, s, train=True) for s in sides])
    del unet
    gc.collect()
    vae = build_component(layout, "vae")
    record("vae_decode", [measure_vae(vae, s, decode=True) for s in sides])
    record("vae_encode", [measure_vae(vae, s, decode=False) for s in sides])
    del vae
    gc.collect()
    text = "text_encoder" if "text_encoder" in folders else "text_encoder_2"
    encoder = build_component(layout, text).float()  # build_component leaves the refiner's in its config's fp16
    value = measure_text(encoder)
    out["phases"]["text"] = (value, 0)
    progress(f"[{layout}] text: {value / 2**20:.1f} MiB a row")
    del encoder
    gc.collect()
    return out


if __name__ == "__main__":
    import argparse
    import pprint

    from raysys.generation.layouts import LAYOUTS

    parser = argparse.ArgumentParser(description="Measure the activation profiles; prints PROFILES.")
    parser.add_argument("layouts", nargs="*", default=list(LAYOUTS))
    args = parser.parse_args()
    result = {name: profile_layout(name) for name in args.layouts}
    print("PROFILES = ", end="")
    pprint.pprint(result, width=110, sort_dicts=False)
