"""Experiment tracking without Ray (raysys.ray.tracking): what a run reports is what TensorBoard's
event files and an MLflow `file:` store hold, a resumed run logs on into the same MLflow run, and a
config asking for MLflow without mlflow installed is refused before any work."""

import glob
import importlib.util
import os
import struct
from dataclasses import replace

import pytest

from raysys.core.loading import ConfigError
from raysys.ray import tracking
from raysys.ray.tracking import Tracking, flat_params, scalars
from raysys.stages import load_config
from tests.conftest import TINY

REPORTS = [
    {"epoch": 1, "train_loss": 1.25, "val_acc": 0.5, "val_acc_few": None},
    {"epoch": 2, "train_loss": 0.75, "val_acc": 0.625, "val_acc_few": 0.25},
    {"epoch": 3, "train_loss": 0.5, "val_acc": 0.75, "val_acc_few": 0.5, "test_acc": 0.7},
]
LAST_RECORD = {"epoch": 3, "train_loss": 0.5, "val": {"acc": 0.75, "acc_few": 0.5, "per_class_acc": [0.5, 1.0]},
               "test": {"acc": 0.7, "macro_f1": 0.65}, "selection": "real"}
FINAL = {"final/epoch": 3.0, "final/train_loss": 0.5, "final/val/acc": 0.75, "final/val/acc_few": 0.5,
         "final/test/acc": 0.7, "final/test/macro_f1": 0.65}


def read_scalars(logdir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the TensorBoard event files under `logdir` (TFRecords of Event protos)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])  # after the length and its CRC
            pos += 12 + length + 4  # and the data's CRC
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def _train(spec: Tracking, storage: str, name: str = "classifier-abc", reports=REPORTS) -> tracking.Tracker:
    tracker = spec.tracker(name, storage).open()
    for i, metrics in enumerate(reports):
        last = i == len(reports) - 1
        tracker.log(metrics, {"history": [LAST_RECORD]} if last else None)  # a checkpoint with the last report
    tracker.close()
    return tracker


def _spec(tmp_path, **kw) -> Tracking:
    return Tracking(stage="train_classifier", root=str(tmp_path / "run"), sections=("train",),
                    params={"train.lr": "0.005", "train.epochs": "3"}, **kw)


def test_tensorboard_holds_every_reported_scalar_and_the_final_ones(tmp_path):
    tracker = _train(_spec(tmp_path, tensorboard=True), str(tmp_path / "run" / "train_classifier" / "ray"))
    logdir = tmp_path / "run" / "tensorboard" / "train_classifier" / "classifier-abc"
    assert tracker.tensorboard_dir == str(logdir)
    got = read_scalars(logdir)
    want: dict[str, dict[int, float]] = {}
    for metrics in REPORTS:
        for key, value in metrics.items():
            if value is not None:
                want.setdefault(key, {})[metrics["epoch"]] = value
    want.update({key: {3: value} for key, value in FINAL.items()})
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6), key  # event files hold float32

    # Resumed (a rerun after a kill): a second event file beside the first, the history goes on.
    _train(_spec(tmp_path, tensorboard=True), str(tmp_path / "run" / "train_classifier" / "ray"),
           reports=[{"epoch": 4, "train_loss": 0.25}])
    assert len(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))) == 2
    assert read_scalars(logdir)["train_loss"] == pytest.approx({1: 1.25, 2: 0.75, 3: 0.5, 4: 0.25})


def test_a_run_root_that_is_a_uri_gets_the_event_files_copied_after_every_report(tmp_path):
    import pyarrow.fs as pafs

    from raysys.core import io

    remote = tmp_path / "bucket"
    remote.mkdir()
    io.register_filesystem("tbtest", lambda location: (pafs.SubTreeFileSystem(str(remote), pafs.LocalFileSystem()),
                                                       location.split("://", 1)[1]))
    try:
        spec = replace(_spec(tmp_path, tensorboard=True), root="tbtest://run")
        tracker = spec.tracker("classifier-abc", "tbtest://run/train_classifier/ray").open()
        tracker.log(REPORTS[0])
        logdir = remote / "run" / "tensorboard" / "train_classifier" / "classifier-abc"
        assert read_scalars(logdir)["train_loss"] == {1: 1.25}  # there after the report, before the end
        for metrics in REPORTS[1:]:
            tracker.log(metrics)
        tracker.close()
        assert read_scalars(logdir)["val_acc"] == {1: 0.5, 2: 0.625, 3: 0.75}
        assert not os.path.exists(tracker.tb_local)  # the local copy is gone
    finally:
        io.register_filesystem("tbtest", None)


def test_params_are_the_declared_sections_flattened_and_metrics_their_finite_numbers():
    cfg = load_config(TINY)
    params = flat_params(cfg, ("classifier", "run.seed", "synthesis.plans"))
    assert params["classifier.name"] == "small_cnn" and params["classifier.weights"] == "None"
    assert params["run.seed"] == "0" and params["synthesis.plans.2.guidance_levels"] == "[0.3, 0.7]"
    assert scalars({"a": 1, "b": None, "c": {"d": 0.5, "e": [1.0]}, "f": float("nan"), "g": "x", "h": True}) == \
        {"a": 1.0, "c/d": 0.5}


def test_mlflow_without_mlflow_installed_is_refused_before_any_work(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install raysys\[tracking\]") as info:
        load_config(TINY, ["tracking.mlflow_uri=http://127.0.0.1:5000"])
    assert "\n" not in str(info.value)
    assert load_config(TINY).tracking.mlflow_uri is None  # off by default: nothing to install


def test_mlflow_file_store_holds_params_every_report_and_the_final_metrics(tmp_path):
    pytest.importorskip("mlflow", reason="the tracking extra is not installed (pip install raysys[tracking])")
    from mlflow import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    spec = _spec(tmp_path, tensorboard=False, mlflow_uri=store, experiment="tiny", tags={"raysys.stage": "train_classifier"})
    storage = str(tmp_path / "run" / "train_classifier" / "ray")
    tracker = _train(spec, storage)
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "classifier-abc" and run.info.status == "FINISHED"
    assert run.data.params == spec.params
    assert run.data.tags[tracking.RUN_KEY] == f"{storage}/classifier-abc" == tracker.key
    for key in ("train_loss", "val_acc", "val_acc_few", "test_acc"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {r["epoch"]: r[key] for r in REPORTS if r.get(key) is not None}, key
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("final/")} == FINAL

    # The same Train run resumed (a rerun after a kill): one MLflow run still, its history goes on.
    _train(spec, storage, reports=[{"epoch": 4, "train_loss": 0.25, "val_acc": 0.8}])
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3, 4]
