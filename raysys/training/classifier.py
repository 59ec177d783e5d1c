"""Classifier training and evaluation in plain torch (no Ray): one epoch, prediction, metrics.

`classifier_loop` is the whole fit against a `TrainContext` (raysys.core.context): Ray Train
runs it through raysys.ray.train, a test through `LocalContext`. No split is ever held: the
loop holds the rows without their images (raysys.data.stream), and every epoch's shard and
every evaluation streams through `ctx.batches`, decoded and augmented where the context decodes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from raysys.core.config import ClassifierConfig, TrainConfig
from raysys.core.context import Checkpoint, step_seed
from raysys.core.schema import manifest_files
from raysys.models.classifiers import create_classifier, normalize, save_classifier
from raysys.scoring.difficulty import assign_folds
from raysys.training import optim
from raysys.data.augment import mix_batch, soft_cross_entropy
from raysys.data.stream import Decode, index_rows, row_seeds, split_rows, stream_refs
from raysys.training.metrics import classification_metrics

if TYPE_CHECKING:
    from raysys.core.config import RaysysConfig
    from raysys.core.context import TrainContext


def manifest_rows(manifest: str, splits: Sequence[str], extra: Sequence[str] = ()) -> tuple[list[str], pa.Table]:
    """(the manifest's Parquet files, its rows of `splits` without images: sample_id, label, split,
    `extra`, file, row)."""
    files = manifest_files(manifest)
    where = pc.field("split").isin(list(splits))
    return files, index_rows(files, ["sample_id", "label", "split", *extra], where=where)


def make_optimizer(model: nn.Module, t: TrainConfig, steps_per_epoch: int):
    """The optimizer and per-step LR schedule of the `train` recipe (raysys.training.optim)."""
    return optim.make_optimizer(
        model, optimizer=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
        nesterov=t.nesterov, schedule=t.schedule, epochs=t.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=t.warmup_epochs, step_milestones=t.step_milestones, step_gamma=t.step_gamma)


def for_device(model: nn.Module, device: torch.device) -> nn.Module:
    """On a GPU: channels_last (the layout its convolutions and bf16 autocast are fastest in)."""
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def _inputs(images_uint8: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    x = normalize(images_uint8.to(device, non_blocking=True), model)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _autocast(device: torch.device):
    """bf16 autocast on a GPU, nothing on the CPU."""
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def train_epoch(
    model: nn.Module,
    ctx: "TrainContext",
    refs: pa.Table,
    decode: Decode,
    opt: torch.optim.Optimizer,
    sched,
    *,
    recipe: TrainConfig,
    num_classes: int,
    generator: torch.Generator,
    device: torch.device,
    log_prior: torch.Tensor | None = None,
) -> float:
    """One pass over the rows `refs` (this rank's shard, in training order), streamed through
    `ctx.batches`; mean loss. Mixup / CutMix and label smoothing follow `recipe`; mixing draws
    come from `generator`.

    `log_prior` (log class frequencies) turns cross-entropy into Balanced Softmax: the logits
    are shifted by the prior during training only, so predictions are prior-free."""
    model.train()
    total, count = 0.0, 0
    mixing = recipe.mixup > 0 or recipe.cutmix > 0
    for i, batch in enumerate(ctx.batches(refs, decode, recipe.batch_size)):
        y = batch["label"]
        if len(y) < 2 and i > 0:
            break  # BatchNorm cannot train on one image; every rank has the same shard length
        x, y = _inputs(batch["image"], model, device), y.to(device, non_blocking=True)
        targets = None
        if mixing:
            x, targets = mix_batch(x, y, num_classes, mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix,
                                   label_smoothing=recipe.label_smoothing, generator=generator)
        with _autocast(device):
            logits = model(x)
        logits = logits.float()
        if log_prior is not None:
            logits = logits + log_prior.to(logits.device)
        weight = batch.get("weight")  # per-row loss weights (mixing is not allowed with them: check_curriculum)
        if targets is not None:
            loss = soft_cross_entropy(logits, targets.to(device))
        elif weight is not None:  # a row's weight scales its share of the batch's mean
            per_row = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing, reduction="none")
            loss = (per_row * weight.to(device)).mean()
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, ctx: "TrainContext", refs: pa.Table, decode: Decode, device: torch.device,
            batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, p(y|x) of the row's label) of every row of `refs`, in order, streamed."""
    model.eval()
    preds, p_true = [], []
    for batch in ctx.batches(refs, decode, batch_size):
        with _autocast(device):
            logits = model(_inputs(batch["image"], model, device))
        probs = torch.softmax(logits.float(), dim=1).cpu()
        preds.append(probs.argmax(1).numpy())
        p_true.append(probs.gather(1, batch["label"].view(-1, 1)).squeeze(1).numpy())
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(preds), np.concatenate(p_true)


def evaluate(model: nn.Module, ctx: "TrainContext", rows: pa.Table, decode: Decode, num_classes: int,
             groups: dict[str, list[int]], device: torch.device) -> dict:
    """Classification metrics on the rows `rows` (one split), streamed."""
    if len(rows) == 0:
        raise ValueError("evaluate: no images to evaluate on")
    pred, _ = predict(model, ctx, stream_refs(rows), decode, device)
    labels = rows["label"].to_numpy().astype(np.int64)
    domains = rows["domain"].to_pylist() if "domain" in rows.column_names else None
    return classification_metrics(labels, pred, num_classes, groups, domains)


def check_train(t: TrainConfig) -> list[str]:
    """Problems of the `train` section."""
    problems = []
    if t.epochs < 1 or t.batch_size < 1 or t.checkpoint_every < 1 or t.num_workers < 1:
        problems.append("train.epochs, train.batch_size, train.checkpoint_every and train.num_workers must be >= 1")
    if t.lr <= 0:
        problems.append("train.lr must be > 0")
    if t.input_tasks < 0 or t.input_cpus < 0 or t.prefetch_batches < 0:
        problems.append("train.input_tasks, train.input_cpus and train.prefetch_batches must be >= 0")
    if isinstance(t.augment, (bool, str)):
        problems.append(f"train.augment is a list of names, got {t.augment!r}: e.g. [shift], or [] for none")
        return problems
    return problems + optim.check_recipe(t.optimizer, t.schedule, t.lr, t.momentum, t.warmup_epochs, t.epochs,
                                         t.step_milestones, t.step_gamma, t.label_smoothing, t.mixup, t.cutmix,
                                         t.augment)


@dataclass
class ClassifierSetup:
    """What a classifier fit reads of the config, and nothing more: the model, its recipe, the
    images it sees, the splits it is measured on and its seed (`of` picks them from a config)."""

    classifier: ClassifierConfig
    """The `classifier` section: the model's name, width and starting weights."""
    train: TrainConfig
    """The `train` section: optimizer, LR schedule, batch size, augmentation, checkpoint cadence."""
    image_size: int
    """data.image_size: the side of the square images the model sees."""
    channels: int
    """data.channels: 1 grayscale, 3 RGB."""
    val_split: str
    """data.val_split: measured after every epoch."""
    test_splits: list[str]
    """data.test_splits: measured after the last epoch, the first of them the headline."""
    seed: int
    """run.seed: initial weights, folds, shuffles and augmentation draws."""

    @staticmethod
    def of(cfg: "RaysysConfig") -> "ClassifierSetup":
        """The setup `cfg` describes."""
        return ClassifierSetup(classifier=cfg.classifier, train=cfg.train, image_size=cfg.data.image_size,
                               channels=cfg.data.channels, val_split=cfg.data.val_split,
                               test_splits=list(cfg.data.test_splits), seed=cfg.run.seed)

    def eval_splits(self) -> list[str]:
        """The validation split and the test splits (the headline first)."""
        return [self.val_split, *self.test_splits]

    def create_model(self, num_classes: int) -> nn.Module:
        """A new classifier of this setup (weights from `classifier.weights`, else torch's RNG)."""
        c = self.classifier
        return create_classifier(c.name, num_classes, self.channels, width=c.width, weights=c.weights,
                                 image_size=self.image_size)

    def meta(self, num_classes: int) -> dict:
        """What `save_classifier` records beside the weights, so `load_classifier` rebuilds the model."""
        return {"name": self.classifier.name, "num_classes": num_classes, "in_chans": self.channels,
                "width": self.classifier.width, "image_size": self.image_size}


@dataclass
class ClassifierJob:
    """One classifier fit: which rows it trains on, for how long."""

    setup: ClassifierSetup
    """The model, its recipe, images, splits and seed."""
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


def classifier_loop(ctx: "TrainContext", job: ClassifierJob) -> None:
    """Train (or resume) the classifier, one report per epoch; the last checkpoint holds `model/`
    and the whole history (per-epoch train loss, validation metrics, test metrics at the end)."""
    s, seed = job.setup, job.setup.seed
    rank, world = ctx.rank, ctx.world_size
    torch.manual_seed(seed)
    files, rows = manifest_rows(job.manifest, ["train", *s.eval_splits()], extra=["domain"])
    train = split_rows(rows, "train")
    if job.fold is not None:
        folds = assign_folds(train["sample_id"].to_pylist(), train["label"].to_numpy(), job.folds, seed)
        train = train.filter(pa.array(folds != job.fold))
    evals = {name: split_rows(rows, name) for name in s.eval_splits()}
    size, chans = s.image_size, s.channels
    decode_train, decode_eval = Decode(files, size, chans, tuple(s.train.augment)), Decode(files, size, chans)

    model = ctx.prepare_model(for_device(s.create_model(job.num_classes), ctx.device))
    bare = getattr(model, "module", model)
    per_rank = len(train) // world
    opt, sched = make_optimizer(model, replace(s.train, epochs=job.epochs), -(-per_rank // s.train.batch_size))
    start, history, resumes = restore_training(ctx, bare, opt, sched, job.name, job.epochs)

    for epoch in range(start, job.epochs):
        t0 = time.time()
        torch.manual_seed(step_seed(seed, epoch, rank))
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(step_seed(seed, epoch, 0, 1)))
        shard = perm[rank * per_rank: (rank + 1) * per_rank].numpy()
        refs = stream_refs(train, shard, row_seeds(len(shard), seed, epoch, rank, 2))
        gen = torch.Generator().manual_seed(step_seed(seed, epoch, rank, 2))
        loss = train_epoch(model, ctx, refs, decode_train, opt, sched, recipe=s.train, num_classes=job.num_classes,
                           generator=gen, device=ctx.device)
        val_m = evaluate(bare, ctx, evals[s.val_split], decode_eval, job.num_classes, job.groups, ctx.device)
        record = {"epoch": epoch + 1, "train_loss": round(loss, 6), "seconds": round(time.time() - t0, 3), "val": val_m}
        last = epoch == job.epochs - 1
        if last:
            record["tests"] = {name: evaluate(bare, ctx, evals[name], decode_eval, job.num_classes, job.groups,
                                              ctx.device) for name in s.test_splits}
            record["test"] = record["tests"][s.test_splits[0]]
        history.append(record)
        if rank == 0:
            few = val_m["acc_few"]
            print(f"[{job.name}] epoch {epoch + 1}/{job.epochs} loss {loss:.4f} val acc {val_m['acc']:.4f}"
                  f" few {few if few is None else round(few, 4)} ({record['seconds']:.1f}s)", flush=True)
        metrics = {"epoch": epoch + 1, "train_loss": loss, "val_acc": val_m["acc"], "val_acc_few": val_m["acc_few"]}
        checkpoint = None
        if rank == 0 and (last or (epoch + 1) % s.train.checkpoint_every == 0):
            meta = s.meta(job.num_classes)
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
    out["test_splits"] = {name: {k: m.get(k) for k in ("acc", "acc_few", "macro_f1", "worst_domain_acc")}
                          for name, m in final.get("tests", {}).items()}
    return out
