"""`raysys tune` on the tiny run (slow, both): an ASHA sweep of 4 trials over curriculum fields,
the results table, the best config that `raysys curriculum` runs as is, a rerun that trains
nothing; and a sweep interrupted with Ctrl-C that resumes."""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from raysys.stages import load_config
from raysys.core.stage import missing_inputs
from raysys.stages import curriculum
from raysys.stages import tune as tune_stage
from tests.conftest import REPO, TINY, kill_driver, start_driver

pytestmark = pytest.mark.integration

# The grid puts a starved trial (2% of the head-class images, equal steps) after every normal one;
# with one trial at a time ASHA sees the normal trial's epoch-2 accuracy first and stops the
# starved one at its first rung.
SWEEP = ["curriculum.epochs=6", "curriculum.plans=[difficulty]", "curriculum.equal_steps=true",
         "tune.space={curriculum.undersample: {grid: [1.0, 0.02]}, "
         "curriculum.schedule: {choice: [all_levels, easy_to_hard]}, "
         "curriculum.difficulty_params.0: {uniform: [0.2, 0.8]}, curriculum.synthetic_per_epoch: {uniform: [0.2, 1.0]}}",
         "curriculum.difficulty_distribution=normal", "tune.num_samples=2", "tune.metric=val_acc",
         "tune.grace_period=2", "tune.reduction_factor=2", "tune.max_concurrent_trials=1"]


