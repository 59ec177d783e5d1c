"""Grids of a run's images, read from its manifests and drawn with plots.image_grid: a DisCL plan's
sources at every image guidance λ (one row per class or per domain), and the synthetic images
nearest to a train image, each above that train image.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from raysys.core import run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.data.images import decode
from raysys.generation.plan_versions import plan_dir
from raysys.generation.synthesis import read_plan
from raysys.report.plots import image_grid


def guidance_grid(cfg: RaysysConfig, location: str, by: str = "label") -> bool:
    """Class x λ grid from the first DisCL plan: per few class (`by` label; per camera / site: `by`
    domain) its first source image, then that source at every λ (first seed). Filtered-out images
    are shown blank. False if no DisCL plan, or (by domain) if the sources have no domain."""
    plan = next((p for p in cfg.synthesis.plans if p.kind == "discl"), None)
    if plan is None:
        return False
    rows = [r for r in read_plan(plan_dir(cfg, plan.name), kept_only=False).to_pylist() if r["source_id"] is not None]
    levels = sorted({round(r["guidance"], 4) for r in rows})
    if by == "domain":
        rows = _with_source_domains(cfg, rows)
    if not rows:
        return False
    by_group = _one_source_per_group(rows, by)
    groups = sorted(by_group)
    names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    image_grid(_source_rows(cfg, [by_group[g] for g in groups], levels), location,
               row_labels=[names[g] for g in groups] if by == "label" else list(groups),
               col_labels=["source"] + [f"λ={lam:g}" for lam in levels],
               title=f"plan '{plan.name}': source, then λ" + (" (one hard image per domain)" if by == "domain" else ""))
    return True


def _with_source_domains(cfg: RaysysConfig, rows: list[dict]) -> list[dict]:
    """The rows whose source image has a domain, each with that domain."""
    real = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "domain"],
                         where=pc.field("sample_id").isin(sorted({r["source_id"] for r in rows})))
    domain_of = dict(zip(real["sample_id"].to_pylist(), real["domain"].to_pylist()))
    rows = [dict(r, domain=domain_of.get(r["source_id"])) for r in rows]
    return [r for r in rows if r["domain"] is not None]


def _one_source_per_group(rows: list[dict], by: str) -> dict:
    """group -> {"source": its first source image's id, "cells": λ -> the first seed's kept image}."""
    by_group: dict = {}
    for r in sorted(rows, key=lambda r: (r[by], r["source_id"], r["seed"])):
        entry = by_group.setdefault(r[by], {"source": r["source_id"], "cells": {}})
        if r["source_id"] != entry["source"]:
            continue
        lam = round(r["guidance"], 4)
        if lam not in entry["cells"] and r["image"] is not None and r["keep"]:
            entry["cells"][lam] = r["image"]
    return by_group


def _source_rows(cfg: RaysysConfig, entries: list[dict], levels: list[float]) -> np.ndarray:
    """uint8 (rows, 1 + levels, H, W, C): each entry's source image, then its image at every λ (blank: none)."""
    size, chans = cfg.data.image_size, cfg.data.channels
    wanted = sorted({e["source"] for e in entries})
    real = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "image"], where=pc.field("sample_id").isin(wanted))
    source_images = dict(zip(real["sample_id"].to_pylist(), real["image"].to_pylist()))
    blank = np.zeros((size, size, chans), np.uint8)

    def img(data):
        return decode(data, size, chans).transpose(1, 2, 0) if data is not None else blank

    return np.stack([np.stack([img(source_images.get(e["source"]))] + [img(e["cells"].get(lam)) for lam in levels])
                     for e in entries])


def closest_pairs_grid(cfg: RaysysConfig, pairs: list, part_of: dict[str, str], location: str, name: str) -> None:
    """Each of the closest synthetic images (`pairs`: synthetic id, train id, distance ratio) above its
    nearest train image: reads just those images, from the parts that hold them (`part_of`: sample
    id -> part)."""
    wanted = {sid for pair in pairs for sid in pair[:2]}
    images: dict[str, bytes] = {}
    for part in sorted({part_of[sid] for sid in wanted}):
        table = read_manifest(part, columns=["sample_id", "image"], where=pc.field("sample_id").isin(sorted(wanted)))
        images.update(zip(table["sample_id"].to_pylist(), table["image"].to_pylist()))
    size, channels = cfg.data.image_size, cfg.data.channels
    grid = np.stack([np.stack([decode(images[f], size, channels).transpose(1, 2, 0),
                               decode(images[r], size, channels).transpose(1, 2, 0)]) for f, r, _ in pairs])
    image_grid(grid.transpose(1, 0, 2, 3, 4), location, row_labels=["synthetic", "nearest train"],
               col_labels=[f"{ratio:.2f}" for _, _, ratio in pairs],
               title=f"plan '{name}': the synthetic images nearest to a train image",
               col_title="distance / that train image's distance to its nearest train neighbour")
