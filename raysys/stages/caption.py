"""Stage `caption`: a text caption for every real image of captions.splits (the difficulty paper's
and Real-Fake's annotation), which prompts then use as `{caption}`.

Optional: it runs when `captions.model` names a captioner (BLIP or BLIP-2, a hub id or a local
folder). The captioner is checked in the driver first (its config and processor, not its weights),
so a bad one is refused with one line before any actor starts. Then an actor pool of
captions.min_actors..max_actors (raysys/ray/captioning.py) captions prepare's manifest part by
part and writes <root>/caption/manifest/part-*.parquet: the same parts, names and rows, with the
`caption` column filled. A part is written whole or not at all, so a killed run, run again,
captions only the parts it had not written. The score stage reads this manifest, so the scored
manifest the fine-tune and synthesis read carries the captions. Also writes captions.png: sample
images beside their captions.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.loading import ConfigError
from raysys.core.schema import claim_folder, list_parts, read_manifest
from raysys.core.stage import StageRun, Stage, run_stage
from raysys.data.captions import written_summary
from raysys.data.images import decode
from raysys.models.captioner import captioner_problem
from raysys.generation.memory_captioner import captioning_batch_size, check_captions
from raysys.ray.captioning import caption_manifest
from raysys.report.plots import captioned_images

SAMPLES = 8
"""Images shown beside their captions in captions.png (and listed in metrics.json)."""


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _samples(stage: StageRun, captioned: pa.Table, class_names: list[str]) -> list[dict]:
    """The first SAMPLES captioned rows by sample id, drawn into captions.png; their ids and captions."""
    order = np.argsort(np.asarray(captioned["sample_id"].to_pylist(), dtype=object), kind="stable")[:SAMPLES]
    ids = [captioned["sample_id"][int(i)].as_py() for i in order]
    rows = read_manifest(run_layout.captioned_manifest(stage.cfg), columns=["sample_id", "label", "image", "caption"],
                         where=pc.field("sample_id").isin(ids))
    by_id = {sid: r for r, sid in enumerate(rows["sample_id"].to_pylist())}
    picked = [by_id[sid] for sid in ids]
    cfg = stage.cfg
    images = [decode(rows["image"][r].as_py(), cfg.data.image_size, cfg.data.channels).transpose(1, 2, 0)
              for r in picked]  # (H, W, C)
    captions = [rows["caption"][r].as_py() for r in picked]
    labels = [class_names[rows["label"][r].as_py()] for r in picked]
    captioned_images(images, captions, labels, stage.file("captions.png"),
                     f"Captions by {cfg.captions.model.rstrip('/').rsplit('/', 1)[-1]}")
    return [{"sample_id": sid, "class_name": label, "caption": text} for sid, label, text in zip(ids, labels, captions)]


def _run(stage: StageRun) -> dict:
    cfg, c = stage.cfg, stage.cfg.captions
    problem = captioner_problem(c.model)
    if problem is not None:  # before any actor starts
        raise ConfigError(f"captions.model: {problem}")
    source = run_layout.real_manifest(cfg)
    rows = read_manifest(source, columns=["split"])  # no images
    present = sorted(set(rows["split"].to_pylist()))
    unknown = [s for s in c.splits if s not in present]
    if unknown:
        raise ConfigError(f"captions.splits names {unknown}, which the prepared manifest does not have "
                          f"(its splits: {present})")
    wanted = int(pc.sum(pc.is_in(rows["split"], pa.array(c.splits))).as_py() or 0)
    try:
        batch_size = captioning_batch_size(c)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    output = run_layout.captioned_manifest(cfg)
    resumed = claim_folder(output, stage.digest)
    parts = list_parts(source)
    done = {p.rstrip("/").rsplit("/", 1)[-1] for p in list_parts(output)} if resumed else set()
    todo = [p for p in parts if p.rstrip("/").rsplit("/", 1)[-1] not in done]
    if done:
        print(f"[caption] resuming: {len(done)} of {len(parts)} parts already captioned", flush=True)
    summaries = [written_summary(io.join(output, name), c.splits) for name in sorted(done)]
    earlier = sum(len(s) for s in summaries)
    t0 = time.time()
    if todo:
        summaries.append(caption_manifest(todo, output, c, batch_size, total=wanted - earlier))
    seconds = time.time() - t0
    captioned = pa.concat_tables(summaries) if summaries else pa.table({"sample_id": pa.array([], pa.string())})
    if len(captioned) != wanted or len(set(captioned["sample_id"].to_pylist())) != wanted:
        raise RuntimeError(f"{wanted} rows to caption, {len(captioned)} captioned "
                           f"({len(set(captioned['sample_id'].to_pylist()))} distinct)")

    texts = captioned["caption"].to_pylist()
    words = [len(t.split()) for t in texts if t]
    empty = sum(1 for t in texts if not t)
    class_names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    metrics = {
        "model": c.model,
        "splits": list(c.splits),
        "rows_captioned": wanted,
        "captioned_this_run": wanted - earlier,
        "parts": len(parts),
        "parts_resumed": len(done),
        "captioning_seconds": round(seconds, 3),
        "images_per_s": round((wanted - earlier) / seconds, 2) if seconds > 0 and wanted > earlier else None,
        "batch_size": batch_size,
        "empty_captions": empty,
        "mean_words": round(float(np.mean(words)), 2) if words else 0.0,
        "distinct_captions": len(set(texts)),
        "samples": _samples(stage, captioned, class_names) if wanted else [],
        "actors": {"min": c.min_actors, "max": c.max_actors, "num_gpus": c.num_gpus},
    }
    print(f"[caption] {wanted} images captioned ({metrics['distinct_captions']} distinct captions, "
          f"{metrics['mean_words']} words on average, {empty} empty) -> {output}", flush=True)
    return metrics


STAGE = Stage(
    name="caption", reads=("prepare",), run=_run, config=("captions",),
    applies=run_layout.captioned, check=lambda cfg: check_captions(cfg.captions) if run_layout.captioned(cfg) else [],
    describe="a caption for every real image of captions.splits (BLIP / BLIP-2), which prompts use as {caption}: manifest/",
)
