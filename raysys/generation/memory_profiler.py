"""Measuring the memory plan's activation profile (`memory_table.PROFILES`): each phase of a
layout's real full-size components run at a few latent sides, its peak live tensor bytes
measured and fitted to `c + a·side²` per image row.

    nice -n 19 python -m raysys.generation.memory_profiler [layout ...]   # prints PROFILES

How bytes are measured: `LiveTensorBytes`, a `TorchDispatchMode` that sees every aten op's
outputs and keeps the sum of the bytes of the tensor storages alive (a weak reference per
storage takes its bytes off when it is freed), and its peak. It counts what a caching GPU
allocator has to hold (tensors), is independent of the device and of the CPU allocator (glibc
arenas, oneDNN caches, page faults of RSS), and sees the backward pass. It does not see a
kernel's internal workspace (cuDNN / cuBLAS scratch), which `RUNTIME_BYTES` and the headroom
cover. No side⁴ term is needed: torch's CPU SDPA (`_scaled_dot_product_flash_attention_for_cpu`)
and the CUDA flash / memory-efficient kernels that fp16 / bf16 use never materialise the
(tokens × tokens) attention map; each phase's worst relative residual of the fit is kept in the
profile's `residual`. (The math SDPA backend, used for float32 on old GPUs, would add it; not
modelled.)
"""

from __future__ import annotations

import weakref

from raysys.generation.memory_table import LORA_TARGETS


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


def _condition(layout: str, rows: int, unet):
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
    tokens, added = _condition(layout, rows, unet)
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
