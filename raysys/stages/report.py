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

from raysys.core import io, run_layout
from raysys.core.comparison import curriculum_configs
from raysys.core.config import RaysysConfig
from raysys.core.stage import StageRun, Stage, StageDir, run_stage, stage_named, stage_seconds, upstream
from raysys.report.assemble import DOMAIN_GRID, LAMBDA_GRID, STAGE_FIGURES, run_summary, sections
from raysys.report.image_grids import guidance_grid
from raysys.report.page import to_html, to_markdown


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def summary_path(cfg: RaysysConfig) -> str:
    return io.join(io.resolve(cfg.run.root), "summary.json")


def _stage_seconds(cfg: RaysysConfig) -> dict[str, float | None]:
    """Every stage before this one, in run order (curriculum: the wall time of its concurrent runs)."""
    return {s.name: stage_seconds(s, cfg) for s in upstream(STAGE, cfg)}


def _metrics_if_complete(cfg: RaysysConfig, name: str) -> dict | None:
    out = stage_named(name).dir(cfg)
    return out.metrics() if out.is_complete() else None


def _figures(cfg: RaysysConfig, stage: StageRun, syn: dict | None) -> list[tuple[str, str]]:
    """The figures of the page, (file, caption) in order: the other stages' figures this run made,
    copied beside the page, and the class x λ grids of the DisCL plan drawn here, after the class x s grid."""
    figures = []
    for name, file, target, caption in STAGE_FIGURES:
        if file == "samples.png" and not run_layout.builtin_generator(cfg):
            continue  # a samples.png left from a built-in base is not this run's
        if file == "captions.png" and not run_layout.captioned(cfg):
            continue  # nor captions.png from a run that captioned
        source = stage_named(name).dir(cfg)
        if source.is_complete() and io.exists(source.file(file)):
            io.write_bytes(stage.file(target), io.read_bytes(source.file(file)))
            figures.append((target, caption))
    if syn is not None and guidance_grid(cfg, stage.file(LAMBDA_GRID[0])):
        grids = [LAMBDA_GRID] + ([DOMAIN_GRID] if guidance_grid(cfg, stage.file(DOMAIN_GRID[0]), by="domain") else [])
        at = 6 if figures and figures[0][0] == "captions.png" else 5  # after the class x s grid
        figures[at:at] = grids
    return figures


def _run(stage: StageRun) -> dict:
    cfg = stage.cfg
    ev = stage_named("evaluate").dir(cfg).metrics()
    syn, ft, quality = (_metrics_if_complete(cfg, name) for name in ("synthesize", "control", "quality"))
    pre = ft if run_layout.builtin_generator(cfg) and ft is not None and "recognition" in ft else None
    seconds = _stage_seconds(cfg)
    figures = _figures(cfg, stage, syn)
    for figure in quality["figures"] if quality is not None else []:
        io.write_bytes(stage.file(figure), io.read_bytes(stage_named("quality").dir(cfg).file(figure)))

    page = sections(ev, cfg.data, quality, figures, syn, ft, pre, seconds)
    title = f"raysys report: {cfg.run.root}"
    io.write_text(stage.file("index.html"), to_html(title, page))
    io.write_text(stage.file("index.md"), to_markdown(title, page))
    summary = {"run_root": io.resolve(cfg.run.root), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
               **run_summary(ev, syn, ft, quality, seconds), "report": stage.file("index.html")}
    io.write_json(summary_path(cfg), summary)
    print(f"[report] {stage.file('index.html')} (and index.md); summary -> {summary_path(cfg)}")
    for line in summary["verdicts"]:
        print(f"[report] {line}")
    return {"figures": [f for f, _ in figures], "summary": summary_path(cfg)}


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
