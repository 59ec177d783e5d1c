"""A killed classifier run and a killed score resume from their checkpoints, a finished Ray Train run
is restored without training again; config mistakes fail before any work."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from raysys.core import run_layout
from raysys.stages import prepare, score, train_classifier
from tests.conftest import REPO, TINY, kill_after_checkpoints, start_driver

pytestmark = pytest.mark.integration


def test_killed_training_resumes_from_last_checkpoint(tmp_path, ray_session):
    overrides = [f"run.root={tmp_path / 'run'}", "train.epochs=40"]
    from raysys.stages import load_config

    cfg = load_config(TINY, overrides)
    prepare.run(cfg)
    proc = start_driver(ray_session, ["train-classifier", str(TINY), *overrides])
    kill_after_checkpoints(proc, ray_session, str(tmp_path / "run" / "train_classifier" / "ray" / "classifier-*"))
    assert not train_classifier.stage_dir(cfg).is_complete()

    metrics = train_classifier.run(cfg)  # the same command again, on the test session's Ray
    resumed = metrics["resumed_at_epochs"]
    assert len(resumed) == 1 and 1 <= resumed[0] < 40
    assert [r["epoch"] for r in metrics["epochs"]] == list(range(1, 41))


def test_killed_score_resumes_its_fold_models_and_scores_as_the_uninterrupted_run(tiny_run, tmp_path, ray_session):
    from raysys.core.schema import read_manifest
    from raysys.stages import load_config

    cfg, _, _, whole = tiny_run
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier"):  # reuse the finished stages
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)
    again = load_config(TINY, [f"run.root={root}"])
    proc = start_driver(ray_session, ["score", str(TINY), f"run.root={root}"])
    kill_after_checkpoints(proc, ray_session, str(root / "score" / "folds" / "ray" / "oof-k2-fold*"))
    assert not score.stage_dir(again).is_complete()

    metrics = score.run(again)  # the same command again, on the test session's Ray
    resumed = [fold["resumed_at_epochs"] for fold in metrics["fold_models"]]
    assert any(resumed) and all(len(r) <= 1 for r in resumed)
    assert all(1 <= r[0] < cfg.train.epochs for r in resumed if r)
    # Each fold model continued as the uninterrupted one: the same models, the same rows, ids and scores.
    assert [{k: v for k, v in fold.items() if k != "resumed_at_epochs"} for fold in metrics["fold_models"]] == \
        [{k: v for k, v in fold.items() if k != "resumed_at_epochs"} for fold in whole["fold_models"]]
    a, b = (read_manifest(run_layout.scored_manifest(c)) for c in (cfg, again))
    assert b.num_rows == a.num_rows and b["difficulty"].null_count == a["difficulty"].null_count
    assert b.num_rows - b["difficulty"].null_count == whole["rows_scored"]  # the pretrain rows are not scored
    assert b["sample_id"].to_pylist() == a["sample_id"].to_pylist()
    assert b.equals(a)  # every column: split, label, score_mode, difficulty, full_difficulty, ...


def test_a_finished_train_run_is_restored_without_training_again(tiny_run, tmp_path, ray_session):
    # Killed after Ray Train finished but before the stage wrote its done mark: the rerun restores the
    # finished run (its last checkpoint is at the last epoch) and trains nothing.
    import json

    from raysys.stages import load_config

    cfg, _, trained, _ = tiny_run
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier"):
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)
    os.remove(root / "train_classifier" / "metrics.json")
    again = load_config(TINY, [f"run.root={root}"])
    assert not train_classifier.stage_dir(again).is_complete()
    run_dir = str(root / "train_classifier" / "ray" / f"classifier-{train_classifier.stage_dir(again).digest}")
    before = sorted(os.listdir(run_dir))
    with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
        reports = json.load(f)["current_report_index"]
    assert reports == cfg.train.epochs
    os.remove(root / "train_classifier" / "model" / "model.safetensors")  # written again from the last checkpoint

    metrics = train_classifier.run(again)
    assert metrics["status"] == "done" and metrics["resumed_at_epochs"] == []
    assert metrics["epochs"] == trained["epochs"]  # the history, each epoch's seconds included: none ran again
    assert sorted(os.listdir(run_dir)) == before  # no new checkpoint
    with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
        assert json.load(f)["current_report_index"] == reports  # no new report
    with open(os.path.join(cfg.run.root, "train_classifier", "model", "model.safetensors"), "rb") as f:
        assert (root / "train_classifier" / "model" / "model.safetensors").read_bytes() == f.read()


# The CLI and the job entrypoint run in this process (on the test session's Ray): a fresh
# interpreter and Ray per test cost 10-25 s each, and the processes' own behaviour (exit codes,
# a kill) is tested by the killed-run tests.

def test_misspelt_key_fails_before_any_work(tmp_path, capsys):
    from raysys.cli import main

    root = tmp_path / "run"
    assert main(["prepare", str(TINY), f"run.root={root}", "data.imbalanse_ratio=3"]) == 2
    err = capsys.readouterr().err
    assert "data.imbalanse_ratio" in err and "data.imbalance_ratio" in err
    assert not root.exists()


def test_bad_data_source_fails_before_any_work(tmp_path, capsys, ray_session):
    from raysys.cli import main

    root = tmp_path / "run"
    assert main(["prepare", str(TINY), f"run.root={root}", f"data.source=folder:{tmp_path / 'nothing'}"]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert not root.exists()


def test_job_entrypoint_takes_the_cli_arguments(tmp_path, monkeypatch, ray_session):
    import runpy

    monkeypatch.setattr(sys, "argv", ["jobs/prepare.py", str(TINY), f"run.root={tmp_path / 'run'}",
                                      "data.max_per_class=40"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "jobs" / "prepare.py"), run_name="__main__")
    assert exit_.value.code == 0
    from raysys.core.schema import read_manifest

    table = read_manifest(str(tmp_path / "run" / "prepare" / "manifest"))
    splits = table["split"].to_pylist()
    assert splits.count("train") == sum([40, 31, 24, 19, 14, 11, 9, 7, 5, 4])
    assert splits.count("test") == 200


def test_cli_run_chains_the_stages_and_a_rerun_skips_them(tmp_path, tiny_generator, capsys, ray_session):
    # The session's finished classifier and generator stages are copied in (each is tested on its
    # own): `run` skips those six and runs synthesize -> quality -> curriculum -> evaluate -> report, in a
    # process of its own (a driver on the session's Ray); the two reruns run here.
    from raysys.cli import main

    root = tmp_path / "run"
    copied = ("prepare", "train_classifier", "score", "pretrain_generator", "finetune", "control")
    for stage in copied:
        shutil.copytree(os.path.join(tiny_generator[0].run.root, stage), root / stage)
    args = ["run", str(TINY), f"run.root={root}", "synthesis.plans=[{name: plain, model: plain, ratio: 0.1}]",
            "curriculum.schedule=all_levels", "curriculum.epochs=2"]
    first = start_driver(ray_session, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = first.communicate()
    assert first.returncode == 0, err[-2000:]
    assert out.count("complete for this config, skipped") == len(copied)
    from raysys.core.schema import read_manifest

    table = read_manifest(str(root / "score" / "manifest"))
    train = [d for d, s in zip(table["difficulty"].to_pylist(), table["split"].to_pylist()) if s == "train"]
    assert len(train) == 246 and all(d is not None and 0 <= d <= 1 for d in train)
    stages = (*copied, "synthesize", "quality", "curriculum/all_levels", "evaluate", "report")
    for stage in stages:
        assert (root / stage / "config.yaml").is_file() and (root / stage / "metrics.json").is_file()
    assert re.findall(r"^== stage (\d+)/11: \S+ finished in ", out, re.MULTILINE) == [str(i) for i in range(1, 12)]
    assert (root / "report" / "index.html").is_file() and (root / "summary.json").is_file()
    assert (root / "finetune" / "plain" / "adapters" / "pytorch_lora_weights.safetensors").is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("complete for this config, skipped") == len(stages)
    # Resource and concurrency knobs are in no fingerprint: every stage is skipped, one line each.
    resources = ["score.max_actors=2", "synthesis.max_actors=1", "compare.concurrent=1", "train.cpus_per_worker=2"]
    assert main(args + resources) == 0
    knobs = capsys.readouterr().out
    skipped = re.findall(r"^\[(\w+)\] (?:(\S+): )?complete for this config, skipped", knobs, re.MULTILINE)
    assert ["/".join(filter(None, line)) for line in skipped] == list(stages)
