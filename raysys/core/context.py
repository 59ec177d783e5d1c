"""What a training loop is handed, and the one resume / checkpoint / seed helper every loop uses.

A loop (the classifier, the curriculum, the generator fine-tune) knows nothing of Ray. It gets a
`TrainContext`: its rank, the world size, its device, `prepare_model` (data-parallel wrapping),
`broadcast` (rank 0's object to every rank), `batches` (its input, streamed: rows without images
in, decoded batches out), `report(metrics, checkpoint)` and `restore()`. `raysys.ray.train`
implements it on Ray Train (batches from Ray Data tasks); `LocalContext` runs a loop in one process.

A checkpoint is a folder: `tensors.pt` (state dicts: tensors and plain values only, loaded
with `weights_only=True`, so a checkpoint cannot run code on load), `state.json` (history,
epoch or step, schedule state) and any files the loop adds (the model for the next stage).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

import torch

TENSORS = "tensors.pt"
STATE = "state.json"


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint holds something other than tensors and plain values: it is refused, not run."""


@dataclass
class Checkpoint:
    """What a loop saves: tensors (state dicts), JSON state, and files written into the folder."""

    tensors: dict[str, Any]
    """Model, optimizer and LR-schedule state dicts (tensors and plain values)."""
    state: dict[str, Any]
    """JSON-able progress: epoch or step, history, resumes, schedule state."""
    files: Optional[Callable[[str], None]] = None
    """Writes extra files (the model, the adapters) into the checkpoint folder it is given."""

    def write(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        torch.save(self.tensors, os.path.join(directory, TENSORS))
        with open(os.path.join(directory, STATE), "w") as f:
            json.dump(self.state, f, default=float)
        if self.files is not None:
            self.files(directory)


def read_checkpoint(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, state) of a checkpoint folder; a tensors file holding pickled objects is refused."""
    path = os.path.join(directory, TENSORS)
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(f"{path} holds objects other than tensors and plain values; refusing to load it "
                               f"(delete the run's checkpoints to start afresh): {str(exc).splitlines()[0]}") from None
    with open(os.path.join(directory, STATE)) as f:
        return tensors, json.load(f)


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A seed that depends only on (run seed, epoch or step, rank, stream), never on what ran before:
    a resumed run draws exactly what the uninterrupted one would (batch order, augmentation, dropout)."""
    return (seed * 1_000_003 + step * 101 + rank) * 7 + stream


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def broadcast(self, obj: Any) -> Any: ...

    def batches(self, refs: Any, decode: Callable[[Any], dict], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """`decode` (raysys.data.stream.Decode) of the rows `refs` (a pyarrow table), in order,
        as batches of `batch_size` torch tensors on the CPU."""

    def report(self, metrics: dict[str, Any], checkpoint: Optional[Checkpoint] = None) -> None:
        """Report metrics (rank 0's checkpoint, if given, becomes the latest)."""

    def restore(self) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        """(tensors, state) of the latest checkpoint, or None on a fresh start."""


@dataclass
class LocalContext:
    """One process, no Ray: checkpoints go to `directory` (the latest one is kept)."""

    directory: str
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reports: list[dict] = field(default_factory=list)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def broadcast(self, obj: Any) -> Any:
        return obj

    def batches(self, refs: Any, decode: Callable[[Any], dict], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(refs), batch_size):
            yield {k: torch.from_numpy(v) for k, v in decode(refs.slice(start, batch_size)).items()}

    def report(self, metrics: dict[str, Any], checkpoint: Optional[Checkpoint] = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(self.directory)) or None)
            checkpoint.write(tmp)
            shutil.rmtree(self.directory, ignore_errors=True)
            os.replace(tmp, self.directory)

    def restore(self) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        return read_checkpoint(self.directory) if os.path.isfile(os.path.join(self.directory, STATE)) else None
