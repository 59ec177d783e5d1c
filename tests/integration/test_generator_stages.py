"""pretrain-generator -> finetune on the tiny config, on the session-wide local Ray; a killed
pretraining and a killed fine-tune resume from their checkpoints."""

import glob
import json
import os
import shutil
import time

import pytest
import torch

from raysys.core import run_layout
from raysys.stages import load_config
from raysys.generation.pipeline import LORA_WEIGHTS
from raysys.stages import control, finetune, pretrain_generator
from tests.conftest import TINY, kill_after_checkpoints, kill_driver, start_driver

pytestmark = pytest.mark.integration


def test_pretrained_base_is_a_pipeline_and_recognition_is_measured(tiny_generator):
    cfg, pre, _, ctl = tiny_generator
    assert pre["status"] == "done" and pre["steps"] == cfg.pretrain.steps and pre["resumed_at_steps"] == []
    assert pre["loss_end"] < pre["loss_start"]
    assert pre["pretrain_images"] == 10 * cfg.data.pretrain_per_class
    assert 0.0 <= ctl["recognition"] <= 1.0 and len(ctl["recognition_per_class"]) == 10
    assert ctl["recognition_images"] == 10 * control.RECOGNITION_SEEDS
    assert 0.0 <= ctl["recognition_real_same_size"] <= 1.0
    assert os.path.isfile(os.path.join(run_layout.pretrained_pipeline(cfg), "model_index.json"))
    assert os.path.getsize(control.stage_dir(cfg).file("samples.png")) > 1000


def test_finetune_writes_standard_lora_and_the_proof_of_control(tiny_generator):
    cfg, _, fine, ctl = tiny_generator
    assert set(fine["variants"]) == {"difficulty", "plain"}
    for variant in ("difficulty", "plain"):
        adapters = run_layout.adapters(cfg, variant)
        assert os.path.isfile(os.path.join(adapters, LORA_WEIGHTS))
        assert os.path.isdir(os.path.join(adapters, "difficulty_encoder")) == (variant == "difficulty")
        v = fine["variants"][variant]
        assert v["steps"] == cfg.finetune.steps and v["resumed_at_steps"] == []
        c = ctl["control"][variant]
        n = 10 * len(cfg.control.grid_levels) * cfg.control.grid_seeds
        assert c["images"] == n and len(c["measured_mean_by_level"]) == len(cfg.control.grid_levels)
        assert all(0 <= x <= 1 for x in c["measured_mean_by_level"])
    rho = ctl["difficulty_spearman"]
    assert rho is not None and -1 <= rho <= 1  # value at tiny size is noise; quickstart size is reported
    for png in ("control_grid.png", "hard_factors.png", "requested_vs_measured.png", "difficulty_control_hist.png"):
        assert os.path.getsize(control.stage_dir(cfg).file(png)) > 1000, png
    # The fine-tuned generator loads from its files alone and honours the difficulty condition.
    from raysys.generation.finetune import load_finetuned

    pipe = load_finetuned(run_layout.pretrained_pipeline(cfg), run_layout.adapters(cfg, "difficulty"))
    out = pipe(["a photo of the digit one"] * 2, seeds=[3, 3], class_labels=[1, 1], difficulty=[0.1, 0.9],
               num_inference_steps=4, output_type="pt").images
    assert out.shape == (2, 1, 8, 8) and (out[0] - out[1]).abs().max() > 0
    metrics = json.loads(open(control.stage_dir(cfg).file("metrics.json")).read())
    assert metrics["status"] == "done" and "difficulty_spearman" in metrics


def test_rerun_skips_complete_generator_stages(tiny_generator):
    cfg, pre, fine, ctl = tiny_generator
    t0 = time.time()
    assert pretrain_generator.run(cfg)["config_digest"] == pre["config_digest"]
    assert finetune.run(cfg)["config_digest"] == fine["config_digest"]
    assert control.run(cfg)["config_digest"] == ctl["config_digest"]
    assert time.time() - t0 < 5


