"""Stage `report`: one page a person wants to look at, and <root>/summary.json for tools.

Writes <root>/report/index.html (static, opens from disk: every image is a PNG beside it) and
the same content as <root>/report/index.md:
- the results table of `evaluate` (every variant: overall, many/medium/few, macro-F1, mean ±
  std over seeds, and the paired difference to the baseline) with a plain verdict;
- headroom recovery: how much of the reference's gain (real-only Balanced Softmax on train + the
  generator's own training images) each variant recovers, or why it cannot be computed;
- synthetic-set quality (the `quality` stage): per plan a table of FID, KID, precision, recall,
  density, coverage, copies and diversity, as a whole and per λ, requested-s tenth, class group
  and class, beside the real test images' level; the figures against λ and s; the closest pairs;
- difficulty histograms (real vs synthetic; requested vs measured), the class x s control grid,
  the class x λ grid of the DisCL plan, the hard-factor visualisation;
- the curriculum trace (the selection of every epoch, the adaptive choices);
- generation cost (images, actor-seconds, images/s) and every stage's wall time.
<root>/summary.json holds the same figures (stage seconds, results, comparisons, verdicts).
"""

from __future__ import annotations

import time

import numpy as np

import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.comparison import curriculum_configs
from raysys.core.config import RaysysConfig
from raysys.core.schema import read_manifest
from raysys.core.stage import StageRun, Stage, StageDir, run_stage, stage_named, stage_seconds, upstream
from raysys.generation.plan_versions import plan_dir
from raysys.quality.groups import REAL
from raysys.report.page import (QUALITY_COLUMNS, headroom_blocks, pct_cell, quality_cell, round_cell, signed,
                                to_html, to_markdown, trace, verdicts)

GROUPS = ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def summary_path(cfg: RaysysConfig) -> str:
    return io.join(io.resolve(cfg.run.root), "summary.json")


def _stage_seconds(cfg: RaysysConfig) -> dict[str, float | None]:
    """Every stage before this one, in run order (curriculum: the wall time of its concurrent runs)."""
    return {s.name: stage_seconds(s, cfg) for s in upstream(STAGE, cfg)}


