"""The one checkpoint format of every training loop: tensors loaded with weights_only (a pickled
object is refused), JSON state beside them, and a loop on a LocalContext that resumes exactly."""

import glob
import os
import pickle

import pytest
import torch

from raysys.core.context import Checkpoint, LocalContext, UnsafeCheckpoint, read_checkpoint
from raysys.stages import load_config
from tests.conftest import TINY


class Payload:
    """Anything but tensors and plain values: unpickling it could run code."""


def test_a_checkpoint_round_trips_tensors_and_state(tmp_path):
    Checkpoint({"w": torch.arange(3.0), "opt": {"lr": 0.1, "betas": (0.9, 0.99)}}, {"epoch": 2, "history": [{"a": 1.5}]},
               files=lambda d: open(os.path.join(d, "extra.txt"), "w").write("x")).write(str(tmp_path / "c"))
    tensors, state = read_checkpoint(str(tmp_path / "c"))
    assert torch.equal(tensors["w"], torch.arange(3.0)) and tensors["opt"]["betas"] == (0.9, 0.99)
    assert state == {"epoch": 2, "history": [{"a": 1.5}]} and (tmp_path / "c" / "extra.txt").read_text() == "x"


def test_a_tensors_file_holding_a_pickled_object_is_refused(tmp_path):
    Checkpoint({"w": torch.zeros(1)}, {"epoch": 0}).write(str(tmp_path))
    with open(tmp_path / "tensors.pt", "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
        read_checkpoint(str(tmp_path))
    torch.save({"model": Payload()}, tmp_path / "tensors.pt")  # torch's own format, same refusal
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(str(tmp_path))


class Killed(RuntimeError):
    pass


class KilledAfter(LocalContext):
    """A LocalContext whose process 'dies' right after its n-th report."""

    def __init__(self, directory, n):
        super().__init__(directory)
        self.n = n

    def report(self, metrics, checkpoint=None):
        super().report(metrics, checkpoint)
        if len(self.reports) == self.n:
            raise Killed


def test_a_classifier_loop_killed_and_resumed_continues_as_the_uninterrupted_one(tmp_path):
    from raysys.core import run_layout
    from raysys.stages import prepare
    from raysys.training.classifier import ClassifierJob, ClassifierSetup, classifier_loop

    cfg = load_config(TINY, [f"run.root={tmp_path / 'run'}", "train.epochs=4", "train.checkpoint_every=1"])
    prep = prepare.run(cfg)
    job = ClassifierJob(setup=ClassifierSetup.of(cfg), manifest=run_layout.real_manifest(cfg),
                        num_classes=prep["num_classes"], groups=prep["groups"], epochs=4)
    whole = LocalContext(str(tmp_path / "whole"))
    classifier_loop(whole, job)
    with pytest.raises(Killed):
        classifier_loop(KilledAfter(str(tmp_path / "killed"), 2), job)
    resumed = LocalContext(str(tmp_path / "killed"))
    classifier_loop(resumed, job)
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    _, a = read_checkpoint(whole.directory)
    _, b = read_checkpoint(resumed.directory)
    assert b["resumes"] == [2] and a["resumes"] == []
    assert [h["train_loss"] for h in b["history"]] == [h["train_loss"] for h in a["history"]]
    assert b["history"][-1]["test"]["acc"] == a["history"][-1]["test"]["acc"]
    assert os.path.isfile(os.path.join(resumed.directory, "model", "model.safetensors"))


def test_pretraining_killed_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    # Model, moving average, optimiser, LR schedule and the random generator's state are restored:
    # the resumed run draws the same batches and noise and ends with the same weights, bit for bit.
    from safetensors.torch import load_file

    from raysys.core.config import PretrainConfig
    from raysys.data.images import decode_batch
    from raysys.data.sources import load_builtin_digits
    from raysys.generation.pretrain import PIPELINE_DIR, PretrainJob, pretrain_base, pretrain_loop

    src = load_builtin_digits()
    cfg = PretrainConfig(image_size=8, block_out_channels=[16, 32], cross_attention_levels=[False, True],
                         cross_attention_dim=32, steps=12, batch_size=8, lr=0.003, checkpoint_every=4)
    job = PretrainJob(images=decode_batch(src.images[:100], 8, 1), labels=src.labels[:100],
                      class_names=src.class_names, cfg=cfg, prompt_template="a photo of the digit {name}", log=None)
    whole = LocalContext(str(tmp_path / "whole"))
    pretrain_loop(whole, job)
    with pytest.raises(Killed):
        pretrain_loop(KilledAfter(str(tmp_path / "killed"), 2), job)
    assert read_checkpoint(str(tmp_path / "killed"))[1]["step"] == 8
    resumed = LocalContext(str(tmp_path / "killed"))
    pretrain_loop(resumed, job)
    assert [r["step"] for r in whole.reports] == [4, 8, 12] and [r["step"] for r in resumed.reports] == [12]
    _, a = read_checkpoint(whole.directory)
    _, b = read_checkpoint(resumed.directory)
    assert a["resumes"] == [] and b["resumes"] == [8] and b["losses"] == a["losses"] and len(a["losses"]) == 12
    files = sorted(glob.glob("*/*.safetensors", root_dir=os.path.join(whole.directory, PIPELINE_DIR)))
    assert len(files) == 2  # the UNet and the text encoder
    for name in files:
        wa, wb = (load_file(os.path.join(c.directory, PIPELINE_DIR, name)) for c in (whole, resumed))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    # pretrain_base with the same checkpoint folder resumes too: a finished run trains no more.
    metrics = pretrain_base(job.images, job.labels, job.class_names, cfg, job.prompt_template, str(tmp_path / "out"),
                            log=None, checkpoint_dir=resumed.directory)
    assert metrics["resumed_at_steps"] == [8] and metrics["steps"] == 12
    assert sorted(glob.glob("*/*.safetensors", root_dir=tmp_path / "out")) == files
