"""Shared fixtures: tiny configs under a temporary run root, one session-wide local Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raysys.stages import load_config

# Ray Train V2's controller polls its workers every 2 s, so every Train run of the suites waited up to 2 s to be
# seen finished. The drivers the tests start (in this process or as CLI subprocesses) pass this on to the
# controllers they start. A test setting only: it changes when a run is seen to end, never what it computes.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture
def tiny_cfg(tmp_path):
    """configs/tiny.yaml with its run root in a fresh temporary folder."""

    def make(*overrides: str):
        return load_config(TINY, [f"run.root={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server (moto) for the whole session, reached through pyarrow's S3 filesystem:
    `s3://` locations are not the local disk, in this process, in Ray workers and in CLI
    subprocesses alike (they all inherit the endpoint and the test credentials)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the session's S3 server: its s3:// root."""
    import uuid

    import boto3

    name = f"raysys-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One small local Ray for every integration test (2 CPUs); shut down at the end. It starts
    after the S3 server, so its workers reach it."""
    import ray

    from raysys.ray.session import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def start_driver(ray_session, args: list[str], **popen) -> subprocess.Popen:
    """`python -m raysys.cli *args` in a process of its own (its own process group), as a driver on
    the session's Ray: one Ray instance on the machine, and no Ray start to wait for."""
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
    return subprocess.Popen([sys.executable, "-m", "raysys.cli", *args], cwd=REPO, env=env,
                            start_new_session=True, **popen)


def kill_driver(proc, ray_session, timeout: float = 60) -> None:
    """SIGKILL a driver from `start_driver`, then wait until Ray has ended everything it ran (its
    actors: Ray Train's controller and workers, actor pools; its tasks), so that nothing of the
    killed run writes while the test reruns it. Detached actors (Ray Data's) live on."""
    import signal
    import time

    from ray.util.state import list_actors, list_tasks

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    context = ray_session.get_runtime_context()
    ours, address = context.get_job_id(), context.gcs_address  # the address: other clusters may run
    deadline = time.time() + timeout
    while True:
        left = [a.class_name for a in list_actors(address, filters=[("state", "=", "ALIVE")], detail=True)
                if a.job_id != ours and not a.is_detached]  # Ray Data's detached helpers outlive any job
        left += [t.name for t in list_tasks(address, filters=[("state", "=", "RUNNING"), ("type", "=", "NORMAL_TASK")])
                 if t.job_id != ours]
        if not left:
            return
        if time.time() > deadline:
            raise AssertionError(f"the killed driver's work still runs after {timeout} s: {left}")
        time.sleep(0.2)


# The tiny run's upstream stages are kept between pytest sessions (`make test`, then `make test-slow`)
# under a digest of everything they are made from: raysys's code, the tiny config and the versions of
# the packages that compute them. Another digest, another folder: a change to any of them rebuilds.
TINY_CACHE = REPO / ".pytest_cache" / "raysys-tiny-run"


def _tiny_digest() -> str:
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256()
    for path in sorted((REPO / "raysys").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".yaml", ".txt"):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    digest.update(TINY.read_bytes())
    for package in ("torch", "numpy", "ray", "diffusers", "transformers", "pyarrow", "peft"):
        digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()[:16]


def _restore_cached(root: Path) -> None:
    cache = TINY_CACHE / _tiny_digest()
    for stage in sorted(cache.iterdir()) if cache.is_dir() else []:
        if not stage.name.startswith(".") and not (root / stage.name).exists():
            shutil.copytree(stage, root / stage.name)


def _save_cached(cfg, *stages) -> None:
    """Copy each complete stage (a raysys.stages module) of the tiny run into the cache (atomically: a copy, then a rename)."""
    cache = TINY_CACHE / _tiny_digest()
    cache.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        name = stage.__name__.rsplit(".", 1)[1]  # raysys.stages.train_classifier: its folder, train_classifier
        if (cache / name).exists() or not stage.stage_dir(cfg).is_complete():
            continue
        part = cache / f".{name}.{os.getpid()}"
        shutil.copytree(os.path.join(cfg.run.root, name), part)
        try:
            part.rename(cache / name)
        except OSError:  # another session saved it first
            shutil.rmtree(part, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_session):
    """prepare -> train-classifier -> score on the tiny config, once for every integration test
    that needs finished classifier stages: (cfg, prepare, train_classifier, score metrics). Stages an
    earlier session of the same code made are copied in (TINY_CACHE) and skipped as complete."""
    from raysys.stages import prepare, score, train_classifier

    root = tmp_path_factory.mktemp("tiny") / "run"
    root.mkdir()
    _restore_cached(root)
    cfg = load_config(TINY, [f"run.root={root}"])
    done = cfg, prepare.run(cfg), train_classifier.run(cfg), score.run(cfg)
    _save_cached(cfg, prepare, train_classifier, score)
    return done


