"""Stage `prepare`: real images -> splits -> <root>/prepare/manifest/part-*.parquet.

1. **List** the source (`raysys.data.sources`): one small row per image (where it is, class,
   the dataset's own split and domain), no image bytes.
2. **Split** by labels and split names alone (`raysys.data.splits`): the long-tailed
   resampling or the dataset's own splits. Only the selected rows go on.
3. **Read, check, store, write** on Ray Data: the selected rows go to `selection.parquet` (one
   row group per part, deleted once every part is written), so the driver keeps no per-image
   state while the tasks run. Each task reads its part's rows from it and those images, decodes
   each in full, stores its bytes (or a resized copy, or only its `uri`) and writes the part
   atomically. An unreadable image is left out, counted and listed (`metrics.json`,
   `bad_files.json`), never fatal. A killed prepare, run again, keeps the parts it finished and
   writes the rest: the same manifest as an uninterrupted run.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io, run_layout
from raysys.core.config import RaysysConfig
from raysys.core.schema import claim_folder, list_parts, part_file
from raysys.core.stage import StageRun, Stage, StageDir, run_stage
from raysys.data.ingest import finished_part_summary, selection_rows, write_part_of_selection, write_selection
from raysys.data.longtail import class_groups
from raysys.data.selection import select_rows, split_counts
from raysys.data.splits import check_data
from raysys.ray.parts import map_parts

BAD_FILES_IN_METRICS = 100
"""Unreadable files listed in metrics.json (all of them are in bad_files.json)."""


def stage_dir(cfg: RaysysConfig) -> StageDir:
    return STAGE.dir(cfg)


def run(cfg: RaysysConfig) -> dict:
    return run_stage(STAGE, cfg)[0]


def _write_parts(stage: StageRun, selection: str, directory: str, n_parts: int, n_selected: int,
                 listed: int) -> pa.Table:
    """Write the manifest's parts into `directory` from the `selection` file (skipping the parts a
    killed run finished), then delete the file; returns the summary row of every image read."""
    d = stage.cfg.data
    resumed = claim_folder(directory, stage.digest)
    names = [part_file(i) for i in range(n_parts)]
    done = set(io.filesystem(p)[1].rsplit("/", 1)[-1] for p in list_parts(directory)) if resumed else set()
    todo = [i for i, name in enumerate(names) if name not in done]
    summaries = [finished_part_summary(selection_rows(selection, i), directory, name)
                 for i, name in enumerate(names) if name in done]
    if done:
        print(f"[prepare] resuming: {len(done)} of {n_parts} parts already written")
    print(f"[prepare] {listed} images listed in {d.source}, {n_selected} selected "
          f"({d.splits} splits): {len(todo)} part(s) of <= {d.rows_per_part} rows to write", flush=True)
    total = n_selected - sum(len(s) for s in summaries)
    written = map_parts(pa.table({"part": pa.array([names[i] for i in todo], pa.string()),
                                  "index": pa.array(todo, pa.int32())}),
                        functools.partial(write_part_of_selection, selection=selection, directory=directory,
                                          store=d.store, store_size=d.store_size), desc="[prepare]", total=total)
    if len(written):
        summaries.append(written)
    fs, path = io.filesystem(selection)
    fs.delete_file(path)  # every part is written: the manifest holds the rows now
    return pa.concat_tables(summaries)


def _run(stage: StageRun) -> dict:
    cfg, d = stage.cfg, stage.cfg.data
    selected, source = select_rows(d, cfg.run.seed)
    num_classes, class_names = len(source.class_names), source.class_names

    # The selected rows go to one file that each task reads its part from: the driver keeps no
    # per-image state while the parts are written (and none goes through the object store).
    selection = stage.file("selection.parquet")
    n_selected = len(selected)
    n_parts = write_selection(selected, selection, d.rows_per_part)
    del selected
    directory = run_layout.real_manifest(cfg)
    summary = _write_parts(stage, selection, directory, n_parts, n_selected, source.listed)

    ok = summary["ok"].to_numpy(zero_copy_only=False)
    bad_rows = summary.filter(pc.invert(summary["ok"]))
    bad = [{"path": p, "error": e} for p, e in zip(bad_rows["path"].to_pylist(), bad_rows["error"].to_pylist())]
    io.write_json(stage.file("bad_files.json"), bad)
    counts = split_counts(d, summary.filter(summary["ok"]), class_names)
    train_counts = counts.get("train", [0] * num_classes)
    groups = class_groups(train_counts, d.many_threshold, d.few_threshold)
    metrics = {
        "source": d.source,
        "splits": d.splits,
        "num_classes": num_classes,
        "class_names": class_names,
        "images_listed": source.listed,
        "images_read": int(len(summary)),
        "dropped": source.dropped,
        "bad_files_count": len(bad),
        "bad_files": bad[:BAD_FILES_IN_METRICS],
        "rows": int(ok.sum()),
        "parts": n_parts,
        "stored_bytes": int(np.sum(summary["stored_bytes"].to_numpy())),
        "store": d.store,
        "counts": counts,
        "val_split": d.val_split,
        "test_splits": list(d.test_splits),
        "groups": groups,
        "has_domains": source.has_domains,
        "carve_out_capped": source.capped,
    }
    sizes = ", ".join(f"{s} {sum(c)}" for s, c in counts.items())
    print(f"[prepare] {metrics['rows']} rows: {sizes}; train per class {train_counts}; "
          f"{len(bad)} unreadable file(s) skipped -> {directory}")
    return metrics


STAGE = Stage(
    name="prepare", reads=(), run=_run, version=2,
    config=("data", "run.seed"),  # downstream stages read image_size and channels through this digest
    check=lambda cfg: check_data(cfg.data),
    describe="real images -> the dataset's own or long-tailed train / val / test / pretrain splits: manifest/",
)
