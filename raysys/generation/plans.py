"""Sampling plans: the rows a synthesis run must generate, decided before any image exists.

A plan row says everything that determines one synthetic image: class, prompt, requested
difficulty s (or none), source image and image guidance λ (or none), seed and generator. Its
`sample_id` is a hash of exactly those fields, so the same config always plans the same ids
and a rerun can tell what is already written. A row also carries its negative prompt (the
plan's, or the generator's); like the sampling settings it is not in the id but in the digest
that names the plan's version folder (raysys.generation.plan_versions).

Prompts are `generator.prompt_template` filled with the class name and, where the template uses
`{caption}`, a real image's caption (raysys.generation.prompts), or drawn from a descriptions
file, or a caption alone (`PlanConfig.prompts`).

Two kinds of plan (`PlanConfig.kind`):

- **text** (Wang et al.): `ratio` x the real train set, shared over classes by `class_shares`
  (uniform, inverse_frequency, fill_to_max), s drawn from the `difficulty` distribution.
- **discl** (DisCL): the hard real train images (`sources`: tail classes, top-k or threshold
  on measured difficulty) x every λ in `guidance_levels` x `seeds_per_source` seeds.

Every random choice comes from a numpy Generator seeded by a SHA-256 of (run seed, plan name,
purpose), never from Python's salted `hash()`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import yaml

from raysys.core import io
from raysys.core.config import PlanConfig
from raysys.core.schema import sample_id
from raysys.generation.prompts import fill_prompt, uses_caption

PLAN_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("plan", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),  # difficulty | plain | base
    pa.field("label", pa.int32(), nullable=False),
    pa.field("class_name", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("negative_prompt", pa.string()),  # null: the sampling config's
    pa.field("requested_difficulty", pa.float32()),  # s, null: no difficulty condition
    pa.field("guidance", pa.float32()),  # λ, null: text only
    pa.field("source_id", pa.string()),  # real image that guides this row
    pa.field("source_image", pa.binary()),  # its encoded bytes
    pa.field("seed", pa.int64(), nullable=False),
])


def stable_int(*parts: object) -> int:
    """A 31-bit integer from the parts (SHA-256; identical on every machine and run)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFF


def rng_for(*parts: object) -> np.random.Generator:
    return np.random.default_rng(stable_int(*parts))


def allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split `total` into integers proportional to `weights` (largest remainder; ties by index)."""
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def class_counts(plan: PlanConfig, train_counts: np.ndarray) -> np.ndarray:
    """Images per class of a text plan, from the real train count per class."""
    train_counts = np.asarray(train_counts, dtype=np.int64)
    if plan.class_shares == "fill_to_max":
        return train_counts.max() - train_counts
    total = int(round(plan.ratio * train_counts.sum()))
    if plan.class_shares == "uniform":
        return allocate(total, np.ones(len(train_counts)))
    if plan.class_shares == "inverse_frequency":
        return allocate(total, 1.0 / np.maximum(train_counts, 1))
    raise ValueError(f"unknown class_shares '{plan.class_shares}'")


def sample_difficulty(plan: PlanConfig, n: int, rng: np.random.Generator,
                      empirical: Optional[np.ndarray] = None) -> np.ndarray:
    """n values of s in [0, 1] from the plan's distribution."""
    p = plan.difficulty_params
    if plan.difficulty == "fixed":
        s = np.full(n, p[0])
    elif plan.difficulty == "uniform":
        s = rng.uniform(p[0], p[1], n)
    elif plan.difficulty == "normal":
        s = np.clip(rng.normal(p[0], p[1], n), 0.0, 1.0)
    elif plan.difficulty == "beta":
        s = rng.beta(p[0], p[1], n)
    elif plan.difficulty == "empirical":
        if empirical is None or len(empirical) == 0:
            raise ValueError(f"plan '{plan.name}': difficulty empirical needs measured difficulty on the train split")
        s = rng.choice(np.asarray(empirical, dtype=np.float64), size=n, replace=True)
    else:
        raise ValueError(f"unknown difficulty distribution '{plan.difficulty}'")
    return s.astype(np.float32)


def prompts_file_digest(plan: PlanConfig) -> Optional[str]:
    """SHA-256 of a `prompts: file:<path>` plan's file, whose content decides its rows' prompts and
    so their sample ids ('missing' when it is not there); None for a plan that reads no file."""
    if not plan.prompts.startswith("file:"):
        return None
    location = plan.prompts[5:]
    return hashlib.sha256(io.read_bytes(location)).hexdigest() if io.exists(location) else "missing"


