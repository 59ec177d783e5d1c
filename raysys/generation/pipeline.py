"""One diffusers pipeline for text, difficulty and image guidance.

`DifficultyDiffusionPipeline` generates a batch where every image has its own prompt, class,
difficulty s (or none), source image with image guidance λ (or none) and seed:

- **Text**: the prompt is encoded by the CLIP text encoder (Stable Diffusion layout).
- **Difficulty** (Wang et al.): the difficulty encoder's k tokens are appended to the text
  tokens that feed the UNet's cross-attention. A row without s gets the encoder's learned
  null tokens, so every row has the same sequence length.
- **Image guidance** (DisCL): img2img that starts from the source image noised to step
  (1-λ)·T; λ=0 is pure text-to-image, λ=1 returns the source unchanged. Rows with different λ
  are denoised in separate groups, each with its own timesteps.
- **Classifier-free guidance**: the unconditional branch is the negative prompt followed by
  the null difficulty tokens; `guidance_scale` > 1 pushes away from it, so text and difficulty
  are guided together. `guidance_scale` <= 1 runs the conditional branch only.
- **Seeds**: each row's starting noise comes from its own `torch.Generator(seed)`, and the
  schedulers offered are deterministic, so a row's image does not depend on the batch it is in.

With a VAE (`vae` set, SD 1.x/2.x layout) the UNet works on latents; without one (the built-in
quickstart model) it works on pixels in [-1, 1].

**SDXL layout** (the refiner that DisCL's released code uses for img2img): the prompt goes through
`text_encoder_2` (OpenCLIP bigG with projection; there is no `text_encoder`). As diffusers' SDXL
pipelines do, its penultimate hidden states are the cross-attention condition, and its pooled
projection plus the "time ids" (original size, crop, and the aesthetic score for the refiner or
the target size for the base model) are the UNet's added conditioning. The difficulty tokens
are appended to the condition, as for SD 1.x/2.x.

**LoRA**: the pipeline has diffusers' `StableDiffusionLoraLoaderMixin`, so `load_lora_weights`
/ `save_lora_weights` read and write the standard `pytorch_lora_weights.safetensors`.
`save_pretrained` writes the base components untouched plus that LoRA file beside them, and
`from_pretrained` loads it back, so a fine-tuned pipeline (LoRA and difficulty encoder
included) round-trips through one directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from raysys.generation.difficulty_encoder import DifficultyEncoder
from raysys.generation.prompts import check_prompt_template

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


@dataclass
class GenerationOutput(BaseOutput):
    images: np.ndarray
    """uint8 (B, H, W, C); float (B, C, H, W) in [-1, 1] when output_type='pt'; latents for 'latent'."""


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""diffusers' standard LoRA file name (what `load_lora_weights(directory)` looks for)."""


def lora_adapter_name(unet: UNet2DConditionModel) -> Optional[str]:
    """The name of the UNet's LoRA adapter ("default" when trained here, "default_0" when
    loaded by `load_lora_weights`); None without one."""
    return next(iter(getattr(unet, "peft_config", None) or {}), None)


def unet_lora_layers(unet: UNet2DConditionModel) -> Optional[dict[str, torch.Tensor]]:
    """The UNet's LoRA weights in peft's key format (lora_A / lora_B, keys without the 'unet.' prefix), which
    diffusers' loaders read; None if the UNet has no LoRA adapter. Not converted to diffusers' older
    lora.down / lora.up names: those cover only attention projections, and a file that mixes both
    formats (LoRA on convolutions too) loads without its attention LoRA."""
    name = lora_adapter_name(unet)
    if name is None:
        return None
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=name)


def unet_lora_metadata(unet: UNet2DConditionModel) -> Optional[dict]:
    """The adapter's rank, alpha and target modules, stored with the weights so that loaders
    rebuild the same scaling."""
    if not getattr(unet, "peft_config", None):
        return None
    config = next(iter(unet.peft_config.values())).to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


AESTHETIC_SCORE = 6.0
"""The SDXL refiner's aesthetic-score condition for the conditional branch (diffusers' default)."""
NEGATIVE_AESTHETIC_SCORE = 2.5
"""... and for the unconditional branch of classifier-free guidance (diffusers' default)."""


