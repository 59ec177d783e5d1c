"""Export manifest rows to an image folder that any tool reads: OUT/<class_name>/<sample_id>.<ext>
plus OUT/labels.csv (file, label, class_name, origin, difficulty, requested_difficulty, guidance,
prompt, seed). torchvision's ImageFolder and most training scripts take the folder as it is.
"""

from __future__ import annotations

import csv
import os
import re

import pyarrow.compute as pc
from tqdm import tqdm

from raysys.core import io
from raysys.core.schema import manifest_files, read_manifest
from raysys.data.images import image_format

CSV_COLUMNS = ("file", "sample_id", "label", "class_name", "origin", "difficulty", "requested_difficulty",
               "guidance", "prompt", "seed")


def image_extension(data: bytes) -> str:
    return {"png": "png", "jpeg": "jpg", "webp": "webp"}.get(image_format(data), "bin")


def source_files(source: str) -> list[str]:
    """The Parquet files of a manifest file or folder of parts (a synthesis plan's, prepare's, score's)."""
    files = manifest_files(source)
    if not files:
        raise FileNotFoundError(f"{source}: a folder without part-*.parquet files")
    return files


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def export_images(source: str, out_dir: str, kept_only: bool = True, split: str | None = None) -> int:
    """Write every image row of `source` under `out_dir`, one part at a time; returns the number written."""
    files = source_files(source)
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    with open(os.path.join(out_dir, "labels.csv.tmp"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        bar = tqdm(desc="[export]", unit="img", mininterval=2.0)
        for location in files:
            table = read_manifest(location)
            if kept_only:
                table = table.filter(pc.fill_null(table["keep"], True))
            if split:
                table = table.filter(pc.equal(table["split"], split))
            table = table.filter(pc.is_valid(table["image"]))
            images = table["image"]
            for i, row in enumerate(table.drop_columns(["image"]).to_pylist()):
                data = images[i].as_py()
                rel = os.path.join(_safe(row["class_name"]), f"{row['sample_id']}.{image_extension(data)}")
                io.write_bytes(os.path.join(out_dir, rel), data)
                writer.writerow({**row, "file": rel})
                bar.update(1)
            written += len(table)
        bar.close()
    os.replace(os.path.join(out_dir, "labels.csv.tmp"), os.path.join(out_dir, "labels.csv"))
    return written
