"""Stage `quality`: what each synthetic set is worth, measured before any classifier trains on it.

1. **Features** (Ray Data): an actor pool of `quality.extractor` embeds the real `train` and test
   rows of the scored manifest and every plan's kept rows, part by part; the driver gets sample
   ids and features, never an image.
2. **Measures** (`raysys.quality`): per plan, as a whole, per λ level, per requested-s tenth, per
   class group and per class, against the train images of the same classes and, held out, the
   test images: FID, KID, precision, recall, density, coverage; memorisation (copies of train
   images, rows closer to their source than the source is to any other train image); diversity
   against the real images; CLIP score where the filter measured it. The real test images
   against train give the real-versus-real level every figure is read against.
3. **Writes** `quality.csv` (one row per plan x group; `real` is the real test set), metrics.json
   (per plan its rows and `overall`), `quality_by_lambda.png`, `quality_by_s.png` and, per plan,
   `closest_<plan>.png`: the synthetic images nearest to a train image, beside it.

Its fingerprint is the extractor and the measures' settings; the stages it reads carry the data,
the classifier and the synthetic sets. Pool sizes and batch sizes rerun nothing.
"""

from __future__ import annotations

import csv
import io as _io

import numpy as np
import pyarrow.compute as pc
import torch

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import list_parts, read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.quality.features import FeatureExtractor, extractor_problems
from raysys.generation.plan_versions import plan_dir
from raysys.quality.groups import FIGURES, REAL, FeatureSet, Reference, closest_pairs, measure

CLOSEST_PAIRS = 8
"""Synthetic images in each plan's closest-pairs grid."""
COLUMNS = ("plan", "by", "group", "value", "images", "reliable",
           *[f"{side}{f}" for side in ("train_", "test_") for f in ("images", *FIGURES, "kid_std", "reliable")],
           "copies", "nearest_ratio_median", "closer_than_source", "diversity", "clip_text")
"""quality.csv's columns."""


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _real_rows(cfg: RaysysConfig, test_split: str):
    return read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "label", "split"],
                         where=pc.field("split").isin(["train", test_split]))


def _plan_rows(directory: str):
    return read_manifest(directory, columns=["sample_id", "label", "guidance", "requested_difficulty", "source_id",
                                             "clip_text"], where=pc.field("keep") == True)  # noqa: E712


def _floats(table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64)


def _aligned(ids: list[str], found: dict[str, np.ndarray]) -> torch.Tensor:
    missing = [i for i in ids if i not in found]
    if missing:
        raise RuntimeError(f"no features came back for {len(missing)} rows (e.g. {missing[:3]}); rerun")
    return torch.from_numpy(np.stack([found[i] for i in ids]).astype(np.float32)) if ids else torch.zeros(0, 1)


