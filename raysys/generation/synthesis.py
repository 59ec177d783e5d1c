"""Mass synthesis, batch by batch: generate -> CLIP filter -> re-score and write (no Ray here).

Three callable classes, each loading its models once in `__init__` and mapping a pyarrow batch
to a pyarrow batch. Ray Data runs them as actor pools (`raysys/ray/synthesis.py`); a GPU
benchmark or a plain loop calls them directly.

- `GenerateBatch`: plan rows -> encoded images (PNG or lossless WebP), per-row seeds and
  negative prompts, each row's model (difficulty / plain / base) loaded lazily once.
- `ClipFilter`: CLIP image-text similarity (and image-source similarity for image-guided rows)
  from transformers' `CLIPModel`; `keep` is set by the thresholds.
- `RescoreAndWrite`: the baseline classifier re-scores every image (the measured difficulty
  of what was generated), applies the classifier filter when no CLIP model is configured,
  and writes the batch as manifest rows into one Parquet part per plan.

**Exactly once.** A part's file name is a hash of the sample ids in it, and it is written
atomically (temporary file, then rename): a batch that is retried after a crash rewrites the
same file with the same rows. Rows rejected by a filter are written too (`keep` false, no
image bytes), so that a rerun knows they were planned and done. `remove_duplicates` repairs
the one case left (a retried batch cut differently from the first attempt) by rewriting the
later part without the ids an earlier part holds; the stage runs it before counting.

**A corrupt part** (its bytes are not a whole Parquet file: raysys.core.schema.CorruptPart) is
moved into the plan's `_corrupt/` folder, with one printed line, and its rows count as not
written. `written_ids` (a run's start) reads the footers and the ids: a cut-off part is found
there and its rows are generated in that run. `remove_duplicates` (before the final check) reads
every part whole: a part with a page that does not decode is found there, the exactly-once check
then fails, and the rerun it asks for generates those rows.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysys.core import io
from raysys.core.config import SamplingConfig, SpeedConfig
from raysys.core.schema import (MANIFEST_SCHEMA, CorruptPart, conform, list_parts, quarantine, read_part,
                                to_table, write_manifest)
from raysys.generation.speed import pad_rows

# Columns that travel with each row between the stages but are not manifest columns.
TRACE_COLUMNS = ("plan", "model", "actor_id", "busy_s", "generated_at")


@dataclass
class GeneratorSpec:
    """One generator an actor may load: the base pipeline plus (optionally) fine-tuned adapters."""

    base: str
    """Base pipeline: local directory or hub id."""
    adapters: Optional[str] = None
    """Adapter directory from the finetune stage (None: the base model as it is)."""
    label: str = ""
    """What the `generator` column records (base id + adapter digest)."""
    dtype: str = "float32"
    """What the pipeline runs in: float32, float16 or bfloat16 (`generator.dtype`)."""


def actor_identity() -> str:
    """host:pid:random: a restarted actor is a new process and gets a new identity."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _torch_device(use_gpu: bool):
    import torch

    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


