"""The classifier's sections: its model, its training, difficulty scoring, the curriculum, the comparison of
variants and the sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from raysys.core.config.fields import runtime


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
    balanced_softmax_prior: Literal["mix", "real"] = "real"
    """Class counts of Balanced Softmax's prior: the real rows only (the synthetic rows then train against the
    real data's long tail), or the epoch's whole mix, which counts the synthetic tail rows as if the tail were
    common and so cancels their rebalancing (docs/RESULTS.md)."""
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