def test_killed_finetune_resumes_from_last_checkpoint(tiny_generator, tmp_path, ray_session):
    cfg = tiny_generator[0]
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator"):  # reuse the finished stages
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)
    overrides = [f"run.root={root}", "finetune.variants=[plain]",
                 "synthesis.plans=[{name: plain, model: plain}]", "finetune.steps=30", "finetune.checkpoint_every=5"]
    again = load_config(TINY, overrides)
    assert pretrain_generator.stage_dir(again).is_complete()
    proc = start_driver(ray_session, ["finetune", str(TINY), *overrides])
    kill_after_checkpoints(proc, ray_session, str(root / "finetune" / "ray" / "finetune-plain-*"))
    assert not finetune.stage_dir(again).is_complete()
    metrics = finetune.run(again)
    resumed = metrics["variants"]["plain"]["resumed_at_steps"]
    assert len(resumed) == 1 and 5 <= resumed[0] < 30 and resumed[0] % 5 == 0
    assert metrics["variants"]["plain"]["losses_logged"] == 30  # one loss per step, none repeated or lost


def test_killed_pretraining_resumes_and_ends_with_the_uninterrupted_weights(tiny_generator, tmp_path, ray_session):
    from safetensors.torch import load_file

    cfg, pre = tiny_generator[0], tiny_generator[1]
    root = tmp_path / "run"
    shutil.copytree(os.path.join(cfg.run.root, "prepare"), root / "prepare")
    overrides = [f"run.root={root}", "pretrain.checkpoint_every=4"]  # not in the digest: the same run as tiny's
    again = load_config(TINY, overrides)
    assert pretrain_generator.stage_dir(again).digest == pretrain_generator.stage_dir(cfg).digest
    proc = start_driver(ray_session, ["pretrain-generator", str(TINY), *overrides])
    kill_after_checkpoints(proc, ray_session, str(root / "pretrain_generator" / "ray" / "pretrain-*"))
    assert not pretrain_generator.stage_dir(again).is_complete()
    metrics = pretrain_generator.run(again)  # the same command again, on the test session's Ray
    resumed = metrics["resumed_at_steps"]
    assert len(resumed) == 1 and 4 <= resumed[0] < cfg.pretrain.steps and resumed[0] % 4 == 0
    assert metrics["steps"] == cfg.pretrain.steps
    # The resumed run drew the batches and noise of the uninterrupted one: the same losses, the same weights.
    assert (metrics["loss_start"], metrics["loss_end"]) == (pre["loss_start"], pre["loss_end"])
    files = sorted(glob.glob("*/*.safetensors", root_dir=run_layout.pretrained_pipeline(cfg)))
    assert len(files) == 2  # the UNet and the text encoder
    assert sorted(glob.glob("*/*.safetensors", root_dir=run_layout.pretrained_pipeline(again))) == files
    for name in files:
        a, b = (load_file(os.path.join(run_layout.pretrained_pipeline(c), name)) for c in (cfg, again))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def _without_timings(value):
    """`value` with every wall-time entry dropped (they differ between runs), floats compared closely."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return pytest.approx(value, rel=1e-6) if isinstance(value, float) else value


def test_killed_control_reruns_to_the_uninterrupted_measurements(tiny_generator, tmp_path, ray_session):
    """control holds no resumable work (one Ray task): killed while its task generates, it is not
    done, and the same command measures what the uninterrupted run measured."""
    from ray.util.state import list_tasks

    cfg, ctl = tiny_generator[0], tiny_generator[3]
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator", "finetune"):
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)
    overrides = [f"run.root={root}"]
    proc = start_driver(ray_session, ["control", str(TINY), *overrides])
    address = ray_session.get_runtime_context().gcs_address
    measuring = [("name", "=", "_measure"), ("state", "=", "RUNNING")]
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not list_tasks(address, filters=measuring):
            time.sleep(0.2)
        time.sleep(0.3)  # part-way through its grids
        assert proc.poll() is None, "control ended before it was killed"
    finally:
        kill_driver(proc, ray_session)
    again = load_config(TINY, overrides)
    assert not control.stage_dir(again).is_complete()
    m = control.run(again)
    assert m["recognition_images"] > 0 and set(m["control"]) == set(ctl["control"])
    assert _without_timings(m) == _without_timings(ctl)
    assert {p.name for p in (root / "control").glob("*.png")} == {
        os.path.basename(p) for p in glob.glob(os.path.join(cfg.run.root, "control", "*.png"))}
