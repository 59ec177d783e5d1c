"""Stage `curriculum`: the classifier trained on real + synthetic images with a schedule.

`raysys curriculum CONFIG curriculum.schedule=NAME` trains one schedule (see
raysys/curriculum/) on the scored real train split and the kept images of `curriculum.plans`,
on Ray Train. It writes <root>/curriculum/<name>/ (`curriculum.name`, default the schedule):
`model/`, and `metrics.json` with the final test metrics under the names tools rely on (acc, acc_many, acc_medium, acc_few, macro_f1,
worst_<k>_acc, per_class_acc), the per-epoch history (selection, real and synthetic counts,
validation metrics, per-λ accuracy on the guidance-validation set, adaptive gains and choices),
and the schedule trace. Each schedule has its own folder, so several can be compared.
"""

from __future__ import annotations

import time
from dataclasses import replace

from raysys.core import io
from raysys.core.config import ConfigError, RaysysConfig, digest, variant_config
from raysys.core.stage import MissingInput, StageDir
from raysys.stages import prepare, score, synthesize

NAME = "curriculum"


def stage_dir(cfg: RaysysConfig) -> StageDir:
    c = cfg.curriculum
    upstream = score.stage_dir(cfg).digest if c.schedule == "real_only" else synthesize.stage_dir(cfg).digest
    return StageDir(cfg.run.root, f"{NAME}/{variant_name(cfg)}",
                    digest(upstream, cfg.classifier, cfg.train, cfg.curriculum, cfg.run.seed))


def variant_name(cfg: RaysysConfig) -> str:
    return cfg.curriculum.name or cfg.curriculum.schedule


def plan_names(cfg: RaysysConfig) -> list[str]:
    return cfg.curriculum.plans or [p.name for p in cfg.synthesis.plans]


def variants(cfg: RaysysConfig) -> dict[str, list[RaysysConfig]]:
    """Variant name -> the config of each of its curriculum runs (one per seed)."""
    if not cfg.compare.variants:
        return {variant_name(cfg): [cfg]}
    return {name: [variant_config(cfg, name, seed) for seed in cfg.compare.seeds] for name in cfg.compare.variants}


def curriculum_configs(cfg: RaysysConfig) -> list[RaysysConfig]:
    return [c for runs in variants(cfg).values() for c in runs]


def run_all(cfg: RaysysConfig) -> list[dict]:
    """Every curriculum run of the comparison (`compare.variants` x `compare.seeds`, or the one
    `curriculum` section), `compare.concurrent` at a time on Ray; complete runs are skipped."""
    cfg = replace(cfg, run=replace(cfg.run, root=io.resolve(cfg.run.root)))  # Ray tasks run elsewhere
    cfgs = curriculum_configs(cfg)
    todo = [c for c in cfgs if not stage_dir(c).is_complete()]
    seeds = len(cfg.compare.seeds) if cfg.compare.variants else 1
    print(f"[curriculum] {len(cfgs)} runs ({len(variants(cfg))} variants x {seeds} seeds): {len(cfgs) - len(todo)} "
          f"complete, {len(todo)} to train, {cfg.compare.concurrent} at a time", flush=True)
    for c in cfgs:
        if c not in todo:
            print(f"[curriculum] {variant_name(c)}: complete for this config, skipped ({stage_dir(c).path})")
    for c in todo:
        _check_ready(c)
    if todo:
        from raysys.ray.curriculum import run_curricula

        started = time.time()
        run_curricula(todo, cfg.compare.concurrent)
        io.write_json(wall_time_path(cfg), {"runs_trained": [variant_name(c) for c in todo],
                                            "concurrent": cfg.compare.concurrent,
                                            "wall_seconds": round(time.time() - started, 3)})
    return [stage_dir(c).metrics() for c in cfgs]


def wall_time_path(cfg: RaysysConfig) -> str:
    """<root>/curriculum/wall_time.json: the wall time of the last `run_all` that trained runs
    (runs overlap, so the sum of their own times overstates it)."""
    return io.join(io.resolve(cfg.run.root), NAME, "wall_time.json")


def _check_ready(cfg: RaysysConfig) -> None:
    """Raise before any training if the inputs of this curriculum run are missing or its schedule
    cannot be built."""
    c = cfg.curriculum
    if not score.stage_dir(cfg).is_complete():
        raise MissingInput(f"curriculum needs the scored manifest: run `raysys score CONFIG` first ({score.stage_dir(cfg).path})")
    if c.schedule != "real_only" and not synthesize.stage_dir(cfg).is_complete():
        raise MissingInput(f"curriculum schedule {c.schedule} needs synthetic images: run `raysys synthesize CONFIG` "
                           f"first ({synthesize.stage_dir(cfg).path})")
    from raysys.ray.curriculum import schedule_for

    planned_levels = sorted({float(g) for p in cfg.synthesis.plans if p.name in plan_names(cfg) and p.kind == "discl"
                             for g in p.guidance_levels})
    try:
        schedule_for(cfg, planned_levels)
    except ValueError as exc:
        raise ConfigError(f"curriculum.schedule {c.schedule} ({variant_name(cfg)}): {exc}") from None


def run(cfg: RaysysConfig) -> dict:
    stage = stage_dir(cfg)
    c = cfg.curriculum
    if stage.is_complete():
        print(f"[curriculum] {variant_name(cfg)}: complete for this config, skipped ({stage.path})")
        return stage.metrics()
    _check_ready(cfg)  # a schedule that cannot be built stops here, before Ray Train starts
    from raysys.ray.curriculum import CurriculumJob, fit_curriculum

    prep = prepare.stage_dir(cfg).metrics()
    stage.begin(cfg)
    job = CurriculumJob(
        cfg=cfg, manifest=score.manifest_path(cfg),
        plan_dirs=[synthesize.plan_dir(cfg, name) for name in plan_names(cfg)],
        num_classes=prep["num_classes"], groups=prep["groups"],
        storage=io.join(stage.path, "ray"), name=f"curriculum-{variant_name(cfg)}-{stage.digest}",
    )
    result = fit_curriculum(job, stage.file("model"))
    final = result.history[-1]["test"]
    keys = ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1", f"worst_{c.worst_k}_acc", "per_class_acc")
    chosen = {str(k): v for k, v in result.schedule_state.get("chosen", {}).items()}
    metrics = stage.finish({
        "schedule": c.schedule, "variant": variant_name(cfg),
        **{k: final[k] for k in keys},
        "val_acc": result.history[-1]["val"]["acc"], "val_acc_few": result.history[-1]["val"]["acc_few"],
        "trace": [h["selection"] for h in result.history],
        "adaptive_choices": chosen,
        "synthetic_images_seen": sum(h["synthetic"] for h in result.history),
        "resumed_at_epochs": result.resumed_at_epochs,
        "epochs": result.history,
    })
    few = metrics["acc_few"]
    print(f"[curriculum] {c.schedule}: test acc {metrics['acc']:.4f}, few {few if few is None else round(few, 4)}, "
          f"macro-F1 {metrics['macro_f1']:.4f} -> {stage.path}")
    return metrics
