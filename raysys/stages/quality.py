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

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import list_parts
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.generation.plan_versions import plan_dir
from raysys.quality.features import FeatureExtractor, extractor_problems
from raysys.quality.groups import REAL, closest_pairs, measure
from raysys.quality.sets import kept_rows, overall_line, plan_set, quality_csv, real_rows, real_sets
from raysys.report.image_grids import closest_pairs_grid
from raysys.report.stage_figures import quality_by_axis

CLOSEST_PAIRS = 8
"""Synthetic images in each plan's closest-pairs grid."""


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _run(stage: StageRun) -> dict:
    from raysys.ray.features import KEPT, extract_features

    cfg, q = stage.cfg, stage.cfg.quality
    prep = run_layout.stage_metrics(cfg, "prepare")
    class_group = {int(c): g for g, members in prep["groups"].items() for c in members}
    test_split = cfg.data.test_splits[0]

    # 1. Features of the real train and test rows and of every plan's kept rows.
    real = real_rows(run_layout.scored_manifest(cfg), test_split)
    plans = {p.name: plan_dir(cfg, p.name) for p in cfg.synthesis.plans}
    plan_rows = {name: kept_rows(d) for name, d in plans.items()}
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
    reals = real_sets(real, found, test_split, q.k)

    # 2. Measures: the real-versus-real level, then every plan.
    settings = dict(class_group=class_group, class_names=prep["class_names"], copy_threshold=q.copy_threshold,
                    min_images=q.min_images)
    rows = {REAL: measure(reals.test_images, reals.train, None, **settings)} if reals.test_images is not None else {}
    sets, train_index = {}, reals.train_index()
    for name, table in plan_rows.items():
        if not len(table):
            print(f"[quality] plan {name}: no kept images, nothing to measure")
            continue
        sets[name] = (table["sample_id"].to_pylist(), plan_set(table, found, train_index))
        rows[name] = measure(sets[name][1], reals.train, reals.test, **settings)

    # 3. Files.
    io.write_text(stage.file("quality.csv"), quality_csv(rows))
    figures = quality_by_axis(rows, stage.dir.path)
    part_of = {sid: part for part, (ids_of_part, _) in extracted.items() for sid in ids_of_part}
    for name, (ids, fake) in sets.items():
        pairs = closest_pairs(ids, reals.train_ids, fake, reals.train, CLOSEST_PAIRS)
        closest_pairs_grid(cfg, pairs, part_of, stage.file(f"closest_{name}.png"), name)
        figures.append(f"closest_{name}.png")
    metrics = {"extractor": q.extractor, "feature_dim": int(reals.train.images.features.shape[1]), "k": q.k,
               "copy_threshold": q.copy_threshold, "min_images": q.min_images, "test_split": test_split,
               "real_images": {"train": len(reals.train_ids), "test": len(reals.test_ids)}, "figures": figures,
               "plans": {name: {"overall": r[0], "rows": r} for name, r in rows.items()}}
    for name, r in rows.items():
        print(f"[quality] {overall_line(name, r[0])}")
    return metrics


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
