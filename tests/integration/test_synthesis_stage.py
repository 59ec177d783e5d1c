"""The synthesize stage on the session-wide local Ray: exactly the plan is written, a rerun writes
nothing, a killed driver, a killed generation actor or a corrupt part still ends with exactly the
plan, and switching between two versions of a plan keeps both and reuses each (local and S3 roots)."""

import csv
import dataclasses
import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.fs as pafs
import pytest

from raysys.stages import load_config
from raysys.core import io, run_layout
from raysys.core.schema import read_manifest
from raysys.data.export import export_images, latest_version
from raysys.data.images import decode
from raysys.generation.synthesis import list_parts, read_plan, written_ids
from raysys.stages import synthesize
from tests.conftest import TINY, kill_driver, start_driver

pytestmark = pytest.mark.integration

# A plan big enough to take several seconds: one plain-LoRA text plan, small batches.
BIG = ["synthesis.plans=[{name: many, model: plain, ratio: 1.2}]", "synthesis.batch_size=4",
       "synthesis.rows_per_block=8"]


@pytest.fixture(scope="module")
def tiny_synthesis(tiny_generator):
    cfg = tiny_generator[0]
    return cfg, synthesize.run(cfg)


def _copy_finished(cfg, root, stages=("prepare", "train_classifier", "score", "pretrain_generator", "finetune")):
    for stage in stages:
        if "://" in str(root):
            pafs.copy_files(os.path.join(cfg.run.root, stage), io.join(root, stage))
        else:
            shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)


def test_synthesis_writes_exactly_the_plan(tiny_synthesis):
    cfg, m = tiny_synthesis
    table = read_manifest(run_layout.scored_manifest(cfg))
    train = table.filter(np.asarray(table["split"].to_pylist()) == "train")
    counts = np.bincount(train["label"].to_numpy(), minlength=10)
    # The plan's size by hand from configs/tiny.yaml, not from the planning code: a text plan is
    # `ratio` x the real train images (difficulty 0.2, plain 0.1); discl is 6 sources x 2 λ x 2 seeds.
    plans = {p.name: p for p in cfg.synthesis.plans}
    assert [(p.name, p.kind, p.ratio, p.class_shares) for p in cfg.synthesis.plans if p.kind == "text"] == [
        ("difficulty", "text", 0.2, "inverse_frequency"), ("plain", "text", 0.1, "uniform")]
    discl = plans["discl"]
    assert (discl.sources, discl.source_k, discl.guidance_levels, discl.seeds_per_source) == ("top_k", 6, [0.3, 0.7], 2)
    expected = {"difficulty": round(0.2 * len(train)), "plain": round(0.1 * len(train)), "discl": 6 * 2 * 2}
    assert {name: p["planned"] for name, p in m["plans"].items()} == expected
    assert m["planned"] == m["written"] == m["generated"] == sum(expected.values())
    assert m["duplicates"] == 0 and m["filtered"] == 0 and m["kept"] == m["written"]  # classifier_min_p 0
    assert m["images_per_s"] > 0 and sum(a["images"] for a in m["actors"].values()) == m["generated"]
    assert all(0 < a["utilisation"] <= 1.0 for a in m["actors"].values())

    rows = read_plan(synthesize.plan_dir(cfg, "difficulty"))
    assert len(rows) == expected["difficulty"] and rows["requested_difficulty"].null_count == 0
    assert rows["difficulty"].null_count == 0 and rows["generator"].null_count == 0
    assert decode(rows["image"][0].as_py(), 8, 1).shape == (1, 8, 8)
    plain = read_plan(synthesize.plan_dir(cfg, "plain"))
    assert plain["requested_difficulty"].null_count == len(plain) == expected["plain"]
    # Shared over the classes as the plans say: uniform (within one image), and inverse_frequency
    # (a class with fewer real train images never gets fewer synthetic ones).
    per_class = {name: np.bincount(t["label"].to_numpy(), minlength=10) for name, t in (("difficulty", rows),
                                                                                         ("plain", plain))}
    assert per_class["plain"].max() - per_class["plain"].min() <= 1
    fewer = counts[:, None] < counts[None, :]
    assert (per_class["difficulty"][:, None] >= per_class["difficulty"][None, :])[fewer].all()
    assert per_class["difficulty"][counts.argmin()] > per_class["difficulty"][counts.argmax()]
    guided = read_plan(synthesize.plan_dir(cfg, "discl"))
    assert sorted(set(guided["guidance"].to_pylist())) == pytest.approx(discl.guidance_levels)
    hardest = sorted(zip(train["difficulty"].to_pylist(), train["sample_id"].to_pylist()),
                     key=lambda t: (-t[0], t[1]))[: discl.source_k]
    assert set(guided["source_id"].to_pylist()) == {sid for _, sid in hardest}
    assert os.path.getsize(synthesize.stage_dir(cfg).file("difficulty_hist.png")) > 1000