class GenerateBatch:
    """Plan rows in, generated rows (with encoded `image` and `generator`) out."""

    def __init__(self, generators: dict[str, GeneratorSpec], sampling: SamplingConfig,
                 image_format: str = "png", use_gpu: bool = False, speed: Optional[SpeedConfig] = None):
        self.generators = generators
        self.sampling = sampling
        self.image_format = image_format
        self.device = _torch_device(use_gpu)
        self.speed = speed or SpeedConfig()
        self.pipes: dict = {}
        self.actor_id = actor_identity()
        self._encoder: Optional[ThreadPoolExecutor] = None

    def pipeline(self, model: str):
        if model not in self.pipes:
            from raysys.generation.components import load_pipeline
            from raysys.generation.finetune import load_finetuned
            from raysys.generation.speed import prepare_for_gpu

            if model not in self.generators:
                raise KeyError(f"plan row asks for generator '{model}'; configured: {sorted(self.generators)}")
            import torch

            spec = self.generators[model]
            dtype = getattr(torch, spec.dtype)
            pipe = (load_finetuned(spec.base, spec.adapters, dtype=dtype) if spec.adapters
                    else load_pipeline(spec.base, dtype=dtype))
            pipe.set_progress_bar_config(disable=True)
            self.pipes[model] = prepare_for_gpu(pipe.to(self.device), self.speed)
        return self.pipes[model]

    def encoder(self) -> ThreadPoolExecutor:
        """Threads that encode images while the caller generates the next micro-batch."""
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(max(1, self.speed.encode_threads), thread_name_prefix="encode")
        return self._encoder

    def _generate(self, pipe, rows: pa.Table) -> np.ndarray:
        import torch

        from raysys.data.images import decode_batch

        difficulty = rows["requested_difficulty"].to_pylist()
        guidance = rows["guidance"].to_pylist()
        sources = None
        if any(g is not None and g > 0 for g in guidance):
            encoded = rows["source_image"].to_pylist()
            pixels = decode_batch([e for e in encoded if e is not None], pipe.image_size, pipe.image_channels)
            sources = torch.zeros(len(rows), pipe.image_channels, pipe.image_size, pipe.image_size)
            at = [i for i, e in enumerate(encoded) if e is not None]
            sources[at] = torch.from_numpy(pixels).float() / 127.5 - 1.0
        s = self.sampling
        negatives = [s.negative_prompt if n is None else n for n in rows["negative_prompt"].to_pylist()]
        return pipe(
            rows["prompt"].to_pylist(), seeds=rows["seed"].to_pylist(),
            class_labels=rows["label"].to_pylist(),
            difficulty=None if all(d is None for d in difficulty) else difficulty,
            source_images=sources, guidance=guidance, negative_prompt=negatives,
            guidance_scale=s.guidance_scale, difficulty_guidance_scale=s.difficulty_guidance_scale,
            num_inference_steps=s.num_inference_steps, scheduler=s.scheduler,
        ).images

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raysys.data.images import encode_image

        t0 = time.perf_counter()
        images: list[Optional[bytes]] = [None] * len(batch)
        labels: list[str] = [""] * len(batch)
        models = batch["model"].to_pylist()
        step = self.speed.micro_batch or max(1, len(batch))
        pending = []  # (row, future of its encoded image), encoded while the next chunk generates
        for model in sorted(set(models)):
            pipe = self.pipeline(model)
            rows = np.flatnonzero(np.asarray(models) == model)
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                plan_rows = batch.take(pa.array(chunk))
                if self.speed.compile and self.device.type == "cuda":
                    plan_rows = pad_rows(plan_rows, step)  # the compiled UNet's fixed batch shape
                arrays = self._generate(pipe, plan_rows)[:len(chunk)]
                for i, array in zip(chunk, arrays):
                    pending.append((i, self.encoder().submit(encode_image, array, self.image_format)))
                    labels[i] = self.generators[model].label
        for i, future in pending:
            images[i] = future.result()
        seconds = time.perf_counter() - t0
        out = batch.append_column("image", pa.array(images, pa.binary()))
        out = out.append_column("generator", pa.array(labels, pa.string()))
        out = out.append_column("actor_id", pa.array([self.actor_id] * len(batch), pa.string()))
        out = out.append_column("busy_s", pa.array([seconds / max(1, len(batch))] * len(batch), pa.float64()))
        return out.append_column("generated_at", pa.array([time.time()] * len(batch), pa.float64()))


def check_clip_model(model: str) -> None:
    """Cheap check, before the actor pools start, that the CLIP filter's model can be loaded: a
    local directory with config.json, or a hub id whose config.json is reachable (or cached)."""
    from raysys.core.loading import ConfigError

    fix = "set synthesis.filter.clip_model to a local copy (e.g. `huggingface-cli download ID --local-dir DIR`), " \
          "or to null to filter with the classifier"
    if os.path.isdir(os.path.expanduser(model)):
        if not os.path.isfile(os.path.join(os.path.expanduser(model), "config.json")):
            raise ConfigError(f"synthesis.filter.clip_model '{model}' is a directory without config.json: "
                              f"not a CLIP model; {fix}")
        return
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model, "config.json")
    except Exception as exc:  # offline, unknown id, no cache
        raise ConfigError(f"synthesis.filter.clip_model '{model}': no such local directory, and not reachable as a "
                          f"hub id ({type(exc).__name__}); {fix}") from None


