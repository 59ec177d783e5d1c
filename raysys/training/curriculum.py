"""Curriculum training in plain torch (no Ray): the pool of real and synthetic images, each
epoch's mix, the guidance-validation set, the adaptive probe, and the long-tail metrics.

No image is held: the pool, the guidance-validation set and the evaluation splits are rows
without images (raysys.data.stream), and every epoch's shard, probe and evaluation streams
through `ctx.batches`.

- `Pool`: the real train rows first, then the kept synthetic rows of the chosen plans,
  with what schedules select by (λ, s bin) and whether a row belongs to a tail (few) class.
- `epoch_mix`: one epoch's rows. Real rows: every tail-class image, and `undersample` of the
  others drawn afresh. Synthetic rows: when the epoch's selection is not empty,
  `synthetic_per_epoch` x the real count, drawn with replacement from the rows that match
  the selection (weighted by `difficulty_weights` when a distribution over s is asked for),
  afresh every epoch; with `equal_steps` the shuffled mix is cut to the real count. Everything
  random depends only on (seed, epoch).
- `select_measured`: the easy / medium / hard subsets, by re-scored difficulty.
- `GuidanceVal`: hard real images held out with all their synthetic λ images (DisCL). The
  adaptive schedule measures p(y|x) there before and after a short real-only probe.
- `curriculum_loop`: the whole run against a `TrainContext` (raysys.core.context).
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from raysys.core.context import Checkpoint, step_seed
from raysys.core.schema import list_parts
from raysys.curriculum.base import REAL_ONLY, Level, Schedule, Selection
from raysys.curriculum.difficulty import bin_of
from raysys.curriculum.registry import create_schedule
from raysys.models.classifiers import create_classifier, normalize, save_classifier
from raysys.training.classifier import (classifier_meta, eval_split_names, evaluate, for_device, make_optimizer,
                                        manifest_rows, predict, restore_training, train_epoch)
from raysys.data.stream import REF_COLUMNS, Decode, index_rows, row_seeds, split_rows, stream_refs

if TYPE_CHECKING:
    from raysys.core.config import RaysysConfig
    from raysys.core.context import TrainContext


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class Pool:
    rows: pa.Table
    """Real train rows (the first `n_real`), then synthetic ones, without images: file, row, label."""
    n_real: int
    labels: np.ndarray
    """int64 label per row."""
    guidance: np.ndarray
    """float λ per row (NaN: none, and for real rows)."""
    difficulty_bin: np.ndarray
    """int requested-s bin per row (-1: none, and for real rows)."""
    tail: np.ndarray
    """bool: the row's class is a few (tail) class."""
    requested: np.ndarray
    """float requested difficulty s per row (NaN: none, and for real rows)."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def synthetic(self) -> np.ndarray:
        out = np.zeros(len(self), dtype=bool)
        out[self.n_real:] = True
        return out

    def matches(self, level: Level) -> np.ndarray:
        """Synthetic rows in `level` (an axis set to None matches anything)."""
        mask = self.synthetic.copy()
        if level.guidance is not None:
            mask &= np.isclose(self.guidance, level.guidance, atol=1e-4)
        if level.difficulty_bin is not None:
            mask &= self.difficulty_bin == level.difficulty_bin
        return mask


def build_pool(real: pa.Table, synthetic: pa.Table, few: Sequence[int], difficulty_bins: Sequence[float]) -> Pool:
    """The pool of the real train rows and the synthetic rows (index tables: file, row, label, and
    for synthetic rows guidance and requested_difficulty)."""
    n_real = len(real)
    if len(synthetic):
        rows = pa.concat_tables([real.select(list(REF_COLUMNS)), synthetic.select(list(REF_COLUMNS))])
        lam = np.round(synthetic["guidance"].to_numpy(zero_copy_only=False).astype(np.float64), 4)
        s = synthetic["requested_difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
        s_bin = np.where(np.isnan(s), -1, bin_of(np.nan_to_num(s), difficulty_bins))
    else:
        rows, lam, s, s_bin = real.select(list(REF_COLUMNS)), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    labels = rows["label"].to_numpy().astype(np.int64)
    guidance = np.concatenate([np.full(n_real, np.nan), lam])
    difficulty_bin = np.concatenate([np.full(n_real, -1, dtype=np.int64), s_bin.astype(np.int64)])
    requested = np.concatenate([np.full(n_real, np.nan), s])
    return Pool(rows, n_real, labels, guidance, difficulty_bin, np.isin(labels, list(few)), requested)


def select_measured(synthetic: pa.Table, lo: float, hi: float) -> pa.Table:
    """The synthetic rows whose measured difficulty (the baseline's re-scored 1 - p(y|x)) lies in
    [lo, hi]; rows never re-scored are dropped."""
    if len(synthetic) == 0:
        return synthetic
    d = synthetic["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    return synthetic.filter(pa.array(~np.isnan(d) & (d >= lo) & (d <= hi)))


def difficulty_weights(requested: np.ndarray, distribution: str, params: Sequence[float], bins: int = 10
                       ) -> np.ndarray:
    """Draw weight per row so that draws follow `distribution` over requested s: the target's
    pdf(s) divided by the pool's own density of s (a `bins`-bin histogram on [0, 1]). A pool made
    with s ~ Uniform(0, 1) then serves any target; rows without s (NaN) weigh 0.

    normal (μ, σ), beta (α, β), uniform (lo, hi); the pdf needs no normalising constant."""
    s = np.asarray(requested, dtype=np.float64)
    has = ~np.isnan(s)
    x = np.clip(np.where(has, s, 0.5), 1e-3, 1 - 1e-3)
    a, b = float(params[0]), float(params[1])
    if distribution == "normal":
        pdf = np.exp(-0.5 * ((x - a) / b) ** 2)
    elif distribution == "beta":
        pdf = np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x))
    elif distribution == "uniform":
        pdf = ((x >= a) & (x <= b)).astype(np.float64)
    else:
        raise ValueError(f"unknown difficulty distribution '{distribution}' (normal, beta or uniform)")
    weights = np.zeros(len(s))
    if has.any():
        which = np.clip((x[has] * bins).astype(np.int64), 0, bins - 1)
        density = np.bincount(which, minlength=bins) / has.sum()
        weights[has] = pdf[has] / density[which]
    return weights


def mix_size(pool: Pool, synthetic_per_epoch: float, undersample: float, equal_steps: bool) -> int:
    """Rows of a curriculum epoch's mix (what steps_per_epoch counts the LR schedule's steps by)."""
    n_tail = int(pool.tail[: pool.n_real].sum())
    real = n_tail + int(round(undersample * (pool.n_real - n_tail)))
    return real if equal_steps else real + int(round(synthetic_per_epoch * real))


def epoch_is_real_only(schedule: Schedule, epoch: int) -> bool:
    """Whether `epoch` draws no synthetic row, known before training: the adaptive schedule chooses
    its levels as it goes, but its real-only epochs are fixed (those after its stages)."""
    return schedule.stage(epoch) is None if schedule.adaptive else schedule.selection(epoch).real_only


def steps_per_epoch(pool: Pool, schedule: Schedule, epochs: int, synthetic_per_epoch: float, undersample: float,
                    equal_steps: bool, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch that the LR schedule is sized by: the mean over the run's epochs
    (rounded up), a real-only epoch counting its real rows only. So a real-only run, or a curriculum's
    real-only tail, ends its decay where the run ends."""
    total = 0
    for epoch in range(epochs):
        share = 0.0 if epoch_is_real_only(schedule, epoch) else synthetic_per_epoch
        total += -(-(mix_size(pool, share, undersample, equal_steps) // world) // batch_size)
    return -(-total // max(epochs, 1))


@dataclass
class Mix:
    indices: np.ndarray
    """Shuffled pool rows of the epoch."""
    real: int
    synthetic: int
    matching: int
    """Synthetic rows that matched the selection (0 with a real-only selection)."""


def epoch_mix(pool: Pool, selection: Selection, epoch: int, seed: int, synthetic_per_epoch: float,
              undersample: float, draw_weights: Optional[np.ndarray] = None, equal_steps: bool = False) -> Mix:
    rng = _rng("mix", seed, epoch)
    real_rows = np.arange(pool.n_real)
    tail_rows = real_rows[pool.tail[: pool.n_real]]
    head_rows = real_rows[~pool.tail[: pool.n_real]]
    keep = int(round(undersample * len(head_rows)))
    head_kept = rng.choice(head_rows, size=keep, replace=False) if keep < len(head_rows) else head_rows
    real_kept = np.concatenate([tail_rows, head_kept])
    synthetic = np.zeros(0, dtype=np.int64)
    matching = 0
    if not selection.real_only:
        mask = np.zeros(len(pool), dtype=bool)
        for level in selection.levels:
            mask |= pool.matches(level)
        if draw_weights is not None:
            mask &= draw_weights > 0
        candidates = np.flatnonzero(mask)
        matching = len(candidates)
        k = int(round(synthetic_per_epoch * len(real_kept)))
        if matching and k:
            p = None if draw_weights is None else draw_weights[candidates] / draw_weights[candidates].sum()
            synthetic = rng.choice(candidates, size=k, replace=True, p=p)
    rows = rng.permutation(np.concatenate([real_kept, synthetic]).astype(np.int64))
    if equal_steps:
        rows = rows[: len(real_kept)]
    n_real = int((rows < pool.n_real).sum())
    return Mix(rows, n_real, len(rows) - n_real, matching)


def check_selections_match(schedule: Schedule, pool: Pool, epochs: int, weights: Optional[np.ndarray],
                           plans: Sequence[str]) -> None:
    """Raise if a static schedule's synthetic epochs can never draw an image: none of the levels
    it selects matches a row of the pool (e.g. λ levels over a pool of text-only images), which
    would silently train real-only. A level that matches nothing among others only warns, per epoch."""
    if schedule.adaptive:
        return
    selections = {schedule.selection(e) for e in range(epochs)} - {REAL_ONLY}
    if not selections:
        return
    drawable = np.ones(len(pool), dtype=bool) if weights is None else weights > 0
    if not any((pool.matches(level) & drawable).any() for sel in selections for level in sel.levels):
        levels = sorted({str(level) for sel in selections for level in sel.levels})
        raise ValueError(f"schedule {schedule.name}: no synthetic image of plans {plans} matches any level it "
                         f"selects ({', '.join(levels)}), so every epoch would be real-only; check curriculum.plans, "
                         f"guidance_levels and difficulty_distribution")


def subsample_pool(synthetic: pa.Table, keep: int, seed: int) -> pa.Table:
    """`keep` synthetic rows drawn without replacement by `seed` (all of them when there are fewer):
    an image budget. Every class keeps its share of the pool, up to rounding."""
    if keep >= len(synthetic):
        return synthetic
    order = _rng("pool", seed).permutation(len(synthetic))
    labels = synthetic["label"].to_numpy()[order]
    # round-robin over the classes in the pool's proportions: rank each row within its class, then
    # take rows by their rank relative to the class size
    rank = np.zeros(len(order))
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = (np.arange(len(where)) + 0.5) / len(where)
    chosen = np.sort(order[np.argsort(rank, kind="stable")[:keep]])
    return synthetic.take(pa.array(chosen))


def log_prior(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """log of the class frequencies of `labels` (Balanced Softmax adds it to the logits)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=num_classes).float().clamp_min(1.0)
    return torch.log(counts / counts.sum())


# ---- guidance validation -------------------------------------------------------------------

@dataclass
class GuidanceVal:
    real: pa.Table
    """The held-out hard real images (index rows: file, row, label)."""
    by_level: dict[float, pa.Table]
    """Their synthetic images at every λ (index rows)."""

    def only_levels(self, levels: Sequence[float]) -> "GuidanceVal":
        """The same set with the synthetic images of `levels` only (the λ a schedule walks, when
        `curriculum.guidance_levels` names fewer than the pool holds)."""
        keep = {g: d for g, d in self.by_level.items() if np.isclose(np.asarray(levels, dtype=float), g, atol=1e-4).any()}
        return GuidanceVal(self.real, keep)

    def groups(self, with_real: bool) -> tuple[list[str], pa.Table, list[int]]:
        """(group names: "real" and each λ, their rows one after the other, each group's row count):
        one stream for every group."""
        named = ([("real", self.real)] if with_real else []) + [(f"{g:g}", t) for g, t in self.by_level.items()]
        named = [(n, t.select(list(REF_COLUMNS))) for n, t in named if len(t)]
        if not named:
            return [], self.real.select(list(REF_COLUMNS)).slice(0, 0), []
        return [n for n, _ in named], pa.concat_tables([t for _, t in named]), [len(t) for _, t in named]


def split_guidance_val(real_train: pa.Table, synthetic: pa.Table, n_sources: int, seed: int
                       ) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """Hold out `n_sources` real train images that guided synthetic rows at every λ present.

    Returns (real train rest, synthetic rest, held-out real rows, their synthetic rows).
    Chosen by a seeded hash of the source id among the sources with every λ, hardest first
    is not required: the plan's sources are already the hard images. When the real rows have
    domains (cameras, sites), the sources are taken from each domain in turn, so that no domain
    with such sources is left out of the guidance validation.
    """
    empty = real_train.slice(0, 0), synthetic.slice(0, 0)
    if n_sources <= 0 or len(synthetic) == 0:
        return real_train, synthetic, *empty
    source = synthetic["source_id"].to_pylist()
    lam = synthetic["guidance"].to_pylist()
    levels = {g for g in lam if g is not None}
    by_source: dict[str, set] = {}
    for sid, g in zip(source, lam):
        if sid is not None and g is not None:
            by_source.setdefault(sid, set()).add(g)
    domains = real_train["domain"].to_pylist() if "domain" in real_train.column_names else [None] * len(real_train)
    domain_of = dict(zip(real_train["sample_id"].to_pylist(), domains))
    ranked = sorted((sid for sid, got in by_source.items() if got == levels and sid in domain_of),
                    key=lambda sid: hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest())
    per_domain: dict = {}
    for sid in ranked:
        per_domain.setdefault(domain_of[sid] or "", []).append(sid)
    groups = [per_domain[d] for d in sorted(per_domain)]
    complete = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]  # in turn
    if len(complete) < n_sources:
        raise ValueError(f"curriculum.guidance_val_sources={n_sources}, but only {len(complete)} source images "
                         f"have synthetic images at every λ {sorted(levels)}: lower it or generate more")
    held = set(complete[:n_sources])
    held_real = pa.array([sid in held for sid in real_train["sample_id"].to_pylist()])
    held_syn = pa.array([sid in held for sid in source])
    return (real_train.filter(pc.invert(held_real)), synthetic.filter(pc.invert(held_syn)),
            real_train.filter(held_real), synthetic.filter(held_syn))


def build_guidance_val(held_real: pa.Table, held_syn: pa.Table) -> GuidanceVal:
    lam = np.round(held_syn["guidance"].to_numpy(zero_copy_only=False).astype(np.float64), 4)  # float32 -> 0.3
    by_level = {float(level): held_syn.filter(pa.array(lam == level))
                for level in sorted(set(lam[~np.isnan(lam)].tolist()))}
    return GuidanceVal(held_real, by_level)


def _per_group(values: np.ndarray, names: list[str], counts: list[int]) -> dict[str, np.ndarray]:
    bounds = np.cumsum([0, *counts])
    return {name: values[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}


def guidance_accuracy(model: nn.Module, ctx: "TrainContext", gval: GuidanceVal, decode: Decode,
                      device: torch.device) -> dict[str, float]:
    """Accuracy on the held-out real images and on their synthetic images per λ (one stream)."""
    names, rows, counts = gval.groups(with_real=True)
    pred, _ = predict(model, ctx, stream_refs(rows), decode, device)
    right = pred == rows["label"].to_numpy().astype(np.int64)
    return {name: float(r.mean()) for name, r in _per_group(right, names, counts).items()}


def p_true_by_level(model: nn.Module, ctx: "TrainContext", gval: GuidanceVal, decode: Decode,
                    device: torch.device) -> dict[float, np.ndarray]:
    names, rows, counts = gval.groups(with_real=False)
    _, p = predict(model, ctx, stream_refs(rows), decode, device)
    by_name = _per_group(p, names, counts)
    return {g: by_name[f"{g:g}"] for g, t in gval.by_level.items() if len(t)}


def probe_gains_inputs(model: nn.Module, ctx: "TrainContext", gval: GuidanceVal, real: pa.Table, decode: Decode,
                       steps: int, batch_size: int, lr: float, seed: int, epoch: int, device: torch.device
                       ) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """p(y|x) of the guidance-validation images per λ before and after `steps` real-only
    training steps on a copy of the model (the model itself is not changed); the steps' rows
    are drawn at random from `real` and streamed, one batch per step. Every random draw (rows,
    dropout) is a function of (seed, epoch) alone, not of the caller's torch RNG state: a run
    resumed at this epoch measures what the uninterrupted run measured."""
    before = p_true_by_level(model, ctx, gval, decode, device)
    probe = copy.deepcopy(model).to(device)
    probe.train()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(_rng("probe", seed, epoch).integers(2**31)))
    per_step = min(batch_size, len(real))
    drawn = torch.cat([torch.randint(0, len(real), (per_step,), generator=gen) for _ in range(steps)]).numpy()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(_rng("probe dropout", seed, epoch).integers(2**31)))
        for batch in ctx.batches(stream_refs(real, drawn), decode, per_step):
            x = normalize(batch["image"], probe).to(device)
            loss = F.cross_entropy(probe(x), batch["label"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    after = p_true_by_level(probe, ctx, gval, decode, device)
    return before, after


def worst_k_accuracy(per_class_acc: Sequence[Optional[float]], k: int) -> Optional[float]:
    values = sorted(a for a in per_class_acc if a is not None and a == a)
    return float(np.mean(values[:k])) if values else None


@dataclass
class CurriculumJob:
    """One curriculum run: the real rows, the synthetic plans, the class groups."""

    cfg: "RaysysConfig"
    manifest: str
    """Scored manifest (real rows)."""
    plan_dirs: dict[str, str]
    """Synthesis plan name -> the folder of its version, whose kept rows form the synthetic pool."""
    num_classes: int
    groups: dict
    name: str = "curriculum"
    """Shown in progress lines."""


SYNTHETIC_COLUMNS = ["sample_id", "label", "source_id", "guidance", "requested_difficulty", "difficulty", "keep"]
"""What the loop reads of a plan's rows (never their images)."""


def synthetic_rows(plan_dirs: list[str], first_file: int) -> tuple[list[str], pa.Table]:
    """(the plans' Parquet parts, their kept rows without images), `file` counted from `first_file`."""
    files = [part for d in plan_dirs for part in list_parts(d)]
    return files, index_rows(files, SYNTHETIC_COLUMNS, where=pc.field("keep") == True, first_file=first_file)  # noqa: E712


def curriculum_seed(cfg: "RaysysConfig") -> int:
    return cfg.curriculum.seed if cfg.curriculum.seed is not None else cfg.run.seed


def schedule_for(cfg: "RaysysConfig", guidance_levels: list[float]) -> Schedule:
    """The run's schedule, over `curriculum.guidance_levels` or else the λ levels of its pool."""
    c = cfg.curriculum
    epochs = c.epochs or cfg.train.epochs
    curriculum_epochs = c.curriculum_epochs if c.curriculum_epochs is not None else epochs - max(1, epochs // 13)
    levels = c.guidance_levels if c.guidance_levels is not None else guidance_levels
    return create_schedule(c.schedule, epochs=epochs, curriculum_epochs=curriculum_epochs, guidance_levels=levels,
                           difficulty_bins=c.difficulty_bins, stage_epochs=c.stage_epochs, seed=curriculum_seed(cfg))


def reported_metrics(record: dict) -> dict:
    """What an epoch reports to Ray Train (and, in a sweep, to Tune) from its history record: the
    epoch, the training loss, validation metrics, and test metrics after the last epoch."""
    metrics = {"epoch": record["epoch"], "train_loss": record["train_loss"],
               **{f"val_{k}": record["val"][k] for k in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")}}
    if "test" in record:
        metrics.update({f"test_{k}": record["test"][k] for k in ("acc", "acc_few", "macro_f1")})
    return metrics


def curriculum_loop(ctx: "TrainContext", job: CurriculumJob) -> None:
    """Train (or resume) one curriculum run, one report per epoch.

    Each epoch: the schedule's selection (the adaptive schedule first measures and chooses on rank
    0 and broadcasts its choice), the epoch's mix (the same on every rank: it depends only on
    (seed, epoch)), one shard per rank, then evaluation. The checkpoint holds the model, optimizer,
    LR schedule, history and the schedule's state, so a resumed run makes the same choices and
    continues as the uninterrupted one would."""
    cfg, c = job.cfg, job.cfg.curriculum
    seed = curriculum_seed(cfg)
    rank, world = ctx.rank, ctx.world_size
    size, chans = cfg.data.image_size, cfg.data.channels
    plan_names = list(job.plan_dirs)

    files, rows = manifest_rows(job.manifest, ["train", *c.extra_real_splits, *eval_split_names(cfg)], extra=["domain"])
    real_train = pa.concat_tables([split_rows(rows, split) for split in ["train", *c.extra_real_splits]])
    missing = [split for split in c.extra_real_splits if not len(split_rows(rows, split))]
    if missing:
        raise ValueError(f"curriculum.extra_real_splits: the manifest {job.manifest} has no rows of split(s) {missing}")
    evals = {name: split_rows(rows, name) for name in eval_split_names(cfg)}
    plan_folders = list(job.plan_dirs.values()) if c.schedule != "real_only" else []
    plan_files, synthetic = synthetic_rows(plan_folders, len(files))
    files = files + plan_files
    if c.measured_difficulty is not None:
        synthetic = select_measured(synthetic, *c.measured_difficulty)
    real_train, synthetic, held_real, held_syn = split_guidance_val(real_train, synthetic, c.guidance_val_sources, seed)
    if c.synthetic_pool_share is not None:
        synthetic = subsample_pool(synthetic, int(round(c.synthetic_pool_share * len(real_train))), seed)
    gval = build_guidance_val(held_real, held_syn) if len(held_real) else None
    pool = build_pool(real_train, synthetic, job.groups["few"], c.difficulty_bins)
    decode_train, decode_eval = Decode(files, size, chans, tuple(cfg.train.augment)), Decode(files, size, chans)
    lam = pool.guidance[~np.isnan(pool.guidance)]
    schedule = schedule_for(cfg, sorted(set(np.round(lam, 4).tolist())))
    epochs = c.epochs or cfg.train.epochs
    if gval is not None and c.guidance_levels is not None:
        gval = gval.only_levels(c.guidance_levels)  # adaptive measures (and chooses among) these only
    weights = difficulty_weights(pool.requested, c.difficulty_distribution, c.difficulty_params) \
        if c.difficulty_distribution else None
    check_selections_match(schedule, pool, epochs, weights, plan_names)

    torch.manual_seed(seed)  # the same initial weights in every run of this config
    model = create_classifier(cfg.classifier.name, job.num_classes, chans, width=cfg.classifier.width,
                              weights=cfg.classifier.weights, image_size=size)
    model = ctx.prepare_model(for_device(model, ctx.device))
    bare = getattr(model, "module", model)
    steps = steps_per_epoch(pool, schedule, epochs, c.synthetic_per_epoch, c.undersample, c.equal_steps, world,
                            cfg.train.batch_size)
    opt, sched = make_optimizer(model, replace(cfg.train, epochs=epochs), steps)
    start, history, resumes = restore_training(ctx, bare, opt, sched, job.name, epochs, schedule)
    if start >= epochs and history:  # a finished run restored: its caller (a Tune trial) may have missed the
        ctx.report(reported_metrics(history[-1]))  # last report (a hard kill), so it hears it again

    for epoch in range(start, epochs):
        t0 = time.time()
        record = {"epoch": epoch + 1, "stage": schedule.stage(epoch)}
        if schedule.adaptive and schedule.needs_choice(epoch):
            choice = None
            if rank == 0:
                before, after = probe_gains_inputs(bare, ctx, gval, real_train, decode_eval, c.probe_steps,
                                                   cfg.train.batch_size, cfg.train.lr, seed, epoch, ctx.device)
                choice = {"before": before, "after": after}
            choice = ctx.broadcast(choice)
            chosen = schedule.record(epoch, choice["before"], choice["after"])
            record["adaptive"] = {"chosen": chosen, "gains": schedule.gains[schedule.stage(epoch)]}
        selection = schedule.selection(epoch)
        mix = epoch_mix(pool, selection, epoch, seed, c.synthetic_per_epoch, c.undersample, weights, c.equal_steps)
        if rank == 0 and not selection.real_only and mix.matching == 0:
            print(f"[{job.name}] warning: epoch {epoch + 1} selects [{selection}], but no synthetic image of "
                  f"plans {plan_names} matches it: a real-only epoch", flush=True)
        per_rank = len(mix.indices) // world
        shard = mix.indices[rank * per_rank:(rank + 1) * per_rank]
        weights_of_rows = np.where(shard >= pool.n_real, c.synthetic_loss_weight, 1.0) \
            if c.synthetic_loss_weight != 1.0 else None
        refs = stream_refs(pool.rows, shard, row_seeds(len(shard), seed, epoch, rank, 2), weights_of_rows)
        torch.manual_seed(step_seed(seed, epoch, rank))
        gen = torch.Generator().manual_seed(step_seed(seed, epoch, rank, 2))
        prior_rows = mix.indices if c.balanced_softmax_prior == "mix" else mix.indices[mix.indices < pool.n_real]
        prior = log_prior(pool.labels[prior_rows], job.num_classes) if c.loss == "balanced_softmax" else None
        loss = train_epoch(model, ctx, refs, decode_train, opt, sched, recipe=cfg.train, num_classes=job.num_classes,
                           generator=gen, device=ctx.device, log_prior=prior)
        val_m = evaluate(bare, ctx, evals[cfg.data.val_split], decode_eval, job.num_classes, job.groups, ctx.device)
        val_m[f"worst_{c.worst_k}_acc"] = worst_k_accuracy(val_m["per_class_acc"], c.worst_k)
        record.update({"selection": str(selection), "real": mix.real, "synthetic": mix.synthetic,
                       "matching": mix.matching, "train_loss": round(loss, 6), "val": val_m})
        if gval is not None:
            record["guidance_val_acc"] = guidance_accuracy(bare, ctx, gval, decode_eval, ctx.device)
        last = epoch == epochs - 1
        if last:
            record["tests"] = {}
            for split in cfg.data.test_splits:
                m = evaluate(bare, ctx, evals[split], decode_eval, job.num_classes, job.groups, ctx.device)
                m[f"worst_{c.worst_k}_acc"] = worst_k_accuracy(m["per_class_acc"], c.worst_k)
                record["tests"][split] = m
            record["test"] = record["tests"][cfg.data.test_splits[0]]
        record["seconds"] = round(time.time() - t0, 3)
        history.append(record)
        if rank == 0:
            few = val_m["acc_few"]
            print(f"[{job.name}] epoch {epoch + 1}/{epochs} [{selection}] real {mix.real} + synthetic {mix.synthetic} "
                  f"loss {loss:.4f} val acc {val_m['acc']:.4f} few {few if few is None else round(few, 4)}", flush=True)
        metrics = reported_metrics(record)
        checkpoint = None
        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            meta = classifier_meta(cfg, job.num_classes)
            checkpoint = Checkpoint(
                tensors={"model": bare.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                state={"epoch": epoch, "history": history, "resumes": resumes, "schedule": schedule.state()},
                files=lambda d: save_classifier(bare, os.path.join(d, "model"), meta))
        ctx.report(metrics, checkpoint)
