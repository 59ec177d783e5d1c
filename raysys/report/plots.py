"""Plots written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io as _io
from typing import Optional

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


def image_grid(
    images: np.ndarray,
    location: str,
    *,
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    col_title: str = "",
) -> None:
    """A grid of uint8 images (rows, cols, H, W, C) with row and column labels, written as PNG."""
    rows, cols = images.shape[:2]
    cell = 0.6
    height = 0.6 + rows * cell
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 + cols * cell, height), dpi=100, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            img = images[r, c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
    # Axes end 0.25 in below the figure's top (room for the column titles); the title sits above.
    fig.subplots_adjust(top=1 - 0.25 / height, wspace=0.05, hspace=0.05)
    fig.suptitle(f"{title}\n{col_title}" if col_title else title, fontsize=9, va="bottom", y=1.0)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    io.write_bytes(location, buf.getvalue())


def requested_vs_measured(levels: list[float], measured_by_model: dict[str, list[float]], location: str,
                          title: str) -> None:
    """Mean measured difficulty per requested s, one line per model, written as PNG."""
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for name, values in measured_by_model.items():
        ax.plot(levels, values, marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="measured = requested")
    ax.set_xlabel("requested s")
    ax.set_ylabel("mean measured 1 - p(y|x)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    io.write_bytes(location, buf.getvalue())


def quality_curves(curves: dict[str, tuple[list[float], dict[str, list]]], location: str, xlabel: str,
                   title: str, level: Optional[dict[str, float]] = None) -> None:
    """Set-quality figures against one axis (λ or requested s): one panel per figure (FID, precision,
    recall, copies), one line per set and reference (`curves`: line label -> (x, figure -> values;
    None where not measured)); unreliable points (a `reliable` list of False) hollow; `level` (figure ->
    value), the real test images' own figures, as a dashed line."""
    panels = [("fid", "FID (lower: closer)"), ("precision", "precision"), ("recall", "recall"),
              ("copies", "copies (share)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), dpi=100)
    for ax, (key, label) in zip(axes, panels):
        for name, (xs, figures) in curves.items():
            ys = figures.get(key)
            if ys is None:
                continue
            reliable = figures.get("reliable", [True] * len(xs))
            pts = [(x, y, r) for x, y, r in zip(xs, ys, reliable) if y is not None]
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", label=name)
            for x, y, r in pts:
                ax.plot([x], [y], "o", color=line.get_color(), markerfacecolor=line.get_color() if r else "white")
        if level and level.get(key) is not None:
            ax.axhline(level[key], color="grey", linestyle="--", linewidth=1, label="real test vs train (all classes)")
        ax.set_xlabel(xlabel)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title + " (hollow: fewer images than quality.min_images)", fontsize=9)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    io.write_bytes(location, buf.getvalue())


def captioned_images(images: list[np.ndarray], captions: list[str], labels: list[str], location: str,
                     title: str) -> None:
    """Each uint8 image (H, W, C) with its class and caption beside it, one row each, written as PNG."""
    import textwrap

    rows = max(1, len(images))
    fig, axes = plt.subplots(rows, 2, figsize=(7, 0.35 + 0.9 * rows), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": [1, 6]})
    for r in range(rows):
        picture, text = axes[r][0], axes[r][1]
        picture.axis("off")
        text.axis("off")
        if r >= len(images):
            continue
        image = images[r]
        picture.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        wrapped = textwrap.fill(captions[r] or "(no caption)", 70)
        text.text(0.0, 0.5, f"{labels[r]}: {wrapped}", va="center", ha="left", fontsize=8, transform=text.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    io.write_bytes(location, buf.getvalue())
