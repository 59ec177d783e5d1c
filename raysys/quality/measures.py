"""What a synthetic image set is worth, measured on features (N x d tensors), in plain torch.

- **FID** (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
  Nash equilibrium") and **KID** (Bińkowski et al. 2018, "Demystifying MMD GANs"): torchmetrics'
  `FrechetInceptionDistance` / `KernelInceptionDistance` with a feature module, in float64. FID is
  biased upwards on small sets (Chong & Forsyth 2020); KID is unbiased, so it is the one to read
  on a tail class.
- **Precision and recall** (Kynkäänniemi et al. 2019, "Improved precision and recall metric for
  assessing generative models"), **density and coverage** (Naeem et al. 2020, "Reliable fidelity
  and diversity metrics for generative models"): k-nearest-neighbour balls in feature space.
  Precision: the share of synthetic images inside some real image's ball (fidelity); recall: the
  share of real images inside some synthetic image's ball (how much of the real distribution the
  set covers); density: how many real balls a synthetic image lies in, over k (1 for a set drawn
  from the real distribution); coverage: the share of real balls that hold a synthetic image.
- **Memorisation**: each synthetic image's distance to its nearest train image, over that train
  image's distance to *its* nearest other train image (`nearest_ratio`: the local spacing of the
  real data, so dense classes are not flagged for being dense; below 1 is what Alaa et al. 2022,
  "How faithful is your synthetic data?", call unauthentic); a copy is a ratio below a threshold;
  for an image-guided row, whether it is closer to its own source than that source is to any other
  train image (`closer_than_source_gap`).
- **Diversity**: within a class, the mean pairwise feature distance of the synthetic images over
  that of the real ones (1: as varied as the real images; below 1: more alike).

Pairwise distances are computed a block of rows at a time, so memory is one block x N. Give them
float64 features: `torch.cdist` computes through matrix products, whose float32 rounding puts an
image at a distance of order 1e-1 from itself when feature norms are in the hundreds.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

BLOCK = 2048
"""Rows of the query set per distance block."""
KID_SUBSETS = 50
"""Random subsets KID averages over."""
KID_SUBSET_SIZE = 1000
"""Images per KID subset (fewer when a set is smaller)."""


class GivenFeatures(nn.Module):
    """The identity on features already extracted, in float64: torchmetrics' FID and KID take a feature
    module, and this one lets them measure features an actor pool computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def _batches(x: torch.Tensor, size: int = BLOCK):
    for start in range(0, len(x), size):
        yield x[start:start + size]


def fid(real: torch.Tensor, fake: torch.Tensor, feature: Optional[nn.Module] = None) -> Optional[float]:
    """Fréchet distance between `real` and `fake` as `feature` sees them (None: they are features
    already; a module needs a `num_features` attribute). None when either set has fewer than 2 rows."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        return None
    metric = FrechetInceptionDistance(feature=feature if feature is not None else GivenFeatures(real.shape[1]))
    with torch.no_grad():
        for block in _batches(real):
            metric.update(block if feature is not None else block.double(), real=True)
        for block in _batches(fake):
            metric.update(block if feature is not None else block.double(), real=False)
        return max(0.0, float(metric.compute()))  # a sqrt's rounding can leave -1e-9 for identical sets


def kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> tuple[Optional[float], Optional[float]]:
    """(mean, std) of the kernel distance over KID_SUBSETS random subsets (cubic polynomial kernel), in
    float64; subsets of KID_SUBSET_SIZE or the smaller set's size. (None, None) below 2 rows."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(len(real), len(fake), KID_SUBSET_SIZE)
    if size < 2:
        return None, None
    with warnings.catch_warnings():  # "will save all extracted features": they are in memory already
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=GivenFeatures(real.shape[1]), subsets=KID_SUBSETS, subset_size=size)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def kth_neighbour_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every row of `x` to its k-th nearest other row (needs len(x) > k)."""
    out = torch.empty(len(x), dtype=x.dtype)
    for start in range(0, len(x), BLOCK):
        d = torch.cdist(x[start:start + BLOCK], x)
        out[start:start + BLOCK] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # index 0: the row itself
    return out


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5,
         real_radius: Optional[torch.Tensor] = None) -> dict[str, Optional[float]]:
    """Precision, recall, density and coverage of `fake` against `real` with k-NN balls (None when
    either set has k rows or fewer). `real_radius`: `kth_neighbour_distance(real, k)`, when already known."""
    if len(real) <= k or len(fake) <= k:
        return {"precision": None, "recall": None, "density": None, "coverage": None}
    real_radius = kth_neighbour_distance(real, k) if real_radius is None else real_radius
    fake_radius = kth_neighbour_distance(fake, k)
    in_some_real = torch.zeros(len(fake), dtype=torch.bool)
    real_balls_hit = torch.zeros(len(fake))
    real_in_some_fake = torch.zeros(len(real), dtype=torch.bool)
    real_ball_covered = torch.zeros(len(real), dtype=torch.bool)
    for start in range(0, len(fake), BLOCK):
        d = torch.cdist(fake[start:start + BLOCK], real)  # (block, real)
        inside_real = d <= real_radius[None, :]
        in_some_real[start:start + BLOCK] = inside_real.any(1)
        real_balls_hit[start:start + BLOCK] = inside_real.sum(1).float()
        real_ball_covered |= inside_real.any(0)
        real_in_some_fake |= (d <= fake_radius[start:start + BLOCK, None]).any(0)
    return {"precision": float(in_some_real.float().mean()), "recall": float(real_in_some_fake.float().mean()),
            "density": float(real_balls_hit.sum() / (k * len(fake))),
            "coverage": float(real_ball_covered.float().mean())}


def nearest(query: torch.Tensor, ref: torch.Tensor, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of every query row's nearest row of `ref` (`exclude_self`: query is ref, and a
    row is not its own neighbour)."""
    dist, index = torch.empty(len(query), dtype=query.dtype), torch.empty(len(query), dtype=torch.long)
    for start in range(0, len(query), BLOCK):
        d = torch.cdist(query[start:start + BLOCK], ref)
        if exclude_self:
            rows = torch.arange(start, start + len(d))
            d[torch.arange(len(d)), rows] = float("inf")
        dist[start:start + BLOCK], index[start:start + BLOCK] = d.min(dim=1)
    return dist, index