@pytest.mark.slow
def test_asha_sweep_writes_ranked_results_and_a_runnable_best_config(tiny_synthetic):
    cfg = load_config(TINY, [f"run.root={tiny_synthetic.run.root}", *SWEEP])
    m = tune_stage.run(cfg)
    assert m["trials"] == 4 and m["error"] == 0 and m["completed"] + m["stopped"] == 4
    assert m["stopped"] >= 1 and m["completed"] >= 1
    stage = tune_stage.stage_dir(cfg)
    with open(stage.file("results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    for r in rows:
        epochs = int(r["epochs"])
        assert epochs in (2, 4, 6), r  # ASHA stops trials only at its rungs (grace 2, reduction 2)
        assert (r["status"] == "completed") == (epochs == 6)
        assert (r["test_acc"] != "") == (r["status"] == "completed")  # test metrics only at the last epoch
        assert 0.2 <= float(r["difficulty_params.0"]) <= 0.8 and r["schedule"] in ("all_levels", "easy_to_hard")
    assert sorted(r["undersample"] for r in rows) == ["0.0200", "0.0200", "1.0000", "1.0000"]
    assert all(r["status"] == "stopped" for r in rows if r["undersample"] == "0.0200")
    completed = [float(r["val_acc"]) for r in rows if r["status"] == "completed"]
    assert rows[0]["status"] == "completed" and float(rows[0]["val_acc"]) == max(completed)  # best first
    with open(stage.file("results.md")) as f:
        assert len(f.read().strip().splitlines()) == 2 + 4

    best = load_config(stage.file("best.yaml"))
    c = best.curriculum
    assert c.name == "tuned-sweep" and best.compare.variants == {}
    assert c.undersample == 1.0 and c.schedule == rows[0]["schedule"]
    assert c.synthetic_per_epoch == pytest.approx(float(rows[0]["synthetic_per_epoch"]), abs=1e-4)
    assert c.difficulty_params[0] == pytest.approx(float(rows[0]["difficulty_params.0"]), abs=1e-4)
    assert c.difficulty_params[1] == cfg.curriculum.difficulty_params[1] and c.epochs == 6
    assert m["best"]["trial_id"] == rows[0]["trial_id"] and m["best"]["val_acc"] == pytest.approx(float(rows[0]["val_acc"]), abs=1e-4)
    # best.yaml runs as is: on the same run root its upstream stages are complete.
    assert curriculum.stage_dir(best).path.endswith(os.path.join("curriculum", "tuned-sweep"))
    assert curriculum.STAGE.check(best) == []  # the schedule builds over the plans' levels
    missing_inputs(curriculum.STAGE, [best])  # and every input it needs is complete

    again = tune_stage.run(cfg)
    assert again["seconds"] == m["seconds"]  # complete: skipped, nothing retrained


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_keeps_its_finished_trials(tiny_synthetic, ray_session, tmp_path):
    """Ctrl-C after the first of two trials ends: the command exits 130 without results; the same
    command then restores the sweep, keeps the finished trial and runs the other."""
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator", "finetune", "synthesize"):
        shutil.copytree(os.path.join(tiny_synthetic.run.root, stage), root / stage)
    # Join the session's cluster: a second Ray instance on this machine breaks Ray Train's
    # placement-group cleaner, so the group of a trial ASHA stops would never be freed.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    sweep = [*SWEEP, "tune.num_samples=1"]  # the grid's two trials: a normal one, then a starved one
    cmd = [sys.executable, "-m", "raysys.cli", "tune", str(TINY), f"run.root={root}", *sweep]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_ended = None
    for line in proc.stdout:
        found = re.search(r"\[tune\] 1/2 trials ended: (\S+) ", line)
        if found:
            first_ended = found.group(1)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert first_ended is not None and proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    cfg = load_config(TINY, [f"run.root={root}", *sweep])
    assert not tune_stage.stage_dir(cfg).is_complete()
    trial_runs = os.path.join(tune_stage.stage_dir(cfg).path, "ray", "trials", first_ended)
    checkpoints_before = sorted(os.listdir(trial_runs))

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming the interrupted sweep" in again.stdout
    m = tune_stage.stage_dir(cfg).metrics()
    assert m["trials"] == 2 and m["error"] == 0
    with open(tune_stage.stage_dir(cfg).file("results.csv")) as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert first_ended in rows and len(rows) == 2
    assert sorted(os.listdir(trial_runs)) == checkpoints_before  # the finished trial was not trained again


@pytest.mark.slow
def test_hard_killed_sweep_resumes_and_keeps_its_finished_trial(tiny_synthetic, ray_session, tmp_path):
    """SIGKILL (no chance to save) right after the first of two trials ends: Tune's own record of the
    sweep may be up to its save period old, so the rerun may find that trial still running. Either
    way the rerun trains it no further and reports it completed, with its final metrics."""
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator", "finetune", "synthesize"):
        shutil.copytree(os.path.join(tiny_synthetic.run.root, stage), root / stage)
    sweep = [*SWEEP, "tune.num_samples=1"]  # the grid's two trials: a normal one, then a starved one
    proc = start_driver(ray_session, ["tune", str(TINY), f"run.root={root}", *sweep],
                        stdout=subprocess.PIPE, text=True)
    first_ended = None
    try:
        for line in proc.stdout:
            found = re.search(r"\[tune\] 1/2 trials ended: (\S+) completed", line)
            if found:
                first_ended = found.group(1)
                break
    finally:
        kill_driver(proc, ray_session)
    assert first_ended is not None
    cfg = load_config(TINY, [f"run.root={root}", *sweep])
    assert not tune_stage.stage_dir(cfg).is_complete()
    trial_run = os.path.join(tune_stage.stage_dir(cfg).path, "ray", "trials", first_ended)
    checkpoints_before = sorted(os.listdir(trial_run))

    m = tune_stage.run(cfg)  # the same command again, on the test session's Ray
    assert m["trials"] == 2 and m["error"] == 0
    with open(tune_stage.stage_dir(cfg).file("results.csv")) as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    finished = rows[first_ended]
    assert finished["status"] == "completed" and finished["epochs"] == "6" and finished["test_acc"] != ""
    assert [r["status"] for r in rows.values() if r["trial_id"] != first_ended] == ["stopped"]
    assert sorted(os.listdir(trial_run)) == checkpoints_before  # not trained again