def _run(stage: StageRun) -> dict:
    from raysys.ray.features import KEPT, extract_features

    cfg, q = stage.cfg, stage.cfg.quality
    prep = run_layout.stage_metrics(cfg, "prepare")
    class_names = prep["class_names"]
    class_group = {int(c): g for g, members in prep["groups"].items() for c in members}
    test_split = cfg.data.test_splits[0]

    # 1. Features of the real train and test rows and of every plan's kept rows.
    real = _real_rows(cfg, test_split)
    plans = {p.name: plan_dir(cfg, p.name) for p in cfg.synthesis.plans}
    plan_rows = {name: _plan_rows(d) for name, d in plans.items()}
    parts = [(p, f"train,{test_split}") for p in list_parts(run_layout.scored_manifest(cfg))]
    parts += [(p, KEPT) for d in plans.values() for p in list_parts(d)]
    total = len(real) + sum(len(t) for t in plan_rows.values())
    print(f"[quality] features of {len(real)} real and {total - len(real)} synthetic images "
          f"({q.extractor} extractor, {len(plans)} plans)", flush=True)
    classifier = run_layout.classifier_model(cfg) if q.extractor == "classifier" else None
    if classifier is None:  # weights that cannot be had are refused here, in one line, before any actor starts
        FeatureExtractor(q.extractor, None, q.weights, q.pretrained)
    extracted = extract_features(parts, q, classifier, total)
    found = {sid: row for ids, matrix in extracted.values() for sid, row in zip(ids, matrix)}

    split = np.asarray(real["split"].to_pylist(), dtype=object)
    labels = real["label"].to_numpy().astype(np.int64)
    ids = np.asarray(real["sample_id"].to_pylist(), dtype=object)
    train_ids, test_ids = ids[split == "train"].tolist(), ids[split == test_split].tolist()
    if len(train_ids) <= q.k:
        raise RuntimeError(f"quality: the train split has {len(train_ids)} images; it needs more than quality.k = {q.k}")
    train = Reference(FeatureSet(_aligned(train_ids, found), labels[split == "train"]), q.k)
    test_images = FeatureSet(_aligned(test_ids, found), labels[split == test_split]) if test_ids else None
    test = Reference(test_images, q.k) if test_images is not None else None
    train_index = {sid: i for i, sid in enumerate(train_ids)}

    # 2. Measures: the real-versus-real level, then every plan.
    settings = dict(class_group=class_group, class_names=class_names, copy_threshold=q.copy_threshold,
                    min_images=q.min_images)
    rows = {}
    if test_images is not None:
        rows[REAL] = measure(test_images, train, None, **settings)
    sets, set_ids = {}, {}
    for name, table in plan_rows.items():
        if not len(table):
            print(f"[quality] plan {name}: no kept images, nothing to measure")
            continue
        set_ids[name] = table["sample_id"].to_pylist()
        sources = [train_index.get(s, -1) if s is not None else -1 for s in table["source_id"].to_pylist()]
        sets[name] = FeatureSet(_aligned(set_ids[name], found), table["label"].to_numpy().astype(np.int64),
                                _floats(table, "guidance"), _floats(table, "requested_difficulty"),
                                np.asarray(sources, np.int64), _floats(table, "clip_text"))
        rows[name] = measure(sets[name], train, test, **settings)

    # 3. Files.
    _write_csv(stage.file("quality.csv"), rows)
    figures = _plots(stage, rows)
    part_of = {sid: part for part, (ids_of_part, _) in extracted.items() for sid in ids_of_part}
    for name, fake in sets.items():
        pairs = closest_pairs(set_ids[name], train_ids, fake, train, CLOSEST_PAIRS)
        _closest_grid(cfg, pairs, part_of, stage.file(f"closest_{name}.png"), name)
        figures.append(f"closest_{name}.png")
    metrics = {"extractor": q.extractor, "feature_dim": int(train.images.features.shape[1]), "k": q.k,
               "copy_threshold": q.copy_threshold, "min_images": q.min_images, "test_split": test_split,
               "real_images": {"train": len(train_ids), "test": len(test_ids)}, "figures": figures,
               "plans": {name: {"overall": r[0], "rows": r} for name, r in rows.items()}}
    for name, r in rows.items():
        o = r[0]
        print(f"[quality] {name}: {o['images']} images, FID {_fmt(o['train_fid'])} (test {_fmt(o.get('test_fid'))}), "
              f"precision {_fmt(o['train_precision'])}, recall {_fmt(o['train_recall'])}, "
              f"copies {_fmt(o['copies'])}, diversity {_fmt(o['diversity'])}")
    return metrics


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def _write_csv(location: str, rows: dict[str, list[dict]]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for name, plan_rows in rows.items():
        for row in plan_rows:
            writer.writerow({k: ("" if v is None else v) for k, v in {"plan": name, **row}.items()})
    io.write_text(location, buf.getvalue())


def _plots(stage: StageRun, rows: dict[str, list[dict]]) -> list[str]:
    """quality_by_lambda.png and quality_by_s.png, for the plans that have those groups."""
    from raysys.report.plots import quality_curves

    written = []
    for by, axis, file in (("lambda", "image guidance λ", "quality_by_lambda.png"),
                           ("s", "requested difficulty s (tenth)", "quality_by_s.png")):
        curves = {}
        for name, plan_rows in rows.items():
            chosen = [r for r in plan_rows if r["by"] == by] if name != REAL else []
            if not chosen:
                continue
            xs = [r["value"] for r in chosen]
            for side in ("train", "test"):
                curves[f"{name} vs {side}"] = (xs, {"fid": [r.get(f"{side}_fid") for r in chosen],
                                                   "precision": [r.get(f"{side}_precision") for r in chosen],
                                                   "recall": [r.get(f"{side}_recall") for r in chosen],
                                                   "copies": [r["copies"] for r in chosen] if side == "train" else None,
                                                   "reliable": [r.get(f"{side}_reliable", False) for r in chosen]})
        if curves:
            real = rows[REAL][0] if REAL in rows else {}
            level = {"fid": real.get("train_fid"), "precision": real.get("train_precision"),
                     "recall": real.get("train_recall"), "copies": real.get("copies")}
            quality_curves(curves, stage.file(file), axis, f"synthetic-set quality by {axis}", level)
            written.append(file)
    return written


def _closest_grid(cfg: RaysysConfig, pairs: list, part_of: dict[str, str], location: str, name: str) -> None:
    """Each of the closest synthetic images beside its nearest train image: the driver reads just those
    images, from the parts that hold them (`part_of`: sample id -> part)."""
    from raysys.data.images import decode
    from raysys.report.plots import image_grid

    wanted = {sid for pair in pairs for sid in pair[:2]}
    images: dict[str, bytes] = {}
    for part in sorted({part_of[sid] for sid in wanted}):
        table = read_manifest(part, columns=["sample_id", "image"], where=pc.field("sample_id").isin(sorted(wanted)))
        images.update(zip(table["sample_id"].to_pylist(), table["image"].to_pylist()))
    size, channels = cfg.data.image_size, cfg.data.channels
    grid = np.stack([np.stack([decode(images[f], size, channels).transpose(1, 2, 0),
                               decode(images[r], size, channels).transpose(1, 2, 0)]) for f, r, _ in pairs])
    image_grid(grid.transpose(1, 0, 2, 3, 4), location, row_labels=["synthetic", "nearest train"],
               col_labels=[f"{ratio:.2f}" for _, _, ratio in pairs],
               title=f"plan '{name}': the synthetic images nearest to a train image",
               col_title="distance / that train image's distance to its nearest train neighbour")


def _check(cfg: RaysysConfig) -> list[str]:
    q, problems = cfg.quality, extractor_problems(cfg.quality.extractor)
    if q.k < 1 or q.min_images < 2 or q.batch_size < 1:
        problems.append("quality needs k >= 1, min_images >= 2 and batch_size >= 1")
    if not 0 < q.copy_threshold < 1:
        problems.append(f"quality.copy_threshold must be in (0, 1), got {q.copy_threshold}")
    if q.min_actors < 1 or q.max_actors < q.min_actors:
        problems.append("quality needs 1 <= min_actors <= max_actors")
    return problems


STAGE = Stage(
    name="quality", reads=("prepare", "train_classifier", "score", "synthesize"),
    run=_run, check=_check,
    config=("quality", "data.test_splits"),
    describe="each synthetic set's FID, KID, precision / recall, memorisation and diversity, per λ and s: quality.csv",
)
