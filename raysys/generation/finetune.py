"""LoRA fine-tuning of a base generator, with or without the difficulty encoder (plain torch).

Two variants, trained with the same loss on (image, prompt, class, measured difficulty) rows:

- **difficulty** (Wang et al.): LoRA on the UNet's attention projections *and* a new
  difficulty encoder, trained together; each row is conditioned on its measured s.
- **plain** (Real-Fake): LoRA only, no difficulty condition: the uncontrolled baseline.

The text encoder and the base UNet weights stay frozen. The result is an *adapter directory*:
`pytorch_lora_weights.safetensors` in diffusers' standard LoRA format (plain diffusers'
`load_lora_weights` reads it) and, for the difficulty variant, `difficulty_encoder/`
(config.json + safetensors). `load_finetuned(base, adapters)` rebuilds the pipeline.

`finetune_loop` is the whole run against a `TrainContext` (raysys.core.context); Ray Train
runs it through raysys.ray.train.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from raysys.core.config import FinetuneConfig
from raysys.core.context import Checkpoint, step_seed
from raysys.generation.components import load_pipeline
from raysys.generation.difficulty_encoder import DifficultyEncoder
from raysys.generation.pipeline import LORA_WEIGHTS, DifficultyDiffusionPipeline
from raysys.generation.prompts import check_prompt_template, fill_prompt
from raysys.generation.training import diffusion_loss, training_scheduler
from raysys.data.stream import Decode, stream_refs

if TYPE_CHECKING:
    from raysys.core.context import TrainContext

LORA_TARGETS = tuple(FinetuneConfig().lora_targets)
"""The default `finetune.lora_targets`: the UNet's attention projections, as in diffusers' LoRA scripts."""
ENCODER_DIR = "difficulty_encoder"


def add_lora(pipe: DifficultyDiffusionPipeline, rank: int, alpha: float, targets: Sequence[str] = LORA_TARGETS) -> None:
    """Freeze the base UNet and text encoder; inject a trainable LoRA adapter into the `targets` modules of the UNet."""
    pipe.unet.requires_grad_(False)
    pipe.text_model.requires_grad_(False)
    if pipe.vae is not None:
        pipe.vae.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets),
    ))


def add_difficulty_encoder(
    pipe: DifficultyDiffusionPipeline, num_classes: int, num_tokens: int, use_class: bool, num_frequencies: int = 2
) -> DifficultyEncoder:
    """Attach a fresh difficulty encoder whose tokens have the text encoder's width."""
    encoder = DifficultyEncoder(
        num_classes=num_classes, cross_attention_dim=pipe.unet.config.cross_attention_dim,
        num_tokens=num_tokens, use_class=use_class, num_frequencies=num_frequencies,
    ).to(pipe.unet.device)
    pipe.register_modules(difficulty_encoder=encoder)
    return encoder


def trainable_parameters(pipe: DifficultyDiffusionPipeline) -> list[torch.nn.Parameter]:
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    if pipe.difficulty_encoder is not None:
        params += list(pipe.difficulty_encoder.parameters())
    return params


def adapter_state(pipe: DifficultyDiffusionPipeline) -> dict:
    """What a checkpoint needs: the LoRA weights (peft keys) and the encoder's weights."""
    return {
        "lora": get_peft_model_state_dict(pipe.unet),
        "encoder": None if pipe.difficulty_encoder is None else pipe.difficulty_encoder.state_dict(),
    }


def load_adapter_state(pipe: DifficultyDiffusionPipeline, state: dict) -> None:
    set_peft_model_state_dict(pipe.unet, state["lora"])
    if state["encoder"] is not None:
        pipe.difficulty_encoder.load_state_dict(state["encoder"])


def save_adapters(pipe: DifficultyDiffusionPipeline, directory: str) -> None:
    """Write the standard LoRA file and, if there is one, the difficulty encoder."""
    os.makedirs(directory, exist_ok=True)
    pipe.save_lora(directory)
    if pipe.difficulty_encoder is not None:
        pipe.difficulty_encoder.save_pretrained(os.path.join(directory, ENCODER_DIR))