def load_descriptions(location: str, class_names: Sequence[str]) -> dict[str, list[str]]:
    """A YAML/JSON file mapping class name -> list of descriptions; every class must have one."""
    text = io.read_text(location)
    data = json.loads(text) if location.endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{location}: expected a mapping from class name to a list of descriptions")
    missing = [c for c in class_names if not data.get(c)]
    if missing:
        raise ValueError(f"{location}: no descriptions for classes {missing}")
    return {c: [str(d) for d in data[c]] for c in class_names}


def real_captions(train: pa.Table) -> list[Optional[str]]:
    """Each real row's caption: its `caption` column, else its `prompt` column (older manifests
    kept captions there); None where it has neither."""
    def column(name: str) -> list[Optional[str]]:
        return train[name].to_pylist() if name in train.column_names else [None] * len(train)

    return [caption or prompt or None for caption, prompt in zip(column("caption"), column("prompt"))]


class Prompter:
    """Chooses each row's prompt the way the plan says (template, file:<path> or caption).

    template: `generator.prompt_template` with the class name and, where it uses `{caption}`, the
    source's caption (image-guided rows) or one caption of the row's class drawn at random (text
    rows); without one the field is dropped (`fill_prompt`). caption: the source's caption, else
    one of the row's class."""

    def __init__(self, plan: PlanConfig, template: str, class_names: Sequence[str], rng: np.random.Generator,
                 captions: Optional[dict[int, list[str]]] = None):
        self.mode, self.template, self.class_names, self.rng = plan.prompts, template, class_names, rng
        self.descriptions = load_descriptions(plan.prompts[5:], class_names) if plan.prompts.startswith("file:") else None
        self.captions = captions or {}
        if plan.prompts == "caption" and not any(self.captions.values()):
            raise ValueError(f"plan '{plan.name}': prompts=caption, but no train image has a caption (the `caption` "
                             "column the caption stage writes when captions.model is set)")

    def _class_caption(self, label: int) -> Optional[str]:
        """One caption of a train image of class `label`, drawn at random (None: it has none)."""
        options = self.captions.get(label) or []
        return options[int(self.rng.integers(len(options)))] if options else None

    def __call__(self, label: int, source_caption: Optional[str] = None, guided: bool = False) -> str:
        """The prompt of one row of class `label`; `guided`: the row has a source image, whose
        caption is `source_caption` (None: it has none)."""
        name = self.class_names[label]
        if self.descriptions is not None:
            options = self.descriptions[name]
            return options[int(self.rng.integers(len(options)))]
        if self.mode == "caption":
            caption = source_caption or self._class_caption(label)
            if not caption:
                raise ValueError(f"prompts=caption: no train image of class '{name}' has a caption")
            return caption
        if not guided and uses_caption(self.template):
            source_caption = self._class_caption(label)
        return fill_prompt(self.template, name, source_caption)


