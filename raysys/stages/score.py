"""Stage `score`: measured difficulty s = 1 - p(y|x) for every row of the chosen splits.

Mode `oof` (default): train rows are split into k stratified folds; fold i is scored by a
classifier trained (on Ray Train) on the other k-1 folds, so no row is scored by a model
that memorised it. Other splits are scored by the train_classifier stage's model, which never
saw them. Mode `full` scores everything with that model. Scoring runs on a Ray Data actor
pool. Writes <root>/score/manifest.parquet and difficulty_hist.png.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from raysys.core.config import RaysysConfig, digest
from raysys.core.schema import SCORE_COLUMNS, conform, write_manifest
from raysys.core.stage import MissingInput, StageDir
from raysys.ray.scoring import score_table
from raysys.ray.train import ClassifierJob, fit_classifier, history_summary, run_concurrently
from raysys.report.plots import difficulty_histogram
from raysys.scoring.difficulty import assign_folds
from raysys.stages import prepare, train_classifier

NAME = "score"
FULL = "full"


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return StageDir(cfg.run.root, NAME, digest(train_classifier.stage_dir(cfg).digest, cfg.score))


def manifest_path(cfg: RaysysConfig) -> str:
    return stage_dir(cfg).file("manifest.parquet")


def fold_key(folds: int, fold: int) -> str:
    """score_mode of the rows fold model `fold` scores (and that model's key)."""
    return f"oof-k{folds}-fold{fold}"


def fold_digest(cfg: RaysysConfig) -> str:
    """What the fold models depend on: the classifier setup and k, not how scoring runs."""
    return digest(train_classifier.stage_dir(cfg).digest, cfg.score.folds, cfg.score.fold_epochs)


def _fit_fold_models(cfg: RaysysConfig, stage: StageDir, prep: dict) -> tuple[dict[str, str], list[dict]]:
    """Train the k fold models, `score.concurrent_folds` at a time (each resumes if killed)."""
    k = cfg.score.folds
    fd = fold_digest(cfg)
    keys = [fold_key(k, fold) for fold in range(k)]
    model_dirs = {key: stage.file("folds", fd, f"fold{fold}", "model") for fold, key in enumerate(keys)}
    jobs = [ClassifierJob(cfg=cfg, manifest=prepare.manifest_path(cfg), num_classes=prep["num_classes"],
                          groups=prep["groups"], storage=stage.file("folds", "ray"), name=f"{key}-{fd}",
                          epochs=cfg.score.fold_epochs or cfg.train.epochs, fold=fold, folds=k)
            for fold, key in enumerate(keys)]
    print(f"[score] {k} fold models, {min(cfg.score.concurrent_folds, k)} at a time", flush=True)
    fits = run_concurrently(fit_classifier, [(job, model_dirs[key]) for job, key in zip(jobs, keys)],
                            cfg.score.concurrent_folds, keys)
    fold_metrics = []
    for fold, fit in enumerate(fits):
        summary = history_summary(fit.history)
        fold_metrics.append({"fold": fold, **{m: summary[m] for m in ("acc", "acc_few", "macro_f1")}})
    return model_dirs, fold_metrics


def run(cfg: RaysysConfig) -> dict:
    stage = stage_dir(cfg)
    if stage.is_complete():
        print(f"[score] complete for this config, skipped ({stage.path})")
        return stage.metrics()
    table, prep = prepare.load(cfg)
    baseline = train_classifier.stage_dir(cfg)
    if not baseline.is_complete():
        raise MissingInput(
            f"score needs the train_classifier model: run `raysys train-classifier CONFIG` first ({baseline.path})"
        )
    stage.begin(cfg)
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
    write_manifest(result, manifest_path(cfg))

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
    metrics = stage.finish({
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
    })
    print(f"[score] {len(rows)} rows scored ({cfg.score.mode}); mean difficulty {per_split} -> {manifest_path(cfg)}")
    return metrics
