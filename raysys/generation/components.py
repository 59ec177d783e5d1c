"""Build generator components from config at any size, and load real ones from disk or a hub.

`build_components(spec)` makes Stable-Diffusion-layout components (UNet2DConditionModel,
CLIPTextModel + a local CLIPTokenizer, DDPMScheduler, optionally an AutoencoderKL) with random
weights: the built-in quickstart generator is trained from these, and tests use them at tiny
size, as diffusers' own tests do. `load_pipeline(base)` loads a saved pipeline: a local
directory first, else a hub id (which needs the network or a populated HF cache).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from raysys.core.loading import ConfigError
from raysys.generation.pipeline import DifficultyDiffusionPipeline
from raysys.generation.tokenizer import make_clip_tokenizer


@dataclass
class ComponentSpec:
    """Sizes of a generator built from config (random weights)."""

    image_size: int = 16
    """Side of the generated images in pixels."""
    image_channels: int = 1
    """1 (grayscale) or 3 (RGB)."""
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    """UNet channels per resolution level."""
    layers_per_block: int = 1
    """ResNet layers per UNet block."""
    cross_attention_levels: Optional[list[bool]] = None
    """Per UNet level, whether its blocks have (self + cross) attention. None: every level but
    the lowest-resolution one, as Stable Diffusion. Attention at high resolution is what costs
    most on a CPU; the mid block always has it."""
    cross_attention_dim: int = 64
    """Width of the text encoder (and of the difficulty tokens)."""
    text_layers: int = 2
    """Transformer layers of the CLIP text encoder."""
    attention_head_dim: int = 8
    """Channels per attention head in the UNet."""
    vae: bool = False
    """True: latent space with an AutoencoderKL (SD layout); False: pixel space."""
    vae_block_out_channels: list[int] = field(default_factory=lambda: [16, 32])
    """AutoencoderKL channels per level (the latent is image_size / 2^(levels-1))."""
    latent_channels: int = 4
    """AutoencoderKL latent channels."""
    vocabulary: list[str] = field(default_factory=list)
    """Words that get one token each in the local tokenizer (any text still encodes)."""
    max_prompt_tokens: int = 16
    """Tokenizer max length (prompts are padded/truncated to it)."""
    prediction_type: str = "epsilon"
    """What the UNet predicts: epsilon (SD 1.x), v_prediction (SD 2.x) or sample (x0)."""


def build_components(spec: ComponentSpec) -> DifficultyDiffusionPipeline:
    """A pipeline with random weights in the SD layout (no difficulty encoder yet)."""
    levels = len(spec.block_out_channels)
    vae = None
    sample_size = spec.image_size
    unet_channels = spec.image_channels
    if spec.vae:
        vae = AutoencoderKL(
            in_channels=spec.image_channels, out_channels=spec.image_channels,
            down_block_types=["DownEncoderBlock2D"] * len(spec.vae_block_out_channels),
            up_block_types=["UpDecoderBlock2D"] * len(spec.vae_block_out_channels),
            block_out_channels=list(spec.vae_block_out_channels), latent_channels=spec.latent_channels,
            norm_num_groups=min(8, spec.vae_block_out_channels[0]), sample_size=spec.image_size,
        )
        sample_size = spec.image_size // 2 ** (len(spec.vae_block_out_channels) - 1)
        unet_channels = spec.latent_channels
    attention = spec.cross_attention_levels or [True] * (levels - 1) + [False]
    if len(attention) != levels:
        raise ValueError(f"cross_attention_levels has {len(attention)} entries for {levels} UNet levels")
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=unet_channels, out_channels=unet_channels,
        block_out_channels=list(spec.block_out_channels), layers_per_block=spec.layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        cross_attention_dim=spec.cross_attention_dim, attention_head_dim=spec.attention_head_dim,
        norm_num_groups=min(32, spec.block_out_channels[0]),
    )
    with tempfile.TemporaryDirectory() as d:
        tokenizer = make_clip_tokenizer(os.path.join(d, "tok"), spec.vocabulary, spec.max_prompt_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.cross_attention_dim,
        intermediate_size=2 * spec.cross_attention_dim, num_hidden_layers=spec.text_layers,
        num_attention_heads=max(1, spec.cross_attention_dim // 32), max_position_embeddings=spec.max_prompt_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              prediction_type=spec.prediction_type)
    return DifficultyDiffusionPipeline(
        unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
    )


class GeneratorNotFound(ConfigError):
    """generator.base is neither a local pipeline directory nor a reachable hub id."""


def check_base(base: str) -> None:
    """Cheap check, before any work starts, that `base` can be loaded: a local directory with
    model_index.json, or a hub id whose model_index.json is reachable (or already cached)."""
    if os.path.isdir(base):
        if not os.path.isfile(os.path.join(base, "model_index.json")):
            raise GeneratorNotFound(f"generator.base '{base}' is a directory without model_index.json: "
                                    "not a diffusers pipeline (expected the Stable Diffusion 1.5/2.1 layout)")
        return
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(base, "model_index.json")
    except Exception as exc:  # offline, unknown id, no cache
        raise GeneratorNotFound(
            f"generator.base '{base}': no such local directory, and it is not reachable as a hub id "
            f"({type(exc).__name__}). Download the model to a directory (e.g. `huggingface-cli download "
            f"{base} --local-dir DIR`) and set generator.base=DIR."
        ) from None


def load_pipeline(base: str, **kwargs) -> DifficultyDiffusionPipeline:
    """Load from a local directory (SD 1.5/2.1 layout or a saved raysys pipeline), else a hub id."""
    if os.path.isdir(base):
        if not os.path.isfile(os.path.join(base, "model_index.json")):
            raise GeneratorNotFound(f"{base} is a directory without model_index.json: not a diffusers pipeline")
        return DifficultyDiffusionPipeline.from_pretrained(base, **kwargs)
    try:
        return DifficultyDiffusionPipeline.from_pretrained(base, **kwargs)
    except Exception as exc:  # offline, unknown id, no cache
        raise GeneratorNotFound(
            f"generator.base '{base}': no such local directory, and loading it as a hub id failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Download the model to a "
            f"directory and point generator.base at it."
        ) from None