def test_rerun_of_a_finished_plan_writes_nothing(tiny_synthesis):
    cfg, first = tiny_synthesis
    parts = {p: os.stat(p).st_mtime_ns for name in first["plans"] for p in list_parts(synthesize.plan_dir(cfg, name))}
    again = load_config(TINY, [f"run.root={cfg.run.root}", "synthesis.batch_size=7"])  # a resource knob
    assert synthesize.stage_dir(again).digest == synthesize.stage_dir(cfg).digest
    os.remove(synthesize.stage_dir(cfg).file("metrics.json"))  # as if the stage had been killed at its end
    assert not synthesize.stage_dir(again).is_complete()
    m = synthesize.run(again)
    assert m["generated"] == 0 and m["written"] == first["written"] and m["duplicates"] == 0
    assert all(p["already_written"] == p["planned"] for p in m["plans"].values())
    after = {p: os.stat(p).st_mtime_ns for name in m["plans"] for p in list_parts(synthesize.plan_dir(cfg, name))}
    assert after == parts


def test_a_corrupt_part_is_moved_aside_and_regenerated(tiny_synthesis, tmp_path):
    """A finished plan's part cut off mid-file (a store that lost its end): the rerun moves it into
    `_corrupt/`, generates its rows again, and the plan is written exactly once."""
    cfg, first = tiny_synthesis
    root = tmp_path / "run"
    _copy_finished(cfg, root)
    shutil.copytree(os.path.join(cfg.run.root, "synthesize"), root / "synthesize")
    os.remove(root / "synthesize" / "metrics.json")  # the stage reruns: done, then a part went bad
    again = load_config(TINY, [f"run.root={root}"])
    plan = Path(synthesize.plan_dir(again, "plain"))  # the version folder the first run wrote
    part = list_parts(str(plan))[0]
    lost = len(read_manifest(part, columns=["sample_id"]))  # the rows to generate again
    data = open(part, "rb").read()
    with open(part, "wb") as f:
        f.write(data[: len(data) // 2])
    m = synthesize.run(again)
    p = m["plans"]["plain"]
    assert m["generated"] == lost > 0 and p["already_written"] == p["planned"] - lost
    assert p["written"] == p["planned"] == first["plans"]["plain"]["planned"] and p["duplicates"] == 0
    assert set(written_ids(str(plan)).values()) == {1} and len(written_ids(str(plan))) == p["planned"]
    assert open(plan / "_corrupt" / os.path.basename(part), "rb").read() == data[: len(data) // 2]


def test_killed_driver_resumes_with_exactly_the_plan(tiny_generator, tmp_path, ray_session):
    cfg = tiny_generator[0]
    root = tmp_path / "run"
    _copy_finished(cfg, root)
    overrides = [f"run.root={root}", *BIG]
    proc = start_driver(ray_session, ["synthesize", str(TINY), *overrides])
    plan = synthesize.plan_dir(load_config(TINY, overrides), "many")
    deadline = time.time() + 180
    try:
        while len(list_parts(plan)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(list_parts(plan)) >= 3, "no parts appeared before the deadline"
    finally:
        kill_driver(proc, ray_session)
    cfg2 = load_config(TINY, overrides)
    before = len(written_ids(plan))
    assert not synthesize.stage_dir(cfg2).is_complete()
    m = synthesize.run(cfg2)
    p = m["plans"]["many"]
    assert 0 < p["already_written"] == before < p["planned"]
    assert m["generated"] == p["planned"] - before
    assert p["written"] == p["planned"] and p["duplicates"] == 0
    assert set(written_ids(plan).values()) == {1}


def _generation_actor_pids() -> list[int]:
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "GenerateBatch" in cmd and "MapWorker" in cmd:
            out.append(proc.info["pid"])
    return out


def test_killed_generation_actor_is_replaced_and_nothing_is_lost(tiny_generator, tmp_path):
    cfg = tiny_generator[0]
    root = tmp_path / "run"
    _copy_finished(cfg, root)
    cfg2 = load_config(TINY, [f"run.root={root}", *BIG])
    plan = synthesize.plan_dir(cfg2, "many")
    killed = []

    def kill_one_actor_mid_run():
        deadline = time.time() + 120
        while time.time() < deadline and len(list_parts(plan)) < 3:
            time.sleep(0.05)
        pids = _generation_actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_one_actor_mid_run, daemon=True)
    killer.start()
    m = synthesize.run(cfg2)
    killer.join()
    assert killed, "no generation actor process was found to kill"
    p = m["plans"]["many"]
    assert len(list_parts(plan)) > 3 and p["already_written"] == 0
    assert p["written"] == p["planned"] == m["generated"] and m["duplicates"] == 0
    assert set(written_ids(plan).values()) == {1}
    assert len(m["actors"]) >= 2  # the replacement actor is a new process with a new identity


def _plan_files(output):
    """Every file of every plan folder under `output` but latest.json (the stage's own metrics and
    plot lie beside the plan folders): relative path -> (size, modification time, SHA-256)."""
    fs, path = io.filesystem(output)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        name = info.path[len(path):].lstrip("/")
        if info.type == pafs.FileType.File and "/" in name and not name.endswith("/latest.json"):
            with fs.open_input_stream(info.path) as f:
                out[name] = (info.size, info.mtime, hashlib.sha256(f.read()).hexdigest())
    return out


def _switch_back_and_forth(tiny_synthesis, root, out, capsys):
    """Config A (the tiny plans, copied under `root` as `tiny_synthesis` made them, with the
    stages they read) -> B (the `plain` plan changed) -> A -> B: B makes a new version of `plain`
    only, nothing is moved or deleted, the third and fourth runs generate nothing, and exporting
    the plan folder gives the version the last run used."""
    a, first = tiny_synthesis
    _copy_finished(a, root, ("prepare", "train_classifier", "score", "pretrain_generator", "finetune", "synthesize"))
    a = load_config(TINY, [f"run.root={root}"])
    b = dataclasses.replace(a, synthesis=dataclasses.replace(a.synthesis, plans=[
        dataclasses.replace(p, ratio=p.ratio / 2) if p.name == "plain" else p for p in a.synthesis.plans]))
    folder, version_a, version_b = (synthesize.plan_folder(a, "plain"), synthesize.plan_dir(a, "plain"),
                                    synthesize.plan_dir(b, "plain"))
    assert version_a != version_b and {os.path.dirname(version_a), os.path.dirname(version_b)} == {folder}
    assert [synthesize.plan_dir(b, n) for n in ("difficulty", "discl")] == [
        synthesize.plan_dir(a, n) for n in ("difficulty", "discl")]
    output = synthesize.output_root(a)
    after_a = _plan_files(output)
    assert any(k.startswith(f"plain/{os.path.basename(version_a)}/part-") for k in after_a)

    second = synthesize.run(b)
    after_b = _plan_files(output)
    plain = second["plans"]["plain"]
    assert second["generated"] == plain["planned"] and 0 < plain["planned"] < first["plans"]["plain"]["planned"]
    assert plain["path"] == version_b and not plain["reused"] and latest_version(folder) == version_b
    assert second["plans"]["discl"]["reused"] and second["plans"]["difficulty"]["reused"]
    assert {k: v for k, v in after_b.items() if k in after_a} == after_a  # A's files as they were
    assert any(k.startswith(f"plain/{os.path.basename(version_b)}/part-") for k in after_b)

    capsys.readouterr()
    for cfg, made, version in ((a, first, version_a), (b, second, version_b)):
        again = synthesize.run(cfg)
        assert again["generated"] == 0 and again["written"] == again["planned"] == made["planned"]
        assert all(p["reused"] and p["already_written"] == p["planned"] for p in again["plans"].values())
        assert again["plans"]["plain"]["path"] == version and latest_version(folder) == version
        assert f"version {os.path.basename(version)} (finished, reused)" in capsys.readouterr().out
        assert _plan_files(output) == after_b
    assert io.read_json(io.join(version_b, "_plan.json"))["digest"] == os.path.basename(version_b)
    assert export_images(folder, str(out)) == second["plans"]["plain"]["kept"]
    with open(os.path.join(out, "labels.csv"), newline="") as f:
        exported = {row["sample_id"] for row in csv.DictReader(f)}
    assert exported == set(read_plan(version_b)["sample_id"].to_pylist())


def test_switching_plan_versions_back_and_forth_keeps_and_reuses_each(tiny_synthesis, tmp_path, capsys):
    _switch_back_and_forth(tiny_synthesis, tmp_path / "run", tmp_path / "out", capsys)


def test_switching_plan_versions_on_an_s3_root(tiny_synthesis, s3_bucket, tmp_path, capsys):
    _switch_back_and_forth(tiny_synthesis, io.join(s3_bucket, "run"), tmp_path / "out", capsys)
