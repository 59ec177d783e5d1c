"""The curriculum stage on the tiny run: a fixed schedule trains on the levels it should, and a
killed adaptive run resumes at the same stage with the same choices as an uninterrupted one."""

import re
import os
import shutil

import pytest

from raysys.stages import load_config
from raysys.stages import curriculum
from tests.conftest import TINY, kill_after_checkpoints, start_driver

pytestmark = pytest.mark.integration


def _copy(cfg, root):
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator", "finetune", "control", "synthesize",
                  "quality"):
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)


def test_diverse_to_specific_walks_the_guidance_levels(tiny_synthetic):
    cfg = load_config(TINY, [f"run.root={tiny_synthetic.run.root}", "curriculum.epochs=5", "curriculum.plans=[discl]",
                             "curriculum.curriculum_epochs=4"])
    m = curriculum.run(cfg)
    assert m["trace"] == ["λ=0.3", "λ=0.3", "λ=0.7", "λ=0.7", "real only"]
    epochs = m["epochs"]
    assert all(e["synthetic"] > 0 and e["matching"] == 12 for e in epochs[:4]) and epochs[4]["synthetic"] == 0
    assert all(e["real"] == epochs[0]["real"] for e in epochs)
    for key in ("acc", "acc_many", "acc_medium", "acc_few", "macro_f1", "worst_3_acc"):
        assert m[key] is not None and 0.0 <= m[key] <= 1.0, key
    assert len(m["per_class_acc"]) == 10
    assert os.path.isfile(os.path.join(curriculum.stage_dir(cfg).path, "model", "model.safetensors"))
    # (A real-only run's trace and its count of synthetic images: the comparison test below.)
    assert curriculum.stage_dir(cfg).path != curriculum.stage_dir(load_config(
        TINY, [f"run.root={tiny_synthetic.run.root}", "curriculum.schedule=real_only"])).path


ADAPTIVE = ["curriculum.schedule=adaptive", "curriculum.plans=[discl]", "curriculum.guidance_val_sources=2",
            "curriculum.stage_epochs=4", "curriculum.epochs=24", "curriculum.curriculum_epochs=20"]


def test_killed_adaptive_run_resumes_with_the_same_choices(tiny_synthetic, tmp_path, ray_session):
    whole_root, killed_root = tmp_path / "whole", tmp_path / "killed"
    _copy(tiny_synthetic, whole_root)
    _copy(tiny_synthetic, killed_root)
    whole = curriculum.run(load_config(TINY, [f"run.root={whole_root}", *ADAPTIVE]))
    assert len(whole["adaptive_choices"]) == 5 and whole["resumed_at_epochs"] == []
    assert all(e["guidance_val_acc"].keys() == {"real", "0.3", "0.7"} for e in whole["epochs"])

    overrides = [f"run.root={killed_root}", *ADAPTIVE]
    proc = start_driver(ray_session, ["curriculum", str(TINY), *overrides])
    kill_after_checkpoints(proc, ray_session, str(killed_root / "curriculum" / "adaptive" / "ray" / "*"))
    cfg = load_config(TINY, overrides)
    assert not curriculum.stage_dir(cfg).is_complete()
    resumed = curriculum.run(cfg)
    assert len(resumed["resumed_at_epochs"]) == 1 and 1 <= resumed["resumed_at_epochs"][0] < 24
    assert resumed["adaptive_choices"] == whole["adaptive_choices"]
    assert resumed["trace"] == whole["trace"]
    assert [e["epoch"] for e in resumed["epochs"]] == list(range(1, 25))
    assert resumed["acc"] == pytest.approx(whole["acc"]) and resumed["acc_few"] == pytest.approx(whole["acc_few"])


