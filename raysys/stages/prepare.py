"""Stage `prepare`: real images -> long-tailed splits -> <root>/prepare/manifest.parquet.

Needs no Ray. Unreadable images are skipped, counted and listed in metrics.json.
"""

from __future__ import annotations

import numpy as np

from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest, sample_id, to_table, write_manifest
from raysys.core.stage import Context, Stage, StageDir, run_stage
from raysys.data.longtail import assign_splits, check_data, class_groups
from raysys.data.sources import load_source


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def manifest_path(cfg: RaysysConfig) -> str:
    return stage_dir(cfg).file("manifest.parquet")


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _run(ctx: Context) -> dict:
    cfg = ctx.cfg
    src = load_source(cfg.data.source)  # raises DataError on unusable input, before any write
    num_classes = len(src.class_names)
    d = cfg.data
    plan = assign_splits(
        src.labels, num_classes,
        max_per_class=d.max_per_class, imbalance_ratio=d.imbalance_ratio,
        val_per_class=d.val_per_class, test_per_class=d.test_per_class,
        pretrain_per_class=d.pretrain_per_class, seed=cfg.run.seed,
    )
    used = np.flatnonzero(plan.split != "")
    columns = {
        "sample_id": [sample_id("real", src.paths[i]) for i in used],
        "image": [src.images[i] for i in used],
        "path": [src.paths[i] for i in used],
        "label": [int(src.labels[i]) for i in used],
        "class_name": [src.class_names[src.labels[i]] for i in used],
        "split": [str(plan.split[i]) for i in used],
        "origin": ["real"] * len(used),
    }
    if len(set(columns["sample_id"])) != len(used):
        raise RuntimeError("duplicate sample ids: two inputs share a path")
    write_manifest(to_table(columns), ctx.file("manifest.parquet"))

    counts = {}
    split_arr = np.asarray(columns["split"])
    labels_arr = np.asarray(columns["label"])
    for split in ("train", "val", "test", "pretrain"):
        counts[split] = np.bincount(labels_arr[split_arr == split], minlength=num_classes).tolist()
    groups = class_groups(plan.train_counts, d.many_threshold, d.few_threshold)
    metrics = {
        "source": d.source,
        "num_classes": num_classes,
        "class_names": src.class_names,
        "images_read": len(src) + len(src.bad_files),
        "bad_files_count": len(src.bad_files),
        "bad_files": src.bad_files,
        "rows": len(used),
        "counts": counts,
        "groups": groups,
    }
    print(
        f"[prepare] {len(used)} rows: train {sum(counts['train'])} ({counts['train']}), "
        f"val {sum(counts['val'])}, test {sum(counts['test'])}, pretrain {sum(counts['pretrain'])}; "
        f"{len(src.bad_files)} unreadable file(s) skipped -> {ctx.file('manifest.parquet')}"
    )
    return metrics


def load(cfg: RaysysConfig):
    """(manifest table, prepare metrics) of the completed prepare stage."""
    return read_manifest(manifest_path(cfg)), stage_dir(cfg).metrics()


STAGE = Stage(
    name="prepare", reads=(), run=_run, needs_ray=False,
    fingerprint=lambda cfg: (cfg.data, cfg.run.seed),
    check=lambda cfg: check_data(cfg.data),
    describe="real images -> long-tailed train / val / test / pretrain splits: manifest.parquet",
)
