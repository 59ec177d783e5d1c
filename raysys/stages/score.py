"""Stage `score`: measured difficulty s = 1 - p(y|x) for every row of the chosen splits.

Mode `oof` (default): train rows are split into k stratified folds; fold i is scored by a
classifier trained (on Ray Train) on the other k-1 folds, so no row is scored by a model
that memorised it. Other splits are scored by the train_classifier stage's model, which never
saw them. Mode `full` scores everything with that model. With captions.model set it reads the
caption stage's manifest, so the scored manifest carries the captions on. Scoring runs on a Ray Data actor
pool, part by part: the driver holds sample ids and scores, never images. Writes
<root>/score/manifest/part-*.parquet and difficulty_hist.png.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import run_layout
from raysys.core.config import RaysysConfig
from raysys.core.loading import ConfigError, digest
from raysys.core.schema import claim_folder, read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage, stage_named
from raysys.models.classifiers import check_classifier
from raysys.ray.scoring import score_manifest
from raysys.ray.train import Workers, fit, run_concurrently
from raysys.ray.tracking import check_tracking, tracked
from raysys.report.plots import difficulty_histogram
from raysys.scoring.difficulty import assign_folds, check_score
from raysys.training.classifier import ClassifierJob, ClassifierSetup, classifier_loop, history_summary

FULL = "full"


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def fold_key(folds: int, fold: int) -> str:
    """score_mode of the rows fold model `fold` scores (and that model's key)."""
    return f"oof-k{folds}-fold{fold}"


def fold_digest(cfg: RaysysConfig) -> str:
    """What the fold models depend on: the classifier setup and k, not how scoring runs."""
    return digest(stage_named("train_classifier").digest(cfg), cfg.score.folds, cfg.score.fold_epochs)


def _fit_fold_models(cfg: RaysysConfig, stage: StageRun, prep: dict) -> tuple[dict[str, str], list[dict]]:
    """Train the k fold models, `score.concurrent_folds` at a time (each resumes if killed)."""
    k = cfg.score.folds
    fd = fold_digest(cfg)
    keys = [fold_key(k, fold) for fold in range(k)]
    model_dirs = {key: stage.file("folds", fd, f"fold{fold}", "model") for fold, key in enumerate(keys)}
    epochs = cfg.score.fold_epochs or cfg.train.epochs
    jobs = [ClassifierJob(setup=ClassifierSetup.of(cfg), manifest=run_layout.real_manifest(cfg),
                          num_classes=prep["num_classes"], groups=prep["groups"], epochs=epochs, fold=fold, folds=k,
                          name=key)
            for fold, key in enumerate(keys)]
    print(f"[score] {k} fold models, {min(cfg.score.concurrent_folds, k)} at a time", flush=True)
    tracking = tracked(cfg, STAGE, "classifier", "train", "run.seed")  # a fold model's params: its recipe too
    calls = [functools.partial(fit, classifier_loop, job, Workers.for_training(cfg.train), f"{key}-{fd}",
                               stage.file("folds", "ray"), {"model": model_dirs[key]}, tracking)
             for job, key in zip(jobs, keys)]
    fits = run_concurrently(calls, cfg.score.concurrent_folds, keys)
    fold_metrics = []
    for fold, state in enumerate(fits):
        summary = history_summary(state["history"])
        fold_metrics.append({"fold": fold, **{m: summary[m] for m in ("acc", "acc_few", "macro_f1")},
                             "resumed_at_epochs": state.get("resumes", [])})
    return model_dirs, fold_metrics


def score_splits(cfg: RaysysConfig) -> list[str]:
    """The splits scored: score.splits, or train, the validation split and the test splits."""
    if cfg.score.splits is not None:
        return list(cfg.score.splits)
    return list(dict.fromkeys(["train", cfg.data.val_split, *cfg.data.test_splits]))


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    rows = read_manifest(run_layout.real_manifest(cfg), columns=["sample_id", "label", "split"])  # no images
    prep = run_layout.stage_metrics(cfg, "prepare")
    splits = score_splits(cfg)
    present = sorted(set(rows["split"].to_pylist()))
    unknown = [s for s in splits if s not in present]
    if unknown:
        raise ConfigError(f"score.splits names {unknown}, which the prepared manifest does not have "
                          f"(its splits: {present})")
    model_dirs = {FULL: run_layout.classifier_model(cfg)}

    # Which model scores which row: a train row's fold model in oof mode, else the full model.
    keys: dict[str, str] = {}
    fold_metrics: list[dict] = []
    fold_seconds = 0.0
    oof = cfg.score.mode == "oof" and "train" in splits
    if oof:
        t0 = time.time()
        fold_dirs, fold_metrics = _fit_fold_models(cfg, stage, prep)
        fold_seconds = time.time() - t0
        model_dirs.update(fold_dirs)
        train = rows.filter(pc.equal(rows["split"], "train"))
        train_ids = train["sample_id"].to_pylist()
        folds = assign_folds(train_ids, train["label"].to_numpy(), cfg.score.folds, cfg.run.seed)
        keys = {sid: fold_key(cfg.score.folds, int(f)) for sid, f in zip(train_ids, folds)}

    output = run_layout.scored_manifest(cfg)
    claim_folder(output, stage.digest)
    wanted = int(pc.sum(pc.is_in(rows["split"], pa.array(splits))).as_py() or 0)
    t0 = time.time()
    # oof: the same train rows are scored by the full model too, which shows what out-of-fold corrects.
    scored = score_manifest(run_layout.described_manifest(cfg), output, model_dirs, keys, splits, cfg.score, total=wanted,
                            with_full=oof)
    score_seconds = time.time() - t0
    if len(scored) != wanted:
        raise RuntimeError(f"{wanted} rows to score, {len(scored)} scored")

    split_arr = np.asarray(scored["split"].to_pylist(), dtype=object)
    difficulty = scored["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    labels = scored["label"].to_numpy()
    comparison = {}
    if oof:
        full = scored["full_difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
        comparison["train_mean_difficulty_full_model"] = float(np.mean(full[split_arr == "train"]))
    missing = int(np.isnan(difficulty).sum())
    if missing:
        raise RuntimeError(f"{missing} rows were not scored")
    hist_split = "train" if "train" in splits else splits[0]
    in_hist = split_arr == hist_split
    by_group = {g: difficulty[in_hist & np.isin(labels, members)] for g, members in prep["groups"].items()}
    difficulty_histogram(by_group, stage.file("difficulty_hist.png"),
                         f"{hist_split} difficulty by class group ({'oof' if oof and hist_split == 'train' else 'full'})")
    per_split = {s: float(np.mean(difficulty[split_arr == s])) for s in splits if (split_arr == s).any()}
    modes = sorted(set(scored["score_mode"].to_pylist()))
    forward_passes = len(scored) + (int((split_arr == "train").sum()) if oof else 0)
    metrics = {
        "mode": "oof" if oof else "full",
        "folds": cfg.score.folds if oof else None,
        "splits": splits,
        "modes_used": modes,
        "rows_scored": int(len(scored)),
        "scoring_seconds": round(score_seconds, 3),
        "fold_training_seconds": round(fold_seconds, 3),
        "images_per_s": round(forward_passes / score_seconds, 2),
        "mean_difficulty": per_split,
        f"{hist_split}_mean_difficulty_by_group": {g: float(v.mean()) if len(v) else None for g, v in by_group.items()},
        **comparison,
        "fold_models": fold_metrics,
        "actors": {"min": cfg.score.min_actors, "max": cfg.score.max_actors, "num_gpus": cfg.score.num_gpus},
    }
    print(f"[score] {len(scored)} rows scored ({metrics['mode']}); mean difficulty {per_split} -> {output}")
    return metrics


STAGE = Stage(
    name="score", reads=("prepare", "caption", "train_classifier"), run=_run,
    config=("score",), check=lambda cfg: check_score(cfg.score) + check_classifier(cfg.classifier) + check_tracking(cfg),
    describe="measured difficulty s = 1 - p(y|x) of every row (out-of-fold for train): manifest/",
)
