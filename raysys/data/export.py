"""Export manifest rows to an image folder that any tool reads: OUT/<class_name>/<sample_id>.<ext>
plus OUT/labels.csv (file, label, class_name, origin, difficulty, requested_difficulty, guidance,
prompt, seed). torchvision's ImageFolder and most training scripts take the folder as it is.
"""

from __future__ import annotations

import csv
import os
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from raysys.core import io
from raysys.core.schema import conform, list_parts, read_manifest

CSV_COLUMNS = ("file", "sample_id", "label", "class_name", "origin", "difficulty", "requested_difficulty",
               "guidance", "prompt", "seed")


def image_extension(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    return "bin"


def read_source(source: str) -> pa.Table:
    """A manifest Parquet file, or a folder of parts (a synthesis plan's folder)."""
    fs, path = io.filesystem(source)
    if not io.exists(source):
        raise FileNotFoundError(f"{source}: no such manifest file or folder")
    from pyarrow import fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.Directory:
        parts = list_parts(source)
        if not parts:
            raise FileNotFoundError(f"{source}: a folder without part-*.parquet files")
        return pa.concat_tables([read_manifest(p) for p in parts])
    return conform(pq.read_table(path, filesystem=fs))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def export_images(source: str, out_dir: str, kept_only: bool = True, split: str | None = None) -> int:
    """Write every image row of `source` under `out_dir`; returns the number of images written."""
    table = read_source(source)
    if kept_only:
        table = table.filter(pc.fill_null(table["keep"], True))
    if split:
        table = table.filter(pc.equal(table["split"], split))
    table = table.filter(pc.is_valid(table["image"]))
    os.makedirs(out_dir, exist_ok=True)
    rows = table.drop_columns(["image"]).to_pylist()
    images = table["image"]
    with open(os.path.join(out_dir, "labels.csv.tmp"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(tqdm(rows, desc="[export]", unit="img", mininterval=2.0)):
            data = images[i].as_py()
            rel = os.path.join(_safe(row["class_name"]), f"{row['sample_id']}.{image_extension(data)}")
            io.write_bytes(os.path.join(out_dir, rel), data)
            writer.writerow({**row, "file": rel})
    os.replace(os.path.join(out_dir, "labels.csv.tmp"), os.path.join(out_dir, "labels.csv"))
    return len(rows)
