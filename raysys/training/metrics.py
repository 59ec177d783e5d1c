"""Long-tail classification metrics: overall, many/medium/few, per-class, macro-F1."""

from __future__ import annotations

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, groups: dict[str, list[int]]
) -> dict:
    """acc, acc_many/medium/few (mean of per-class accuracy in the group; None if the group is
    empty), per_class_acc, macro_f1, worst_class_acc."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    per_class = []
    f1 = []
    for c in range(num_classes):
        is_c = y_true == c
        pred_c = y_pred == c
        tp = float(np.sum(is_c & pred_c))
        support = float(np.sum(is_c))
        predicted = float(np.sum(pred_c))
        per_class.append(tp / support if support else float("nan"))
        denom = support + predicted
        f1.append(2 * tp / denom if denom else 0.0)
    per_class_arr = np.asarray(per_class)
    out = {
        "acc": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "macro_f1": float(np.mean(f1)),
        "worst_class_acc": float(np.nanmin(per_class_arr)),
        "per_class_acc": [round(a, 6) for a in per_class],
    }
    for name in ("many", "medium", "few"):
        members = groups.get(name, [])
        vals = per_class_arr[members] if members else np.asarray([])
        vals = vals[~np.isnan(vals)]
        out[f"acc_{name}"] = float(vals.mean()) if len(vals) else None
    return out
