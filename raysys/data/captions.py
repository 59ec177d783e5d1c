"""Captioning one manifest part: the rows of the chosen splits get a `caption`, the rest pass through.

`caption_part` is the unit of work of the caption stage (raysys/stages/caption.py, on a Ray Data
actor pool: raysys/ray/captioning.py). It reads one part of the prepared manifest, captions the
rows of the chosen splits `batch_size` images at a time with any callable from encoded images to
text (raysys.models.captioner.Captioner), writes the part under the same name in the output
folder (atomically: a retried or rerun part rewrites the same file with the same rows), and
returns a small summary per captioned row. Images stored by reference (`uri`) stay so: their bytes
are read to caption them, never written into the part.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from raysys.core.schema import MANIFEST_SCHEMA, read_manifest, read_part, with_image_bytes, write_manifest

SUMMARY_COLUMNS = ("sample_id", "label", "split", "caption")
"""What a captioned part returns per captioned row (no images)."""


def summary(table: pa.Table, splits: Sequence[str]) -> pa.Table:
    """The summary of the rows of `splits` in a captioned part: sample_id, label, split, caption."""
    rows = np.flatnonzero(np.isin(np.asarray(table["split"].to_pylist(), dtype=object), list(splits)))
    return table.select(list(SUMMARY_COLUMNS)).take(pa.array(rows, pa.int64()))


def caption_part(captioner: Callable[[list[bytes]], list[str]], source: str, output: str, splits: Sequence[str],
                 batch_size: int) -> pa.Table:
    """Caption the rows of `splits` in the part `source`, write the part to `output`; returns the summary."""
    table = read_manifest(source, resolve=False)
    wanted = np.flatnonzero(np.isin(np.asarray(table["split"].to_pylist(), dtype=object), list(splits)))
    captions: list = table["caption"].to_pylist()
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start:start + batch_size]
        images = with_image_bytes(table.select(["image", "uri"]).take(pa.array(chunk)))["image"].to_pylist()
        texts = captioner(images)
        if len(texts) != len(chunk):
            raise RuntimeError(f"{source}: the captioner returned {len(texts)} captions for {len(chunk)} images")
        for row, text in zip(chunk, texts):
            captions[row] = text
    index = table.schema.get_field_index("caption")
    table = table.set_column(index, MANIFEST_SCHEMA.field("caption"), pa.array(captions, pa.string()))
    write_manifest(table, output)
    return summary(table, splits)


def written_summary(location: str, splits: Sequence[str]) -> pa.Table:
    """The summary of a part already captioned (a resumed run): read from the part, no images."""
    return summary(read_part(location, columns=list(SUMMARY_COLUMNS)), splits)
