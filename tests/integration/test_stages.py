"""prepare -> train-classifier -> score on the tiny config, on the session-wide local Ray."""

import json
import os

import numpy as np
import pyarrow.compute as pc
import pytest

from raysys.core import run_layout
from raysys.core.schema import MANIFEST_SCHEMA, read_manifest
from raysys.stages import prepare, score, train_classifier

pytestmark = pytest.mark.integration


def test_prepare_writes_splits_and_metrics(tiny_run):
    cfg, prep, _, _ = tiny_run
    table = read_manifest(run_layout.real_manifest(cfg))
    assert table.schema == MANIFEST_SCHEMA
    counts = prep["counts"]
    assert counts["train"][0] == 60 and counts["train"][-1] == 6
    assert counts["val"] == [10] * 10 and counts["test"] == [20] * 10 and counts["pretrain"] == [20] * 10
    assert len(set(table["sample_id"].to_pylist())) == len(table)
    assert prep["bad_files_count"] == 0
    root = cfg.run.root
    assert os.path.isfile(os.path.join(root, "prepare", "config.yaml"))


def test_classifier_metrics_per_epoch(tiny_run):
    cfg, prep, trained, _ = tiny_run
    assert len(trained["epochs"]) == cfg.train.epochs
    for record in trained["epochs"]:
        for key in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1", "per_class_acc"):
            assert key in record["val"]
        assert len(record["val"]["per_class_acc"]) == 10
    first, last = trained["epochs"][0], trained["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]
    assert trained["acc"] > 0.5  # well above chance (0.1) on the balanced test split
    assert trained["acc_many"] > trained["acc_few"]  # the long tail shows
    assert os.path.isfile(os.path.join(run_layout.classifier_model(cfg), "model.safetensors"))


def test_scores_cover_every_train_row_out_of_fold(tiny_run):
    cfg, prep, trained, scored = tiny_run
    table = read_manifest(run_layout.scored_manifest(cfg))
    train = table.filter(pc.equal(table["split"], "train"))
    d = train["difficulty"].to_numpy(zero_copy_only=False)
    assert len(train) == sum(prep["counts"]["train"]) and not np.isnan(d).any()
    assert ((d >= 0) & (d <= 1)).all()
    p_true = train["p_true"].to_numpy(zero_copy_only=False)
    assert np.allclose(d, 1 - p_true, atol=1e-6)
    assert set(train["score_mode"].to_pylist()) == {"oof-k2-fold0", "oof-k2-fold1"}
    assert set(table.filter(pc.equal(table["split"], "test"))["score_mode"].to_pylist()) == {"full"}
    assert pc.all(pc.is_null(table.filter(pc.equal(table["split"], "pretrain"))["difficulty"])).as_py()
    assert scored["mode"] == "oof" and scored["folds"] == 2
    # A model that trained on a row finds it easier than one that never saw it.
    assert scored["mean_difficulty"]["train"] > scored["train_mean_difficulty_full_model"] + 0.05
    groups = scored["train_mean_difficulty_by_group"]
    assert groups["few"] > groups["many"]
    assert os.path.getsize(os.path.join(cfg.run.root, "score", "difficulty_hist.png")) > 5000
    with open(os.path.join(cfg.run.root, "score", "metrics.json")) as f:
        assert json.load(f)["status"] == "done"


def test_rerun_of_complete_stages_is_skipped(tiny_run):
    cfg, prep, trained, scored = tiny_run
    mtime = os.path.getmtime(run_layout.scored_manifest(cfg))
    assert train_classifier.run(cfg)["seconds"] == trained["seconds"]
    assert score.run(cfg)["seconds"] == scored["seconds"]
    assert os.path.getmtime(run_layout.scored_manifest(cfg)) == mtime


def test_two_data_parallel_workers_train_one_model(tmp_path, ray_session):
    from raysys.stages import load_config
    from tests.conftest import TINY

    cfg = load_config(TINY, [f"run.root={tmp_path / 'run'}", "train.num_workers=2", "train.epochs=12",
                             "train.batch_size=16"])
    prepare.run(cfg)
    metrics = train_classifier.run(cfg)
    assert metrics["num_workers"] == 2 and len(metrics["epochs"]) == 12
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["acc"] > 0.4  # well above chance on the balanced test split


def test_ray_data_input_trains_exactly_as_decoding_in_the_worker(tmp_path, ray_session):
    """train.input_tasks > 0 streams every epoch's shard and the validation split through Ray Data
    tasks; the batches arrive in the loop's order with the same augmentation, so the fit is the
    one the worker's own decoding (input_tasks 0) gives, loss for loss."""
    from raysys.ray.train import Workers, fit
    from raysys.stages import load_config
    from raysys.training.classifier import ClassifierJob, ClassifierSetup, classifier_loop
    from tests.conftest import TINY

    cfg = load_config(TINY, [f"run.root={tmp_path / 'run'}", "train.epochs=3", "train.batch_size=32"])
    prep = prepare.run(cfg)
    job = ClassifierJob(setup=ClassifierSetup.of(cfg), manifest=run_layout.real_manifest(cfg),
                        num_classes=prep["num_classes"], groups=prep["groups"], epochs=3)
    histories = {}
    for tasks in (0, 2):
        workers = Workers(input_tasks=tasks, prefetch_batches=1)
        histories[tasks] = fit(classifier_loop, job, workers, f"input-{tasks}", str(tmp_path / "ray"))["history"]
    assert [h["train_loss"] for h in histories[2]] == [h["train_loss"] for h in histories[0]]
    assert histories[2][-1]["val"]["acc"] == histories[0][-1]["val"]["acc"]
    assert histories[0][-1]["train_loss"] < histories[0][0]["train_loss"]


def test_init_ray_env_vars_reach_the_workers(ray_session, monkeypatch):
    """What init_ray hands workers, read back by a task: an embedded Ray's workers inherit the
    variables it set before starting Ray (the session's Ray was started by init_ray), and the
    runtime env it gives ray.init when joining a cluster puts run.hf_home in a worker's environment."""
    import raysys.ray.session as session
    from tests.unit.test_storage import stub_ray_init

    def environ(names: list[str]) -> dict:  # defined here, so a worker need not import this module
        return {name: os.environ.get(name) for name in names}

    embedded = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    assert embedded is not None
    read = ray_session.remote(num_cpus=0)(environ)
    assert ray_session.get(read.remote(["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"])) == {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": embedded}

    with monkeypatch.context() as m:
        calls = stub_ray_init(m)
        session.init_ray("10.0.0.1:6379", None, {"HF_HOME": "/mnt/hf-cache"})
    seen = ray_session.get(read.options(runtime_env=calls[-1]["runtime_env"]).remote(["HF_HOME"]))
    assert seen == {"HF_HOME": "/mnt/hf-cache"}
