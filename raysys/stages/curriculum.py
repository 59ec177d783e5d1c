"""Stage `curriculum`: the classifier trained on real + synthetic images with a schedule.

One unit per run of the comparison: every `compare.variants` x `compare.seeds` (or, with no
variants, the `curriculum` section once), `compare.concurrent` at a time on Ray. Each run trains
one schedule (see raysys/schedules/) on the scored real train split and the kept images of
`curriculum.plans`, on Ray Train, into <root>/curriculum/<name>/ (`<variant>-seed<n>`, or
`curriculum.name`, default the schedule): `model/`, and `metrics.json` with the final test metrics
under the names tools rely on (acc, acc_many, acc_medium, acc_few, macro_f1, worst_<k>_acc,
per_class_acc), the per-epoch history (selection, real and synthetic counts, validation metrics,
per-λ accuracy on the guidance-validation set, adaptive gains and choices), and the schedule trace.
"""

from __future__ import annotations

import difflib
from dataclasses import fields

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raysys.core import run_layout
from raysys.core.comparison import compare_variants, curriculum_configs, plan_names, variant_config, variant_name
from raysys.core.config import CurriculumConfig, RaysysConfig
from raysys.core.io import FOLDER_NAME
from raysys.core.stage import StageRun, Stage, StageDir, missing_inputs, run_stage, run_unit
from raysys.schedules.registry import check_curriculum
from raysys.models.classifiers import check_classifier
from raysys.generation.plan_versions import plan_dir
from raysys.ray.train import Workers, fit, run_concurrently
from raysys.ray.tracking import check_tracking, tracked
from raysys.training.classifier import ClassifierSetup, check_train
from raysys.training.curriculum import CurriculumJob, curriculum_loop, schedule_for


def stage_dir(cfg: RaysysConfig) -> StageDir:
    """The folder of the curriculum run `cfg` itself describes (its `curriculum` section)."""
    return STAGE.unit_dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    """The one curriculum run `cfg` describes (its `curriculum` section, not the comparison)."""
    if not STAGE.unit_dir(cfg).is_complete():
        missing_inputs(STAGE, [cfg])
    return run_unit(STAGE, cfg)


def run_all(cfg: RaysysConfig) -> list[dict]:
    """Every run of the comparison; complete runs are skipped."""
    return run_stage(STAGE, cfg)


def _run(stage: StageRun) -> dict:
    cfg, c = stage.cfg, stage.cfg.curriculum
    prep = run_layout.stage_metrics(cfg, "prepare")
    name = variant_name(cfg)
    job = CurriculumJob(setup=ClassifierSetup.of(cfg), curriculum=c, manifest=run_layout.scored_manifest(cfg),
                        plan_dirs={n: plan_dir(cfg, n) for n in plan_names(cfg)},
                        num_classes=prep["num_classes"], groups=prep["groups"], name=f"curriculum {name}")
    workers = Workers.for_training(cfg.train, c.num_workers)
    state = fit(curriculum_loop, job, workers, f"curriculum-{name}-{stage.digest}",
                stage.file("ray"), outputs={"model": stage.file("model")}, tracking=tracked(cfg, STAGE))
    history = state["history"]
    final = history[-1]["test"]
    keys = ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1", f"worst_{c.worst_k}_acc", "per_class_acc")
    metrics = {
        "schedule": c.schedule, "variant": name,
        **{k: final[k] for k in keys},
        "val_acc": history[-1]["val"]["acc"], "val_acc_few": history[-1]["val"]["acc_few"],
        "test_splits": {split: {k: m.get(k) for k in ("acc", "acc_few", "macro_f1", "worst_domain_acc")}
                        for split, m in history[-1].get("tests", {}).items()},
        "trace": [h["selection"] for h in history],
        "adaptive_choices": {str(k): v for k, v in state["schedule"].get("chosen", {}).items()},
        "synthetic_images_seen": sum(h["synthetic"] for h in history),
        "resumed_at_epochs": state.get("resumes", []),
        "epochs": history,
    }
    few = metrics["acc_few"]
    print(f"[curriculum] {name}: test acc {metrics['acc']:.4f}, few {few if few is None else round(few, 4)}, "
          f"macro-F1 {metrics['macro_f1']:.4f} -> {stage.dir.path}")
    return metrics


