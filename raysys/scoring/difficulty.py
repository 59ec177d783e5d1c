"""Difficulty scoring in plain torch: s = 1 - p(y|x), with p_true, loss, pred and entropy.

`DifficultyScorer` holds one or more classifiers by key and scores a batch of encoded images,
each row with the model its key names. Out-of-fold scoring gives each train row the key of
the fold model that never saw it (`assign_folds`), so memorised images do not all score 0.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from raysys.data.images import decode_batch
from raysys.models.classifiers import load_classifier
from raysys.models.classifiers import normalize


def scores_from_probs(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """probs (N, C) softmax, labels (N,) -> difficulty, p_true, loss, pred, entropy."""
    probs = probs.double()
    p_true = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    eps = 1e-12
    return {
        "difficulty": (1.0 - p_true).float().numpy(),
        "p_true": p_true.float().numpy(),
        "loss": (-torch.log(p_true.clamp_min(eps))).float().numpy(),
        "pred": probs.argmax(1).int().numpy(),
        "entropy": (-(probs * torch.log(probs.clamp_min(eps))).sum(1)).float().numpy(),
    }


def assign_folds(sample_ids: list[str], labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified, deterministic fold index in [0, k) for each row (no Python hash())."""
    folds = np.empty(len(sample_ids), dtype=np.int64)
    keys = [hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest() for sid in sample_ids]
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = sorted(rows, key=lambda r: keys[r])
        for rank, r in enumerate(order):
            folds[r] = rank % k
    return folds


class DifficultyScorer:
    """Scores encoded images with classifiers loaded once from saved directories."""

    def __init__(self, model_dirs: dict[str, str], device: str = "cpu"):
        self.device = torch.device(device)
        self.models = {}
        meta = None
        for key, directory in model_dirs.items():
            model, m = load_classifier(directory, self.device)
            self.models[key] = model
            meta = meta or m
        if meta is None:
            raise ValueError("DifficultyScorer needs at least one model directory")
        self.image_size = meta["image_size"]
        self.channels = meta["in_chans"]

    @torch.no_grad()
    def __call__(self, images: list[bytes], labels: np.ndarray, model_keys: list[str]) -> dict[str, np.ndarray]:
        pixels = torch.from_numpy(decode_batch(images, self.image_size, self.channels))
        labels_t = torch.as_tensor(np.array(labels, dtype=np.int64))
        keys = np.asarray(model_keys)
        probs = None
        for key in np.unique(keys):
            if key not in self.models:
                raise KeyError(f"row asks for model '{key}', loaded: {sorted(self.models)}")
            rows = np.flatnonzero(keys == key)
            x = normalize(pixels[rows], self.models[key]).to(self.device)
            p = torch.softmax(self.models[key](x).float(), dim=1).cpu()
            if probs is None:
                probs = torch.empty(len(keys), p.shape[1])
            probs[torch.from_numpy(rows)] = p
        if probs is None:
            probs = torch.empty(0, 1)
        return scores_from_probs(probs, labels_t)


def score_part(scorer: DifficultyScorer, source: str, output: str, keys: dict[str, str], splits: set[str],
               batch_size: int, with_full: bool) -> "pa.Table":
    """Score one part of a manifest: the rows of `splits`, each with the model `keys` names (default
    `full`), `batch_size` at a time; write the part with its score columns filled to `output`
    (images stored as they were) and return the small per-row summary (sample_id, label, split,
    difficulty, score_mode, and with `with_full` the full model's difficulty of the train rows)."""
    import pyarrow as pa

    from raysys.core.schema import SCORE_COLUMNS, read_manifest, with_image_bytes, write_manifest

    table = read_manifest(source, resolve=False)
    split = np.asarray(table["split"].to_pylist(), dtype=object)
    ids = table["sample_id"].to_pylist()
    rows = np.flatnonzero(np.isin(split, sorted(splits)))
    model = np.asarray([keys.get(ids[r], "full") for r in rows], dtype=object)
    labels = table["label"].to_numpy().astype(np.int64)
    columns = {name: np.full(len(table), np.nan, np.float32) for name in ("difficulty", "p_true", "loss", "entropy")}
    columns["pred"] = np.full(len(table), -1, np.int64)
    full = np.full(len(table), np.nan, np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = with_image_bytes(table.select(["image", "uri"]).take(pa.array(chunk)))["image"].to_pylist()
        out = scorer(images, labels[chunk], list(model[start:start + batch_size]))
        for name in columns:
            columns[name][chunk] = out[name]
        train = chunk[split[chunk] == "train"]
        if with_full and len(train):
            at = np.isin(chunk, train)
            full[train] = scorer([im for im, t in zip(images, at) if t], labels[train], ["full"] * len(train))["difficulty"]
    scored = np.zeros(len(table), bool)
    scored[rows] = True
    mode = np.full(len(table), None, dtype=object)
    mode[rows] = model
    for name in SCORE_COLUMNS:
        field = table.schema.field(name)
        if name == "score_mode":
            values = pa.array(mode.tolist(), pa.string())
        else:
            values = pa.array(columns[name], mask=~scored).cast(field.type)
        table = table.set_column(table.schema.get_field_index(name), field, values)
    write_manifest(table, output)
    return pa.table({"sample_id": pa.array([ids[r] for r in rows], pa.string()),
                     "label": pa.array(labels[rows], pa.int32()),
                     "split": pa.array(split[rows].tolist(), pa.string()),
                     "difficulty": pa.array(columns["difficulty"][rows], pa.float32()),
                     "full_difficulty": pa.array(full[rows], pa.float32()),
                     "score_mode": pa.array(model.tolist(), pa.string())})


def check_score(sc) -> list[str]:
    """Problems of the `score` section (a ScoreConfig)."""
    problems = []
    if sc.mode == "oof" and sc.folds < 2:
        problems.append("score.folds must be >= 2 in oof mode")
    if sc.fold_epochs is not None and sc.fold_epochs < 1:
        problems.append("score.fold_epochs must be >= 1 (or null)")
    if sc.batch_size < 1 or sc.concurrent_folds < 1:
        problems.append("score.batch_size and score.concurrent_folds must be >= 1")
    if sc.min_actors < 1 or sc.max_actors < sc.min_actors:
        problems.append("score needs 1 <= min_actors <= max_actors")
    if sc.splits is not None and not sc.splits:
        problems.append("score.splits must name at least one split (or be null: train, validation and test)")
    return problems