def load_finetuned(base: str, adapters: str, **kwargs) -> DifficultyDiffusionPipeline:
    """Base pipeline (local directory or hub id) + an adapter directory from `save_adapters`."""
    if not os.path.isfile(os.path.join(adapters, LORA_WEIGHTS)):
        raise FileNotFoundError(f"{adapters} has no {LORA_WEIGHTS}: not a fine-tuned adapter directory")
    pipe = load_pipeline(base, **kwargs)
    pipe.load_lora_weights(adapters)
    encoder_dir = os.path.join(adapters, ENCODER_DIR)
    if os.path.isdir(encoder_dir):
        pipe.register_modules(difficulty_encoder=DifficultyEncoder.from_pretrained(encoder_dir))
    return pipe


@dataclass
class FinetuneRows:
    """Decoded fine-tuning rows (one step's batch)."""

    images: torch.Tensor
    """float (N, C, H, W) in [-1, 1] at the generator's image size."""
    prompts: list[str]
    labels: torch.Tensor
    """int64 (N,) class indices."""
    difficulty: torch.Tensor
    """float32 (N,) measured difficulty s = 1 - p(y|x)."""

    def __len__(self) -> int:
        return len(self.labels)


DIFFICULTY_BINS = 10


def sampling_weights(difficulty: torch.Tensor, mode: str) -> Optional[torch.Tensor]:
    """Per-row draw weights. uniform: None. difficulty_balanced: each tenth of the s range is
    drawn equally often (rows weighted by 1 / rows in their bin). Measured difficulty piles up
    near 0 (the classifier fits most train images), so uniform draws show the difficulty
    encoder few hard images; on the quickstart this lifts the proof-of-control Spearman
    correlation from about 0 to about 0.2 at equal steps."""
    if mode == "uniform":
        return None
    if mode != "difficulty_balanced":
        raise ValueError(f"unknown sampling '{mode}' (uniform or difficulty_balanced)")
    bins = (difficulty.clamp(0, 1) * DIFFICULTY_BINS).long().clamp(max=DIFFICULTY_BINS - 1)
    counts = torch.bincount(bins, minlength=DIFFICULTY_BINS).double()
    return 1.0 / counts[bins]


