"""The quality stage on the tiny run: the real-versus-real level, every plan by group, the files, skip
and rerun; and the measures through the run's classifier on a copying generator and on noise."""

import csv
import os
import shutil

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from raysys.core import run_layout
from raysys.core.loading import ConfigError
from raysys.core.schema import read_manifest
from raysys.data.images import encode_png
from raysys.quality.features import FeatureExtractor
from raysys.quality.groups import FeatureSet, Reference, measure
from raysys.stages import load_config, quality
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def test_quality_measures_every_plan_by_group_skips_when_rerun_and_reruns_for_another_extractor(tiny_synthetic, capsys,
                                                                                              tmp_path):
    cfg = tiny_synthetic  # the fixture ran the stage
    m = quality.stage_dir(cfg).metrics()
    plans = m["plans"]
    assert set(plans) == {quality.REAL, "difficulty", "plain", "discl"}
    real = plans[quality.REAL]["overall"]
    assert real["images"] == 200 and real["train_images"] > 200  # test against train: 20 a class
    assert real["train_precision"] > 0.5 and real["train_recall"] > 0.5  # the real-versus-real level
    discl = plans["discl"]["rows"]
    assert sorted(r["group"] for r in discl if r["by"] == "lambda") == ["0.3", "0.7"]
    assert all(r["closer_than_source"] is not None for r in discl if r["by"] == "lambda")
    difficulty = plans["difficulty"]["rows"]
    assert {r["by"] for r in difficulty} == {"overall", "s", "class_group", "class"}
    assert sum(r["images"] for r in difficulty if r["by"] == "s") == plans["difficulty"]["overall"]["images"]
    assert all(not r["reliable"] for r in difficulty if r["by"] == "class")  # a few images a class: marked
    with open(quality.stage_dir(cfg).file("quality.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == sum(len(p["rows"]) for p in plans.values())
    assert set(m["figures"]) >= {"quality_by_lambda.png", "quality_by_s.png", "closest_discl.png"}

    capsys.readouterr()
    assert quality.run(cfg)["seconds"] == m["seconds"]  # complete for this config: skipped
    assert "complete for this config, skipped" in capsys.readouterr().out

    root = tmp_path / "run"  # another extractor, on a copy: the shared run keeps its finished stage
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator", "finetune", "synthesize", "quality"):
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)
    copied = load_config(TINY, [f"run.root={root}"])
    assert quality.stage_dir(copied).is_complete()
    timm_cfg = load_config(TINY, [f"run.root={root}", "quality.extractor=test_resnet", "quality.pretrained=false"])
    assert quality.stage_dir(timm_cfg).digest != quality.stage_dir(copied).digest
    other = quality.run(timm_cfg)  # reruns in the same folder with the other extractor
    assert other["extractor"] == "test_resnet" and other["feature_dim"] == 96
    assert other["plans"]["discl"]["overall"]["images"] == m["plans"]["discl"]["overall"]["images"]
    assert not quality.stage_dir(copied).is_complete()


def test_an_unknown_extractor_is_refused_before_any_work(tiny_cfg):
    with pytest.raises(ConfigError, match="quality.extractor 'no_such_net'"):
        tiny_cfg("quality.extractor=no_such_net")


def test_a_copying_generator_and_noise_through_the_run_classifier(tiny_run):
    cfg = tiny_run[0]
    extract = FeatureExtractor("classifier", run_layout.classifier_model(cfg))
    table = read_manifest(run_layout.scored_manifest(cfg), columns=["sample_id", "label", "image", "split"],
                          where=pc.field("split").isin(["train", "test"]))
    split = np.asarray(table["split"].to_pylist())
    labels = table["label"].to_numpy().astype(np.int64)
    images = table["image"].to_pylist()
    is_train = split == "train"
    train = Reference(FeatureSet(torch.from_numpy(extract([im for im, t in zip(images, is_train) if t])),
                                 labels[is_train]), k=5)
    groups = {c: "many" for c in range(10)}
    names = [str(c) for c in range(10)]

    # A copying generator: its rows are train images decoded and encoded again.
    from raysys.data.images import decode

    copies = [encode_png(decode(im, 8, 1)[0]) for im, t in zip(images, is_train) if t]
    copied = measure(FeatureSet(torch.from_numpy(extract(copies)), labels[is_train]), train, None, groups, names)[0]
    assert copied["copies"] > 0.99 and copied["train_fid"] < 1e-3

    # The held-out test images: the real-versus-real level.
    test = FeatureSet(torch.from_numpy(extract([im for im, t in zip(images, ~is_train) if t])), labels[~is_train])
    held_out = measure(test, train, None, groups, names)[0]
    assert held_out["train_precision"] > 0.8 and held_out["train_recall"] > 0.8 and held_out["copies"] < 0.1

    # Noise images, far below that level. (The tiny run's 16-channel classifier on 8 px digits maps a third of
    # uniform noise into some train image's 5-NN ball; the quickstart's classifier, none: docs/quality.md.)
    rng = np.random.default_rng(0)
    noise = [encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(200)]
    noisy = measure(FeatureSet(torch.from_numpy(extract(noise)), rng.integers(0, 10, 200)), train, None, groups, names)[0]
    assert noisy["train_precision"] < held_out["train_precision"] / 2 and noisy["train_density"] < 0.25
    assert noisy["train_recall"] < 0.1 and noisy["copies"] == 0.0
    assert noisy["train_fid"] > 10 * held_out["train_fid"]
