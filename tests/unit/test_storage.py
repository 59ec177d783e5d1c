"""Run roots as pyarrow filesystem URIs, and the Hugging Face cache handed to Ray workers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from raysys.cli import main
from raysys.core import io
from raysys.core.schema import read_manifest

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


def _prepare_outputs(root: str) -> tuple[dict, int]:
    metrics = io.read_json(io.join(root, "prepare", "metrics.json"))
    rows = len(read_manifest(io.join(root, "prepare", "manifest.parquet")))
    return metrics, rows


def test_prepare_into_a_file_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    root = f"file://{tmp_path}/out/run"
    assert main(["prepare", TINY, f"run.root={root}"]) == 0
    metrics, rows = _prepare_outputs(root)
    assert metrics["status"] == "done" and rows == metrics["rows"] > 0
    assert (tmp_path / "out" / "run" / "prepare" / "manifest.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing named after the scheme
    # The completion check reads through the URI too: a rerun is skipped.
    capsys.readouterr()
    assert main(["prepare", TINY, f"run.root={root}"]) == 0
    assert "complete for this config, skipped" in capsys.readouterr().out


@pytest.fixture
def memory_uris(monkeypatch):
    """`memory://` URIs served by fsspec's in-memory filesystem through pyarrow's PyFileSystem:
    a pyarrow filesystem that is not the local disk (as s3:// or gs:// would be), so anything
    that writes around raysys.core.io, or turns the URI into a local path, fails or shows up."""
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    memory = fsspec.filesystem("memory")
    pyfs = PyFileSystem(FSSpecHandler(memory))
    local = io.filesystem
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"

    def filesystem(location: str):
        if location.startswith("memory://"):
            return pyfs, location[len("memory://"):]
        return local(location)

    monkeypatch.setattr(io, "filesystem", filesystem)
    yield f"memory://{bucket}", memory
    memory.rm(f"/{bucket}", recursive=True)


def test_prepare_into_a_non_local_filesystem(memory_uris, tmp_path, monkeypatch, capsys):
    base, memory = memory_uris
    monkeypatch.chdir(tmp_path)
    root = f"{base}/raysys/run"
    assert main(["prepare", TINY, f"run.root={root}"]) == 0
    metrics, rows = _prepare_outputs(root)
    assert metrics["status"] == "done" and rows == metrics["rows"] > 0
    written = {p.rsplit("/", 1)[-1] for p in memory.find(f"/{base[len('memory://'):]}")}
    assert {"manifest.parquet", "metrics.json", "config.yaml"} <= written
    assert not any(name.startswith(".tmp") or ".tmp-" in name for name in written)  # atomic writes renamed
    assert list(tmp_path.iterdir()) == []  # nothing reached the local disk
    capsys.readouterr()
    assert main(["prepare", TINY, f"run.root={root}"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_init_ray_hands_env_vars_to_workers(monkeypatch):
    """HF_HOME (run.hf_home) goes into this process's environment, which an embedded Ray's
    workers inherit, and into the runtime env when joining a cluster. Ray itself is stubbed."""
    import raysys.ray.session as session

    calls = []
    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session.ray, "init", lambda **kwargs: calls.append(kwargs))
    for name in ("HF_HOME", "RAY_ADDRESS", "RAY_OVERRIDE_JOB_RUNTIME_ENV", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)

    assert session.init_ray(None, 2, {"HF_HOME": "/cache/hf"}) == "embedded"
    assert os.environ["HF_HOME"] == "/cache/hf"
    assert "runtime_env" not in calls[-1]

    assert session.init_ray("10.0.0.1:6379", None, {"HF_HOME": "/mnt/hf-cache"}) == "cluster"
    assert calls[-1]["runtime_env"] == {"env_vars": {"HF_HOME": "/mnt/hf-cache"}}
    assert os.environ["HF_HOME"] == "/mnt/hf-cache"
    # Inside a submitted job, the job's own runtime env may set HF_HOME too: merge, don't fail.
    assert os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"

    assert session.init_ray("10.0.0.1:6379", None, None) == "cluster"
    assert calls[-1]["runtime_env"] is None
