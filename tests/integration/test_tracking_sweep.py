"""`raysys tune` with `tracking.mlflow_uri` pointing at a real MLflow tracking server on localhost
(slow): one MLflow run per trial in the sweep's experiment, holding the metrics the sweep's own
results hold, and TensorBoard event files of every trial under the run root."""

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from raysys.stages import load_config
from raysys.stages import tune as tune_stage
from tests.conftest import TINY
from tests.unit.test_tracking import read_scalars

pytestmark = pytest.mark.integration

# Two trials, one at a time: the normal one trains its 4 epochs, the starved one (2% of the head
# class, equal steps) is stopped by ASHA at its first rung (epoch 2): see test_tune_stage.py.
SWEEP = ["curriculum.epochs=4", "curriculum.plans=[difficulty]", "curriculum.equal_steps=true",
         "tune.space={curriculum.undersample: {grid: [1.0, 0.02]}}", "tune.num_samples=1", "tune.metric=val_acc",
         "tune.grace_period=2", "tune.reduction_factor=2", "tune.max_concurrent_trials=1", "tune.name=tracked"]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free localhost port with a SQLite store under tmp_path: its URI."""
    pytest.importorskip("mlflow", reason="the tracking extra is not installed (pip install raysys[tracking])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow-server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path / 'mlflow.db'}", "--default-artifact-root", str(tmp_path / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "mlflow-server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_sweep_logs_one_mlflow_run_per_trial_with_the_metrics_it_reported(tiny_synthetic, mlflow_server):
    from mlflow import MlflowClient

    cfg = load_config(TINY, [f"run.root={tiny_synthetic.run.root}", *SWEEP, f"tracking.mlflow_uri={mlflow_server}"])
    m = tune_stage.run(cfg)
    assert m["trials"] == 2 and m["completed"] == 1 and m["stopped"] == 1
    with open(tune_stage.stage_dir(cfg).file("results.csv")) as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}

    client = MlflowClient(tracking_uri=mlflow_server)
    root_name = os.path.basename(str(tiny_synthetic.run.root).rstrip("/"))
    experiment = client.get_experiment_by_name(f"{root_name}/tune/tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(rows)  # one MLflow run per trial, named as its Ray Train run (the trial id)
    for trial_id, row in rows.items():
        run = runs[trial_id]
        completed = row["status"] == "completed"
        assert run.data.tags["raysys.tune_status"] == row["status"] and run.data.tags["raysys.trial_id"] == trial_id
        assert run.info.status == ("FINISHED" if completed else "KILLED")
        assert float(run.data.params["curriculum.undersample"]) == float(row["undersample"])
        assert run.data.params["curriculum.epochs"] == "4" and run.data.params["tune.metric"] == "val_acc"
        # Every epoch's report, at its epoch. A stopped trial's Train run may have trained on past the
        # epoch ASHA stopped it at before it was ended: its result is the report of that epoch.
        epochs = int(row["epochs"])
        history = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "val_acc")}
        assert sorted(history)[:epochs] == list(range(1, epochs + 1)) and (not completed or len(history) == 4)
        assert f"{history[epochs]:.4f}" == row["val_acc"]
        logged = read_scalars(os.path.join(tiny_synthetic.run.root, "tensorboard", "tune", "tracked", trial_id))
        assert sorted(logged["val_acc"])[:epochs] == list(range(1, epochs + 1))
        assert not completed or sorted(logged["val_acc"]) == sorted(history)
        assert logged["val_acc"][epochs] == pytest.approx(history[epochs], rel=1e-6)
        if not completed:  # its final metrics, logged by the sweep's driver: the result ASHA stopped it at
            final = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "final/val_acc")}
            assert f"{final[epochs]:.4f}" == row["val_acc"]

    best = m["best"]
    metrics = runs[best["trial_id"]].data.metrics
    for key in ("val_acc", "val_acc_few", "val_macro_f1", "test_acc", "test_acc_few", "test_macro_f1"):
        if best[key] is not None:
            assert metrics[key] == pytest.approx(best[key], rel=1e-12), key  # what metrics.json holds
    assert metrics["final/test/acc"] == pytest.approx(best["test_acc"], rel=1e-12)