@pytest.fixture(scope="session")
def tiny_generator(tiny_run):
    """pretrain-generator -> finetune -> control on top of `tiny_run`: (cfg, pretrain, finetune,
    control metrics)."""
    from raysys.stages import control, finetune, pretrain_generator

    cfg = tiny_run[0]
    done = cfg, pretrain_generator.run(cfg), finetune.run(cfg), control.run(cfg)
    _save_cached(cfg, pretrain_generator, finetune, control)
    return done


@pytest.fixture(scope="session")
def tiny_synthetic(tiny_generator):
    """synthesize and quality on top of `tiny_generator`: the tiny run's config."""
    from raysys.stages import quality, synthesize

    cfg = tiny_generator[0]
    synthesize.run(cfg)
    quality.run(cfg)
    _save_cached(cfg, synthesize, quality)
    return cfg


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory, ray_session):
    """`raysys run` on a folder of the 1,797 8x8 digits with its own splits, root/train/<class>/ and
    root/test/<class>/ (15 test images per class), tiny fits: (cfg, run root). Slow; shared by the
    folder end-to-end test and the report's browser test."""
    from raysys.cli import main
    from raysys.data.sources import load_builtin_digits

    base = tmp_path_factory.mktemp("folder_run")
    digits = load_builtin_digits()
    root = base / "digits"
    seen: dict[int, int] = {}
    for data, label in zip(digits.images, digits.labels.tolist()):
        i = seen[label] = seen.get(label, -1) + 1
        split = "test" if i < 15 else "train"
        folder = root / split / digits.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(data)
    overrides = [f"run.root={base / 'run'}", f"data.source=folder:{root}", "data.splits=given",
                 "finetune.variants=[plain]", "curriculum.epochs=3", "compare.seeds=[0]",
                 "train.epochs=3", "pretrain.steps=30", "finetune.steps=10",  # the splits are tested, not the fits
                 "synthesis.plans=[{name: discl, model: plain, kind: discl, sources: top_k, source_k: 6, "
                 "guidance_levels: [0.3, 0.7], seeds_per_source: 2}]",
                 "compare.variants={real_only: {schedule: real_only}, "
                 "dts: {schedule: diverse_to_specific, plans: [discl], curriculum_epochs: 2}}"]
    assert main(["run", str(TINY), *overrides]) == 0
    return load_config(TINY, overrides), base / "run"


def recorded_checkpoints(run_glob: str) -> int:
    """How many checkpoints Ray Train has recorded for the runs matching `run_glob` (a Train run's
    folder, `<storage>/<name>`). A rerun resumes only from a checkpoint its
    checkpoint_manager_snapshot.json lists; a `checkpoint_*` folder is uploaded before it is
    listed, so a kill between the two leaves a folder that no rerun uses."""
    import glob
    import json

    count = 0
    for snapshot in glob.glob(os.path.join(run_glob, "checkpoint_manager_snapshot.json")):
        try:
            with open(snapshot) as f:
                count += len(json.load(f)["checkpoint_results"])
        except (OSError, ValueError, KeyError):  # being written
            pass
    return count


def kill_after_checkpoints(proc, ray_session, run_glob: str, count: int = 2, timeout: float = 240) -> None:
    """Wait until Ray Train has recorded `count` checkpoints of the run(s) under `run_glob` (see
    recorded_checkpoints), then kill the driver with kill_driver, whether or not they came."""
    import time

    deadline = time.time() + timeout
    try:
        while recorded_checkpoints(run_glob) < count and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert recorded_checkpoints(run_glob) >= 1, "no checkpoint was recorded before the deadline"
    finally:
        kill_driver(proc, ray_session)
