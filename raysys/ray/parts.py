"""Ray Data over the parts of a manifest: one input row per part, one small summary table back.

A stage that reads or writes a sharded manifest hands `map_parts` a table with one row per part
(its name and, for prepare, its row group in the selection file) and a function or callable class that
does one part: reads it, works, writes the output part atomically, and returns a summary of
small per-row values. Parts are independent and their names fixed, so a retried task rewrites
the same file with the same rows (exactly once by construction), and a killed run, run again,
skips the parts it finished. The driver holds the part table and the summaries, never images.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pyarrow as pa
import ray
import ray.data

from raysys.ray.session import on_assigned_cpus


def map_parts(parts: pa.Table, fn: Callable | type, *, desc: str, total: int, num_cpus: float = 1.0,
              num_gpus: float = 0.0, actors: Optional[tuple[int, int]] = None,
              constructor_kwargs: Optional[dict[str, Any]] = None, progress: bool = True) -> pa.Table:
    """Run `fn` on every row of `parts` (batches of one row, as a pyarrow table) on Ray Data tasks,
    or on an autoscaling actor pool of (min, max) `actors` when `fn` is a class; returns the
    concatenated summaries. `total` is the number of images, for the progress bar."""
    from tqdm import tqdm

    if len(parts) == 0:
        return pa.table({})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar below, in images, with images/s
    ctx.execution_options.preserve_order = False
    # take, not slice: a slice pickles with its whole parent table's buffers, so every block would
    # carry every part's listing (the driver's memory then grows with the square of the parts).
    blocks = [parts.take([i]) for i in range(len(parts))]
    ds = ray.data.from_arrow(blocks)
    options: dict[str, Any] = {"batch_size": 1, "batch_format": "pyarrow", "num_cpus": num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    if isinstance(fn, type):
        low, high = actors or (1, 1)
        ds = ds.map_batches(on_assigned_cpus(fn), fn_constructor_kwargs=constructor_kwargs or {},
                            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high), **options)
    else:
        ds = ds.map_batches(fn, **options)
    out = []
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, mininterval=2.0, dynamic_ncols=True)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        out.append(batch)
        bar.update(len(batch))
    bar.close()
    return pa.concat_tables(out) if out else pa.table({})
