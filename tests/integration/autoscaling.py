"""A Ray autoscaling cluster with fake GPU worker nodes, on one machine without GPUs.

`fake_gpu_cluster()` starts a head node (no GPUs) whose autoscaler uses Ray's `fake_multinode`
node provider: when tasks or actors ask for a GPU, the autoscaler "launches" a worker node of
type `gpu_worker`, which is just one more raylet on this machine advertising `GPU: 1`. Nothing
touches a real GPU, so this runs anywhere, CPU-only CI included.

It is built on `ray.cluster_utils.AutoscalingCluster` (Ray 2.60), but that class cannot be
used as shipped here, so a subclass replaces three things:

* `_generate_config` loads `fake_multi_node/example.yaml`, which the wheel does not ship;
  the same base config is written out below (`BASE_CONFIG`).
* `start()` runs `ray stop --force` first and `shutdown()` is `ray stop --force`: both would
  kill every Ray on the machine (e.g. the session-wide local Ray of the other integration
  tests). It also starts the head on the default port 6379 with the default /tmp/ray temp dir,
  and without `--block`, so its processes cannot be told apart from another cluster's.
  Here the head is `ray start --head --block` in a process session of its own, with its own
  port, temp dir and token; it is stopped by signalling that session only.
* The fake provider starts worker nodes against `<node ip>:6379` unless the provider config
  has `gcs_address`; it is set to this cluster's GCS.

The cluster keeps token authentication on (`RAY_AUTH_MODE=token`) with a fresh token in
`RAY_AUTH_TOKEN` for its processes and for drivers started with `run_driver`; ~/.ray is left
alone. The pytest process itself never connects to the cluster (the token and the GCS client
of a process are process-wide, and it may have a `ray.init` of its own): drivers are
subprocesses, see `run_driver`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ray.cluster_utils import AutoscalingCluster

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

# ray/autoscaler/_private/fake_multi_node/example.yaml of the Ray sources (not in the wheel),
# minus its example node types. Only the keys the v1 autoscaler reads without defaults matter.
BASE_CONFIG = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "available_node_types": {},
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 1.0,
    "docker": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}

# Per node; Ray's default (30% of memory each, in /dev/shm) is far too much for several nodes.
OBJECT_STORE_BYTES = 150 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """This process's environment without any RAY_* variable (e.g. RAY_ADDRESS of another
    cluster, or RAY_AUTH_TOKEN of the session-wide Ray)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


