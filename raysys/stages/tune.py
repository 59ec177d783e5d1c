"""Stage `tune`: a Ray Tune sweep over curriculum schedules, λ sets, epochs, undersampling, the
difficulty distribution, the synthetic ratio and the loss, on the synthetic images already made.

`raysys tune CONFIG` samples `tune.space` (curriculum.* fields) `tune.num_samples` times; each
trial trains one curriculum run on Ray Train and reports every epoch; ASHA stops the weak trials
at its rungs (epochs grace_period x reduction_factor^k). It writes <root>/tune/<tune.name>/:

- `results.csv` and `results.md`: one row per trial, best first: its parameters, its status
  (completed, stopped by ASHA, error), the epochs it trained, its last validation metrics, and
  the test metrics of the trials that completed;
- `best.yaml`: the whole config with the best completed trial's curriculum fields, named
  `tuned-<tune.name>` and without a comparison: `raysys curriculum best.yaml` trains it as is, on
  the same run root, so nothing upstream reruns;
- `metrics.json`: the best trial, its parameters and metric, counts by status, and the trials run
  at once; `ray/`: the Tune experiment (an interrupted sweep resumes from it) and every trial's
  Ray Train run.

Searching the difficulty distribution never regenerates: trials draw from one pool generated over
the whole range of s (a plan with `difficulty: uniform`), each row with probability
pdf(s) / pool density(s) under the trial's `curriculum.difficulty_distribution` and
`difficulty_params` (see raysys.training.synthetic_pool.difficulty_weights). Search μ with
`curriculum.difficulty_params.0`.
"""

from __future__ import annotations

import csv
import io as pyio
from dataclasses import replace

from raysys.core import io, run_layout
from raysys.core.comparison import plan_names
from raysys.core.config import RaysysConfig
from raysys.core.loading import to_yaml
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.schedules.search import apply_tune_params, check_tune
from raysys.generation.plan_versions import plan_dir
from raysys.models.classifiers import check_classifier
from raysys.ray.tracking import check_tracking, tracked

METRIC_COLUMNS = ("val_acc", "val_acc_few", "val_macro_f1", "test_acc", "test_acc_few", "test_macro_f1")


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def rank_trials(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Completed trials first, then stopped ones, then errors; best `metric` first within each."""
    order = {"completed": 0, "stopped": 1, "error": 2}
    sign = -1 if mode == "max" else 1

    def key(row: dict):
        value = row["metrics"].get(metric)
        return order[row["status"]], value is None, sign * (value if value is not None else 0.0)

    return sorted(rows, key=key)


def _short(key: str) -> str:
    return key.removeprefix("curriculum.")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)


def results_tables(rows: list[dict], space_keys: list[str]) -> tuple[str, str]:
    """(CSV, Markdown) of the ranked trials."""
    header = ["trial_id", "status", "epochs", *(_short(k) for k in space_keys), *METRIC_COLUMNS, "error"]
    lines = [[r["trial_id"], r["status"], r["epochs"], *(r["params"][k] for k in space_keys),
              *(r["metrics"].get(m) for m in METRIC_COLUMNS), r["error"]] for r in rows]
    buf = pyio.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in line] for line in lines])
    md = ["| " + " | ".join(header[:-1]) + " |", "|" + "---|" * (len(header) - 1)]
    md += ["| " + " | ".join(_cell(v) for v in line[:-1]) + " |" for line in lines]
    return buf.getvalue(), "\n".join(md) + "\n"


def best_config(cfg: RaysysConfig, best: dict) -> RaysysConfig:
    """The config `raysys curriculum` runs as is: the best trial's fields, no comparison."""
    tuned = apply_tune_params(cfg, best["params"], name=f"tuned-{cfg.tune.name}")
    return replace(tuned, compare=replace(tuned.compare, variants={}, baseline=None))


def _run(stage: StageRun) -> dict:
    from raysys.ray.tune import SweepJob, run_sweep

    cfg, t = stage.cfg, stage.cfg.tune
    prep = run_layout.stage_metrics(cfg, "prepare")
    cfg = replace(cfg, run=replace(cfg.run, root=io.resolve(cfg.run.root)))
    job = SweepJob(cfg=cfg, manifest=run_layout.scored_manifest(cfg),
                   plan_dirs={n: plan_dir(cfg, n) for n in plan_names(cfg)},
                   num_classes=prep["num_classes"], groups=prep["groups"], storage=stage.file("ray"),
                   name=f"sweep-{stage.digest}", tracking=tracked(cfg, STAGE))
    rows, concurrent = run_sweep(job)
    ranked = rank_trials(rows, t.metric, t.mode)
    keys = list(t.space)
    csv_text, md_text = results_tables(ranked, keys)
    io.write_text(stage.file("results.csv"), csv_text)
    io.write_text(stage.file("results.md"), md_text)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "error")}
    best = ranked[0] if ranked and ranked[0]["status"] == "completed" else None
    if best is not None:
        io.write_text(stage.file("best.yaml"), to_yaml(best_config(cfg, best)))
    metrics = {
        "trials": len(rows), **counts, "max_concurrent_trials": concurrent, "metric": t.metric, "mode": t.mode,
        "best": None if best is None else {"trial_id": best["trial_id"], "params": best["params"],
                                           t.metric: best["metrics"].get(t.metric), **{
                                               m: best["metrics"].get(m) for m in METRIC_COLUMNS}},
        "best_config": stage.file("best.yaml") if best else None,
    }
    print(f"[tune] {len(rows)} trials: {counts['completed']} completed, {counts['stopped']} stopped by ASHA, "
          f"{counts['error']} errors -> {stage.file('results.md')}")
    if best is None:
        print("[tune] no trial completed: no best.yaml (see the errors in results.csv)")
    else:
        params = ", ".join(f"{_short(k)}={_cell(v)}" for k, v in best["params"].items())
        print(f"[tune] best: {best['trial_id']} ({params}) {t.metric} {_cell(best['metrics'].get(t.metric))}; "
              f"train it with `raysys curriculum {stage.file('best.yaml')}`")
    return metrics


def _ready(cfg: RaysysConfig) -> list[str]:
    if cfg.tune.space:
        return []
    return ["tune.space is empty: give it curriculum.* fields to search, e.g. "
            "'tune.space={curriculum.schedule: {choice: [all_levels, diverse_to_specific]}}'"]


STAGE = Stage(
    name="tune", reads=("prepare", "train_classifier", "score", "synthesize"), run=_run,
    config=("classifier", "train", "curriculum", "run.seed", "tune"),  # a curriculum run's config, and the search
    check=lambda cfg: check_tune(cfg) + check_classifier(cfg.classifier) + check_tracking(cfg), ready=_ready,
    in_run=False, folder=lambda cfg: f"tune/{cfg.tune.name}",
    describe="a Ray Tune sweep (ASHA) over curriculum.* fields on the synthetic images: results.md, best.yaml",
)
