"""The synthesis generation pool grows onto autoscaled (fake) GPU nodes and the job completes.

`tests/integration/autoscaling.py` starts an autoscaling cluster: a head with one CPU and no
GPU, and up to two fake "gpu_worker" nodes (one CPU, one GPU each), none running at first. A
driver in a subprocess (the pytest process has its own local Ray) runs the synthesize stage on
the tiny generator with `synthesis.num_gpus=1` and a pool of 1 to 2 actors. The autoscaler must
start a GPU node for the first actor and, under load, a second one for the second actor.

Ray Data looks at the cluster's nodes every 20 s (not configurable), so a new node counts for
the pool 20-45 s after the pipeline starts: the plan holds about a minute of one-actor work.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import TINY
from tests.integration.autoscaling import fake_gpu_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # 77 s here: kept out of CI's 20 minutes

OVERRIDES = ["synthesis.plans=[{name: pool, model: plain, ratio: 8.0}]", "synthesis.batch_size=2",
             "synthesis.rows_per_block=4", "synthesis.num_gpus=1", "synthesis.cpus_per_actor=1",
             "synthesis.min_actors=1", "synthesis.max_actors=2", "synthesis.initial_actors=1"]

DRIVER = r'''
import json, sys
import ray
from raysys.stages import load_config
from raysys.ray.session import init_ray
from raysys.stages import synthesize

cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
init_ray(cfg.run.address)
def gpu_nodes():
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)
before = {"alive_nodes": sum(1 for n in ray.nodes() if n["Alive"]), "gpu_nodes": gpu_nodes(),
          "head": ray.get_runtime_context().get_node_id()}
metrics = synthesize.run(cfg)
# The GCS actor table (the state API needs a dashboard, which this cluster does not run).
actors = [a for a in ray._private.state.actors().values() if "GenerateBatch" in a.get("ActorClassName", "")]
print(json.dumps({"before": before, "gpu_nodes_after": gpu_nodes(), "metrics": metrics,
                  "actor_nodes": sorted({a["Address"]["NodeID"] for a in actors}),
                  "actor_classes": sorted({a.get("ActorClassName", "") for a in actors})}))
'''


def test_generation_pool_grows_onto_autoscaled_gpu_nodes(tiny_generator, tmp_path):
    cfg = tiny_generator[0]
    root = tmp_path / "run"
    for stage in ("prepare", "train_classifier", "score", "pretrain_generator", "finetune"):
        shutil.copytree(os.path.join(cfg.run.root, stage), root / stage)
    overrides = [f"run.root={root}", *OVERRIDES]
    with fake_gpu_cluster(max_gpu_workers=2, gpus_per_node=1, cpus_per_node=1, head_cpus=1) as cluster:
        code = DRIVER.replace("sys.argv[1]", repr(str(TINY))).replace("sys.argv[2]", repr(json.dumps(overrides)))
        out = cluster.run_driver(code, timeout=400)
    before, m = out["before"], out["metrics"]
    assert before["alive_nodes"] == 1 and before["gpu_nodes"] == []  # no GPU node at the start
    assert m["planned"] == m["written"] == m["generated"] > 500 and m["duplicates"] == 0
    assert len(m["actors"]) == 2, m["actors"]  # the pool grew to its maximum
    assert all(a["images"] > 0 for a in m["actors"].values())
    assert len(out["actor_nodes"]) == 2 and before["head"] not in out["actor_nodes"]
    assert set(out["actor_nodes"]) <= set(out["gpu_nodes_after"])  # each on an autoscaled GPU node
