"""Classifier training and evaluation in plain torch (no Ray): one epoch, prediction, metrics.

`classifier_loop` is the whole fit against a `TrainContext` (raysys.core.context): Ray Train
runs it through raysys.ray.train, a test through `LocalContext`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from raysys.core.config import TrainConfig
from raysys.core.context import Checkpoint, step_seed
from raysys.core.schema import read_manifest
from raysys.data.images import decode_batch
from raysys.models.classifiers import create_classifier, normalize, save_classifier
from raysys.scoring.difficulty import assign_folds
from raysys.training.metrics import classification_metrics

if TYPE_CHECKING:
    from raysys.core.config import RaysysConfig
    from raysys.core.context import TrainContext


@dataclass
class LabelledImages:
    images: torch.Tensor
    """uint8 (N, C, H, W)."""
    labels: torch.Tensor
    """int64 (N,)."""

    def __len__(self) -> int:
        return len(self.labels)


def images_from_manifest(table: pa.Table, split: str | None, size: int, channels: int) -> LabelledImages:
    """Decode the rows of `split` (all rows if None) into uint8 tensors."""
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    pixels = decode_batch(table["image"].to_pylist(), size, channels)
    labels = np.asarray(table["label"].to_numpy(zero_copy_only=False), dtype=np.int64)
    return LabelledImages(torch.from_numpy(pixels), torch.from_numpy(labels))


def eval_split_names(cfg: "RaysysConfig") -> list[str]:
    """The validation split and the test splits (the headline first)."""
    return [cfg.data.val_split, *cfg.data.test_splits]


def eval_splits(table: pa.Table, cfg: "RaysysConfig") -> tuple[LabelledImages, dict[str, LabelledImages]]:
    """The validation split's images and each test split's, decoded from the manifest rows `table`."""
    size, chans = cfg.data.image_size, cfg.data.channels
    val = images_from_manifest(table, cfg.data.val_split, size, chans)
    return val, {name: images_from_manifest(table, name, size, chans) for name in cfg.data.test_splits}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to +-max_shift pixels (zero padding): cheap digit augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    return opt, sched


def train_epoch(
    model: nn.Module,
    data: LabelledImages,
    indices: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched,
    *,
    batch_size: int,
    augment: bool,
    generator: torch.Generator,
    device: torch.device,
    log_prior: torch.Tensor | None = None,
) -> float:
    """One pass over data[indices] (already shuffled/sharded by the caller); mean loss.

    `log_prior` (log class frequencies) turns cross-entropy into Balanced Softmax: the logits
    are shifted by the prior during training only, so predictions are prior-free."""
    model.train()
    total, count = 0.0, 0
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        if len(idx) < 2 and start > 0:
            break  # BatchNorm cannot train on one image; every rank has the same shard length
        x = normalize(data.images[idx])
        if augment:
            x = random_shift(x, 2, generator)
        x, y = x.to(device, non_blocking=True), data.labels[idx].to(device, non_blocking=True)
        logits = model(x)
        if log_prior is not None:
            logits = logits + log_prior.to(logits.device)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, images_uint8: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Softmax probabilities (N, num_classes) on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(images_uint8), batch_size):
        x = normalize(images_uint8[start : start + batch_size]).to(device)
        out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def evaluate(
    model: nn.Module, data: LabelledImages, num_classes: int, groups: dict[str, list[int]], device: torch.device
) -> dict:
    if len(data) == 0:
        raise ValueError("evaluate: no images to evaluate on")
    probs = predict_proba(model, data.images, 512, device)
    pred = probs.argmax(1).numpy()
    return classification_metrics(data.labels.numpy(), pred, num_classes, groups)


def check_train(t: TrainConfig) -> list[str]:
    """Problems of the `train` section."""
    problems = []
    if t.epochs < 1 or t.batch_size < 1 or t.checkpoint_every < 1 or t.num_workers < 1:
        problems.append("train.epochs, train.batch_size, train.checkpoint_every and train.num_workers must be >= 1")
    if t.lr <= 0:
        problems.append("train.lr must be > 0")
    return problems


@dataclass
class ClassifierJob:
    """One classifier fit: which rows it trains on, for how long."""

    cfg: "RaysysConfig"
    manifest: str
    """Prepared manifest (local path or URI)."""
    num_classes: int
    groups: dict
    """Class groups (many/medium/few) for the metrics."""
    epochs: int
    fold: int | None = None
    """Out-of-fold mode: train on every train row except fold `fold` of `folds`."""
    folds: int = 0
    name: str = "classifier"
    """Shown in progress lines."""


def classifier_meta(cfg: "RaysysConfig", num_classes: int) -> dict:
    """What `save_classifier` records beside the weights, so `load_classifier` rebuilds the model."""
    return {"name": cfg.classifier.name, "num_classes": num_classes, "in_chans": cfg.data.channels,
            "width": cfg.classifier.width, "image_size": cfg.data.image_size}


def classifier_loop(ctx: "TrainContext", job: ClassifierJob) -> None:
    """Train (or resume) the classifier, one report per epoch; the last checkpoint holds `model/`
    and the whole history (per-epoch train loss, validation metrics, test metrics at the end)."""
    cfg = job.cfg
    rank, world = ctx.rank, ctx.world_size
    torch.manual_seed(cfg.run.seed)
    table = read_manifest(job.manifest, columns=["sample_id", "image", "label", "split"],
                          where=pc.field("split").isin(["train", *eval_split_names(cfg)]))
    train_table = table.filter(pc.equal(table["split"], "train"))
    if job.fold is not None:
        folds = assign_folds(train_table["sample_id"].to_pylist(), train_table["label"].to_numpy(), job.folds,
                             cfg.run.seed)
        train_table = train_table.filter(folds != job.fold)
    size, chans = cfg.data.image_size, cfg.data.channels
    train = images_from_manifest(train_table, None, size, chans)
    val, tests = eval_splits(table, cfg)

    model = create_classifier(cfg.classifier.name, job.num_classes, chans, width=cfg.classifier.width,
                              weights=cfg.classifier.weights, image_size=size)
    model = ctx.prepare_model(model)
    bare = getattr(model, "module", model)
    per_rank = len(train) // world
    opt, sched = make_optimizer(model, replace(cfg.train, epochs=job.epochs), -(-per_rank // cfg.train.batch_size))
    start, history, resumes = restore_training(ctx, bare, opt, sched, job.name, job.epochs)

    for epoch in range(start, job.epochs):
        t0 = time.time()
        torch.manual_seed(step_seed(cfg.run.seed, epoch, rank))
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(step_seed(cfg.run.seed, epoch, 0, 1)))
        shard = perm[rank * per_rank: (rank + 1) * per_rank]
        gen = torch.Generator().manual_seed(step_seed(cfg.run.seed, epoch, rank, 2))
        loss = train_epoch(model, train, shard, opt, sched, batch_size=cfg.train.batch_size,
                           augment=cfg.train.augment, generator=gen, device=ctx.device)
        val_m = evaluate(bare, val, job.num_classes, job.groups, ctx.device)
        record = {"epoch": epoch + 1, "train_loss": round(loss, 6), "seconds": round(time.time() - t0, 3), "val": val_m}
        last = epoch == job.epochs - 1
        if last:
            record["tests"] = {name: evaluate(bare, data, job.num_classes, job.groups, ctx.device)
                               for name, data in tests.items()}
            record["test"] = record["tests"][cfg.data.test_splits[0]]
        history.append(record)
        if rank == 0:
            few = val_m["acc_few"]
            print(f"[{job.name}] epoch {epoch + 1}/{job.epochs} loss {loss:.4f} val acc {val_m['acc']:.4f}"
                  f" few {few if few is None else round(few, 4)} ({record['seconds']:.1f}s)", flush=True)
        metrics = {"epoch": epoch + 1, "train_loss": loss, "val_acc": val_m["acc"], "val_acc_few": val_m["acc_few"]}
        checkpoint = None
        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            meta = classifier_meta(cfg, job.num_classes)
            checkpoint = Checkpoint(
                tensors={"model": bare.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                state={"epoch": epoch, "history": history, "resumes": resumes},
                files=lambda d: save_classifier(bare, os.path.join(d, "model"), meta))
        ctx.report(metrics, checkpoint)


def restore_training(ctx: "TrainContext", model: nn.Module, opt, sched, name: str, epochs: int,
                     schedule=None) -> tuple[int, list, list]:
    """(first epoch to train, history so far, epochs done at each resume) from the context's latest
    checkpoint, with model, optimizer, LR schedule (and curriculum schedule) state restored."""
    restored = ctx.restore()
    if restored is None:
        return 0, [], []
    tensors, state = restored
    model.load_state_dict(tensors["model"])
    opt.load_state_dict(tensors["opt"])
    sched.load_state_dict(tensors["sched"])
    if schedule is not None:
        schedule.load_state(state["schedule"])
    start = state["epoch"] + 1
    if ctx.rank == 0:
        print(f"[{name}] resuming at epoch {start + 1}/{epochs}", flush=True)
    return start, state["history"], state.get("resumes", []) + [start]


def history_summary(history: list[dict]) -> dict:
    """Final-epoch metrics flattened to the names tools rely on (acc, acc_many, ..., macro_f1)."""
    final = history[-1]
    out = {}
    for split in ("val", "test"):
        if split in final:
            m = final[split]
            for key in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1", "worst_class_acc"):
                out[f"{split}_{key}" if split == "val" else key] = m[key]
            out[f"{split}_per_class_acc"] = m["per_class_acc"]
    out["test_splits"] = {name: {k: m[k] for k in ("acc", "acc_few", "macro_f1")}
                          for name, m in final.get("tests", {}).items()}
    return out
