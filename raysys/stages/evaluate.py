"""Stage `evaluate`: the comparison's results table, from the curriculum runs on the test splits.

Reads the final test metrics of every `compare.variants` x `compare.seeds` curriculum run (or of
the single `curriculum` run when no variants are configured) and writes <root>/evaluate/:
`metrics.json` with, per variant, the mean and standard deviation over seeds of overall,
many/medium/few accuracy and macro-F1 and the per-seed values; and, per variant against the
baseline variant, the mean paired difference in overall and few-class accuracy, the seeds it
won, and a plain verdict ("beats" only if the mean difference is > 0 on both); with several
test splits (data.test_splits, e.g. ID and OOD), accuracy and macro-F1 of each, side by side;
and `headroom`: each variant's headroom recovery against the `reference` run (real-only Balanced
Softmax on train + the generator's own training images; see `headroom`), or why it cannot be
computed; and, per variant that trains on synthetic images, `quality`: the overall figures of each of its
plans from the `quality` stage (FID, precision, recall, copies, ...), beside its accuracy and recovery.
Also `results.csv` (one row per variant, recovery and its plan's quality included) for other tools.
"""

from __future__ import annotations

import csv
import io as _io
import math

from raysys.core import io
from raysys.core.config import RaysysConfig
from raysys.core.comparison import (REFERENCE, compare_variants, curriculum_configs, generator_training_split,
                                    plan_names, variants)
from raysys.core.stage import Context, Stage, StageDir, run_stage, stage_named

METRICS = ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")
QUALITY = ("train_fid", "test_fid", "train_kid", "train_precision", "train_recall", "train_density", "train_coverage",
           "copies", "closer_than_source", "diversity")
"""The quality stage's overall figures of a plan that evaluate puts beside a variant's accuracy."""


def baseline_name(cfg: RaysysConfig) -> str:
    return cfg.compare.baseline or next(iter(variants(cfg)))


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for a single value) of the values that are not None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std


def compare(baseline: dict[str, list], other: dict[str, list]) -> dict:
    """Paired (seed by seed) differences other - baseline in overall and few-class accuracy."""
    out = {}
    for key in ("acc", "acc_few"):
        diffs = [o - b for o, b in zip(other[key], baseline[key]) if o is not None and b is not None]
        mean, std = mean_std(diffs)
        out[key] = {"mean_diff": mean, "std_diff": std, "seeds_won": sum(d > 0 for d in diffs), "seeds": len(diffs)}
    beats = all(out[k]["mean_diff"] is not None and out[k]["mean_diff"] > 0 for k in ("acc", "acc_few"))
    out["verdict"] = "beats" if beats else "does not beat"
    return out


def compare_splits(baseline: dict, other: dict) -> dict:
    """Per test split (ID and OOD side by side, when the data gives several): paired differences in
    macro-F1 (iWildCam's metric) and worst-domain accuracy, seeds won, and a verdict on macro-F1."""
    if len(baseline) < 2:
        return {}
    out = {}
    for split in baseline:
        out[split] = {}
        for key in ("macro_f1", "worst_domain_acc"):
            pairs = zip(other.get(split, {}).get(key, {}).get("per_seed", []), baseline[split][key]["per_seed"])
            diffs = [o - b for o, b in pairs if o is not None and b is not None]
            mean, std = mean_std(diffs)
            out[split][key] = {"mean_diff": mean, "std_diff": std, "seeds_won": sum(d > 0 for d in diffs),
                               "seeds": len(diffs)}
        f1 = out[split]["macro_f1"]["mean_diff"]
        out[split]["verdict"] = "beats" if f1 is not None and f1 > 0 else "does not beat"
    return out


def _run(stage: Context) -> dict:
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
    h = metrics["headroom"]
    if "unavailable" in h:
        print(f"[evaluate] headroom recovery: cannot be computed: {h['unavailable']}")
    else:
        print(f"[evaluate] headroom: {REFERENCE} - {h['best_real_only']} (best real-only on validation) = "
              f"overall {fmt(*_ms(h['headroom']['acc']))}, few {fmt(*_ms(h['headroom']['acc_few']))}")
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


def _ms(m: dict) -> tuple:
    return m["mean"], m["std"]


def pct(m: dict) -> str:
    """A recovery figure as 'mean ± std % (k/n seeds >= 50%)'."""
    if m["mean"] is None:
        return "n/a"
    spread = f" ± {100 * m['std']:.0f}" if m["std"] is not None else ""
    return f"{100 * m['mean']:.0f}{spread}% ({m['seeds_at_half']}/{m['seeds']} seeds >= 50%)"


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


