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


def test_local_copies_of_a_uri_are_removed_after_use(s3_bucket, tmp_path, monkeypatch):
    """io.local_copy downloads a folder for a `with` block and removes it after (also when the block
    fails); the actors that load a classifier in their constructor keep no `raysys-*` folder and
    score with the model they loaded."""
    import tempfile

    import numpy as np

    from raysys.data.images import encode_png
    from raysys.generation.synthesis import RescoreAndWrite
    from raysys.models.classifiers import create_classifier, save_classifier
    from raysys.ray.scoring import ScoringActor

    base = s3_bucket
    saved = tmp_path / "classifier"
    save_classifier(create_classifier("small_cnn", 4, 1, width=8), str(saved),
                    {"name": "small_cnn", "num_classes": 4, "in_chans": 1, "width": 8, "image_size": 8})
    io.copy_dir(str(saved), f"{base}/classifier")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    with io.local_copy(f"{base}/classifier") as copy:
        assert os.path.basename(copy).startswith("raysys-") and os.path.dirname(copy) == str(temp)
        assert sorted(os.listdir(copy)) == sorted(os.listdir(saved))
    assert not os.path.exists(copy)
    with pytest.raises(RuntimeError, match="inside the block"):
        with io.local_copy(f"{base}/classifier"):
            raise RuntimeError("inside the block")
    assert list(temp.iterdir()) == []

    scoring = ScoringActor({"full": f"{base}/classifier"}, {}, ["train"], f"{base}/scored", 4, True)
    rescore = RescoreAndWrite(f"{base}/classifier", f"{base}/synthetic")
    assert list(temp.iterdir()) == []
    image = encode_png(np.full((8, 8), 128, dtype=np.uint8))
    for scorer in (scoring.scorer, rescore.scorer):
        p_true = scorer([image], np.array([0]), ["full"])["p_true"]
        assert p_true.shape == (1,) and 0.0 < p_true[0] < 1.0
