"""A Ray Data GPU actor pool grows onto autoscaled (fake) GPU nodes.

The cluster (tests/integration/autoscaling.py) starts with a head of one CPU and no GPU, and
up to two fake "gpu_worker" nodes of one CPU and one GPU each, none of them running. A driver
in a subprocess (RAY_ADDRESS set; the pytest process may have a `ray.init` of its own) maps
`ray.data.range(N)` with an actor pool of 1 to 2 actors that each need a GPU, with batches slow
enough that the pool wants to grow: the autoscaler must launch one GPU node for the first actor
and a second one for the second actor.

How long the pool takes to grow is set by Ray, not by the workload: Ray Data only uses the
resources its autoscaling coordinator has reserved for it, and that coordinator looks at the
cluster's nodes every 20 s (not configurable). A new node therefore counts for the pool
20-45 s after the pipeline starts. So batches are slow (SLOW_S) only until the second actor
exists (each actor drops a file in a shared folder: the fake nodes share this machine's file
system), then quick (FAST_S): the pipeline lasts as long as the growth takes, and the row
count is sized for growth within ~N_ROWS / BATCH_SIZE * SLOW_S seconds.

To run another workload on the same cluster, write a driver like `DRIVER` (it prints one JSON
object on a line of its own) and call `cluster.run_driver(code)`. A real stage needs enough
work to outlast the coordinator's 20 s view of the nodes to see the pool grow.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.autoscaling import fake_gpu_cluster

pytestmark = pytest.mark.integration

N_ROWS = 2000
BATCH_SIZE = 10  # one block per batch: 200 tasks
SLOW_S = 0.5  # per batch while the pool has one actor: up to 100 s of work for one actor
FAST_S = 0.02  # per batch once the second actor is up

# Runs in its own python process with RAY_ADDRESS set; __PARAMS__ is filled in by `driver_code`.
DRIVER = r'''
import json, os, shutil, tempfile, time
import ray

PARAMS = json.loads(__PARAMS__)
ray.init(logging_level="WARNING", log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False

alive = [n for n in ray.nodes() if n["Alive"]]
before = {
    "alive_nodes": len(alive),
    "gpu_nodes": sum(1 for n in alive if n["Resources"].get("GPU", 0) > 0),
    "cluster_gpus": ray.cluster_resources().get("GPU", 0),
    "head_node_id": ray.get_runtime_context().get_node_id(),  # the driver sits on the head
}
actors_dir = tempfile.mkdtemp(prefix="rsa-actors-", dir="/tmp")


class Tag:
    """Stands in for a GPU model: slow batches, tagged with where they ran."""

    def __init__(self, actors_dir):
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.actor_id = ctx.get_actor_id()
        self.gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
        self.actors_dir = actors_dir
        open(os.path.join(actors_dir, self.actor_id), "w").close()

    def __call__(self, batch):
        grown = len(os.listdir(self.actors_dir)) >= PARAMS["max_actors"]
        time.sleep(PARAMS["fast_s"] if grown else PARAMS["slow_s"])
        n = len(batch["id"])
        return {
            "id": batch["id"],
            "node_id": [self.node_id] * n,
            "actor_id": [self.actor_id] * n,
            "gpu_ids": [self.gpu_ids] * n,
        }


t0 = time.time()
try:
    ds = ray.data.range(PARAMS["n"], override_num_blocks=PARAMS["n"] // PARAMS["batch_size"]).map_batches(
        Tag,
        fn_constructor_args=(actors_dir,),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=PARAMS["max_actors"], initial_size=1),
        num_gpus=1,
        batch_size=PARAMS["batch_size"],
    )
    rows = ds.take_all()
finally:
    shutil.rmtree(actors_dir, ignore_errors=True)
elapsed = time.time() - t0

gpu_node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
print(json.dumps({
    "before": before,
    "ids": [int(r["id"]) for r in rows],
    "node_ids": [r["node_id"] for r in rows],
    "actor_ids": [r["actor_id"] for r in rows],
    "gpu_ids": sorted({r["gpu_ids"] for r in rows}),
    "gpu_node_ids_after": gpu_node_ids,
    "elapsed_s": elapsed,
}))
'''


def driver_code(**params) -> str:
    return DRIVER.replace("__PARAMS__", repr(json.dumps(params)))


def test_actor_pool_grows_onto_autoscaled_gpu_nodes():
    t0 = time.time()
    with fake_gpu_cluster(max_gpu_workers=2, gpus_per_node=1, cpus_per_node=1, head_cpus=1) as cluster:
        out = cluster.run_driver(driver_code(n=N_ROWS, batch_size=BATCH_SIZE, slow_s=SLOW_S, fast_s=FAST_S,
                                             max_actors=2))
    print(f"cluster + workload: {time.time() - t0:.1f} s (pipeline {out['elapsed_s']:.1f} s)")

    # the cluster started without any GPU worker node
    assert out["before"]["alive_nodes"] == 1, out["before"]
    assert out["before"]["gpu_nodes"] == 0 and out["before"]["cluster_gpus"] == 0, out["before"]
    # every row exactly once
    assert sorted(out["ids"]) == list(range(N_ROWS))
    # the pool grew to its max of two actors, on two autoscaled GPU nodes (never the head)
    actors, nodes = set(out["actor_ids"]), set(out["node_ids"])
    assert len(actors) == 2, actors
    assert len(nodes) == 2, nodes
    assert out["before"]["head_node_id"] not in nodes
    assert nodes <= set(out["gpu_node_ids_after"]), (nodes, out["gpu_node_ids_after"])
    assert "" not in out["gpu_ids"], out["gpu_ids"]  # each actor was given a (fake) GPU
