"""Captioning on Ray Data: an actor pool captions a sharded manifest part by part.

Each actor loads the captioner once (in __init__: on its GPU when it has one, in captions.dtype),
then for each part it is given captions the rows of the chosen splits and writes the part with its
`caption` column to the output folder under the same name (raysys.data.captions). It returns
sample ids and captions only: the driver never holds an image.
"""

from __future__ import annotations

import pyarrow as pa

from raysys.core import io
from raysys.core.config import CaptionsConfig
from raysys.data.captions import caption_part
from raysys.models.captioner import Captioner
from raysys.ray.parts import map_parts


class CaptioningActor:
    """Ray Data callable class: loads the captioner once, captions one manifest part per call."""

    def __init__(self, cfg: CaptionsConfig, batch_size: int, output: str):
        import torch

        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.captioner = Captioner(cfg.model, prompt=cfg.prompt, max_new_tokens=cfg.max_new_tokens,
                                   num_beams=cfg.num_beams, repetition_penalty=cfg.repetition_penalty,
                                   dtype=cfg.dtype, device=device)
        self.splits, self.batch_size, self.output = list(cfg.splits), batch_size, output

    def __call__(self, batch: pa.Table) -> pa.Table:
        source = batch["part"][0].as_py()
        name = source.rstrip("/").rsplit("/", 1)[-1]
        return caption_part(self.captioner, source, io.join(self.output, name), self.splits, self.batch_size)


def caption_manifest(parts: list[str], output: str, cfg: CaptionsConfig, batch_size: int, total: int) -> pa.Table:
    """Caption the manifest parts `parts` into `output` (same part names) on an actor pool of
    captions.min_actors..max_actors; returns the captioned rows' summaries (sample_id, label, split, caption)."""
    return map_parts(pa.table({"part": parts}), CaptioningActor, desc="[caption]", total=total,
                     num_cpus=cfg.cpus_per_actor, num_gpus=cfg.num_gpus, actors=(cfg.min_actors, cfg.max_actors),
                     constructor_kwargs={"cfg": cfg, "batch_size": batch_size, "output": output})
