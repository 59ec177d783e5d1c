"""The report page's sections and the run's summary, assembled from the metrics of the stages the
report shows: results and verdicts, headroom recovery, synthetic-set quality, the figures, the
curriculum trace, generation cost and stage wall times. page.py formats the cells and renders the
sections as HTML and Markdown.
"""

from __future__ import annotations

from raysys.core.config import DataConfig
from raysys.quality.groups import REAL
from raysys.report.page import (QUALITY_COLUMNS, headroom_blocks, pct_cell, quality_cell, round_cell, signed, trace,
                                verdicts)

GROUPS = ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1")
"""The accuracy figures of the results table and of the summary."""

STAGE_FIGURES = (
    ("caption", "captions.png", "captions.png",
     "Sample real images beside their captions (the caption stage's), which prompts use as {caption}."),
    ("score", "difficulty_hist.png", "real_difficulty_hist.png",
     "Measured difficulty of the real images (out-of-fold), by class group."),
    ("synthesize", "difficulty_hist.png", "synthetic_difficulty_hist.png",
     "Difficulty: real train vs synthetic, requested vs measured, per synthesis plan."),
    ("control", "requested_vs_measured.png", "requested_vs_measured.png",
     "Proof of control: mean measured difficulty per requested s (difficulty vs plain LoRA)."),
    ("control", "difficulty_control_hist.png", "control_hist.png",
     "Measured difficulty of the control grids against the real train set."),
    ("control", "control_grid.png", "class_x_s_grid.png",
     "Class x requested difficulty s (difficulty model, one seed)."),
    ("control", "hard_factors.png", "hard_factors.png",
     "Hard factors: difficulty tokens only (empty prompt), s rising left to right; one row per "
     "class (one seed), or one row per seed when the encoder has no class input."),
    ("control", "samples.png", "pretrain_samples.png",
     "Samples of the pretrained base generator, one row per class."),
)
"""The other stages' figures the page shows, in its order: (stage, its file, the file beside the page,
caption)."""
LAMBDA_GRID = ("class_x_lambda_grid.png", "Class x λ (DisCL plan): a hard real tail-class image (left), then its "
                                          "synthetic images by image guidance λ, from diverse (low λ) to specific "
                                          "(high λ; 1 would return the source). Blank: filtered out.")
DOMAIN_GRID = ("domain_x_lambda_grid.png", "Domain x λ (DisCL plan): one hard real image per camera / site as that "
                                           "camera saw it (left), then its synthetic images by image guidance λ. "
                                           "Blank: filtered out.")
QUALITY_CAPTIONS = {"quality_by_lambda.png": "FID, precision, recall and copies by image guidance λ (DisCL's spectrum: "
                                             "low λ diverse and prototypical, high λ close to the source).",
                    "quality_by_s.png": "FID, precision, recall and copies by requested difficulty s."}
"""Captions of the quality stage's figures; each plan's closest pairs get their own."""


def sections(ev: dict, data: DataConfig, quality: dict | None, figures: list[tuple[str, str]], syn: dict | None,
             ft: dict | None, pre: dict | None, seconds: dict[str, float | None]) -> list:
    """The page: (heading, blocks) in order, from evaluate's metrics `ev`, the quality, synthesize and
    control stages' (None: not complete; `pre`: control's when it measured the built-in base model),
    the figures beside the page (file, caption) and every stage's wall time."""
    return [
        (f"Results on the test split '{data.test_splits[0]}'", results_blocks(ev, data)),
        ("Headroom recovery", headroom_blocks(ev.get("headroom", {"unavailable": "not measured"}))),
        ("Synthetic-set quality", quality_blocks(ev, quality)),
        ("Difficulty and control", [("img", f, c) for f, c in figures]),
        ("Curriculum trace (seed of the first run)", [("table", ["variant", "selection per epoch",
                                                                  "adaptive choices"], trace_rows(ev))]),
        ("Generation cost", [("table", ["what", "value"], cost_rows(syn, ft, pre))]),
        ("Stage wall time (seconds, on the machine that ran it; curriculum: the wall time of its concurrent runs)",
         [("table", ["stage", "seconds"], stage_rows(seconds))]),
    ]