def best_real_only(table: dict) -> str | None:
    """The real-only variant (cross-entropy or Balanced Softmax, train images only) with the higher mean
    validation accuracy; ties go to the one listed first."""
    candidates = [name for name, row in table.items()
                  if row["schedule"] == "real_only" and not row.get("extra_real_splits")
                  and row.get("val_acc") is not None]
    return max(candidates, key=lambda name: table[name]["val_acc"], default=None)


def headroom(table: dict, reference: str | None, why_not: str | None) -> dict:
    """Headroom recovery: per variant and seed, (variant - best real-only) / (reference - best
    real-only) for overall and few-class test accuracy, where the reference is real-only Balanced
    Softmax on train + the generator's own training images (what the generator could at most pass
    on) and best real-only is chosen on validation. A seed whose headroom is not positive has no
    figure. Returns {"unavailable": why} when it cannot be computed."""
    if reference is None:
        return {"unavailable": why_not or "no reference variant"}
    best = best_real_only(table)
    if best is None:
        return {"unavailable": "no real-only variant (schedule real_only) to measure against"}
    out = {"best_real_only": best, "reference": reference, "headroom": {}, "recovery": {}}
    for key in ("acc", "acc_few"):
        room = [r - b if r is not None and b is not None else None
                for r, b in zip(table[reference]["per_seed"][key], table[best]["per_seed"][key])]
        mean, std = mean_std(room)
        out["headroom"][key] = {"mean": mean, "std": std, "per_seed": room}
    for name, row in table.items():
        if name == reference:
            continue
        out["recovery"][name] = {}
        for key in ("acc", "acc_few"):
            values = [(v - b) / h if v is not None and b is not None and h is not None and h > 0 else None
                      for v, b, h in zip(row["per_seed"][key], table[best]["per_seed"][key],
                                         out["headroom"][key]["per_seed"])]
            mean, std = mean_std(values)
            out["recovery"][name][key] = {"mean": mean, "std": std, "per_seed": values,
                                          "seeds_at_half": sum(v >= 0.5 - 1e-9 for v in values if v is not None),  # float noise
                                          "seeds": sum(v is not None for v in values)}
    return out


def by_test_split(per_seed: list[dict]) -> dict:
    """split -> metric -> {mean, std, per_seed}: every test split the data gives (ID and OOD side by side)."""
    splits = list(dict.fromkeys(s for m in per_seed for s in m.get("test_splits", {})))
    out = {}
    for split in splits:
        out[split] = {}
        for k in ("acc", "acc_few", "macro_f1", "worst_domain_acc"):
            values = [m.get("test_splits", {}).get(split, {}).get(k) for m in per_seed]
            mean, std = mean_std(values)
            out[split][k] = {"mean": mean, "std": std, "per_seed": values}
    return out


def fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def results_csv(metrics: dict) -> str:
    buf = _io.StringIO()
    writer = csv.writer(buf)
    splits = list(dict.fromkeys(s for row in metrics["variants"].values() for s in row.get("test_splits", {})))
    split_cols = [(s, k) for s in splits for k in ("acc", "macro_f1", "worst_domain_acc")] if len(splits) > 1 else []
    recovery = metrics["headroom"].get("recovery", {})
    writer.writerow(["variant", "schedule", "loss", "plans", "seeds", *[c for k in METRICS for c in (k, f"{k}_std")],
                     *[c for s, k in split_cols for c in (f"{s}_{k}", f"{s}_{k}_std")],
                     *[c for k in ("acc", "acc_few") for c in (f"recovery_{k}", f"recovery_{k}_std")],
                     *[f"quality_{k}" for k in QUALITY]])
    for name, row in metrics["variants"].items():
        per_split = [row["test_splits"].get(s, {}).get(k, {}) for s, k in split_cols]
        rec = recovery.get(name, {})
        plan_figures = list(row.get("quality", {}).values())
        single = plan_figures[0] if len(plan_figures) == 1 else {}  # several plans: see metrics.json
        writer.writerow([name, row["schedule"], row["loss"], " ".join(row["plans"]), len(row["seeds"]),
                         *[row[c] for k in METRICS for c in (k, f"{k}_std")],
                         *[v for m in per_split for v in (m.get("mean"), m.get("std"))],
                         *[v for k in ("acc", "acc_few") for v in (rec.get(k, {}).get("mean"), rec.get(k, {}).get("std"))],
                         *[single.get(k) for k in QUALITY]])
    return buf.getvalue()


STAGE = Stage(
    name="evaluate", reads=("curriculum", "train_classifier", "quality"), run=_run, needs_ray=False,
    needs=lambda cfg: ("curriculum", "train_classifier") + (
        ("quality",) if any(c.curriculum.schedule != "real_only" for c in curriculum_configs(cfg)) else ()),
    config=("compare",), derived=baseline_name,
    describe="mean ± std over seeds per variant, paired comparisons and verdicts: results.csv",
)