def memorisation(train: torch.Tensor, fake: torch.Tensor, source: Optional[np.ndarray] = None,
                 train_gap_each: Optional[torch.Tensor] = None) -> dict[str, np.ndarray]:
    """Per synthetic row: `nearest_train` (index of its nearest train row), `nearest_ratio` (its distance
    to it over that train row's distance to its nearest other train row; where a train row has an exact
    duplicate, the median of the other gaps instead) and, where `source` (index of each row's guiding
    train row, -1 for none) is given, `closer_than_source_gap` (1.0: closer to its own source than that
    source is to its nearest other train row; 0.0: not; NaN: no source). `train_gap_each`: each train
    row's distance to its nearest other train row, when already known."""
    if train_gap_each is None:
        train_gap_each, _ = nearest(train, train, exclude_self=True)
    positive = train_gap_each[train_gap_each > 0]
    fallback = positive.median() if len(positive) else torch.tensor(float("nan"), dtype=train_gap_each.dtype)
    gap = torch.where(train_gap_each > 0, train_gap_each, fallback)
    dist, index = nearest(fake, train)
    out = {"nearest_train": index.numpy(), "nearest_ratio": (dist / gap[index]).double().numpy()}
    closer = np.full(len(fake), np.nan)
    if source is not None:
        guided = np.flatnonzero(source >= 0)
        if len(guided):
            src = torch.from_numpy(source[guided])
            to_source = (fake[torch.from_numpy(guided)] - train[src]).norm(dim=1)
            closer[guided] = (to_source < train_gap_each[src]).double().numpy()
    out["closer_than_source_gap"] = closer
    return out


def mean_pairwise_distance(x: torch.Tensor) -> Optional[float]:
    """Mean distance over every pair of distinct rows (None below 2 rows)."""
    n = len(x)
    if n < 2:
        return None
    total = 0.0
    for start in range(0, n, BLOCK):
        total += float(torch.cdist(x[start:start + BLOCK], x).double().sum())
    return total / (n * (n - 1))  # the diagonal adds 0


def diversity_ratio(fake: torch.Tensor, fake_labels: np.ndarray, real: torch.Tensor,
                    real_labels: np.ndarray) -> tuple[Optional[float], dict[int, float]]:
    """Within-class mean pairwise distance, synthetic over real, per class with 2+ images on both sides;
    (mean over those classes, per class). None when no class has enough."""
    per_class = {}
    for c in np.unique(fake_labels):
        f, r = np.flatnonzero(fake_labels == c), np.flatnonzero(real_labels == c)
        fake_spread = mean_pairwise_distance(fake[torch.from_numpy(f)])
        real_spread = mean_pairwise_distance(real[torch.from_numpy(r)])
        if fake_spread is not None and real_spread:
            per_class[int(c)] = fake_spread / real_spread
    return (float(np.mean(list(per_class.values()))) if per_class else None), per_class
