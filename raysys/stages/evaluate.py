"""Stage `evaluate`: the comparison's results table, from the curriculum runs on the test splits.

Reads the final test metrics of every `compare.variants` x `compare.seeds` curriculum run (or of
the single `curriculum` run when no variants are configured) and writes <root>/evaluate/:
`metrics.json` with, per variant, the mean and standard deviation over seeds of overall,
many/medium/few accuracy and macro-F1 and the per-seed values; and, per variant against the
baseline variant, the mean paired difference in overall and few-class accuracy, the seeds it
won (a seed with the same number of images right is a tie, not a win: report.statistics.TIE), and
a plain verdict ("beats" only if the mean difference is > 0 on both); with several
test splits (data.test_splits, e.g. ID and OOD), accuracy and macro-F1 of each, side by side;
and `headroom`: each variant's headroom recovery against the `reference` run (real-only Balanced
Softmax on train + the generator's own training images; see `headroom`), or why it cannot be
computed; per adaptive variant, `adaptive_changes`: per seed, at how many stage boundaries its
chosen λ changed; and, per variant that trains on synthetic images, `quality`: the overall figures of each of its
plans from the `quality` stage (FID, precision, recall, copies, ...), beside its accuracy and recovery.
Also `results.csv` (one row per variant, recovery and its plan's quality included) for other tools.
"""

from __future__ import annotations

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.comparison import (REFERENCE, compare_variants, curriculum_configs, generator_training_split,
                                    plan_names, variants)
from raysys.core.stage import StageRun, Stage, StageDir, run_stage, stage_named
from raysys.report.statistics import (METRICS, QUALITY, by_test_split, choice_changes, compare, compare_splits, fmt,
                                      headroom, mean_std, mean_std_of, pct, results_csv)

def baseline_name(cfg: RaysysConfig) -> str:
    return cfg.compare.baseline or next(iter(variants(cfg)))


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    runs = variants(cfg)
    table = {}
    for name, cfgs in runs.items():
        per_seed = [stage_named("curriculum").unit_dir(c).metrics() for c in cfgs]
        c0 = cfgs[0].curriculum
        row = {"schedule": c0.schedule, "loss": c0.loss, "plans": plan_names(cfgs[0]) if c0.schedule != "real_only" else [],
               "seeds": [c.curriculum.seed if c.curriculum.seed is not None else c.run.seed for c in cfgs],
               "per_seed": {k: [m.get(k) for m in per_seed] for k in (*METRICS, "val_acc", "val_acc_few")},
               "extra_real_splits": list(c0.extra_real_splits),
               "trace": per_seed[0]["trace"], "adaptive_choices": [m.get("adaptive_choices", {}) for m in per_seed],
               "synthetic_images_seen": per_seed[0].get("synthetic_images_seen", 0),
               "seconds": sum(m.get("seconds", 0.0) for m in per_seed)}
        for k in METRICS:
            row[k], row[f"{k}_std"] = mean_std(row["per_seed"][k])
        row["test_splits"] = by_test_split(per_seed)
        row["quality"] = plan_quality(cfg, row["plans"])
        row["adaptive_changes"] = [list(choice_changes(c)) for c in row["adaptive_choices"] if c]
        table[name] = row
    base = baseline_name(cfg)
    comparisons = {name: compare(table[base]["per_seed"], row["per_seed"]) for name, row in table.items() if name != base}
    for name, comparison in comparisons.items():
        comparison["test_splits"] = compare_splits(table[base]["test_splits"], table[name]["test_splits"])
    for row in table.values():
        row["val_acc"], row["val_acc_std"] = mean_std(row["per_seed"]["val_acc"])
    reference = stage_named("train_classifier").dir(cfg)
    metrics = {
        "baseline": base, "variants": table, "comparisons": comparisons,
        "baseline_classifier": {k: reference.metrics().get(k) for k in METRICS} if reference.is_complete() else None,
        "headroom": headroom(table, REFERENCE if REFERENCE in table else None, why_no_reference(cfg)),
    }
    io.write_text(stage.file("results.csv"), results_csv(metrics))
    for name, row in table.items():
        verdict = "" if name == base else f"  {comparisons[name]['verdict']} {base}"
        if name != base and comparisons[name]["test_splits"]:
            verdict += "".join(f"; {split} macro-F1 {c['verdict']} ({c['macro_f1']['seeds_won']}/"
                               f"{c['macro_f1']['seeds']} seeds)" for split, c in comparisons[name]["test_splits"].items())
        splits = "".join(f"  {split} macro-F1 {fmt(m['macro_f1']['mean'], m['macro_f1']['std'])}"
                         for split, m in row["test_splits"].items()) if len(row["test_splits"]) > 1 else ""
        print(f"[evaluate] {name:24s} acc {fmt(row['acc'], row['acc_std'])}  few {fmt(row['acc_few'], row['acc_few_std'])}"
              f"{splits}{verdict}")
    for name, row in table.items():
        if row["adaptive_changes"]:
            print(f"[evaluate] {name}: its λ changed at " + ", ".join(f"{k}/{n}" for k, n in row["adaptive_changes"])
                  + " stage boundaries (per seed); chosen: "
                  + "; ".join(" ".join(f"{c[k]:g}" for k in sorted(c, key=int)) for c in row["adaptive_choices"]))
    h = metrics["headroom"]
    if "unavailable" in h:
        print(f"[evaluate] headroom recovery: cannot be computed: {h['unavailable']}")
    else:
        print(f"[evaluate] headroom: {REFERENCE} - {h['best_real_only']} (best real-only on validation) = "
              f"overall {fmt(*mean_std_of(h['headroom']['acc']))}, few {fmt(*mean_std_of(h['headroom']['acc_few']))}")
        for name, rec in h["recovery"].items():
            print(f"[evaluate] {name:24s} headroom recovered: overall {pct(rec['acc'])}, few {pct(rec['acc_few'])}")
    return metrics


def plan_quality(cfg: RaysysConfig, plans: list[str]) -> dict[str, dict]:
    """Plan -> its overall quality figures (QUALITY), for the plans the quality stage measured."""
    quality = stage_named("quality").dir(cfg)
    if not plans or not quality.is_complete():
        return {}
    measured = quality.metrics()["plans"]
    return {p: {k: measured[p]["overall"].get(k) for k in QUALITY} for p in plans if p in measured}


def why_no_reference(cfg: RaysysConfig) -> str | None:
    """Why the comparison has no headroom reference (None when it has one)."""
    if REFERENCE in compare_variants(cfg):
        return None
    if not cfg.compare.variants:
        return "a single curriculum run, no comparison (compare.variants is empty)"
    if generator_training_split(cfg) is None:
        return (f"the generator's training images are not known (generator.base: {cfg.generator.base}, a downloaded "
                "model), so there is no reference classifier trained on them")
    return "compare.reference is off"


STAGE = Stage(
    name="evaluate", reads=("curriculum", "train_classifier", "quality"), run=_run, needs_ray=False,
    needs=lambda cfg: ("curriculum", "train_classifier") + (
        ("quality",) if any(c.curriculum.schedule != "real_only" for c in curriculum_configs(cfg)) else ()),
    config=("compare",), derived=baseline_name,
    describe="mean ± std over seeds per variant, paired comparisons and verdicts: results.csv",
)
