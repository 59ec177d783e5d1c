"""The generator's sections: the base model and its sampling, pretraining, the difficulty fine-tune, the proof of
control, the sampling plans of synthesis and the synthetic set's quality measures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from raysys.core.config.fields import runtime


@dataclass
class SamplingConfig:
    """How images are sampled from a generator: the proof-of-control grid and synthesis alike."""

    guidance_scale: float = 3.0
    """Classifier-free guidance scale (<= 1: no guidance)."""
    difficulty_guidance_scale: Optional[float] = None
    """None: s is guided with the text; a number guides s alone (a third UNet pass; needs difficulty_dropout > 0)."""
    scheduler: str = "ddim"
    """Sampling scheduler, a name of the pipeline's scheduler registry: ddim, dpm++, unipc or euler."""
    num_inference_steps: int = 20
    """Sampling steps T."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""


@dataclass
class GeneratorConfig(SamplingConfig):
    """The base text-to-image model, its prompts, and how it samples (the SamplingConfig fields)."""

    base: str = "builtin"
    """builtin (pretrained from scratch by pretrain-generator), or a folder or hub id in the SD 1.5, SD 2.x or SDXL refiner layout (from_pretrained)."""
    prompt_template: str = "a photo of the digit {name}"
    """Prompt per image: {name} is the class name and {caption}, if used, the image's caption (the source's for an
    image-guided row, a caption of its class for a text row; without one the field and its comma are dropped)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """What the synthesis actors run the generator in: float32, or float16 / bfloat16 (half the weights' memory; float16 needs GPUs). Fine-tuning keeps float32 weights (bf16 autocast on GPUs)."""

    def sampling(self) -> SamplingConfig:
        """The sampling fields alone (what the control grid and synthesis sample with)."""
        return SamplingConfig(**{name: getattr(self, name) for name in SamplingConfig.__dataclass_fields__})


