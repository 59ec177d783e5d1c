"""The caption stage on the session-wide local Ray with a tiny BLIP built from its config (no
download): 1 and 2 actors write the same captions, a killed run resumes without captioning a part
twice, and the captions reach the prompts the fine-tune's UNet saw and the synthesis prompts."""

import os
import shutil
import time

import pyarrow.compute as pc
import pytest

from raysys.core import run_layout
from raysys.core.schema import list_parts, read_manifest
from raysys.core.loading import ConfigError
from raysys.generation.plan_versions import plan_dir
from raysys.generation.prompts import fill_prompt
from raysys.stages import caption, finetune, load_config, prepare, score, synthesize
from tests.captioners import make_tiny_blip
from tests.conftest import TINY, kill_driver, start_driver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


def _copy(cfg, root, *stages):
    for stage in stages:
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)


def _captions(cfg) -> dict[str, str]:
    rows = read_manifest(run_layout.captioned_manifest(cfg), columns=["sample_id", "split", "caption"])
    return {sid: c for sid, split, c in zip(*(rows[k].to_pylist() for k in ("sample_id", "split", "caption")))
            if split == "train"}


def test_two_actors_write_the_captions_of_one_and_a_killed_run_resumes(tiny_run, blip, tmp_path, ray_session):
    # Two actors, uninterrupted, on prepare's parts.
    root = tmp_path / "two"
    _copy(tiny_run[0], root, "prepare")
    cfg = load_config(TINY, [f"run.root={root}", f"captions.model={blip}", "captions.min_actors=2",
                             "captions.max_actors=2", "captions.batch_size=4"])
    m = caption.run(cfg)
    two = _captions(cfg)
    assert m["rows_captioned"] == m["captioned_this_run"] == len(two) == sum(tiny_run[1]["counts"]["train"])
    assert m["parts_resumed"] == 0 and m["empty_captions"] == 0 and len(m["samples"]) == caption.SAMPLES
    rows = read_manifest(run_layout.captioned_manifest(cfg), columns=["split", "caption"])
    assert rows["caption"].null_count == sum(s != "train" for s in rows["split"].to_pylist())  # train only
    assert os.path.getsize(caption.STAGE.dir(cfg).file("captions.png")) > 1000
    assert len(set(two.values())) > 1

    # One actor, on parts of 8 rows, killed part-way, then run again: only the parts not written are captioned.
    overrides = [f"captions.model={blip}", "captions.batch_size=4", "data.rows_per_part=8"]
    root = tmp_path / "killed"
    cfg = load_config(TINY, [f"run.root={root}", *overrides])
    parts = prepare.run(cfg)["parts"]
    proc = start_driver(ray_session, ["caption", str(TINY), f"run.root={root}", *overrides])
    folder = run_layout.captioned_manifest(cfg)
    deadline = time.time() + 180
    try:
        while len(list_parts(folder)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        kill_driver(proc, ray_session)
    written = len(list_parts(folder))
    assert 3 <= written < parts and not caption.STAGE.dir(cfg).is_complete()
    m = caption.run(cfg)
    assert m["parts_resumed"] == written and m["parts"] == parts
    assert m["captioned_this_run"] < m["rows_captioned"] == len(two)
    rows = read_manifest(folder, columns=["sample_id"])
    assert len(rows) == len(set(rows["sample_id"].to_pylist()))  # none twice
    assert _captions(cfg) == two  # the same captions: 1 actor or 2, parts of any size, killed or not


def test_a_captioner_that_cannot_load_is_refused_in_one_line(tiny_run, tmp_path):
    root = tmp_path / "bad"
    _copy(tiny_run[0], root, "prepare")
    cfg = load_config(TINY, [f"run.root={root}", f"captions.model={tmp_path / 'no-such-model'}"])
    with pytest.raises(ConfigError) as err:
        caption.run(cfg)
    assert "no-such-model" in str(err.value) and "\n" not in str(err.value)
    assert not os.path.exists(run_layout.captioned_manifest(cfg))  # refused before any part


def test_captions_reach_the_fine_tune_and_the_synthesis_prompts(tiny_generator, blip, tmp_path):
    cfg0 = tiny_generator[0]
    root = tmp_path / "captioned"
    _copy(cfg0, root, "prepare", "train_classifier")
    template = "a photo of the digit {name}, {caption}"
    base = os.path.join(cfg0.run.root, "pretrain_generator", "pipeline")  # a local base: nothing to pretrain
    cfg = load_config(TINY, [
        f"run.root={root}", f"captions.model={blip}", f"generator.prompt_template={template}", "score.mode=full",
        f"generator.base={base}", "finetune.variants=[plain]", "finetune.steps=2", "finetune.checkpoint_every=2",
        "synthesis.plans=[{name: discl, model: plain, kind: discl, sources: top_k, source_k: 3, "
        "guidance_levels: [0.5], seeds_per_source: 1, negative_prompt: blurry}, "
        "{name: text, model: plain, kind: text, ratio: 0.05}]"])
    caption.run(cfg)
    assert score.run(cfg)["rows_scored"] > 0  # scoring reads the captioned manifest and carries it on
    scored = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "label", "split", "caption"],
                           where=pc.field("split") == "train")
    captions = dict(zip(scored["sample_id"].to_pylist(), scored["caption"].to_pylist()))
    assert captions == _captions(cfg) and all(captions.values())
    names = run_layout.stage_metrics(cfg, "prepare")["class_names"]
    by_class: dict[str, set[str]] = {}
    for label, text in zip(scored["label"].to_pylist(), scored["caption"].to_pylist()):
        by_class.setdefault(names[label], set()).add(fill_prompt(template, names[label], text))

    seen = finetune.run(cfg)["variants"]["plain"]["prompts_seen"]
    assert seen and all(any(p in prompts for prompts in by_class.values()) for p in seen)  # what the UNet saw

    synthesize.run(cfg)
    rows = read_manifest(plan_dir(cfg, "discl"), columns=["source_id", "prompt", "class_name"])
    assert len(rows) == 3
    for source, prompt, name in zip(*(rows[k].to_pylist() for k in ("source_id", "prompt", "class_name"))):
        assert prompt == fill_prompt(template, name, captions[source])  # the source's own caption
    text = read_manifest(plan_dir(cfg, "text"), columns=["prompt", "class_name"])
    assert len(text) >= 5
    for prompt, name in zip(text["prompt"].to_pylist(), text["class_name"].to_pylist()):
        assert prompt in by_class[name]  # a caption of the row's own class