def results_blocks(ev: dict, data: DataConfig) -> list:
    """The verdicts, the results table of every variant against the baseline, how to read it, and the
    other test splits side by side."""
    base = ev["baseline"]
    header = ["variant", "schedule", "loss", "synthetic plans", "seeds", "overall %", "many %", "medium %",
              "few %", "macro-F1 %", f"Δ overall vs {base}", f"Δ few vs {base}", "seeds won (few)"]
    rows = [_result_row(name, v, ev["comparisons"].get(name)) for name, v in ev["variants"].items()]
    note = (f"Mean ± standard deviation over seeds {ev['variants'][base]['seeds']} of the curriculum runs; "
            "Δ is the mean paired (same seed) difference in percentage points. Groups: many > "
            f"{data.many_threshold}, few < {data.few_threshold} train images per class.")
    return [("p", p) for p in verdicts(ev)] + [("table", header, rows)] + [("p", note)] + split_blocks(ev)


def _result_row(name: str, v: dict, comp: dict | None) -> list[str]:
    return [name, v["schedule"], v["loss"], ", ".join(v["plans"]) or "–", str(len(v["seeds"])),
            *[pct_cell(v[k], v[f"{k}_std"]) for k in GROUPS],
            signed(comp["acc"]["mean_diff"]) if comp else "baseline",
            signed(comp["acc_few"]["mean_diff"]) if comp else "baseline",
            f"{comp['acc_few']['seeds_won']}/{comp['acc_few']['seeds']}" if comp else "–"]


def split_blocks(ev: dict) -> list:
    """Every test split the data gives, side by side (none when it gives one)."""
    test_splits = list(dict.fromkeys(s for v in ev["variants"].values() for s in v.get("test_splits", {})))
    if len(test_splits) <= 1:
        return []
    header = ["variant", *[f"{s} {k}" for s in test_splits
                           for k in ("overall %", "macro-F1 %", "worst domain %", f"Δ macro-F1 vs {ev['baseline']}")]]
    rows = [[name, *[c for s in test_splits for c in _split_cells(ev, name, v, s)]] for name, v in ev["variants"].items()]
    return [("p", f"Every test split the data gives, side by side (data.test_splits; the table above "
                  f"is {test_splits[0]}):"), ("table", header, rows)]


def _split_cells(ev: dict, name: str, v: dict, split: str) -> list[str]:
    m = v["test_splits"].get(split, {})
    comp = ev["comparisons"].get(name, {}).get("test_splits", {}).get(split)
    delta = (f"{signed(comp['macro_f1']['mean_diff'])} ({comp['macro_f1']['seeds_won']}/"
             f"{comp['macro_f1']['seeds']} seeds)") if comp else "baseline"
    return [*[pct_cell(m.get(k, {}).get("mean"), m.get(k, {}).get("std")) for k in ("acc", "macro_f1", "worst_domain_acc")],
            delta]


def quality_blocks(ev: dict, quality: dict | None) -> list:
    """Each variant's set quality beside its result, then the quality stage's tables (one per plan, the
    real test images first) and figures (copied beside the page); `quality`: its metrics."""
    if quality is None:
        return [("p", "Not measured: run `raysys quality CONFIG`.")]
    blocks: list = [("p", _quality_reading(quality))]
    beside = _quality_beside_results(ev)
    if beside:
        blocks += [("p", "Each variant that trains on synthetic images, its result beside its sets' quality (overall):"),
                   ("table", ["variant", "plan", "overall %", "few %", "few recovered %", "FID (train)", "FID (test)",
                              "precision", "recall", "copies", "diversity"], beside)]
    header = ["by", "group", *[label for _, label, _ in QUALITY_COLUMNS]]
    for name, plan in quality["plans"].items():
        rows = [[r["by"], r["group"] + ("" if r["reliable"] else " *"),
                 *[quality_cell(r.get(key), kind) for key, _, kind in QUALITY_COLUMNS]] for r in plan["rows"]]
        title = (f"The real {quality['test_split']} images against train (the real-versus-real level):" if name == REAL
                 else f"Plan '{name}':")
        blocks += [("p", title), ("table", header, rows)]
    for figure in quality["figures"]:
        caption = QUALITY_CAPTIONS.get(figure) or (
            f"The synthetic images of plan '{figure[len('closest_'):-4]}' nearest to a train image (top), each above "
            "that train image (bottom); the number is their distance over that train image's distance to its own "
            "nearest train neighbour.")
        blocks.append(("img", figure, caption))
    return blocks


def _quality_reading(m: dict) -> str:
    """How to read the quality tables, with the settings they were measured with."""
    return (f"Each set's kept images against the real images of the same classes, in the {m['extractor']} "
            f"extractor's feature space ({m['feature_dim']}-d): FID and KID (lower: closer), precision "
            f"(fidelity) and recall (coverage of the real distribution) with k = {m['k']} neighbours, "
            "density and coverage; copies: the share of images nearer to a train image than "
            f"{m['copy_threshold']} × that train image's distance to its own nearest train neighbour; closer than source gap: "
            "image-guided images nearer to their source than the source is to any other train image; "
            "diversity: within-class spread over the real images' (1: as varied). FID (test) is against "
            f"the held-out {m['test_split']} images. The 'real' table is the {m['test_split']} images "
            f"against train: the level real data reaches. * marks a figure on fewer than "
            f"{m['min_images']} images on either side (not reliable; KID is the one to read on small sets).")


