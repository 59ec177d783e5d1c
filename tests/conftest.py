"""Shared fixtures: tiny configs under a temporary run root, one session-wide local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raysys.stages import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture
def tiny_cfg(tmp_path):
    """configs/tiny.yaml with its run root in a fresh temporary folder."""

    def make(*overrides: str):
        return load_config(TINY, [f"run.root={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for every integration test (2 CPUs); shut down at the end."""
    import ray

    from raysys.ray.session import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_session):
    """prepare -> train-classifier -> score on the tiny config, once for every integration test
    that needs finished classifier stages: (cfg, prepare, train_classifier, score metrics)."""
    from raysys.stages import prepare, score, train_classifier

    root = tmp_path_factory.mktemp("tiny") / "run"
    cfg = load_config(TINY, [f"run.root={root}"])
    return cfg, prepare.run(cfg), train_classifier.run(cfg), score.run(cfg)


@pytest.fixture(scope="session")
def tiny_generator(tiny_run):
    """pretrain-generator -> finetune -> control on top of `tiny_run`: (cfg, pretrain, finetune,
    control metrics)."""
    from raysys.stages import control, finetune, pretrain_generator

    cfg = tiny_run[0]
    return cfg, pretrain_generator.run(cfg), finetune.run(cfg), control.run(cfg)