class IsolatedAutoscalingCluster(AutoscalingCluster):
    """`AutoscalingCluster` that only ever starts and stops its own processes.

    Same constructor as the base class: `head_resources` (CPU, GPU, object_store_memory, custom
    resources), `worker_node_types` (the `available_node_types` entries of the workers), and
    extra top-level config keys (`idle_timeout_minutes=`, `upscaling_speed=`, ...).
    """

    def __init__(self, head_resources: dict, worker_node_types: dict, **config_kwargs) -> None:
        # Short: a raylet's unix socket path (under the session dir) must stay < ~107 chars.
        self.temp_dir = tempfile.mkdtemp(prefix="rsa-", dir="/tmp")
        self.gcs_port = _free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.token = secrets.token_hex(32)
        self.log_path = Path(self.temp_dir) / "head.log"
        self.proc: Optional[subprocess.Popen] = None
        super().__init__(dict(head_resources), copy.deepcopy(worker_node_types), **config_kwargs)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        if autoscaler_v2:
            raise NotImplementedError("only the v1 autoscaler is set up here")
        config = copy.deepcopy(BASE_CONFIG)
        config["available_node_types"] = worker_node_types
        config["available_node_types"]["ray.head.default"] = {
            "resources": dict(head_resources), "node_config": {}, "max_workers": 0,
        }
        # Worker nodes join this GCS, not <node ip>:6379.
        config["provider"]["gcs_address"] = self.address
        config.update(config_kwargs)
        return config

    def env(self) -> dict[str, str]:
        """Environment for this cluster's processes and for drivers that connect to it."""
        env = _clean_env()
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            # Ray Data (read by the driver): its cluster autoscaler asks for more nodes at most
            # every 10 s by default; with nodes that start in seconds that gap dominates.
            RAY_DATA_MIN_GAP_BETWEEN_AUTOSCALING_REQUESTS="1",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, _system_config=None, override_env: Optional[dict] = None, timeout: float = 60.0) -> None:
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        res = dict(self._head_resources)
        cmd = [
            RAY, "start", "--head", "--block", "--disable-usage-stats",
            f"--autoscaling-config={config_path}",
            # (--node-ip-address=127.0.0.1 would change nothing: Ray resolves a loopback address
            # to the machine's IP, as it does for the fake worker nodes.)
            f"--temp-dir={self.temp_dir}/r", f"--port={self.gcs_port}",
            "--include-dashboard=false",
            f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}",
            f"--object-store-memory={res.pop('object_store_memory', OBJECT_STORE_BYTES)}",
        ]
        if res:
            cmd.append(f"--resources={json.dumps(res)}")
        if _system_config is not None:
            cmd.append(f"--system-config={json.dumps(_system_config, separators=(',', ':'))}")
        env = self.env()
        env.update(
            RAY_FAKE_CLUSTER="1",  # required by the fake_multinode provider (and fixes node ids)
            AUTOSCALER_UPDATE_INTERVAL_S="1",  # autoscaler loop period; default 5 s, int only
        )
        env.update(override_env or {})
        with open(self.log_path, "w") as out:
            # A process session of its own: every process of this cluster (head, autoscaler,
            # fake worker nodes the autoscaler starts, their workers) can be found by its id.
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.temp_dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "Ray runtime started" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.25)
        raise TimeoutError(f"the head did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The head's `ray start` output and the autoscaler's log, for error messages."""
        parts = []
        if self.log_path.exists():
            parts.append(f"--- ray start\n{self.log_path.read_text(errors='replace')[-chars:]}")
        for p in sorted(Path(self.temp_dir).glob("r/session_*/logs/monitor.*")):
            if p.is_file():
                parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def _members(self):
        import psutil

        members = set()
        if self.proc is None:
            return members
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.proc.pid:
                    members.add(proc)
                    members.update(proc.children(recursive=True))
            except (psutil.Error, OSError):
                pass
        try:  # children that left the session (e.g. setsid), while `ray start` is alive
            members.update(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            pass
        return members

    def shutdown(self, grace_s: float = 2.0) -> None:
        """SIGTERM every process of this cluster, SIGKILL what is left after `grace_s`; remove
        its temp dir. (Raylets and the GCS often take over 10 s to exit on SIGTERM: there is no
        point waiting for them in a test.)"""
        import psutil

        def running(procs):
            alive = []
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        alive.append(proc)
            return alive

        def wait(procs, timeout):
            deadline = time.time() + timeout
            while (procs := running(procs)) and time.time() < deadline:
                time.sleep(0.1)
            return procs

        members = self._members()
        for proc in members:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        alive = wait(list(members), grace_s)
        alive += [p for p in self._members() if p not in members]  # started meanwhile
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        left = wait(alive, 5.0)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)  # reap `ray start`
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if left:
            raise RuntimeError(f"processes of the test cluster still running: {[p.pid for p in left]}")


@dataclass
class FakeGpuCluster:
    """What `fake_gpu_cluster` yields."""

    address: str  # GCS address, for RAY_ADDRESS / `ray.init(address=...)` in a process with `env`
    env: dict[str, str] = field(repr=False)  # RAY_AUTH_MODE/RAY_AUTH_TOKEN etc.: what drivers need
    cluster: IsolatedAutoscalingCluster = field(repr=False)

    def run_driver(self, code: str, timeout: float = 240.0, extra_env: Optional[dict] = None) -> dict:
        return run_driver(self.address, code, timeout=timeout, env=self.env, extra_env=extra_env,
                          on_error=self.cluster.log_tail)


@contextlib.contextmanager
def fake_gpu_cluster(
    max_gpu_workers: int = 2,
    gpus_per_node: int = 1,
    cpus_per_node: int = 1,
    head_cpus: int = 1,
    **config_kwargs,
) -> Iterator[FakeGpuCluster]:
    """An autoscaling cluster: a head with `head_cpus` CPUs and no GPU, and up to
    `max_gpu_workers` fake "gpu_worker" nodes (none at first) of `cpus_per_node` CPUs and
    `gpus_per_node` GPUs. Extra keyword arguments go into the autoscaler config (e.g.
    `idle_timeout_minutes=0.5`). Only this cluster's processes are stopped at the end."""
    cluster = IsolatedAutoscalingCluster(
        head_resources={"CPU": head_cpus, "GPU": 0},
        worker_node_types={
            "gpu_worker": {
                "resources": {"CPU": cpus_per_node, "GPU": gpus_per_node,
                              "object_store_memory": OBJECT_STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_gpu_workers,
            },
        },
        max_workers=max_gpu_workers,
        **config_kwargs,
    )
    try:
        cluster.start()
        yield FakeGpuCluster(address=cluster.address, env=cluster.env(), cluster=cluster)
    finally:
        cluster.shutdown()


def run_driver(
    address: str,
    code: str,
    timeout: float = 240.0,
    env: Optional[dict] = None,
    extra_env: Optional[dict] = None,
    on_error=None,
) -> dict:
    """Run `code` as a Ray driver in a fresh python process with RAY_ADDRESS=`address` (so a
    plain `ray.init()` there joins the cluster), cwd the repo and the repo on PYTHONPATH, and
    return the last JSON object it printed on a line of its own (autoscaler events may follow
    it). `env` is the cluster's environment (`FakeGpuCluster.env`: the token); without it, this
    process's environment minus RAY_* variables. Raises AssertionError with the driver's output
    (and `on_error()`, e.g. the autoscaler log) if it fails, times out or prints no result."""
    run_env = dict(env) if env is not None else _clean_env()
    run_env["RAY_ADDRESS"] = address
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), run_env.get("PYTHONPATH")]))
    run_env.update(extra_env or {})
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=run_env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
        raise AssertionError(f"driver timed out after {timeout:.0f} s\n--- stdout\n{out[-4000:]}\n--- stderr\n"
                             f"{err[-8000:]}\n{on_error() if on_error else ''}") from None
    if proc.returncode != 0:
        raise AssertionError(f"driver exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-8000:]}\n{on_error() if on_error else ''}")
    # Autoscaler events ("(autoscaler +4s) Adding 1 node(s)...") may come after the result.
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            result = json.loads(line)
            if isinstance(result, dict):
                return result
    raise AssertionError(f"the driver printed no JSON object\n--- stdout\n{proc.stdout[-4000:]}\n"
                         f"--- stderr\n{proc.stderr[-8000:]}")
