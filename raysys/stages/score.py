"""Stage `score`: measured difficulty s = 1 - p(y|x) for every row of the chosen splits.

Mode `oof` (default): train rows are split into k stratified folds; fold i is scored by a
classifier trained (on Ray Train) on the other k-1 folds, so no row is scored by a model
that memorised it. Other splits are scored by the train_classifier stage's model, which never
saw them. Mode `full` scores everything with that model. Scoring runs on a Ray Data actor
pool. Writes <root>/score/manifest.parquet and difficulty_hist.png.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa

from raysys.core.config import RaysysConfig
from raysys.core.loading import digest
from raysys.core.schema import SCORE_COLUMNS, conform, write_manifest
from raysys.core.stage import Context, Stage, StageDir, run_stage
from raysys.ray.scoring import score_table
from raysys.ray.train import fit, run_concurrently
from raysys.report.plots import difficulty_histogram
from raysys.scoring.difficulty import assign_folds, check_score
from raysys.stages import prepare, train_classifier
from raysys.training.classifier import ClassifierJob, classifier_loop, history_summary

FULL = "full"


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def manifest_path(cfg: RaysysConfig) -> str:
    return stage_dir(cfg).file("manifest.parquet")


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def fold_key(folds: int, fold: int) -> str:
    """score_mode of the rows fold model `fold` scores (and that model's key)."""
    return f"oof-k{folds}-fold{fold}"


def fold_digest(cfg: RaysysConfig) -> str:
    """What the fold models depend on: the classifier setup and k, not how scoring runs."""
    return digest(train_classifier.stage_dir(cfg).digest, cfg.score.folds, cfg.score.fold_epochs)


def _fit_fold_models(cfg: RaysysConfig, stage: Context, prep: dict) -> tuple[dict[str, str], list[dict]]:
    """Train the k fold models, `score.concurrent_folds` at a time (each resumes if killed)."""
    k = cfg.score.folds
    fd = fold_digest(cfg)
    keys = [fold_key(k, fold) for fold in range(k)]
    model_dirs = {key: stage.file("folds", fd, f"fold{fold}", "model") for fold, key in enumerate(keys)}
    epochs = cfg.score.fold_epochs or cfg.train.epochs
    jobs = [ClassifierJob(cfg=cfg, manifest=prepare.manifest_path(cfg), num_classes=prep["num_classes"],
                          groups=prep["groups"], epochs=epochs, fold=fold, folds=k, name=key)
            for fold, key in enumerate(keys)]
    print(f"[score] {k} fold models, {min(cfg.score.concurrent_folds, k)} at a time", flush=True)
    calls = [functools.partial(fit, classifier_loop, job, train_classifier.workers(cfg), f"{key}-{fd}",
                               stage.file("folds", "ray"), {"model": model_dirs[key]})
             for job, key in zip(jobs, keys)]
    fits = run_concurrently(calls, cfg.score.concurrent_folds, keys)
    fold_metrics = []
    for fold, state in enumerate(fits):
        summary = history_summary(state["history"])
        fold_metrics.append({"fold": fold, **{m: summary[m] for m in ("acc", "acc_few", "macro_f1")}})
    return model_dirs, fold_metrics


def _run(stage: Context) -> dict:
    cfg = stage.cfg
    table, prep = prepare.load(cfg)
    model_dirs = {FULL: train_classifier.model_dir(cfg)}

    # Which model scores which row.
    splits = np.asarray(table["split"].to_pylist(), dtype=object)
    ids = np.asarray(table["sample_id"].to_pylist(), dtype=object)
    wanted = np.isin(splits, cfg.score.splits)
    keys = np.full(len(table), FULL, dtype=object)
    fold_metrics: list[dict] = []
    fold_seconds = 0.0
    if cfg.score.mode == "oof" and "train" in cfg.score.splits:
        t0 = time.time()
        fold_dirs, fold_metrics = _fit_fold_models(cfg, stage, prep)
        fold_seconds = time.time() - t0
        model_dirs.update(fold_dirs)
        train_rows = np.flatnonzero(splits == "train")
        folds = assign_folds(
            list(ids[train_rows]),
            table["label"].to_numpy()[train_rows], cfg.score.folds, cfg.run.seed,
        )
        for row, fold in zip(train_rows, folds):
            keys[row] = fold_key(cfg.score.folds, fold)

    rows = np.flatnonzero(wanted)
    score_ids, score_rows, score_keys = list(ids[rows]), list(rows), list(keys[rows])
    train_rows = rows[splits[rows] == "train"]
    if cfg.score.mode == "oof" and len(train_rows):
        # The same train rows scored by the full model too: shows what out-of-fold scoring corrects.
        score_ids += [f"{sid}#full" for sid in ids[train_rows]]
        score_rows += list(train_rows)
        score_keys += [FULL] * len(train_rows)
    to_score = pa.table({
        "sample_id": pa.array(score_ids, pa.string()),
        "image": table["image"].take(pa.array(score_rows)),
        "label": table["label"].take(pa.array(score_rows)),
        "score_mode": pa.array(score_keys, pa.string()),
    })

    t0 = time.time()
    scored = score_table(to_score, model_dirs, cfg.score)
    score_seconds = time.time() - t0

    index = {sid: i for i, sid in enumerate(scored["sample_id"].to_pylist())}
    comparison = {}
    if cfg.score.mode == "oof" and len(train_rows):
        full_rows = [index[f"{sid}#full"] for sid in ids[train_rows]]
        comparison["train_mean_difficulty_full_model"] = float(np.mean(scored["difficulty"].to_numpy()[full_rows]))

    # Join the scores back onto the manifest by sample_id (rows not scored stay null).
    at = np.full(len(table), -1, dtype=np.int64)
    for row in rows:
        at[row] = index[ids[row]]
    take = pa.array(at, pa.int64(), mask=at < 0)
    result = table
    for name in SCORE_COLUMNS:
        if name == "score_mode":
            column = pa.array([k if a >= 0 else None for k, a in zip(keys.tolist(), at)], pa.string())
        else:
            column = scored[name].take(take)
        field = result.schema.field(name)
        result = result.set_column(result.schema.get_field_index(name), field, column.cast(field.type))
    result = conform(result)
    write_manifest(result, stage.file("manifest.parquet"))

    difficulty = result["difficulty"].to_numpy(zero_copy_only=False).astype(np.float64)
    labels = table["label"].to_numpy()
    train_scored = "train" in cfg.score.splits
    hist_split = "train" if train_scored else cfg.score.splits[0]
    in_hist = splits == hist_split
    by_group = {g: difficulty[in_hist & np.isin(labels, members)] for g, members in prep["groups"].items()}
    difficulty_histogram(by_group, stage.file("difficulty_hist.png"),
                         f"{hist_split} difficulty by class group ({cfg.score.mode if train_scored else 'full'})")
    per_split = {s: float(np.nanmean(difficulty[splits == s])) for s in cfg.score.splits if (splits == s).any()}
    missing = int(np.isnan(difficulty[wanted]).sum())
    if missing:
        raise RuntimeError(f"{missing} rows were not scored")
    oof_used = cfg.score.mode == "oof" and train_scored
    metrics = {
        "mode": "oof" if oof_used else "full",
        "folds": cfg.score.folds if oof_used else None,
        "modes_used": sorted(set(keys[rows].tolist())),
        "rows_scored": int(len(rows)),
        "scoring_seconds": round(score_seconds, 3),
        "fold_training_seconds": round(fold_seconds, 3),
        "images_per_s": round(len(to_score) / score_seconds, 2),
        "mean_difficulty": per_split,
        f"{hist_split}_mean_difficulty_by_group": {g: float(v.mean()) if len(v) else None for g, v in by_group.items()},
        **comparison,
        "fold_models": fold_metrics,
        "actors": {"min": cfg.score.min_actors, "max": cfg.score.max_actors, "num_gpus": cfg.score.num_gpus},
    }
    print(f"[score] {len(rows)} rows scored ({cfg.score.mode}); mean difficulty {per_split} -> {stage.file('manifest.parquet')}")
    return metrics


def score_fingerprint(cfg: RaysysConfig) -> tuple:
    """What the scores depend on (the classifiers come in through train_classifier's digest): never
    the actor pool, the batch size or how many fold models train at once."""
    sc = cfg.score
    oof = sc.mode == "oof" and "train" in sc.splits
    return sc.mode, sc.folds if oof else None, sc.fold_epochs if oof else None, list(sc.splits)


STAGE = Stage(
    name="score", reads=(prepare.STAGE, train_classifier.STAGE), run=_run,
    fingerprint=score_fingerprint, check=lambda cfg: check_score(cfg.score),
    describe="measured difficulty s = 1 - p(y|x) of every row (out-of-fold for train): manifest.parquet",
)
