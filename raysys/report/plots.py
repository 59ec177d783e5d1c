"""Plots written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io as _io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from raysys.core import io  # noqa: E402


def difficulty_histogram(values_by_group: dict[str, np.ndarray], location: str, title: str) -> None:
    """Overlaid histograms of difficulty in [0, 1], one per class group, written as PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.linspace(0, 1, 21)
    for name, values in values_by_group.items():
        if len(values):
            ax.hist(values, bins=bins, alpha=0.5, label=f"{name} (n={len(values)}, mean={np.mean(values):.2f})")
    ax.set_xlabel("difficulty s = 1 - p(y|x)")
    ax.set_ylabel("images")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    io.write_bytes(location, buf.getvalue())
