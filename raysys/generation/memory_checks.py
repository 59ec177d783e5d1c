"""Memory checks of a whole config, before any work: `synthesis.batch_size` (a number, or auto)
against `synthesis.gpu` and `finetune.batch_size` against `finetune.gpu`, through the memory
plan (`memory`); and `layout_of`, the released layout a generator.base has.
"""

from __future__ import annotations

from typing import Optional

from raysys.generation.memory import check_fits, gpu_bytes, largest_batch, predict_generation
from raysys.generation.memory_table import GPUS


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