@dataclass
class Condition:
    """What the UNet is conditioned on, one row per image."""

    tokens: torch.Tensor
    """(B, L, D) the cross-attention condition: text tokens, then the difficulty tokens if any."""
    pooled: Optional[torch.Tensor] = None
    """(B, P) the pooled text embedding (SDXL layout only)."""

    def rows(self, index) -> "Condition":
        return Condition(self.tokens[index], None if self.pooled is None else self.pooled[index])

    def to(self, dtype: torch.dtype) -> "Condition":
        return Condition(self.tokens.to(dtype), None if self.pooled is None else self.pooled.to(dtype))


def load_dtype_argument() -> str:
    """The name diffusers' `from_pretrained` takes the dtype by: `dtype` since diffusers followed
    transformers (2026, `torch_dtype` deprecated), `torch_dtype` before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


class DifficultyDiffusionPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->difficulty_encoder->unet->vae"
    _optional_components = ["vae", "difficulty_encoder", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler,
        text_encoder: Optional[CLIPTextModel] = None,
        tokenizer: Optional[CLIPTokenizer] = None,
        difficulty_encoder: Optional[DifficultyEncoder] = None,
        vae: Optional[AutoencoderKL] = None,
        text_encoder_2: Optional[CLIPTextModelWithProjection] = None,
        tokenizer_2: Optional[CLIPTokenizer] = None,
    ):
        """SD 1.x/2.x and the built-in model: `text_encoder` + `tokenizer`. The SDXL refiner:
        `text_encoder_2` + `tokenizer_2` alone."""
        super().__init__()
        if (text_encoder is None) == (text_encoder_2 is None):
            raise ValueError("give one text encoder: text_encoder (SD 1.x/2.x layout) or text_encoder_2 "
                             "(SDXL refiner layout)")
        self.register_modules(
            unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
            difficulty_encoder=difficulty_encoder, vae=vae, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        )

    @property
    def text_model(self):
        """The text encoder that conditions the UNet (`text_encoder`, or the SDXL `text_encoder_2`)."""
        return self.text_encoder if self.text_encoder is not None else self.text_encoder_2

    @property
    def added_conditions(self) -> bool:
        """True for the SDXL layout: the UNet also takes pooled text and time ids."""
        return self.unet.config.addition_embed_type == "text_time"

    # ---- saving and loading with LoRA ----------------------------------------------------

    def save_lora(self, directory: str) -> None:
        """Write the UNet's LoRA as `pytorch_lora_weights.safetensors` (standard diffusers format)."""
        layers = unet_lora_layers(self.unet)
        if layers is None:
            raise ValueError("the UNet has no LoRA adapter to save")
        self.save_lora_weights(directory, unet_lora_layers=layers,
                               unet_lora_adapter_metadata=unet_lora_metadata(self.unet))

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Save every component; a UNet with LoRA is saved as its base weights plus the LoRA file."""
        layers = unet_lora_layers(self.unet)
        if layers is None:
            super().save_pretrained(save_directory, **kwargs)
            return
        metadata = unet_lora_metadata(self.unet)
        name = lora_adapter_name(self.unet)
        self.unet.unload_lora()  # back to the base weights for the component folders
        try:
            super().save_pretrained(save_directory, **kwargs)
            self.save_lora_weights(save_directory, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)
        finally:
            self.load_lora_weights(str(save_directory), adapter_name=name)  # the same adapter, by the same name

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load the components, then the LoRA file if the directory has one. Every component is
        loaded in `dtype` (or `torch_dtype`; default float32): transformers 5 would otherwise load
        a text encoder in the dtype its config names (float16 for SD 2.1's and the SDXL refiner's)."""
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or torch.float32
        kwargs[load_dtype_argument()] = dtype
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        location = str(pretrained_model_name_or_path)
        if os.path.isfile(os.path.join(location, LORA_WEIGHTS)):
            pipe.load_lora_weights(location)
        return pipe

    # ---- sizes -------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels)

    def use_scheduler(self, name: str) -> None:
        """Swap the sampling scheduler: ddim, dpm++, unipc or euler (same noise schedule)."""
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler '{name}' (choose from {sorted(SCHEDULERS)})")
        if not isinstance(self.scheduler, SCHEDULERS[name]):
            self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    # ---- conditioning ------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str]) -> Condition:
        """The prompts' text tokens (and, SDXL layout, pooled embeddings), truncated to the
        tokenizer's length (77 for CLIP)."""
        tokenizer = self.tokenizer if self.text_encoder is not None else self.tokenizer_2
        ids = tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.text_model.device)
        if self.text_encoder is not None:
            return Condition(self.text_encoder(ids)[0])
        out = self.text_encoder_2(ids, output_hidden_states=True)
        return Condition(out.hidden_states[-2], out.text_embeds)  # as diffusers' SDXL pipelines

    def condition(
        self,
        prompts: Sequence[str],
        class_labels: Optional[torch.Tensor],
        difficulty: Optional[torch.Tensor],
    ) -> Condition:
        """Cross-attention condition: text tokens, then k difficulty tokens if there is an encoder.

        difficulty: (B,) float with NaN where a row has no difficulty; None: no row has one.
        """
        text = self.encode_text(prompts)
        if self.difficulty_encoder is None:
            return text
        n = len(prompts)
        device = text.tokens.device
        if difficulty is None:
            difficulty = torch.full((n,), float("nan"))
        if class_labels is None:
            class_labels = torch.zeros(n, dtype=torch.long)
        difficulty = difficulty.to(device=device, dtype=torch.float32)
        tokens = self.difficulty_encoder.tokens(
            class_labels.to(device), difficulty, ~torch.isnan(difficulty)
        )
        return Condition(torch.cat([text.tokens, tokens.to(text.tokens.dtype)], dim=1), text.pooled)

    def unconditional(self, negative_prompts: Sequence[str]) -> Condition:
        text = self.encode_text(negative_prompts)
        if self.difficulty_encoder is None:
            return text
        null = self.difficulty_encoder.null(len(text.tokens)).to(text.tokens.dtype)
        return Condition(torch.cat([text.tokens, null], dim=1), text.pooled)

    def time_ids(self, n: int, image_size: int, aesthetic_score: float) -> torch.Tensor:
        """(n, k) SDXL micro-conditioning: original size and crop (0, 0), then the aesthetic score
        (the refiner, k = 5) or the target size (the base model, k = 6), as diffusers builds them."""
        cfg = self.unet.config
        k = (cfg.projection_class_embeddings_input_dim - self.text_encoder_2.config.projection_dim) \
            // cfg.addition_time_embed_dim
        if k == 5:
            ids = [image_size, image_size, 0, 0, aesthetic_score]
        elif k == 6:
            ids = [image_size, image_size, 0, 0, image_size, image_size]
        else:
            raise ValueError(f"the UNet's added conditioning takes {k} time ids; expected 5 (SDXL refiner) or 6 (SDXL)")
        return torch.tensor([ids] * n, dtype=torch.float32)

    def predict(self, x: torch.Tensor, t, condition: Condition, aesthetic_score=AESTHETIC_SCORE) -> torch.Tensor:
        """The UNet's output for latents `x` at timestep(s) `t`. `aesthetic_score`: one number, or
        one per row (SDXL refiner only)."""
        added = None
        if self.added_conditions:
            ids = self.time_ids(len(x), x.shape[-1] * self.vae_scale_factor, AESTHETIC_SCORE)
            if ids.shape[1] == 5:
                ids[:, 4] = torch.as_tensor(aesthetic_score, dtype=torch.float32).expand(len(x))
            added = {"text_embeds": condition.pooled.to(x.dtype), "time_ids": ids.to(x.device, x.dtype)}
        return self.unet(x, t, encoder_hidden_states=condition.tokens.to(x.dtype), added_cond_kwargs=added).sample

    # ---- latents <-> images ------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> UNet space (deterministic: the posterior mean)."""
        if self.vae is None:
            return images
        self._upcast_vae_if_needed()
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def _upcast_vae_if_needed(self) -> None:
        """The SDXL VAE overflows in float16 (its config says `force_upcast`): run it in float32, as
        diffusers' SDXL pipelines do."""
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents.clamp(-1, 1)
        self._upcast_vae_if_needed()
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return images.clamp(-1, 1)

    def noise_for(self, seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
        """One noise tensor per seed, drawn on the CPU: independent of batch and device."""
        return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])

    # ---- sampling ----------------------------------------------------------------------

    def _denoise(self, latents, cond, uncond, timesteps, guidance_scale, text_only=None,
                 difficulty_guidance_scale=None):
        """`uncond`: negative prompt + null tokens (None: no text guidance). `text_only`: the
        prompt + null tokens, for a separate difficulty guidance scale (None: s is guided with
        the text)."""
        branches = [c for c in (uncond, text_only) if c is not None] + [cond]
        n = len(latents)
        joint = Condition(torch.cat([b.tokens for b in branches]),
                          None if cond.pooled is None else torch.cat([b.pooled for b in branches]))
        aesthetic = torch.tensor([NEGATIVE_AESTHETIC_SCORE if b is uncond else AESTHETIC_SCORE
                                  for b in branches]).repeat_interleave(n)
        for t in timesteps:
            x = torch.cat([latents] * len(branches))
            x = self.scheduler.scale_model_input(x, t)
            eps = self.predict(x, t, joint, aesthetic).chunk(len(branches))
            eps_cond = eps[-1]
            if text_only is None:
                out = eps_cond if uncond is None else eps[0] + guidance_scale * (eps_cond - eps[0])
            else:
                eps_text = eps[-2]
                out = eps_text if uncond is None else eps[0] + guidance_scale * (eps_text - eps[0])
                out = out + difficulty_guidance_scale * (eps_cond - eps_text)
            latents = self.scheduler.step(out, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def __call__(
        self,
        prompt: Sequence[str],
        seeds: Sequence[int],
        class_labels: Optional[Sequence[int]] = None,
        difficulty: Optional[Sequence[Optional[float]]] = None,
        source_images: Optional[torch.Tensor] = None,
        guidance: Optional[Sequence[Optional[float]]] = None,
        negative_prompt: str | Sequence[str] = "",
        guidance_scale: float = 1.0,
        difficulty_guidance_scale: Optional[float] = None,
        num_inference_steps: int = 25,
        scheduler: Optional[str] = None,
        output_type: str = "np",
        image_size: Optional[int] = None,
    ) -> GenerationOutput:
        """Generate one image per prompt.

        Args:
            prompt: B prompts.
            seeds: B seeds, one per image.
            class_labels: B class indices (for the difficulty encoder).
            difficulty: B values of s in [0, 1], or None per row (no difficulty condition).
            source_images: (B, C, H, W) in [-1, 1] for image guidance; rows whose guidance is
                None ignore theirs.
            guidance: B values of λ in [0, 1] (None per row: text only, λ=0).
            negative_prompt: one negative prompt for all rows, or B of them.
            guidance_scale: classifier-free guidance scale (<= 1: no guidance).
            difficulty_guidance_scale: None (default): s is guided together with the text, by
                `guidance_scale`. A number w_d guides s on its own, with a third UNet pass on
                the prompt + null difficulty tokens: eps = eps_u + w (eps_text - eps_u)
                + w_d (eps_text+s - eps_text). w_d = w (> 1) gives the same images as None; a larger
                w_d pushes the image further towards the requested s. Needs a model fine-tuned
                with `difficulty_dropout` > 0 (it learns prompt + null tokens).
            num_inference_steps: T, the number of sampling steps.
            scheduler: ddim, dpm++, unipc or euler (None: keep the current one if it is one of
                these, else ddim). All four are deterministic given the starting noise.
            output_type: "np" for uint8 (B, H, W, C), "pt" for float (B, C, H, W) in [-1, 1],
                "latent" for the UNet-space result before decoding and clamping.
            image_size: side of the images in pixels, a multiple of 8 × the VAE's downsampling
                (None: the model's own, `self.image_size`); `source_images` must have it.
        """
        n = len(prompt)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        if scheduler is not None:
            self.use_scheduler(scheduler)
        elif not isinstance(self.scheduler, tuple(SCHEDULERS.values())):
            self.use_scheduler("ddim")  # the saved training scheduler (DDPM) samples with extra noise
        device, dtype = self.unet.device, self.unet.dtype
        labels_t = torch.as_tensor(list(class_labels) if class_labels is not None else [0] * n, dtype=torch.long)
        diff_t = _difficulty_tensor(difficulty)
        lambdas = _guidance_values(guidance, n, has_sources=source_images is not None)

        cond, uncond, text_only = self._conditions(prompt, labels_t, diff_t, negative_prompt, guidance_scale,
                                                   difficulty_guidance_scale)

        size = self._latent_side(image_size)
        noise = self.noise_for(seeds, (self.unet.config.in_channels, size, size)).to(device, dtype)
        out = torch.empty(n, self.unet.config.in_channels, size, size, device=device, dtype=dtype)
        source_latents = None
        if source_images is not None:
            source_latents = self.encode_images(source_images.to(device, dtype))

        for lam in sorted(set(lambdas)):  # rows of one λ share their timesteps
            rows = torch.tensor([i for i, g in enumerate(lambdas) if g == lam], device=device)
            timesteps = self._timesteps_from(lam, num_inference_steps, device)
            if timesteps is None:  # λ = 1: the source itself
                out[rows] = source_latents[rows]
                continue
            if lam == 0:
                latents = noise[rows] * self.scheduler.init_noise_sigma
            else:
                t0 = timesteps[:1].repeat(len(rows))
                latents = self.scheduler.add_noise(source_latents[rows], noise[rows], t0)
            out[rows] = self._denoise(
                latents, cond.rows(rows), None if uncond is None else uncond.rows(rows), timesteps, guidance_scale,
                None if text_only is None else text_only.rows(rows), difficulty_guidance_scale,
            )
        return self._output(out, output_type)

    def _conditions(self, prompt, labels_t, diff_t, negative_prompt, guidance_scale, difficulty_guidance_scale):
        """(the rows' condition, the negative one if text guidance is on, the prompt's without difficulty tokens if
        s is guided on its own), in the UNet's dtype."""
        dtype = self.unet.dtype
        cond = self.condition(prompt, labels_t, diff_t).to(dtype)
        negatives = [negative_prompt] * len(prompt) if isinstance(negative_prompt, str) else list(negative_prompt)
        uncond = self.unconditional(negatives).to(dtype) if guidance_scale > 1.0 else None
        text_only = None
        if difficulty_guidance_scale is not None and self.difficulty_encoder is not None and diff_t is not None:
            text_only = self.condition(prompt, labels_t, None).to(dtype)
        return cond, uncond, text_only

    def _latent_side(self, image_size: Optional[int]) -> int:
        """The latent side for images of `image_size` pixels (None: the model's own)."""
        if image_size is None:
            return self.unet.config.sample_size
        if image_size % (8 * self.vae_scale_factor):
            raise ValueError(f"image_size {image_size} is not a multiple of {8 * self.vae_scale_factor} "
                             "(8 x the VAE's downsampling)")
        return image_size // self.vae_scale_factor

    def _timesteps_from(self, lam: float, num_inference_steps: int, device) -> Optional[torch.Tensor]:
        """The timesteps that image guidance λ leaves to denoise (λ = 0: all; None: λ = 1 leaves none), with the
        scheduler set to begin at the first of them."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        start_steps = int(round(num_inference_steps * (1.0 - lam)))
        if lam > 0 and start_steps == 0:
            return None
        t_start = num_inference_steps - start_steps
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)
        return self.scheduler.timesteps[t_start * self.scheduler.order:]

    def _output(self, latents: torch.Tensor, output_type: str) -> GenerationOutput:
        if output_type == "latent":
            return GenerationOutput(images=latents.float().cpu())
        images = self.decode_latents(latents).float()
        if output_type == "pt":
            return GenerationOutput(images=images.cpu())
        arr = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return GenerationOutput(images=arr)


def _difficulty_tensor(difficulty: Optional[Sequence[Optional[float]]]) -> Optional[torch.Tensor]:
    """(B,) float32 of the requested s, NaN where a row has none; None without any."""
    if difficulty is None:
        return None
    diff_t = torch.tensor([float("nan") if d is None else float(d) for d in difficulty], dtype=torch.float32)
    given = diff_t[~torch.isnan(diff_t)]
    if ((given < 0) | (given > 1)).any():
        raise ValueError("difficulty values must lie in [0, 1]")
    return diff_t


def _guidance_values(guidance: Optional[Sequence[Optional[float]]], n: int, has_sources: bool) -> list[float]:
    """λ per row (None: text only, 0), checked."""
    lambdas = [0.0 if g is None else float(g) for g in (guidance or [None] * n)]
    if any(not 0.0 <= g <= 1.0 for g in lambdas):
        raise ValueError("guidance (λ) values must lie in [0, 1]")
    if any(g > 0 for g in lambdas) and not has_sources:
        raise ValueError("image guidance λ > 0 needs source_images")
    return lambdas


def check_generator(g) -> list[str]:
    """Problems of the `generator` section (a GeneratorConfig: the base model, prompts, sampling)."""
    problems = []
    if g.scheduler not in SCHEDULERS:
        problems.append(f"generator.scheduler must be one of {', '.join(SCHEDULERS)}, got '{g.scheduler}'")
    if g.num_inference_steps < 1:
        problems.append("generator.num_inference_steps must be >= 1")
    if g.guidance_scale < 0:
        problems.append(f"generator.guidance_scale must be >= 0 (<= 1 turns classifier-free guidance off; "
                        f"e.g. 3), got {g.guidance_scale}")
    return problems + check_prompt_template(g.prompt_template)