def _batch(calls, cfg: RaysysConfig) -> list[dict]:
    return run_concurrently(calls, cfg.compare.concurrent, [call.label for call in calls])


def check_compare(cfg: RaysysConfig) -> list[str]:
    """Problems of the `compare` section, and of every variant's curriculum section."""
    cm = cfg.compare
    problems = []
    known = {f.name for f in fields(CurriculumConfig)} - {"name", "seed"}
    for name, overrides in cm.variants.items():
        if not FOLDER_NAME.match(name):
            problems.append(f"compare.variants: name '{name}' may hold only letters, digits, - and _")
        if not isinstance(overrides, dict):
            problems.append(f"compare.variants.{name} must be a mapping of curriculum fields, got {overrides!r}")
            continue
        for key in overrides:
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                problems.append(f"compare.variants.{name}: '{key}' is not a curriculum field"
                                + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    if cm.variants and not problems:
        for name in compare_variants(cfg):
            variant = variant_config(cfg, name, cm.seeds[0] if cm.seeds else 0)
            try:
                OmegaConf.structured(variant.curriculum)  # the fields' types and Literal choices
            except (TypeError, ValueError, OmegaConfBaseException) as exc:
                problems.append(f"compare.variants.{name}: {str(exc).splitlines()[0]}")
                continue
            problems += [f"compare.variants.{name}: {p}" for p in check_curriculum(variant) + _schedule_problems(variant)]
    if cm.baseline is not None and cm.baseline not in cm.variants:
        problems.append(f"compare.baseline '{cm.baseline}' is not one of compare.variants {list(cm.variants)}")
    if not cm.seeds or len(set(cm.seeds)) != len(cm.seeds):
        problems.append(f"compare.seeds must be a non-empty list of distinct seeds, got {cm.seeds}")
    if cm.concurrent < 1:
        problems.append("compare.concurrent must be >= 1")
    return problems


def _schedule_problems(cfg: RaysysConfig) -> list[str]:
    """A schedule that cannot be built over the λ levels its plans make stops here, before Ray Train."""
    if check_curriculum(cfg):
        return []
    planned = sorted({float(g) for p in cfg.synthesis.plans if p.name in plan_names(cfg) and p.kind == "discl"
                      for g in p.guidance_levels})
    try:
        schedule_for(cfg.curriculum, cfg.train.epochs, cfg.run.seed, planned)
    except ValueError as exc:
        return [f"curriculum.schedule {cfg.curriculum.schedule} ({variant_name(cfg)}): {exc}"]
    return []


def _check(cfg: RaysysConfig) -> list[str]:
    problems = check_classifier(cfg.classifier) + check_train(cfg.train) + check_curriculum(cfg) + check_compare(cfg)
    problems += check_tracking(cfg)
    return problems + (_schedule_problems(cfg) if not cfg.compare.variants else [])


def _needs(cfg: RaysysConfig) -> tuple:
    """A real-only run reads no synthetic image."""
    if cfg.curriculum.schedule == "real_only":
        return "prepare", "score"
    return "prepare", "score", "synthesize"


STAGE = Stage(
    name="curriculum", reads=("prepare", "score", "synthesize"), needs=_needs, run=_run,
    config=("classifier", "train", "curriculum", "run.seed"), check=_check,
    units=curriculum_configs, folder=lambda cfg: f"curriculum/{variant_name(cfg)}", batch=_batch,
    describe="the classifier trained with each schedule of the comparison x seed: curriculum/<variant>-seed<n>/",
)
