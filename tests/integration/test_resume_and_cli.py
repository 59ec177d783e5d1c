"""A killed classifier run resumes from its checkpoint; config mistakes fail before any work."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from raysys.stages import prepare, train_classifier
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
    # own): `run` skips those six and runs synthesize -> curriculum -> evaluate -> report, in a
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
    stages = (*copied, "synthesize", "curriculum/all_levels", "evaluate", "report")
    for stage in stages:
        assert (root / stage / "config.yaml").is_file() and (root / stage / "metrics.json").is_file()
    assert re.findall(r"^== stage (\d+)/10: \S+ finished in ", out, re.MULTILINE) == [str(i) for i in range(1, 11)]
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