def guidance_grid(cfg: RaysysConfig, location: str, by: str = "label") -> bool:
    """Class x λ grid from the first DisCL plan: per few class (`by` label; per camera / site: `by`
    domain) its first source image, then that source at every λ (first seed). Filtered-out images
    are shown blank. False if no DisCL plan, or (by domain) if the sources have no domain."""
    from raysys.data.images import decode
    from raysys.generation.synthesis import read_plan
    from raysys.report.plots import image_grid

    plan = next((p for p in cfg.synthesis.plans if p.kind == "discl"), None)
    if plan is None:
        return False
    rows = read_plan(plan_dir(cfg, plan.name), kept_only=False).to_pylist()
    rows = [r for r in rows if r["source_id"] is not None]
    if not rows:
        return False
    levels = sorted({round(r["guidance"], 4) for r in rows})
    size, chans = cfg.data.image_size, cfg.data.channels
    real = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "domain"],
                         where=pc.field("sample_id").isin(sorted({r["source_id"] for r in rows})))
    domain_of = dict(zip(real["sample_id"].to_pylist(), real["domain"].to_pylist()))
    if by == "domain":
        rows = [dict(r, domain=domain_of.get(r["source_id"])) for r in rows]
        rows = [r for r in rows if r["domain"] is not None]
        if not rows:
            return False
    by_class: dict = {}
    for r in sorted(rows, key=lambda r: (r[by], r["source_id"], r["seed"])):
        entry = by_class.setdefault(r[by], {"source": r["source_id"], "cells": {}})
        if r["source_id"] != entry["source"]:
            continue
        lam = round(r["guidance"], 4)
        if lam not in entry["cells"] and r["image"] is not None and r["keep"]:
            entry["cells"][lam] = r["image"]
    wanted = sorted({e["source"] for e in by_class.values()})
    real = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "image"], where=pc.field("sample_id").isin(wanted))
    source_images = dict(zip(real["sample_id"].to_pylist(), real["image"].to_pylist()))
    blank = np.zeros((size, size, chans), np.uint8)

    def img(data):
        return decode(data, size, chans).transpose(1, 2, 0) if data is not None else blank

    labels = sorted(by_class)
    grid = np.stack([np.stack([img(source_images.get(by_class[c]["source"]))] + [img(by_class[c]["cells"].get(lam)) for lam in levels])
                     for c in labels])
    names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    image_grid(grid, location, row_labels=[names[c] for c in labels] if by == "label" else list(labels),
               col_labels=["source"] + [f"λ={lam:g}" for lam in levels],
               title=f"plan '{plan.name}': source, then λ" + (" (one hard image per domain)" if by == "domain" else ""))
    return True


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    ev = stage_named("evaluate").dir(cfg).metrics()
    syn = stage_named("synthesize").dir(cfg).metrics() if stage_named("synthesize").dir(cfg).is_complete() else None
    ft = stage_named("control").dir(cfg).metrics() if stage_named("control").dir(cfg).is_complete() else None
    pre = ft if run_layout.builtin_generator(cfg) and ft is not None and "recognition" in ft else None
    seconds = _stage_seconds(cfg)

    figures = []  # (file in the report folder, caption)
    copies = [(stage_named("caption").dir(cfg), "captions.png", "captions.png",
               "Sample real images beside their captions (the caption stage's), which prompts use as {caption}."),
              (stage_named("score").dir(cfg), "difficulty_hist.png", "real_difficulty_hist.png",
               "Measured difficulty of the real images (out-of-fold), by class group."),
              (stage_named("synthesize").dir(cfg), "difficulty_hist.png", "synthetic_difficulty_hist.png",
               "Difficulty: real train vs synthetic, requested vs measured, per synthesis plan."),
              (stage_named("control").dir(cfg), "requested_vs_measured.png", "requested_vs_measured.png",
               "Proof of control: mean measured difficulty per requested s (difficulty vs plain LoRA)."),
              (stage_named("control").dir(cfg), "difficulty_control_hist.png", "control_hist.png",
               "Measured difficulty of the control grids against the real train set."),
              (stage_named("control").dir(cfg), "control_grid.png", "class_x_s_grid.png",
               "Class x requested difficulty s (difficulty model, one seed)."),
              (stage_named("control").dir(cfg), "hard_factors.png", "hard_factors.png",
               "Hard factors: difficulty tokens only (empty prompt), s rising left to right; one row per "
               "class (one seed), or one row per seed when the encoder has no class input."),
              (stage_named("control").dir(cfg), "samples.png", "pretrain_samples.png",
               "Samples of the pretrained base generator, one row per class.")]
    if not run_layout.builtin_generator(cfg):  # a samples.png left from a built-in base is not this run's
        copies = [c for c in copies if c[1] != "samples.png"]
    if not run_layout.captioned(cfg):  # nor captions.png from a run that captioned
        copies = [c for c in copies if c[1] != "captions.png"]
    for source, name, target, caption in copies:
        if source.is_complete() and io.exists(source.file(name)):
            io.write_bytes(stage.file(target), io.read_bytes(source.file(name)))
            figures.append((target, caption))
    if syn is not None and guidance_grid(cfg, stage.file("class_x_lambda_grid.png")):
        at = 6 if figures and figures[0][0] == "captions.png" else 5  # after the class x s grid
        figures.insert(at, ("class_x_lambda_grid.png", "Class x λ (DisCL plan): a hard real tail-class image (left), "
                                                       "then its synthetic images by image guidance λ, from diverse (low "
                                                       "λ) to specific (high λ; 1 would return the source). Blank: "
                                                       "filtered out."))
        if guidance_grid(cfg, stage.file("domain_x_lambda_grid.png"), by="domain"):
            figures.insert(at + 1, ("domain_x_lambda_grid.png", "Domain x λ (DisCL plan): one hard real image per "
                                                                "camera / site as that camera saw it (left), then its "
                                                                "synthetic images by image guidance λ. Blank: filtered out."))

    base = ev["baseline"]
    rows = []
    for name, v in ev["variants"].items():
        comp = ev["comparisons"].get(name)
        rows.append([name, v["schedule"], v["loss"], ", ".join(v["plans"]) or "–", str(len(v["seeds"])),
                     *[pct_cell(v[k], v[f"{k}_std"]) for k in GROUPS],
                     signed(comp["acc"]["mean_diff"]) if comp else "baseline",
                     signed(comp["acc_few"]["mean_diff"]) if comp else "baseline",
                     f"{comp['acc_few']['seeds_won']}/{comp['acc_few']['seeds']}" if comp else "–"])
    header = ["variant", "schedule", "loss", "synthetic plans", "seeds", "overall %", "many %", "medium %",
              "few %", "macro-F1 %", f"Δ overall vs {base}", f"Δ few vs {base}", "seeds won (few)"]
    sentences = verdicts(ev)

    trace_rows = []
    for name, v in ev["variants"].items():
        chosen = v["adaptive_choices"][0] if v["adaptive_choices"] and v["adaptive_choices"][0] else None
        trace_rows.append([name, trace(v["trace"]),
                           ", ".join(f"stage {k}: λ={c}" for k, c in chosen.items()) if chosen else "–"])

    cost_rows = []
    if syn is not None:
        busy = sum(a.get("busy_s", 0.0) for a in syn.get("actors", {}).values())
        cost_rows += [["synthesis: planned / written / kept / filtered",
                       f"{syn['planned']} / {syn['written']} / {syn['kept']} / {syn['filtered']}"],
                      ["synthesis: duplicates", str(syn["duplicates"])],
                      ["synthesis: images/s (this run)", str(syn["images_per_s"])],
                      ["synthesis: actor-seconds (device-seconds on a GPU pool)", f"{busy:.1f}"],
                      ["synthesis: generation wall seconds", str(syn["generation_seconds"])]]
    if ft is not None:
        cost_rows += [["proof of control: Spearman(requested s, measured)", round_cell(ft.get("difficulty_spearman"))],
                      ["… within class", round_cell(ft.get("difficulty_spearman_within_class"))]]
    if pre is not None:
        cost_rows.append(["base generator: recognised as the prompted class", f"{pre.get('recognition'):.3f}"])
    stage_rows = [[k, "–" if s is None else f"{s:.1f}"] for k, s in seconds.items()]
    total = sum(s for s in seconds.values() if s)
    stage_rows.append(["total", f"{total:.1f}"])

    test_splits = list(dict.fromkeys(s for v in ev["variants"].values() for s in v.get("test_splits", {})))
    split_blocks = []
    if len(test_splits) > 1:
        split_header = ["variant", *[f"{s} {k}" for s in test_splits
                                     for k in ("overall %", "macro-F1 %", "worst domain %", f"Δ macro-F1 vs {base}")]]

        def split_cells(name: str, v: dict, split: str) -> list[str]:
            m = v["test_splits"].get(split, {})
            comp = ev["comparisons"].get(name, {}).get("test_splits", {}).get(split)
            delta = (f"{signed(comp['macro_f1']['mean_diff'])} ({comp['macro_f1']['seeds_won']}/"
                     f"{comp['macro_f1']['seeds']} seeds)") if comp else "baseline"
            return [*[pct_cell(m.get(k, {}).get("mean"), m.get(k, {}).get("std"))
                      for k in ("acc", "macro_f1", "worst_domain_acc")], delta]

        split_rows = [[name, *[c for s in test_splits for c in split_cells(name, v, s)]]
                      for name, v in ev["variants"].items()]
        split_blocks = [("p", f"Every test split the data gives, side by side (data.test_splits; the table above "
                              f"is {test_splits[0]}):"), ("table", split_header, split_rows)]
    headline = cfg.data.test_splits[0]
    sections = [
        (f"Results on the test split '{headline}'", [("p", p) for p in sentences] + [("table", header, rows)] + [
            ("p", f"Mean ± standard deviation over seeds {ev['variants'][base]['seeds']} of the curriculum runs; "
                  "Δ is the mean paired (same seed) difference in percentage points. Groups: many > "
                  f"{cfg.data.many_threshold}, few < {cfg.data.few_threshold} train images per class.")]
         + split_blocks),
        ("Headroom recovery", headroom_blocks(ev.get("headroom", {"unavailable": "not measured"}))),
        ("Synthetic-set quality", _quality_blocks(cfg, stage, ev)),
        ("Difficulty and control", [("img", f, c) for f, c in figures]),
        ("Curriculum trace (seed of the first run)", [("table", ["variant", "selection per epoch",
                                                                  "adaptive choices"], trace_rows)]),
        ("Generation cost", [("table", ["what", "value"], cost_rows)]),
        ("Stage wall time (seconds, on the machine that ran it; curriculum: the wall time of its concurrent runs)", [("table", ["stage", "seconds"], stage_rows)]),
    ]
    title = f"raysys report: {cfg.run.root}"
    io.write_text(stage.file("index.html"), to_html(title, sections))
    io.write_text(stage.file("index.md"), to_markdown(title, sections))
    summary = {
        "run_root": io.resolve(cfg.run.root), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stage_seconds": seconds, "total_seconds": round(total, 1), "baseline": base,
        "results": {name: {k: v[k] for k in [*GROUPS, *[f"{g}_std" for g in GROUPS], "seeds", "schedule", "loss",
                                             "plans", "quality"] if k in v} for name, v in ev["variants"].items()},
        "comparisons": ev["comparisons"], "verdicts": sentences, "headroom": ev.get("headroom"),
        "synthesis": {k: syn[k] for k in ("planned", "written", "kept", "filtered", "duplicates", "images_per_s")}
        if syn else None,
        "difficulty_spearman": ft.get("difficulty_spearman") if ft else None,
        "quality": ({name: p["overall"] for name, p in stage_named("quality").dir(cfg).metrics()["plans"].items()}
                    if stage_named("quality").dir(cfg).is_complete() else None),
        "report": stage.file("index.html"),
    }
    io.write_json(summary_path(cfg), summary)
    metrics = {"figures": [f for f, _ in figures], "summary": summary_path(cfg)}
    print(f"[report] {stage.file('index.html')} (and index.md); summary -> {summary_path(cfg)}")
    for line in sentences:
        print(f"[report] {line}")
    return metrics


