"""Long-tail classification metrics: overall, many/medium/few, per-class, macro-F1."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, groups: dict[str, list[int]],
    domains: Optional[Sequence[Optional[str]]] = None,
) -> dict:
    """acc, acc_many/medium/few (mean of per-class accuracy in the group; None if the group has no
    image here), per_class_acc (None for a class without an image in this split), macro_f1 (over
    the classes present or predicted), worst_class_acc, and the number of images. With `domains`
    (each image's camera / site; None where it has none): domain_acc (accuracy per domain) and
    worst_domain_acc (the lowest of them), else None."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    per_class: list[float | None] = []
    f1 = []
    for c in range(num_classes):
        is_c = y_true == c
        pred_c = y_pred == c
        tp = float(np.sum(is_c & pred_c))
        support = float(np.sum(is_c))
        predicted = float(np.sum(pred_c))
        per_class.append(tp / support if support else None)  # a class this split has no image of
        if support or predicted:  # macro-F1 over the classes present or predicted (as sklearn's)
            f1.append(2 * tp / (support + predicted))
    supported = np.asarray([a for a in per_class if a is not None])
    per_class_arr = np.asarray([np.nan if a is None else a for a in per_class])
    out = {
        "acc": float(np.mean(y_true == y_pred)) if len(y_true) else None,
        "macro_f1": float(np.mean(f1)) if f1 else None,
        "worst_class_acc": float(supported.min()) if len(supported) else None,
        "per_class_acc": [None if a is None else round(a, 6) for a in per_class],
        "images": int(len(y_true)),
        "domain_acc": None,
        "worst_domain_acc": None,
    }
    if domains is not None and any(d is not None for d in domains):
        names = np.asarray(["" if d is None else str(d) for d in domains])
        per_domain = {d: float(np.mean(y_true[names == d] == y_pred[names == d])) for d in sorted(set(names)) if d}
        out["domain_acc"] = {d: round(a, 6) for d, a in per_domain.items()}
        out["worst_domain_acc"] = min(per_domain.values())
    for name in ("many", "medium", "few"):
        members = groups.get(name, [])
        vals = per_class_arr[members] if members else np.asarray([])
        vals = vals[~np.isnan(vals)]
        out[f"acc_{name}"] = float(vals.mean()) if len(vals) else None
    return out