class ClipFilter:
    """CLIP image-text (and image-source) cosine similarity; `keep` by thresholds."""

    def __init__(self, model: str, text_threshold: float, image_threshold: float, use_gpu: bool = False):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        local = os.path.isdir(os.path.expanduser(model))
        try:
            self.model = CLIPModel.from_pretrained(model, local_files_only=local).eval()
            self.processor = CLIPProcessor.from_pretrained(model, local_files_only=local)
        except OSError as exc:
            raise FileNotFoundError(
                f"CLIP model '{model}' is neither a local directory with a CLIP model nor a reachable hub id "
                f"({exc.__class__.__name__}); set synthesis.filter.clip_model to a local copy, or null to use "
                "the classifier filter") from None
        self.device = _torch_device(use_gpu)
        self.model.to(self.device)
        self.text_threshold, self.image_threshold = text_threshold, image_threshold
        self._torch = torch

    def _features(self, images: list[bytes]):
        from raysys.data.images import open_image

        pil = [open_image(b).convert("RGB") for b in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model.get_image_features(pixel_values=pixels)
        feats = out if isinstance(out, self._torch.Tensor) else out.pooler_output
        return self._torch.nn.functional.normalize(feats.float(), dim=-1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        torch = self._torch
        with torch.no_grad():
            image = self._features(batch["image"].to_pylist())
            text_in = self.processor(text=batch["prompt"].to_pylist(), return_tensors="pt", padding=True,
                                     truncation=True)
            out = self.model.get_text_features(input_ids=text_in["input_ids"].to(self.device),
                                               attention_mask=text_in["attention_mask"].to(self.device))
            text = torch.nn.functional.normalize((out if isinstance(out, torch.Tensor) else out.pooler_output).float(), dim=-1)
            clip_text = (image * text).sum(-1).cpu().numpy()
            clip_image = np.full(len(batch), np.nan, dtype=np.float32)
            sources = batch["source_image"].to_pylist()
            at = [i for i, s in enumerate(sources) if s is not None]
            if at:
                src = self._features([sources[i] for i in at])
                clip_image[at] = (image[at] * src).sum(-1).cpu().numpy()
        keep = clip_text >= self.text_threshold
        keep &= np.isnan(clip_image) | (clip_image >= self.image_threshold)
        out = batch.append_column("clip_text", pa.array(clip_text, pa.float32()))
        out = out.append_column("clip_image", pa.array(clip_image, pa.float32(), mask=np.isnan(clip_image)))
        return out.append_column("keep", pa.array(keep, pa.bool_()))


def part_name(sample_ids: list[str]) -> str:
    """A part's file name: a hash of its (sorted) sample ids."""
    return "part-" + hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()[:24] + ".parquet"


def write_part(table: pa.Table, directory: str) -> str:
    """Write manifest rows atomically as one part of `directory`; returns the part's location."""
    location = io.join(directory, part_name(table["sample_id"].to_pylist()))
    write_manifest(table, location)
    return location


class RescoreAndWrite:
    """Measured difficulty of every generated image, the classifier filter, and the write."""

    def __init__(self, classifier_dir: str, output: str | dict[str, str], classifier_min_p: float = 0.0,
                 use_gpu: bool = False):
        """`output`: the folder whose `<plan>/` gets each plan's parts, or plan name -> its parts' folder."""
        from raysys.scoring.difficulty import DifficultyScorer

        with io.local_copy(classifier_dir) as local:  # a copy of a model under a URI: removed once loaded
            self.scorer = DifficultyScorer({"full": local}, str(_torch_device(use_gpu)))
        self.output = output
        self.min_p = classifier_min_p

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = len(batch)
        scores = self.scorer(batch["image"].to_pylist(), batch["label"].to_numpy(), ["full"] * n)
        if "keep" in batch.column_names:  # a CLIP filter ran before
            keep = batch["keep"].to_numpy(zero_copy_only=False).astype(bool)
        else:
            keep = scores["p_true"] >= self.min_p
        images = batch["image"].to_pylist()
        columns = {name: batch[name].to_pylist() for name in MANIFEST_SCHEMA.names if name in batch.column_names}
        columns.update({
            "image": [im if k else None for im, k in zip(images, keep)],
            "split": ["train"] * n, "origin": ["synthetic"] * n, "score_mode": ["full"] * n,
            "path": [f"synthetic:{p}" for p in batch["plan"].to_pylist()],
            "keep": keep.tolist(), **{k: v.tolist() for k, v in scores.items()},
        })
        manifest = to_table(columns)
        plans = np.asarray(batch["plan"].to_pylist(), dtype=object)
        parts = np.empty(n, dtype=object)
        for plan in sorted(set(plans)):
            rows = np.flatnonzero(plans == plan)
            folder = self.output[plan] if isinstance(self.output, dict) else io.join(self.output, plan)
            parts[rows] = write_part(manifest.take(pa.array(rows)), folder)
        return pa.table({
            "sample_id": batch["sample_id"], "plan": batch["plan"], "keep": pa.array(keep, pa.bool_()),
            "difficulty": pa.array(scores["difficulty"], pa.float32()),
            "part": pa.array(parts.tolist(), pa.string()), "actor_id": batch["actor_id"],
            "busy_s": batch["busy_s"], "generated_at": batch["generated_at"],
        })


# ---- the written set ---------------------------------------------------------------------

def _read(location: str, columns: Optional[list[str]] = None) -> pa.Table:
    return read_part(location, columns)


def _readable(part: str, columns: Optional[list[str]] = None) -> Optional[pa.Table]:
    """A part's `columns` (all: every page decoded), or None for a corrupt part, which is moved into
    `_corrupt/`."""
    try:
        return _read(part, columns)
    except CorruptPart as exc:
        moved = quarantine(part)
        print(f"[synthesize] {exc}: moved to {moved}; its rows count as not written", flush=True)
        return None


def written_ids(directory: str) -> dict[str, int]:
    """sample_id -> how many parts hold it (more than 1 is a duplicate). A corrupt part (its footer,
    its ids or its row count; the other columns are not read) is moved aside and not counted."""
    counts: dict[str, int] = {}
    for part in list_parts(directory):
        table = _readable(part, ["sample_id"])
        for sid in table["sample_id"].to_pylist() if table is not None else []:
            counts[sid] = counts.get(sid, 0) + 1
    return counts


def remove_duplicates(directory: str) -> int:
    """Rewrite parts so that every sample_id is held once (by the first part, in name order).

    Idempotent and safe to interrupt: each rewrite is atomic, and the first holder is never
    rewritten. Every part is read whole, and a corrupt one (a page that does not decode included)
    is moved aside, as in `written_ids`. Returns the number of duplicate rows removed.
    """
    seen: set[str] = set()
    removed = 0
    for part in list_parts(directory):
        table = _readable(part)  # whole: a page that does not decode is found here
        if table is None:  # corrupt: moved aside
            continue
        ids = table["sample_id"].to_pylist()
        dup = [sid in seen for sid in ids]
        if any(dup):
            table = table.filter(pa.array([not d for d in dup]))
            removed += sum(dup)
            fs, path = io.filesystem(part)
            if len(table):
                write_part(table, directory)  # a new name (other ids), then the old part goes
            fs.delete_file(path)
        seen.update(ids)
    return removed


def read_plan(directory: str, kept_only: bool = True) -> pa.Table:
    """All written rows of one plan as one manifest table (only kept images by default)."""
    parts = list_parts(directory)
    if not parts:
        return to_table({})
    table = pa.concat_tables([conform(_read(p)) for p in parts])
    return table.filter(pc.equal(table["keep"], True)) if kept_only else table
