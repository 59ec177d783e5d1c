"""An in-process non-local filesystem (memory://) for tests, and the Hugging Face cache handed to Ray
workers. Run roots and sources as URIs across Ray workers: tests/integration/test_data_plane.py (S3)."""

from __future__ import annotations

import os
import uuid

import pytest

from raysys.core import io


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


RAY_ENV = ("HF_HOME", "RAY_ADDRESS", "RAY_OVERRIDE_JOB_RUNTIME_ENV", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")


def stub_ray_init(monkeypatch) -> list[dict]:
    """Stub Ray's init in raysys.ray.session: each call records its arguments and this process's
    environment at that moment (what an embedded Ray's workers inherit). The variables init_ray
    sets are restored after the test."""
    import raysys.ray.session as session

    calls = []
    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session.ray, "init", lambda **kwargs: calls.append({**kwargs, "environ": dict(os.environ)}))
    for name in RAY_ENV:
        monkeypatch.setenv(name, "")  # recorded, so the undo restores the variable (or its absence)
        monkeypatch.delenv(name)
    return calls


def test_init_ray_hands_env_vars_to_workers(monkeypatch):
    """HF_HOME (run.hf_home) is in this process's environment before an embedded Ray starts, so its
    workers inherit it, and in the runtime env when joining a cluster. Ray itself is stubbed; a
    worker reading it: tests/integration/test_stages.py."""
    import raysys.ray.session as session

    calls = stub_ray_init(monkeypatch)
    assert session.init_ray(None, 2, {"HF_HOME": "/cache/hf"}) == "embedded"
    assert calls[-1]["environ"]["HF_HOME"] == "/cache/hf"  # set before ray.init starts the workers
    assert calls[-1].get("runtime_env") is None

    assert session.init_ray("10.0.0.1:6379", None, {"HF_HOME": "/mnt/hf-cache"}) == "cluster"
    assert calls[-1]["address"] == "10.0.0.1:6379"
    assert calls[-1]["runtime_env"] == {"env_vars": {"HF_HOME": "/mnt/hf-cache"}}
    # Inside a submitted job, the job's own runtime env may set HF_HOME too: merge, don't fail.
    assert calls[-1]["environ"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"

    assert session.init_ray("10.0.0.1:6379", None, None) == "cluster"
    assert calls[-1]["runtime_env"] is None