def test_two_data_parallel_workers_share_the_adaptive_choice(tiny_synthetic, tmp_path):
    root = tmp_path / "run"
    _copy(tiny_synthetic, root)
    m = curriculum.run(load_config(TINY, [f"run.root={root}", "curriculum.schedule=adaptive", "curriculum.plans=[discl]",
                                          "curriculum.guidance_val_sources=2", "curriculum.stage_epochs=2",
                                          "curriculum.epochs=5", "curriculum.curriculum_epochs=4",
                                          "curriculum.num_workers=2"]))
    assert set(m["adaptive_choices"]) == {"0", "1"} and set(m["adaptive_choices"].values()) <= {0.3, 0.7}
    assert m["trace"][:4] == [f"λ={m['adaptive_choices'][str(e // 2)]:g}" for e in range(4)]
    assert m["trace"][4] == "real only" and 0.0 <= m["acc"] <= 1.0


COMPARE = ["curriculum.epochs=3", "compare.seeds=[0, 1]", "compare.concurrent=2", "compare.reference=true",
           "compare.variants={real_only: {schedule: real_only}, "
           "dts: {schedule: diverse_to_specific, plans: [discl], curriculum_epochs: 2}}"]


def test_run_trains_every_variant_and_seed_then_evaluates_and_reports(tiny_synthetic, tmp_path):
    from raysys.cli import main
    from raysys.core import io
    from raysys.core.comparison import variant_config
    from raysys.stages import evaluate, report

    root = tmp_path / "compare"
    _copy(tiny_synthetic, root)
    overrides = [f"run.root={root}", *COMPARE]
    assert main(["run", str(TINY), *overrides]) == 0
    cfg = load_config(TINY, overrides)
    ev = evaluate.stage_dir(cfg).metrics()
    assert ev["baseline"] == "real_only" and list(ev["variants"]) == ["real_only", "dts", "reference"]
    # The reference trains on train + the generator's pretrain images, real only, with Balanced Softmax.
    prep = io.read_json(str(root / "prepare" / "metrics.json"))
    reference = curriculum.stage_dir(variant_config(cfg, "reference", 0)).metrics()
    plain = curriculum.stage_dir(variant_config(cfg, "real_only", 0)).metrics()
    assert reference["epochs"][0]["real"] == plain["epochs"][0]["real"] + sum(prep["counts"]["pretrain"])
    assert ev["variants"]["reference"]["loss"] == "balanced_softmax"
    # Headroom recovery by hand: the only real-only variant on train alone is the best real-only one.
    h = ev["headroom"]
    assert h["best_real_only"] == "real_only" and h["reference"] == "reference"
    for key in ("acc", "acc_few"):
        best, ref, dts = (ev["variants"][v]["per_seed"][key] for v in ("real_only", "reference", "dts"))
        want = [(d - b) / (r - b) if r > b else None for d, b, r in zip(dts, best, ref)]
        assert h["recovery"]["dts"][key]["per_seed"] == pytest.approx(want)
        assert h["recovery"]["real_only"][key]["per_seed"] == [0.0 if r > b else None for b, r in zip(best, ref)]
    for name in ("real_only", "dts"):
        runs = [curriculum.stage_dir(variant_config(cfg, name, seed)).metrics() for seed in (0, 1)]
        row = ev["variants"][name]
        assert row["per_seed"]["acc"] == [r["acc"] for r in runs] and row["seeds"] == [0, 1]
        assert row["acc"] == pytest.approx(sum(r["acc"] for r in runs) / 2)
        assert row["acc_std"] == pytest.approx(abs(runs[0]["acc"] - runs[1]["acc"]) / 2 ** 0.5)
    assert ev["variants"]["dts"]["trace"] == ["λ=0.3", "λ=0.7", "real only"]
    assert ev["variants"]["real_only"]["trace"] == ["real only"] * 3
    assert [curriculum.stage_dir(variant_config(cfg, "real_only", s)).metrics()["synthetic_images_seen"]
            for s in (0, 1)] == [0, 0]
    # The verdict follows from the per-seed numbers by evaluate's rule: "beats" only if the mean
    # paired (seed by seed) difference is above 0 in both overall and few-class accuracy.
    mean_diff = {}
    for key in ("acc", "acc_few"):
        pairs = zip(ev["variants"]["dts"]["per_seed"][key], ev["variants"]["real_only"]["per_seed"][key])
        diffs = [d - b for d, b in pairs]
        mean_diff[key] = sum(diffs) / 2
        assert ev["comparisons"]["dts"][key]["mean_diff"] == pytest.approx(mean_diff[key])
    verdict = "beats" if mean_diff["acc"] > 0 and mean_diff["acc_few"] > 0 else "does not beat"
    assert ev["comparisons"]["dts"]["verdict"] == verdict
    # The seeds are different runs: different initial weights.
    weights = [io.read_bytes(curriculum.stage_dir(variant_config(cfg, "real_only", s)).file("model", "model.safetensors"))
               for s in (0, 1)]
    assert weights[0] != weights[1]

    page = (root / "report" / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert {"class_x_s_grid.png", "class_x_lambda_grid.png", "hard_factors.png",
            "synthetic_difficulty_hist.png"} <= set(images)
    assert all((root / "report" / name).stat().st_size > 1000 for name in images)
    markdown = (root / "report" / "index.md").read_text()
    assert "| dts | diverse_to_specific |" in markdown and "λ=0.3 ×1 → λ=0.7 ×1 → real only ×1" in markdown
    assert "## Headroom recovery" in markdown and "| variant | overall recovered % | few recovered %" in markdown
    assert "## Synthetic-set quality" in markdown and "Plan 'discl':" in markdown and "quality_by_lambda.png" in images
    assert ev["variants"]["dts"]["quality"]["discl"]["train_fid"] > 0 and ev["variants"]["real_only"]["quality"] == {}
    assert "quality_train_fid" in (root / "evaluate" / "results.csv").read_text().splitlines()[0]
    summary = io.read_json(str(root / "summary.json"))
    assert summary["results"]["dts"]["acc_few"] == ev["variants"]["dts"]["acc_few"]
    assert summary["synthesis"]["duplicates"] == 0 and summary["stage_seconds"]["evaluate"] is not None
    assert summary["stage_seconds"]["curriculum"] > 0  # the wall time of the 6 runs, 2 at a time
    assert len(summary["verdicts"]) == 2 and summary["verdicts"][1].startswith("reference ")
    assert summary["verdicts"][0].startswith(
        "dts beats real_only:" if verdict == "beats" else "dts does NOT beat real_only:")

    done = {p: p.stat().st_mtime for p in (root / "curriculum").glob("*/metrics.json")}
    assert len(done) == 6
    assert main(["run", str(TINY), *overrides]) == 0  # everything complete: nothing retrained
    assert {p: p.stat().st_mtime for p in done} == done
    assert report.stage_dir(cfg).is_complete()

    # Killed part-way through report, then evaluate: what a kill leaves is the files written so far
    # (each write is atomic), so the run dies after its first write here. The stage is not done,
    # and the same command finishes it with the outputs of the uninterrupted run.
    first = {"report": {name: (root / "report" / name).read_bytes() for name in ("index.md", "index.html")},
             "evaluate": {"results.csv": (root / "evaluate" / "results.csv").read_bytes()}}
    first_metrics = {name: dict(io.read_json(str(root / name / "metrics.json"))) for name in first}
    for name, stage in (("report", report), ("evaluate", evaluate)):
        (root / name / "metrics.json").unlink()  # as if this stage had never finished
        write_bytes, writes = io.write_bytes, []

        def dies_after_one_write(location, data):
            if writes:
                raise KeyboardInterrupt(f"killed before writing {location}")
            writes.append(location)
            write_bytes(location, data)

        io.write_bytes = dies_after_one_write
        try:
            with pytest.raises(KeyboardInterrupt):
                stage.run(cfg)
        finally:
            io.write_bytes = write_bytes
        assert len(writes) == 1 and not stage.stage_dir(cfg).is_complete()
        again = stage.run(cfg)
        assert {f: (root / name / f).read_bytes() for f in first[name]} == first[name]
        strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "written")}  # noqa: E731
        assert strip(again) == strip(first_metrics[name])