def choose_sources(plan: PlanConfig, train: pa.Table, few_classes: Sequence[int]) -> np.ndarray:
    """Row indices of the real train images that guide a discl plan (ordered by sample_id)."""
    labels = train["label"].to_numpy()
    ids = np.asarray(train["sample_id"].to_pylist(), dtype=object)
    difficulty = train["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    if plan.sources == "tail":
        rows = np.flatnonzero(np.isin(labels, list(few_classes)))
    else:
        if np.isnan(difficulty).all():
            raise ValueError(f"plan '{plan.name}': sources={plan.sources} needs measured difficulty (run score)")
        scored = np.flatnonzero(~np.isnan(difficulty))
        if plan.sources == "top_k":
            order = sorted(scored, key=lambda r: (-difficulty[r], ids[r]))
            rows = np.asarray(order[: plan.source_k], dtype=np.int64)
        else:
            rows = scored[difficulty[scored] >= plan.source_threshold]
    return np.asarray(sorted(rows, key=lambda r: ids[r]), dtype=np.int64)


def build_plan(
    plan: PlanConfig,
    train: pa.Table,
    class_names: Sequence[str],
    few_classes: Sequence[int],
    prompt_template: str,
    run_seed: int,
    negative_prompt: Optional[str] = None,
) -> pa.Table:
    """The plan's rows as a PLAN_SCHEMA table.

    `train`: the real train rows of the scored manifest (sample_id, label, difficulty, caption
    and/or prompt, and `image` if the rows should carry their source's bytes; without it
    `with_source_images` adds them later, for the rows still to generate). `negative_prompt`: the
    generator's, every row's unless the plan sets its own (None: the sampling config's at
    generation). Deterministic: the same arguments give the same table, ids and seeds included.
    """
    with_images = "image" in train.column_names
    labels = train["label"].to_numpy()
    difficulty = train["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    empirical = difficulty[~np.isnan(difficulty)]
    negative = plan.negative_prompt if plan.negative_prompt is not None else negative_prompt
    captions_col = real_captions(train)
    captions: dict[int, list[str]] = {}
    for label, caption in zip(labels, captions_col):
        if caption:
            captions.setdefault(int(label), []).append(caption)
    prompter = Prompter(plan, prompt_template, class_names, rng_for(run_seed, plan.name, "prompts"), captions)
    conditioned = plan.model == "difficulty"
    s_rng = rng_for(run_seed, plan.name, "difficulty")

    rows: dict[str, list] = {f.name: [] for f in PLAN_SCHEMA}

    def add(label: int, index: object, s: Optional[float], lam: Optional[float], source_row: Optional[int],
            prompt: str) -> None:
        source_id = None if source_row is None else train["sample_id"][source_row].as_py()
        seed = stable_int(run_seed, plan.name, label, source_id, lam, index)
        s_value = None if s is None else round(float(s), 4)
        lam_value = None if lam is None else round(float(lam), 4)
        rows["sample_id"].append(sample_id("synthetic", plan.name, plan.model, label, source_id, lam_value,
                                           s_value, seed, prompt))
        rows["plan"].append(plan.name)
        rows["model"].append(plan.model)
        rows["label"].append(int(label))
        rows["class_name"].append(class_names[label])
        rows["prompt"].append(prompt)
        rows["negative_prompt"].append(negative)
        rows["requested_difficulty"].append(s_value)
        rows["guidance"].append(lam_value)
        rows["source_id"].append(source_id)
        rows["source_image"].append(None if source_row is None or not with_images else train["image"][source_row].as_py())
        rows["seed"].append(seed)

    if plan.kind == "text":
        counts = class_counts(plan, np.bincount(labels, minlength=len(class_names)))
        for label, count in enumerate(counts):
            s_values = sample_difficulty(plan, int(count), s_rng, empirical) if conditioned else [None] * count
            for j in range(int(count)):
                add(label, j, s_values[j], None, None, prompter(label))
    elif plan.kind == "discl":
        sources = choose_sources(plan, train, few_classes)
        n = len(sources) * len(plan.guidance_levels) * plan.seeds_per_source
        s_values = iter(sample_difficulty(plan, n, s_rng, empirical) if conditioned else [None] * n)
        for source_row in sources:
            label = int(labels[source_row])
            for lam in plan.guidance_levels:
                for k in range(plan.seeds_per_source):
                    add(label, k, next(s_values), lam, int(source_row),
                        prompter(label, captions_col[source_row], guided=True))
    else:
        raise ValueError(f"unknown plan kind '{plan.kind}'")
    table = pa.table(rows, schema=PLAN_SCHEMA)
    ids = table["sample_id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"plan '{plan.name}' has {len(ids) - len(set(ids))} duplicate sample ids")
    return table


def with_source_images(rows: pa.Table, images: dict[str, bytes]) -> pa.Table:
    """Plan rows with `source_image` filled from `images` (sample_id -> encoded bytes)."""
    missing = sorted({sid for sid in rows["source_id"].to_pylist() if sid is not None and sid not in images})
    if missing:
        raise ValueError(f"{len(missing)} source image(s) of the plan are not in the manifest, e.g. {missing[0]}")
    column = pa.array([None if sid is None else images[sid] for sid in rows["source_id"].to_pylist()], pa.binary())
    return rows.set_column(rows.schema.get_field_index("source_image"), PLAN_SCHEMA.field("source_image"), column)


PLAN_KINDS = ("text", "discl")
"""The kinds of plan `build_plan` makes."""
MODELS = ("difficulty", "plain", "base")
"""The generators a plan can name: the fine-tuned variants, or the base model as it is."""
DISTRIBUTIONS = {"fixed": 1, "uniform": 2, "normal": 2, "beta": 2, "empirical": 0}
"""Distributions of requested s (`sample_difficulty`) and how many parameters each takes."""


def check_plans(sy, finetune_variants: Sequence[str]) -> list[str]:
    """Problems of the `synthesis` section (a SynthesisConfig), with the fine-tuned variants it may use."""
    problems = []
    names = [p.name for p in sy.plans]
    if len(set(names)) != len(names):
        problems.append(f"synthesis.plans: names must be unique, got {names}")
    for i, p in enumerate(sy.plans):
        at = f"synthesis.plans[{i}] ({p.name})"
        if not io.FOLDER_NAME.match(p.name):
            problems.append(f"{at}: name may hold only letters, digits, - and _")
        if p.model not in MODELS:
            problems.append(f"{at}: model must be one of {', '.join(MODELS)}, got '{p.model}'")
        elif p.model != "base" and p.model not in finetune_variants:
            problems.append(f"synthesis plan '{p.name}' uses model '{p.model}', which finetune.variants "
                            f"{list(finetune_variants)} does not train: add it there, or use another model")
        if p.kind not in PLAN_KINDS:
            problems.append(f"{at}: kind must be one of {', '.join(PLAN_KINDS)}, got '{p.kind}'")
        if p.ratio < 0:
            problems.append(f"{at}: ratio must be >= 0")
        if p.difficulty not in DISTRIBUTIONS:
            problems.append(f"{at}: difficulty must be one of {sorted(DISTRIBUTIONS)}, got '{p.difficulty}'")
        elif len(p.difficulty_params) != DISTRIBUTIONS[p.difficulty]:
            problems.append(f"{at}: difficulty {p.difficulty} takes {DISTRIBUTIONS[p.difficulty]} "
                            f"difficulty_params, got {p.difficulty_params}")
        elif p.difficulty in ("fixed", "uniform") and any(not 0 <= v <= 1 for v in p.difficulty_params):
            problems.append(f"{at}: difficulty_params of {p.difficulty} must lie in [0, 1]")
        elif p.difficulty in ("normal", "beta") and p.difficulty_params[1] <= 0 or (
                p.difficulty == "beta" and p.difficulty_params[0] <= 0):
            problems.append(f"{at}: difficulty_params of {p.difficulty} must be > 0 (sigma; alpha, beta)")
        if p.kind == "discl" and (not p.guidance_levels or any(not 0 <= g <= 1 for g in p.guidance_levels)):
            problems.append(f"{at}: guidance_levels must be non-empty and lie in [0, 1] (0: text only)")
        repeated = sorted({g for g in p.guidance_levels if p.guidance_levels.count(g) > 1})
        if p.kind == "discl" and repeated:
            problems.append(f"{at}: guidance_levels lists {repeated} more than once: list each λ once "
                            "(seeds_per_source sets the images per level)")
        if p.seeds_per_source < 1 or p.source_k < 1:
            problems.append(f"{at}: seeds_per_source and source_k must be >= 1")
        if not (p.prompts in ("template", "caption") or p.prompts.startswith("file:")):
            problems.append(f"{at}: prompts must be template, caption or file:<path>, got '{p.prompts}'")
        elif p.prompts.startswith("file:") and "://" not in p.prompts and not os.path.isfile(p.prompts[5:]):
            problems.append(f"{at}: prompts file not found: {p.prompts[5:]}")
    if (sy.batch_size != "auto" and sy.batch_size < 1) or sy.rows_per_block < 1 or sy.filter_actors < 1:
        problems.append("synthesis.batch_size, rows_per_block and filter_actors must be >= 1")
    if sy.min_actors < 1 or sy.max_actors < sy.min_actors:
        problems.append("synthesis needs 1 <= min_actors <= max_actors (GPU nodes scale from 0; the pool from 1)")
    if sy.initial_actors is not None and not sy.min_actors <= sy.initial_actors <= sy.max_actors:
        problems.append("synthesis.initial_actors must lie in [min_actors, max_actors]")
    if min(sy.num_gpus, sy.cpus_per_actor, sy.filter_cpus, sy.filter_num_gpus) < 0:
        problems.append("synthesis.num_gpus, cpus_per_actor, filter_cpus and filter_num_gpus must be >= 0")
    if not 0 <= sy.filter.classifier_min_p <= 1:
        problems.append("synthesis.filter.classifier_min_p must lie in [0, 1]")
    for key in ("clip_text_threshold", "clip_image_threshold"):
        value = getattr(sy.filter, key)
        if not -1 <= value <= 1:
            problems.append(f"synthesis.filter.{key} is a CLIP cosine similarity, in [-1, 1] (DisCL keeps >= 0.25), "
                            f"got {value}")
    return problems