def _quality_beside_results(ev: dict) -> list[list[str]]:
    recovery = ev.get("headroom", {}).get("recovery", {})
    rows = []
    for name, v in ev["variants"].items():
        for plan, figures in v.get("quality", {}).items():
            rec = recovery.get(name, {}).get("acc_few", {}).get("mean")
            rows.append([name, plan, pct_cell(v["acc"], v["acc_std"]), pct_cell(v["acc_few"], v["acc_few_std"]),
                         "–" if rec is None else f"{100 * rec:.0f}",
                         *[quality_cell(figures.get(key), kind) for key, kind in
                           (("train_fid", "f"), ("test_fid", "f"), ("train_precision", "r"), ("train_recall", "r"),
                            ("copies", "r"), ("diversity", "r"))]])
    return rows


def trace_rows(ev: dict) -> list[list[str]]:
    """Per variant its selection of every epoch, its first run's adaptive choices and, over every
    seed, at how many stage boundaries the choice changed."""
    rows = []
    for name, v in ev["variants"].items():
        chosen = v["adaptive_choices"][0] if v["adaptive_choices"] and v["adaptive_choices"][0] else None
        changes = v.get("adaptive_changes") or []
        changed = (f" (λ changed at {', '.join(f'{k}/{n}' for k, n in changes)} stage boundaries, per seed)"
                   if changes else "")
        rows.append([name, trace(v["trace"]),
                     ", ".join(f"stage {k}: λ={c}" for k, c in chosen.items()) + changed if chosen else "–"])
    return rows


def cost_rows(syn: dict | None, ft: dict | None, pre: dict | None) -> list[list[str]]:
    """What synthesis made and took, the proof of control, and the base generator's recognition."""
    rows = []
    if syn is not None:
        busy = sum(a.get("busy_s", 0.0) for a in syn.get("actors", {}).values())
        rows += [["synthesis: planned / written / kept / filtered",
                  f"{syn['planned']} / {syn['written']} / {syn['kept']} / {syn['filtered']}"],
                 ["synthesis: duplicates", str(syn["duplicates"])],
                 ["synthesis: images/s (this run)", str(syn["images_per_s"])],
                 ["synthesis: actor-seconds (device-seconds on a GPU pool)", f"{busy:.1f}"],
                 ["synthesis: generation wall seconds", str(syn["generation_seconds"])]]
    if ft is not None:
        rows += [["proof of control: Spearman(requested s, measured)", round_cell(ft.get("difficulty_spearman"))],
                 ["… within class", round_cell(ft.get("difficulty_spearman_within_class"))]]
    if pre is not None:
        rows.append(["base generator: recognised as the prompted class", f"{pre.get('recognition'):.3f}"])
    return rows


def total_seconds(seconds: dict[str, float | None]) -> float:
    return sum(s for s in seconds.values() if s)


def stage_rows(seconds: dict[str, float | None]) -> list[list[str]]:
    rows = [[k, "–" if s is None else f"{s:.1f}"] for k, s in seconds.items()]
    rows.append(["total", f"{total_seconds(seconds):.1f}"])
    return rows


def run_summary(ev: dict, syn: dict | None, ft: dict | None, quality: dict | None,
                seconds: dict[str, float | None]) -> dict:
    """summary.json's figures: stage seconds, results, comparisons, verdicts, headroom, synthesis counts,
    the proof of control and each plan's overall quality."""
    return {
        "stage_seconds": seconds, "total_seconds": round(total_seconds(seconds), 1), "baseline": ev["baseline"],
        "results": {name: {k: v[k] for k in [*GROUPS, *[f"{g}_std" for g in GROUPS], "seeds", "schedule", "loss",
                                             "plans", "quality"] if k in v} for name, v in ev["variants"].items()},
        "comparisons": ev["comparisons"], "verdicts": verdicts(ev), "headroom": ev.get("headroom"),
        "synthesis": {k: syn[k] for k in ("planned", "written", "kept", "filtered", "duplicates", "images_per_s")}
        if syn else None,
        "difficulty_spearman": ft.get("difficulty_spearman") if ft else None,
        "quality": {name: p["overall"] for name, p in quality["plans"].items()} if quality is not None else None,
    }