@dataclass
class PretrainConfig:
    """The built-in base generator (generator.base = builtin) and how long it trains."""

    image_size: int = 20
    """Generated image side in pixels (classifiers resize to their own input size)."""
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    """UNet channels per level."""
    cross_attention_levels: list[bool] = field(default_factory=lambda: [False, False, True])
    """UNet levels with cross-attention (the mid block always has it; high-resolution attention costs most)."""
    cross_attention_dim: int = 64
    """Text encoder width (and the difficulty tokens' width)."""
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    """What the UNet predicts: sample (x0), epsilon or v_prediction."""
    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 0.002
    """Peak AdamW learning rate (one-cycle schedule)."""
    ema_decay: float = 0.995
    """Exponential moving average of the weights that is saved (0: save the raw weights)."""
    condition_dropout: float = 0.1
    """Share of rows trained with an empty prompt (for classifier-free guidance)."""
    snr_gamma: Optional[float] = None
    """Min-SNR-γ loss weighting (Hang et al. 2023; null: plain MSE on the prediction_type's target)."""
    cpus: int = runtime(2)
    """CPUs reserved for the pretraining Ray Train worker (its torch threads)."""
    use_gpu: bool = runtime(False)
    """Train on one GPU."""
    checkpoint_every: int = runtime(100)
    """Report a checkpoint every N steps (and after the last): a killed run resumes from the last one."""
    max_failures: int = runtime(0)
    """Worker failures tolerated within one run (resume on rerun regardless)."""


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning of the base generator on Ray Train."""

    variants: list[str] = field(default_factory=lambda: ["difficulty", "plain"])
    """Models to fine-tune: difficulty (LoRA + difficulty encoder, Wang et al.) and/or plain (LoRA only, Real-Fake)."""
    lora_rank: int = 8
    """LoRA rank on the `lora_targets` modules."""
    lora_alpha: float = 8.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """UNet modules that get LoRA, by name suffix (peft's target_modules): the attention projections, as in
    diffusers' LoRA scripts; add e.g. proj_in, proj_out, ff.net.0.proj, ff.net.2 (the transformer blocks) or conv1,
    conv2 (every ResNet block, at every resolution)."""
    difficulty_tokens: int = 4
    """k: difficulty tokens appended to the text tokens."""
    class_input: bool = True
    """Feed the class embedding to the difficulty encoder (False: s only, the paper's ablation)."""
    difficulty_frequencies: int = 2
    """Fourier features sin/cos(2^j π s), j < this, beside s: fewer vary more smoothly with s."""
    steps: int = 300
    """Optimiser steps (each worker draws batch_size rows per step)."""
    batch_size: int = 32
    """Rows per worker per step."""
    lr: float = 0.001
    """Peak AdamW learning rate for LoRA and the difficulty encoder (cosine decay)."""
    snr_gamma: Optional[float] = None
    """Min-SNR-γ loss weighting (null: plain MSE); it down-weights the noisiest steps."""
    sampling: Literal["uniform", "difficulty_balanced"] = "difficulty_balanced"
    """How each step draws its rows: uniform, or difficulty_balanced (every tenth of the s range equally often)."""
    condition_dropout: float = 0.1
    """Share of rows trained without prompt and difficulty (the unconditional branch)."""
    difficulty_dropout: float = 0.0
    """Share of the other rows trained with prompt but null difficulty tokens (for difficulty_guidance_scale)."""
    num_workers: int = 1
    """Ray Train data-parallel workers."""
    use_gpu: bool = runtime(False)
    """One GPU per worker; enables bf16 autocast and gradient checkpointing below."""
    cpus_per_worker: int = runtime(2)
    """CPUs reserved per worker (its torch threads), and for the control grid's task unless control.cpus is set."""
    concurrent_variants: int = runtime(1)
    """Variants fine-tuned at once, each its own Ray Train run of num_workers workers (1: in turn)."""
    mixed_precision: Literal["bf16", "no"] = "bf16"
    """bf16 or no: autocast on GPU (CPU runs in fp32)."""
    gpu: Optional[str] = runtime(None)
    """The GPU the fine-tuning workers run on (A10G, L4, A100-40, A100-80, H100, H200): batch_size is checked against its memory before any work. None: not checked."""
    gradient_checkpointing: bool = runtime(True)
    """Recompute UNet activations in backward on GPU (saves memory)."""
    checkpoint_every: int = runtime(100)
    """Report a checkpoint every N steps (and after the last)."""
    max_failures: int = runtime(0)
    """Worker failures tolerated within one run (resume on rerun regardless)."""


@dataclass
class ControlConfig:
    """The `control` stage's proof-of-control grid: every class x each requested s x seeds, re-scored."""

    grid_levels: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    """Requested difficulties s of the grid."""
    grid_seeds: int = 4
    """Seeds per (class, s) cell of the grid."""
    cpus: Optional[int] = runtime(None)
    """CPUs of the stage's one task, its torch threads (null: finetune.cpus_per_worker)."""


@dataclass
class PlanConfig:
    """One synthetic set: which model, how many images, which classes, which s / λ, which prompts."""

    name: str = "difficulty"
    """Name of the set: its rows are written under <root>/synthesize/<name>/<digest>/, a folder per version (letters, digits, -, _)."""
    model: str = "difficulty"
    """Generator: difficulty (LoRA + difficulty encoder), plain (LoRA only) or base (no fine-tune)."""
    kind: str = "text"
    """A kind of raysys.generation.plans: text (prompt + s from `difficulty`) or discl (image-guided by `sources`)."""
    ratio: float = 0.1
    """text plans: images as a share of the real train set (0.1 = +10%)."""
    class_shares: Literal["uniform", "inverse_frequency", "fill_to_max"] = "uniform"
    """text plans: uniform, inverse_frequency (∝ 1 / train count) or fill_to_max (every class up to the largest)."""
    difficulty: str = "normal"
    """Distribution of requested s: fixed, uniform, normal (clipped), beta, or empirical (the measured train s)."""
    difficulty_params: list[float] = field(default_factory=lambda: [0.5, 0.1])
    """Parameters of `difficulty`: fixed [s]; uniform [lo, hi]; normal [mu, sigma]; beta [a, b]; empirical []."""
    sources: Literal["tail", "top_k", "threshold"] = "tail"
    """discl: guiding images: tail (few classes), top_k (`source_k` hardest) or threshold (>= `source_threshold`)."""
    source_k: int = 100
    """discl with sources=top_k: number of images."""
    source_threshold: float = 0.5
    """discl with sources=threshold: minimum measured difficulty."""
    guidance_levels: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """discl: image guidance levels λ (0 is text only: the source image chooses only class and prompt)."""
    seeds_per_source: int = 8
    """discl: seeds per (source image, λ) (DisCL: 8)."""
    prompts: str = "template"
    """template (generator.prompt_template), file:<path> (class name -> descriptions, one drawn per row) or caption
    (the source's caption; a text row: one of its class)."""
    negative_prompt: Optional[str] = None
    """The plan's negative prompt for classifier-free guidance (None: generator.negative_prompt)."""


@dataclass
class FilterConfig:
    """Which generated images are kept."""

    clip_model: Optional[str] = None
    """CLIP model (folder or hub id) for image-text / image-source similarity; None: the classifier filter instead."""
    clip_text_threshold: float = 0.25
    """Keep an image whose CLIP image-text cosine similarity is at least this (DisCL: 0.25-0.30)."""
    clip_image_threshold: float = 0.0
    """Image-guided rows: keep if CLIP image-source cosine similarity is at least this."""
    classifier_min_p: float = 0.0
    """Without CLIP: keep an image whose requested class the baseline gives at least this p (0 keeps everything)."""


@dataclass
class SpeedConfig:
    """How a generation actor runs its generator on a GPU (raysys/generation/speed.py). None of these changes which images are generated, rounding aside; on a CPU only encode_threads applies."""

    channels_last: bool = runtime(False)
    """UNet and VAE weights in the channels_last (NHWC) memory format (off: it measured slower in eager mode; docs/PERFORMANCE.md)."""
    fuse_qkv: bool = runtime(False)
    """One matmul for the Q, K, V projections of each attention (diffusers' fuse_qkv_projections); a LoRA adapter is merged into the weights first (off: it measured no faster; docs/PERFORMANCE.md)."""
    compile: bool = runtime(False)
    """torch.compile the UNet and the VAE decoder, shapes static (a short batch is padded to the full one); each actor's first batch pays the compile unless compile_cache holds it. Best for text plans: image-guided rows of several guidance levels in one batch give the UNet several shapes, each compiled."""
    compile_cache: Optional[str] = runtime(None)
    """Folder for torch's compile cache (TORCHINDUCTOR_CACHE_DIR), shared by the actors of a machine so a restarted actor does not compile again; None: torch's default under /tmp."""
    encode_threads: int = runtime(4)
    """Threads encoding the images (PNG / WebP) while the GPU generates the next micro-batch."""
    micro_batch: Optional[int] = runtime(None)
    """Images per pipeline call inside one actor batch (None: the whole batch at once); smaller ones let encoding overlap generation within a batch."""


@dataclass
class SynthesisConfig:
    """Mass synthesis on Ray Data: plans -> generate -> filter -> re-score -> Parquet shards."""

    plans: list[PlanConfig] = field(default_factory=lambda: [PlanConfig()])
    """The synthetic sets to generate."""
    output: Optional[str] = None
    """Where shards go (local path or pyarrow URI); None: <root>/synthesize."""
    batch_size: Union[int, Literal["auto"]] = runtime(32)
    """Images per generation call (per actor batch); auto: the largest the memory plan predicts fits synthesis.gpu (an SD-layout generator.base)."""
    gpu: Optional[str] = runtime(None)
    """The GPU the generation actors run on (A10G, L4, A100-40, A100-80, H100, H200): batch_size is checked against its memory before any work. None: not checked."""
    min_actors: int = runtime(1)
    """Smallest generation actor pool (>= 1; an autoscaler still starts GPU nodes from 0)."""
    max_actors: int = runtime(1)
    """Largest generation actor pool (Ray Data grows the pool under load, an autoscaler adds nodes)."""
    initial_actors: Optional[int] = runtime(None)
    """Actors started first (None: min_actors)."""
    num_gpus: float = runtime(0.0)
    """GPUs per generation actor (fractions allowed, e.g. 0.5 for two actors per GPU)."""
    cpus_per_actor: float = runtime(1.0)
    """CPUs per generation actor (its torch threads on a CPU-only machine)."""
    filter_actors: int = runtime(1)
    """Actors of the CLIP filter stage and of the re-score stage (each)."""
    filter_cpus: float = runtime(0.0)
    """CPUs reserved per filter / re-score actor (0: they share the generation actors' CPUs)."""
    filter_num_gpus: float = runtime(0.0)
    """GPUs per filter / re-score actor (fractions allowed)."""
    image_format: Literal["png", "webp"] = "png"
    """Encoding of the written images: png or webp (lossless)."""
    rows_per_block: int = runtime(256)
    """Plan rows per Ray Data input block (and at most per written Parquet part)."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Filter stage."""
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    """How the generation actors run the generator fast on a GPU."""


@dataclass
class QualityConfig:
    """The `quality` stage: each synthetic set measured against the real images before any classifier trains on it."""

    extractor: str = "classifier"
    """Feature space: classifier (the run's baseline classifier, penultimate layer), inception (torch-fidelity's
    InceptionV3, FID's own space) or a timm model name (its pooled features)."""
    weights: Optional[str] = None
    """Local weights file for inception or a timm extractor (None: the package's own download cache)."""
    pretrained: bool = True
    """timm extractors: load pretrained weights (False: random weights, for tests)."""
    k: int = 5
    """Nearest neighbours of precision, recall, density and coverage (Naeem et al.: 5)."""
    copy_threshold: float = 0.5
    """A synthetic image is a copy when its distance to the nearest train image is below this share of that
    train image's distance to its own nearest other train image."""
    min_images: int = 50
    """A figure computed on fewer images than this, on either side, is marked unreliable."""
    batch_size: int = runtime(256)
    """Images per extractor forward pass."""
    min_actors: int = runtime(1)
    """Smallest feature-extraction actor pool."""
    max_actors: int = runtime(1)
    """Largest feature-extraction actor pool."""
    num_gpus: float = runtime(0.0)
    """GPUs per feature-extraction actor (fractions allowed)."""
    cpus_per_actor: float = runtime(1.0)
    """CPUs reserved per feature-extraction actor."""
