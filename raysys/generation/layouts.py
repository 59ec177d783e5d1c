"""The real Stable Diffusion layouts at full size: their component configs, and pipeline folders
with random weights that load exactly as the released models do.

`layout_configs/<layout>/` holds, for each layout, the `model_index.json` and every component's
config file as the released hub repository ships them:

- `sd15`: Stable Diffusion 1.5 (`stable-diffusion-v1-5/stable-diffusion-v1-5`): UNet with
  cross-attention width 768, CLIP ViT-L/14 text encoder, the SD VAE, PNDM, the safety checker.
- `sd21-base`: Stable Diffusion 2.1 base (`stabilityai/stable-diffusion-2-1-base`): UNet with
  linear projections and width 1024, the OpenCLIP ViT-H/14 text encoder (23 of its 24 layers),
  no safety checker.
- `sdxl-refiner`: the SDXL refiner (`stabilityai/stable-diffusion-xl-refiner-1.0`), the img2img
  model of DisCL's released code: UNet with width 1280 and "text_time" added conditioning
  (pooled text + original size, crop and aesthetic score), the OpenCLIP bigG/14 text encoder
  with projection as `text_encoder_2` (there is no `text_encoder`), Euler.

One change from the released files: `feature_extractor` names `CLIPImageProcessor`, the class
that the old alias `CLIPFeatureExtractor` they name now stands for.

`write_random_pipeline(layout, directory)` builds every component from those configs with random
weights and saves it where the released repository has it, with the real CLIP tokenizer built
offline (`tokenizer.write_clip_tokenizer`). `DifficultyDiffusionPipeline.from_pretrained` and
plain diffusers load the folder as they would load the download, so everything but the weights
(shapes, dtypes, the latent path, LoRA targets, memory) can be checked without the network.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import torch

from raysys.generation.tokenizer import PAD_ENDOFTEXT, PAD_EXCLAMATION

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layout_configs")


@dataclass(frozen=True)
class Layout:
    """A released Stable Diffusion layout."""

    name: str
    """Folder under `layout_configs/`."""
    hub_id: str
    """The released repository whose files the configs are."""
    resolution: int
    """The image side it was trained at, in pixels."""
    pad_token: str
    """What its CLIP tokenizer pads with: `<|endoftext|>` (OpenAI CLIP, SD 1.x) or `!` (id 0,
    OpenCLIP: SD 2.x and SDXL's second tokenizer)."""


LAYOUTS = {
    "sd15": Layout("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, PAD_ENDOFTEXT),
    "sd21-base": Layout("sd21-base", "stabilityai/stable-diffusion-2-1-base", 512, PAD_EXCLAMATION),
    "sdxl-refiner": Layout("sdxl-refiner", "stabilityai/stable-diffusion-xl-refiner-1.0", 1024, PAD_EXCLAMATION),
}


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout '{name}' (choose from {', '.join(LAYOUTS)})")
    return LAYOUTS[name]


def model_index(layout: str) -> dict:
    with open(os.path.join(CONFIG_ROOT, get_layout(layout).name, "model_index.json")) as f:
        return json.load(f)


def components(layout: str) -> dict[str, tuple[str, str]]:
    """Component folder -> (library, class) for the components the layout has (nulls dropped)."""
    return {k: tuple(v) for k, v in model_index(layout).items()
            if not k.startswith("_") and isinstance(v, list) and v[0] is not None}


def _model_class(library: str, class_name: str):
    if library == "diffusers":
        import diffusers
        return getattr(diffusers, class_name)
    if library == "transformers":
        import transformers
        return getattr(transformers, class_name)
    if library == "stable_diffusion":  # diffusers.pipelines.stable_diffusion
        from diffusers.pipelines.stable_diffusion import safety_checker
        return getattr(safety_checker, class_name)
    raise ValueError(f"no loader for library '{library}'")


def build_component(layout: str, folder: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                    device: Optional[str] = None):
    """One model component (unet, vae, text_encoder, ...) of `layout` at full size, random weights."""
    library, class_name = components(layout)[folder]
    cls = _model_class(library, class_name)
    path = os.path.join(CONFIG_ROOT, get_layout(layout).name, folder)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        if library == "diffusers":
            model = cls.from_config(cls.load_config(path))
        else:
            model = cls(cls.config_class.from_pretrained(path))
    if library != "diffusers" or dtype != torch.float32:  # transformers builds in its config's dtype
        model = model.to(dtype)
    return model.eval()


def parameter_counts(layout: str) -> dict[str, int]:
    """Parameters of each model component, counted without allocating them (meta device)."""
    counts = {}
    for folder, (library, _) in components(layout).items():
        if library in ("diffusers", "transformers", "stable_diffusion") and folder not in (
                "scheduler", "tokenizer", "tokenizer_2", "feature_extractor"):
            counts[folder] = sum(p.numel() for p in build_component(layout, folder, device="meta").parameters())
    return counts


def write_random_pipeline(layout: str, directory: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                          progress=print, device: Optional[str] = None) -> str:
    """Write `directory` as the released `layout` repository is laid out, every model component
    built from its config with random weights (seeded), the tokenizer the real CLIP BPE one.

    Components are built and saved one at a time, so the peak memory is the largest component;
    `device` builds them there (a GPU initialises the weights in seconds).
    Returns `directory`.
    """
    from raysys.generation.tokenizer import write_clip_tokenizer

    spec = get_layout(layout)
    source = os.path.join(CONFIG_ROOT, spec.name)
    os.makedirs(directory, exist_ok=True)
    for i, (folder, (library, class_name)) in enumerate(sorted(components(layout).items())):
        target = os.path.join(directory, folder)
        if folder in ("tokenizer", "tokenizer_2"):
            write_clip_tokenizer(target, pad_token=spec.pad_token)
        elif folder in ("scheduler", "feature_extractor"):
            shutil.copytree(os.path.join(source, folder), target, dirs_exist_ok=True)
        else:
            model = build_component(layout, folder, seed=seed + i, dtype=dtype, device=device)
            model.save_pretrained(target)
            progress(f"[{layout}] {folder}: {class_name}, {sum(p.numel() for p in model.parameters()):,} parameters")
            del model
    shutil.copy(os.path.join(source, "model_index.json"), os.path.join(directory, "model_index.json"))
    return directory