def _quality_blocks(cfg: RaysysConfig, stage: StageRun, ev: dict) -> list:
    """Each variant's set quality beside its result, then the quality stage's tables (one per plan, the
    real test images first) and figures."""
    q = stage_named("quality").dir(cfg)
    if not q.is_complete():
        return [("p", "Not measured: run `raysys quality CONFIG`.")]
    m = q.metrics()
    recovery = ev.get("headroom", {}).get("recovery", {})
    beside = []
    for name, v in ev["variants"].items():
        for plan, figures in v.get("quality", {}).items():
            rec = recovery.get(name, {}).get("acc_few", {}).get("mean")
            beside.append([name, plan, pct_cell(v["acc"], v["acc_std"]), pct_cell(v["acc_few"], v["acc_few_std"]),
                           "–" if rec is None else f"{100 * rec:.0f}",
                           *[quality_cell(figures.get(key), kind) for key, kind in
                             (("train_fid", "f"), ("test_fid", "f"), ("train_precision", "r"), ("train_recall", "r"),
                              ("copies", "r"), ("diversity", "r"))]])
    blocks: list = [("p", f"Each set's kept images against the real images of the same classes, in the {m['extractor']} "
                          f"extractor's feature space ({m['feature_dim']}-d): FID and KID (lower: closer), precision "
                          f"(fidelity) and recall (coverage of the real distribution) with k = {m['k']} neighbours, "
                          "density and coverage; copies: the share of images nearer to a train image than "
                          f"{m['copy_threshold']} × that train image's distance to its own nearest train neighbour; closer than source gap: "
                          "image-guided images nearer to their source than the source is to any other train image; "
                          "diversity: within-class spread over the real images' (1: as varied). FID (test) is against "
                          f"the held-out {m['test_split']} images. The 'real' table is the {m['test_split']} images "
                          f"against train: the level real data reaches. * marks a figure on fewer than "
                          f"{m['min_images']} images on either side (not reliable; KID is the one to read on small sets).")]
    if beside:
        blocks += [("p", "Each variant that trains on synthetic images, its result beside its sets' quality (overall):"),
                   ("table", ["variant", "plan", "overall %", "few %", "few recovered %", "FID (train)", "FID (test)",
                              "precision", "recall", "copies", "diversity"], beside)]
    header = ["by", "group", *[label for _, label, _ in QUALITY_COLUMNS]]
    for name, plan in m["plans"].items():
        rows = [[r["by"], r["group"] + ("" if r["reliable"] else " *"),
                 *[quality_cell(r.get(key), kind) for key, _, kind in QUALITY_COLUMNS]] for r in plan["rows"]]
        title = (f"The real {m['test_split']} images against train (the real-versus-real level):" if name == REAL
                 else f"Plan '{name}':")
        blocks += [("p", title), ("table", header, rows)]
    captions = {"quality_by_lambda.png": "FID, precision, recall and copies by image guidance λ (DisCL's spectrum: "
                                         "low λ diverse and prototypical, high λ close to the source).",
                "quality_by_s.png": "FID, precision, recall and copies by requested difficulty s."}
    for figure in m["figures"]:
        io.write_bytes(stage.file(figure), io.read_bytes(q.file(figure)))
        caption = captions.get(figure) or (f"The synthetic images of plan '{figure[len('closest_'):-4]}' nearest to a "
                                           "train image (top), each above that train image (bottom); the number is "
                                           "their distance over that train image's distance to its own nearest train neighbour.")
        blocks.append(("img", figure, caption))
    return blocks


def _needs(cfg: RaysysConfig) -> tuple:
    """The figures of synthesis and control, unless every run of the comparison is real-only."""
    real_only = all(c.curriculum.schedule == "real_only" for c in curriculum_configs(cfg))
    return ("evaluate", "score", "prepare") + (() if real_only else ("synthesize", "control", "quality"))


STAGE = Stage(
    name="report", reads=("evaluate", "synthesize", "control", "quality", "score", "prepare"),
    run=_run, needs_ray=False, config=("data",),
    needs=_needs,
    describe="index.html / index.md with the results, grids, histograms and costs; <root>/summary.json",
)
