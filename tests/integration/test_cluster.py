"""The pipeline as a Ray job on a real two-node Ray cluster on this machine.

`ray start --head` and `ray start --address` start two nodes (separate raylets, one CPU and one
custom resource each), token authentication on, with their own temp dirs and ports. The tiny
pipeline's stages are submitted as one job with `ray job submit --working-dir . --runtime-env
cluster/runtime_env.yaml`, running jobs/prepare.py, jobs/train_classifier.py and jobs/score.py
in turn (jobs/pipeline.py would also run the generator stages, too slow for this test), with two
Ray Train workers and two scoring actors: one CPU per node means each pair must straddle the
two nodes. The test then checks, through the Ray state API,
that the Train workers and the scoring actors ran on both nodes and saw the configured HF_HOME,
and that every stage's outputs under the file:// run root are complete.

Nothing here touches the session-wide local Ray of the other integration tests: the cluster has
its own --temp-dir (so its ray_current_cluster file is there, not in /tmp/ray), its own ports,
its own auth token, and only this process's children get its address. It is stopped by
signalling the two `ray start --block` processes it started (never `ray stop`, which would stop
every Ray on the machine), then killing anything left in their process sessions.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from raysys.core import io
from raysys.core.schema import read_manifest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head and one worker node started with `ray start --block`, stopped by their pids."""

    def __init__(self) -> None:
        # Short: the raylet's unix socket path must stay under ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rsc-", dir="/tmp")
        # A temp dir per node, as separate machines would have: two nodes sharing one session
        # folder would unpack the job's working_dir over each other (deleting the driver's cwd).
        self.node_dirs = {name: os.path.join(self.temp_dir, name[0]) for name in ("head", "worker")}
        self.token = secrets.token_hex(32)
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            # Ray Train's controller polls workers every 2 s by default; with epochs of a
            # fraction of a second that poll would dominate the test.
            RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
            # Ray Data starts an actor pool's min_size actors asynchronously and hands out work to
            # the first one ready; with this little data the pool could finish before the second
            # actor is placed. Waiting for the pool makes "both nodes scored" deterministic.
            RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="120",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, name: str, args: list[str]) -> None:
        log = Path(self.temp_dir) / f"{name}.log"
        self.logs.append(log)
        common = [
            "--block", "--disable-usage-stats", "--num-gpus=0", "--object-store-memory=200000000",
            f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        ]
        with open(log, "w") as out:
            # A session of its own: the node's processes can be found (and killed) by session id.
            self.procs.append(subprocess.Popen(
                [RAY, "start", *args, *common], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.temp_dir,
            ))

    def api(self, path: str, token: str | None = "default") -> tuple[int, object]:
        req = urllib.request.Request(self.dashboard + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {self.token if token == 'default' else token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def _wait(self, what: str, ok, timeout: float = 90.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"`ray start` exited with {p.returncode} while waiting for {what}:\n"
                                       + self.log_tail())
            try:
                if ok():
                    return
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n" + self.log_tail())

    def nodes(self) -> list[dict]:
        status, body = self.api("/api/v0/nodes?limit=100&detail=true")
        if status != 200:
            raise ValueError(f"state API: HTTP {status}")
        return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def start(self) -> None:
        self._start("head", [
            "--head", f"--temp-dir={self.node_dirs['head']}", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={_free_port()}",
            "--num-cpus=1", '--resources={"raysys_test_head": 1}',
        ])
        self._wait("the head's dashboard", lambda: self.api("/api/version")[0] == 200)
        self._start("worker", [
            f"--address=127.0.0.1:{self.gcs_port}", f"--temp-dir={self.node_dirs['worker']}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1", '--resources={"raysys_test_worker": 1}',
        ])
        self._wait("two alive nodes", lambda: len(self.nodes()) == 2)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        """SIGTERM every process of the two nodes (found by session id, plus their children,
        e.g. job drivers in a session of their own), then SIGKILL what is left."""
        import psutil

        sessions = {p.pid for p in self.procs}
        members = set()
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in sessions:
                    members.add(proc)
                    members.update(proc.children(recursive=True))
            except (psutil.Error, OSError):
                pass
        for proc in members:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(members), timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        for p in self.procs:
            p.wait(timeout=5)  # reap the `ray start` processes
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _submit(cluster: Cluster, run_root: str, hf_home: str) -> str:
    submission_id = f"raysys-test-{secrets.token_hex(4)}"
    args = [
        "configs/tiny.yaml", f"run.root={run_root}", f"run.hf_home={hf_home}",
        "train.num_workers=2", "train.epochs=3", "score.mode=full",
        "score.min_actors=2", "score.max_actors=2", "score.batch_size=64",
        "data.rows_per_part=100",  # several parts: prepare's tasks and the scoring pool spread over both nodes
    ]
    entrypoint = " && ".join(
        " ".join(["python", f"jobs/{stage}.py", *args]) for stage in ("prepare", "train_classifier", "score")
    )
    cmd = [
        RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", submission_id, "--no-wait",
        "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", "sh", "-c", entrypoint,
    ]
    out = subprocess.run(cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"ray job submit failed:\n{out.stdout}\n{out.stderr}"
    return submission_id


def _wait_for_job(cluster: Cluster, submission_id: str) -> dict:
    deadline = time.time() + JOB_TIMEOUT_S
    while time.time() < deadline:
        status, info = cluster.api(f"/api/jobs/{submission_id}")
        if status == 200 and info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(1)
    raise TimeoutError(f"job {submission_id} still running after {JOB_TIMEOUT_S}s:\n{_job_logs(cluster, submission_id)}")


def _job_logs(cluster: Cluster, submission_id: str) -> str:
    status, body = cluster.api(f"/api/jobs/{submission_id}/logs")
    return body.get("logs", "") if status == 200 and body else f"(no logs: HTTP {status})"


def _actors(cluster: Cluster) -> list[dict]:
    """Every actor the cluster has run (it runs nothing but this test's job)."""
    status, body = cluster.api("/api/v0/actors?limit=10000&detail=true")
    assert status == 200, status
    return body["data"]["result"]["result"]


def test_cluster_is_invisible_to_other_ray_inits(cluster):
    """A bare ray.init() finds a running cluster through $RAY_ADDRESS or the default temp dir's
    ray_current_cluster file: neither may point at this one."""
    from ray._common.utils import get_ray_address_file

    ours = f":{cluster.gcs_port}"
    assert ours not in os.environ.get("RAY_ADDRESS", "")
    default_file = Path(get_ray_address_file(None))
    assert not default_file.exists() or ours not in default_file.read_text()
    assert ours in (Path(cluster.node_dirs["head"]) / "ray_current_cluster").read_text()


def test_token_auth_is_on(cluster):
    assert cluster.api("/api/version", token=None)[0] == 401
    assert cluster.api("/api/version", token="not-the-token")[0] in (401, 403)
    assert cluster.api("/api/version")[0] == 200


@pytest.mark.slow
def test_pipeline_job_runs_on_both_nodes(cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_root = f"file://{run_dir}"  # a URI, read and written through pyarrow's filesystem layer
    hf_home = str(tmp_path / "hf")
    node_role = {
        n["node_id"]: ("head" if "raysys_test_head" in n["resources_total"] else "worker") for n in cluster.nodes()
    }
    assert sorted(node_role.values()) == ["head", "worker"]

    submission_id = _submit(cluster, run_root, hf_home)
    info = _wait_for_job(cluster, submission_id)
    logs = _job_logs(cluster, submission_id)
    assert info["status"] == "SUCCEEDED", f"job {info['status']}: {info.get('message')}\n{logs[-6000:]}"
    finished = [m.group(1) for m in re.finditer(r"^== stage \d+/\d+: (\S+) finished in ", logs, re.MULTILINE)]
    print(finished)
    assert finished == ["prepare", "train-classifier", "score"], logs[-3000:]

    # Work ran on both nodes: the Ray Train workers (one CPU each, one CPU per node) and the
    # scoring actor pool, per the state API's record of this job's actors.
    actors = _actors(cluster)
    placed = [a for a in actors if a["node_id"]]  # an actor the pool dropped before placing it has none
    train = [a for a in placed if "TrainWorker" in a["class_name"]]
    scoring = [a for a in placed if "ScoringActor" in a["class_name"]]
    assert len(train) >= 2 and len(scoring) >= 2, sorted(a["class_name"] for a in actors)
    assert {node_role[a["node_id"]] for a in train} == {"head", "worker"}
    assert {node_role[a["node_id"]] for a in scoring} == {"head", "worker"}
    # run.hf_home reached the workers' runtime environment on both nodes.
    for a in train + scoring:
        env_vars = json.loads(a["serialized_runtime_env"] or "{}").get("env_vars", {})
        assert env_vars.get("HF_HOME") == hf_home, (a["class_name"], a["serialized_runtime_env"])

    # Outputs are complete: every stage done, row counts agree, every scored row has a score.
    metrics = {s: io.read_json(io.join(run_root, s, "metrics.json")) for s in ("prepare", "train_classifier", "score")}
    assert all(m["status"] == "done" for m in metrics.values()), {s: m["status"] for s, m in metrics.items()}
    prep = metrics["prepare"]
    prepared = read_manifest(io.join(run_root, "prepare", "manifest"))
    assert len(prepared) == prep["rows"] == sum(sum(c) for c in prep["counts"].values())
    assert metrics["train_classifier"]["num_workers"] == 2
    assert len(metrics["train_classifier"]["epochs"]) == 3
    scored = read_manifest(io.join(run_root, "score", "manifest"))
    assert len(scored) == len(prepared)
    assert sorted(scored["sample_id"].to_pylist()) == sorted(prepared["sample_id"].to_pylist())
    splits = np.asarray(scored["split"].to_pylist())
    difficulty = scored["difficulty"].to_numpy(zero_copy_only=False).astype(float)
    wanted = np.isin(splits, ["train", "val", "test"])
    assert metrics["score"]["rows_scored"] == int(wanted.sum())
    assert not np.isnan(difficulty[wanted]).any() and ((difficulty[wanted] >= 0) & (difficulty[wanted] <= 1)).all()
    for name in ("classifier.json", "model.safetensors"):
        assert io.exists(io.join(run_root, "train_classifier", "model", name))
    # Ray Train kept its checkpoints under the run root (RunConfig(storage_path=...)).
    assert any(p.name.startswith("checkpoint_") for p in (run_dir / "train_classifier" / "ray").rglob("*"))