def batch_indices(n: int, batch_size: int, seed: int, step: int, rank: int,
                  weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows for one step (drawn with replacement, by `weights` if given): a function of
    (seed, step, rank) only, so a resumed run draws what the uninterrupted one would have."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + rank)
    if weights is not None:
        return torch.multinomial(weights, batch_size, replacement=True, generator=g)
    return torch.randint(0, n, (batch_size,), generator=g)


def finetune_step(
    pipe: DifficultyDiffusionPipeline,
    scheduler,
    rows: FinetuneRows,
    indices: torch.Tensor,
    *,
    use_difficulty: bool,
    condition_dropout: float,
    difficulty_dropout: float = 0.0,
    snr_gamma: Optional[float],
    generator: torch.Generator,
    autocast_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The loss of one batch (call backward on it)."""
    device = pipe.unet.device
    images = rows.images[indices].to(device)
    prompts = [rows.prompts[int(i)] for i in indices]
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return diffusion_loss(
            pipe, scheduler, images, prompts,
            class_labels=rows.labels[indices],
            difficulty=rows.difficulty[indices] if use_difficulty else None,
            condition_dropout=condition_dropout, difficulty_dropout=difficulty_dropout,
            snr_gamma=snr_gamma, generator=generator,
        )


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Data parallelism by hand: all-reduce the mean gradient over workers (one flat buffer).
    Parameters a batch did not touch count as zero gradient."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def prompts_for(labels: np.ndarray, class_names: list[str], template: str,
                captions: Optional[Sequence[Optional[str]]] = None) -> list[str]:
    """The fine-tuning text of each row: `template` filled with its class name and, if given, its
    caption (None: none; see `fill_prompt`)."""
    captions = [None] * len(labels) if captions is None else captions
    return [fill_prompt(template, class_names[int(label)], caption) for label, caption in zip(labels, captions)]


PROMPTS_KEPT = 8
"""How many of the first step's prompts a fine-tune's checkpoint state keeps, to show what the UNet saw."""


VARIANTS = ("difficulty", "plain")
"""The fine-tune variants: LoRA + difficulty encoder, and LoRA alone."""


def check_finetune(f, generator) -> list[str]:
    """Problems of the `finetune` section (a FinetuneConfig), with the generator section it serves."""
    problems = []
    if not f.variants or any(v not in VARIANTS for v in f.variants):
        problems.append(f"finetune.variants must be a non-empty subset of {list(VARIANTS)}, got {f.variants}")
    if (f.steps < 1 or f.batch_size < 1 or f.num_workers < 1 or f.checkpoint_every < 1 or f.lora_rank < 1
            or f.concurrent_variants < 1):
        problems.append("finetune.steps, batch_size, num_workers, checkpoint_every, lora_rank and concurrent_variants "
                        "must be >= 1")
    if not 0 <= f.condition_dropout < 1:
        problems.append(f"finetune.condition_dropout is a share of rows, in [0, 1) (e.g. 0.1), "
                        f"got {f.condition_dropout}")
    if not 0 <= f.difficulty_dropout < 1:
        problems.append(f"finetune.difficulty_dropout must be in [0, 1), got {f.difficulty_dropout}")
    if f.lora_alpha <= 0:
        problems.append(f"finetune.lora_alpha must be > 0 (the update is scaled by lora_alpha / lora_rank; "
                        f"lora_alpha = lora_rank scales it by 1), got {f.lora_alpha}")
    if generator.difficulty_guidance_scale is not None and f.difficulty_dropout == 0 and "difficulty" in f.variants:
        problems.append("generator.difficulty_guidance_scale needs finetune.difficulty_dropout > 0: the model must "
                        "learn the prompt with null difficulty tokens, the branch it guides against (try 0.1)")
    if not 0 <= f.difficulty_frequencies <= 16:
        problems.append(f"finetune.difficulty_frequencies must be in 0..16, got {f.difficulty_frequencies}")
    return problems + check_prompt_template(generator.prompt_template)


@dataclass
class FinetuneJob:
    """One fine-tune run: which variant, on which rows."""

    variant: str
    """difficulty (LoRA + difficulty encoder) or plain (LoRA only)."""
    base: str
    """Base pipeline: absolute local directory or hub id."""
    manifest: str
    """Scored manifest (its train rows, with measured difficulty)."""
    class_names: list[str]
    prompt_template: str
    cfg: "FinetuneConfig"
    seed: int
    name: str = "finetune"
    """Shown in progress lines."""


def finetune_rows(job: FinetuneJob, rank: int, world: int) -> tuple[list[str], pa.Table]:
    """(the manifest's files, this worker's disjoint share of the scored train rows without their
    images: file, row, label, difficulty, caption (null where a row has none))."""
    from raysys.core.schema import manifest_files
    from raysys.data.stream import index_rows

    files = manifest_files(job.manifest)
    rows = index_rows(files, ["label", "difficulty", "caption", "split"], where=pc.field("split") == "train")
    mine = rows.take(pa.array(np.arange(rank, rows.num_rows, world)))
    if mine["difficulty"].null_count or np.isnan(mine["difficulty"].to_numpy(zero_copy_only=False)).any():
        raise ValueError(f"{job.manifest}: train rows without a measured difficulty; run the score stage first")
    return files, mine


def finetune_loop(ctx: "TrainContext", job: FinetuneJob) -> None:
    """Fine-tune (or resume) one variant, one report every `checkpoint_every` steps; the last
    checkpoint holds `adapters/`. Each step's rows come from (seed, step, rank) alone, so a
    resumed run continues as the uninterrupted one would."""
    cfg, rank, device = job.cfg, ctx.rank, ctx.device
    torch.manual_seed(job.seed)
    pipe = load_pipeline(job.base).to(device)
    use_difficulty = job.variant == "difficulty"
    add_lora(pipe, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if use_difficulty:
        add_difficulty_encoder(pipe, len(job.class_names), cfg.difficulty_tokens, cfg.class_input,
                               cfg.difficulty_frequencies)
    on_gpu = device.type == "cuda"
    if on_gpu and cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    autocast = torch.bfloat16 if on_gpu and cfg.mixed_precision == "bf16" else None
    files, mine = finetune_rows(job, rank, ctx.world_size)
    difficulty = torch.from_numpy(mine["difficulty"].to_numpy().astype(np.float32))
    captions = mine["caption"].to_pylist()
    weights = sampling_weights(difficulty, cfg.sampling)
    scheduler = training_scheduler(pipe)
    params = trainable_parameters(pipe)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps)))

    start, losses, resumes, seen = 0, [], [], []
    restored = ctx.restore()
    if restored is not None:
        tensors, state = restored
        load_adapter_state(pipe, tensors["adapters"])
        opt.load_state_dict(tensors["opt"])
        sched.load_state_dict(tensors["sched"])
        start, losses, resumes = state["step"], state["losses"], state["resumes"] + [state["step"]]
        seen = state.get("prompts", [])
        if rank == 0:
            print(f"[{job.name}] resuming at step {start + 1}/{cfg.steps}", flush=True)

    pipe.unet.train()
    t0, done_here = time.time(), 0
    # Every step's rows are known from (seed, step, rank): they stream in that order, one batch a step.
    drawn = [batch_indices(len(mine), cfg.batch_size, job.seed, step, rank, weights) for step in range(start, cfg.steps)]
    refs = stream_refs(mine, torch.cat(drawn).numpy() if drawn else np.zeros(0, np.int64))
    batches = ctx.batches(refs, Decode(files, pipe.image_size, pipe.image_channels), cfg.batch_size)
    for step, idx, batch in zip(range(start, cfg.steps), drawn, batches):
        labels = batch["label"]
        rows = FinetuneRows(images=batch["image"].float().div_(127.5).sub_(1.0),
                            prompts=prompts_for(labels.numpy(), job.class_names, job.prompt_template,
                                                [captions[int(i)] for i in idx]),
                            labels=labels, difficulty=difficulty[idx])
        if rank == 0 and not seen:  # what the UNet is shown (before condition dropout), kept in the state
            seen = rows.prompts[:PROMPTS_KEPT]
        g = torch.Generator().manual_seed(step_seed(job.seed, step, rank, 3))
        loss = finetune_step(pipe, scheduler, rows, torch.arange(len(idx)), use_difficulty=use_difficulty,
                             condition_dropout=cfg.condition_dropout, difficulty_dropout=cfg.difficulty_dropout,
                             snr_gamma=cfg.snr_gamma, generator=g, autocast_dtype=autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done_here += 1
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.checkpoint_every and not last:
            continue
        rate = done_here / (time.time() - t0)
        window = float(np.mean(losses[-cfg.checkpoint_every:]))
        checkpoint = None
        if rank == 0:
            print(f"[{job.name}] step {step + 1}/{cfg.steps} loss {window:.4f} {rate:.2f} steps/s "
                  f"ETA {(cfg.steps - step - 1) / rate:.0f}s", flush=True)
            checkpoint = Checkpoint(
                tensors={"adapters": adapter_state(pipe), "opt": opt.state_dict(), "sched": sched.state_dict()},
                state={"step": step + 1, "losses": losses, "resumes": resumes, "prompts": seen},
                files=(lambda d: save_adapters(pipe, os.path.join(d, "adapters"))) if last else None)
        ctx.report({"step": step + 1, "loss": window, "steps_per_s": rate}, checkpoint)
