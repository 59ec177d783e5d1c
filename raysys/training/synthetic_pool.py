"""The training pool of a curriculum run and each epoch's draw from it: which real and synthetic
rows an epoch trains on. Rows only, without images (raysys.data.stream).

- `Pool`: the real train rows first, then the kept synthetic rows of the chosen plans,
  with what schedules select by (λ, s bin) and whether a row belongs to a tail (few) class.
- `epoch_mix`: one epoch's rows. Real rows: every tail-class image, and `undersample` of the
  others drawn afresh. Synthetic rows: when the epoch's selection is not empty,
  `synthetic_per_epoch` x the real count, drawn with replacement from the rows that match
  the selection (weighted by `difficulty_weights` when a distribution over s is asked for),
  afresh every epoch; with `equal_steps` the shuffled mix is cut to the real count. Everything
  random depends only on (seed, epoch).
- `select_measured`: the easy / medium / hard subsets, by re-scored difficulty.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core.schema import list_parts
from raysys.schedules.base import REAL_ONLY, Level, Schedule, Selection
from raysys.schedules.difficulty import bin_of
from raysys.data.stream import REF_COLUMNS, index_rows


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


SYNTHETIC_COLUMNS = ["sample_id", "label", "source_id", "guidance", "requested_difficulty", "difficulty", "keep"]
"""What the loop reads of a plan's rows (never their images)."""


def synthetic_rows(plan_dirs: list[str], first_file: int) -> tuple[list[str], pa.Table]:
    """(the plans' Parquet parts, their kept rows without images), `file` counted from `first_file`."""
    files = [part for d in plan_dirs for part in list_parts(d)]
    return files, index_rows(files, SYNTHETIC_COLUMNS, where=pc.field("keep") == True, first_file=first_file)  # noqa: E712


def select_measured(synthetic: pa.Table, lo: float, hi: float) -> pa.Table:
    """The synthetic rows whose measured difficulty (the baseline's re-scored 1 - p(y|x)) lies in
    [lo, hi]; rows never re-scored are dropped."""
    if len(synthetic) == 0:
        return synthetic
    d = synthetic["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    return synthetic.filter(pa.array(~np.isnan(d) & (d >= lo) & (d <= hi)))


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
