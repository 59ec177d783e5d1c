"""Evaluation statistics over seeds: mean and sample std, paired (seed by seed) differences against
a baseline with seeds won and a verdict, per test split too, headroom recovery against a reference,
and the results table as CSV. Plain Python on the metrics the curriculum runs wrote.
"""

from __future__ import annotations

import csv
import io
import math

METRICS = ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")
QUALITY = ("train_fid", "test_fid", "train_kid", "train_precision", "train_recall", "train_density", "train_coverage",
           "copies", "closer_than_source", "diversity")
"""The quality stage's overall figures of a plan that evaluate puts beside a variant's accuracy."""
TIE = 1e-9
"""Differences within this are ties, not wins or losses: two runs that get the same number of images right
can differ in the last bits of their float accuracies (0.9450000000000001 against 0.945), while one
image of a test split is at least 1e-6 of it."""


def won(diffs: list[float]) -> int:
    """Seeds on which the difference is a win: above TIE."""
    return sum(d > TIE for d in diffs)


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
        out[key] = {"mean_diff": mean, "std_diff": std, "seeds_won": won(diffs), "seeds": len(diffs)}
    beats = all(out[k]["mean_diff"] is not None and out[k]["mean_diff"] > TIE for k in ("acc", "acc_few"))
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
            out[split][key] = {"mean_diff": mean, "std_diff": std, "seeds_won": won(diffs),
                               "seeds": len(diffs)}
        f1 = out[split]["macro_f1"]["mean_diff"]
        out[split]["verdict"] = "beats" if f1 is not None and f1 > TIE else "does not beat"
    return out


def choice_changes(chosen: dict[str, float]) -> tuple[int, int]:
    """An adaptive run's choices (stage -> λ): (stage boundaries where λ changed, boundaries)."""
    levels = [chosen[k] for k in sorted(chosen, key=int)]
    return sum(a != b for a, b in zip(levels, levels[1:])), max(len(levels) - 1, 0)


def mean_std_of(m: dict) -> tuple:
    """(mean, std) of a {mean, std, ...} figure."""
    return m["mean"], m["std"]


def pct(m: dict) -> str:
    """A recovery figure as 'mean ± std % (k/n seeds >= 50%)'."""
    if m["mean"] is None:
        return "n/a"
    spread = f" ± {100 * m['std']:.0f}" if m["std"] is not None else ""
    return f"{100 * m['mean']:.0f}{spread}% ({m['seeds_at_half']}/{m['seeds']} seeds >= 50%)"


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
    buf = io.StringIO()
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
