"""Mass synthesis on Ray Data: plan rows -> generation actor pool -> [CLIP filter] -> re-score
and write, streamed; the driver only sees one small summary row per image.

The generation pool autoscales between `min_actors` and `max_actors` (on a cluster with an
autoscaler, GPU nodes are added for it); Ray Data restarts a dead actor and retries its batch
(`max_restarts=-1`, `max_task_retries=-1` are its defaults for actor pools).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import ray.data

from raysys.core.config import SamplingConfig, SynthesisConfig
from raysys.ray.session import on_assigned_cpus
from raysys.generation.synthesis import (
    ClipFilter,
    GenerateBatch,
    GeneratorSpec,
    RescoreAndWrite,
)


@dataclass
class SynthesisRun:
    """What one pass over the remaining plan rows did."""

    summary: pa.Table
    """One row per image handled in this pass: sample_id, plan, keep, difficulty, part,
    actor_id, busy_s, generated_at."""
    wall_seconds: float
    actors: dict = field(default_factory=dict)
    """actor_id -> {busy_s, images, wall_s, utilisation}."""


def _blocks(table: pa.Table, rows_per_block: int, pool: int) -> list[pa.Table]:
    """Input blocks: at most rows_per_block rows, and at least 4 blocks per actor when there are
    enough rows, so that every actor of the pool gets work."""
    size = max(1, min(rows_per_block, -(-len(table) // (4 * pool))))
    # take, not slice: a slice pickles with its parent's whole buffers (every block would carry the plan)
    return [table.take(pa.array(range(i, min(i + size, len(table))))) for i in range(0, len(table), size)]


def run_synthesis(
    plan: pa.Table,
    generators: dict[str, GeneratorSpec],
    sampling: SamplingConfig,
    cfg: SynthesisConfig,
    classifier_dir: str,
    output: str | dict[str, str],
    progress: bool = True,
) -> SynthesisRun:
    """Generate, filter, re-score and write every row of `plan` (PLAN_SCHEMA) under `output`
    (`<output>/<plan>/`, or the folder that `output` maps each plan name to)."""
    from tqdm import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar below, in images, with images/s and ETA
    use_gpu = cfg.num_gpus > 0
    # micro-batches of the actor batch size: a compiled UNet sees one shape (short batches padded)
    speed = dataclasses.replace(cfg.speed, micro_batch=cfg.speed.micro_batch or cfg.batch_size)
    ds = ray.data.from_arrow(_blocks(plan, cfg.rows_per_block, cfg.max_actors))
    ds = ds.map_batches(
        on_assigned_cpus(GenerateBatch),
        fn_constructor_kwargs={"generators": generators, "sampling": sampling, "image_format": cfg.image_format,
                               "use_gpu": use_gpu, "speed": speed},
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors,
                                           initial_size=cfg.initial_actors or cfg.min_actors),
        num_gpus=cfg.num_gpus, num_cpus=cfg.cpus_per_actor, batch_size=cfg.batch_size, batch_format="pyarrow",
    )
    side = {"compute": ray.data.ActorPoolStrategy(size=cfg.filter_actors), "num_cpus": cfg.filter_cpus,
            "num_gpus": cfg.filter_num_gpus, "batch_size": cfg.batch_size, "batch_format": "pyarrow"}
    f = cfg.filter
    if f.clip_model:
        ds = ds.map_batches(on_assigned_cpus(ClipFilter), fn_constructor_kwargs={
            "model": f.clip_model, "text_threshold": f.clip_text_threshold,
            "image_threshold": f.clip_image_threshold, "use_gpu": cfg.filter_num_gpus > 0}, **side)
    ds = ds.map_batches(on_assigned_cpus(RescoreAndWrite), fn_constructor_kwargs={
        "classifier_dir": classifier_dir, "output": output, "classifier_min_p": 0.0 if f.clip_model else f.classifier_min_p,
        "use_gpu": cfg.filter_num_gpus > 0}, **side)

    t0 = time.time()
    parts = []
    bar = tqdm(total=len(plan), unit="img", desc="[synthesize]", disable=not progress, mininterval=2.0,
               dynamic_ncols=True)
    kept = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.append(batch)
        kept += int(np.sum(batch["keep"].to_numpy(zero_copy_only=False)))
        bar.update(len(batch))
        bar.set_postfix(kept=kept, refresh=False)
    bar.close()
    wall = time.time() - t0
    summary = pa.concat_tables(parts) if parts else pa.table({
        "sample_id": pa.array([], pa.string()), "plan": pa.array([], pa.string()), "keep": pa.array([], pa.bool_()),
        "difficulty": pa.array([], pa.float32()), "part": pa.array([], pa.string()),
        "actor_id": pa.array([], pa.string()), "busy_s": pa.array([], pa.float64()),
        "generated_at": pa.array([], pa.float64())})
    return SynthesisRun(summary=summary, wall_seconds=wall, actors=actor_usage(summary, wall))


def actor_usage(summary: pa.Table, wall: float) -> dict:
    """Per generation actor: images, busy seconds, and busy time over the pass's wall time."""
    out: dict = {}
    if len(summary) == 0:
        return out
    ids = np.asarray(summary["actor_id"].to_pylist(), dtype=object)
    busy = summary["busy_s"].to_numpy()
    for actor in sorted(set(ids)):
        rows = ids == actor
        out[actor] = {"images": int(rows.sum()), "busy_s": round(float(busy[rows].sum()), 3),
                      "wall_s": round(wall, 3), "utilisation": round(float(busy[rows].sum()) / max(wall, 1e-9), 3)}
    return out

