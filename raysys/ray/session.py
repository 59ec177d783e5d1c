"""Start or join Ray: --address / $RAY_ADDRESS joins a cluster, otherwise an embedded Ray starts."""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray


def init_ray(
    address: Optional[str] = None, num_cpus: Optional[int] = None, env_vars: Optional[dict[str, str]] = None
) -> str:
    """Idempotent. Returns 'cluster' or 'embedded'.

    `env_vars` (e.g. HF_HOME) are set in this process and in every Ray worker: an embedded
    Ray's workers inherit this process's environment; on a cluster they go in the runtime env,
    where they win over a submitted job's own value for the same variable.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return "cluster" if address else "embedded"
    os.environ.update(env_vars or {})
    if address:
        if env_vars:
            os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"  # merge over the job's env, not fail on a clash
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                 runtime_env={"env_vars": dict(env_vars)} if env_vars else None)
        return "cluster"
    # Ray Train's controller polls workers every 2 s and each ray.train.report waits for the
    # previous one to be taken: on one machine with short epochs that poll dominates the run.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # One machine has no spot nodes to be preempted: no watcher actor per Ray Train run (its process
    # start is CPU time taken from the short runs of a laptop).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(num_cpus=num_cpus, logging_level=logging.WARNING)
    return "embedded"


def use_assigned_cpus() -> int:
    """Set torch's intra-op threads to the CPUs Ray assigned to the current task, actor or Train
    worker; returns that number (torch's current count outside Ray).

    Ray reuses worker processes, and torch fixes its thread count when it is first used in a
    process: a 2-CPU task that lands on a worker that earlier ran a 1-CPU task would otherwise
    compute on one thread (the quickstart's pretraining ran at half speed that way).
    """
    import torch

    if not ray.is_initialized():
        return torch.get_num_threads()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus and int(cpus) >= 1 and torch.get_num_threads() != int(cpus):
        torch.set_num_threads(int(cpus))
    return torch.get_num_threads()


def on_assigned_cpus(actor_class: type) -> type:
    """`actor_class` (a Ray Data callable class) whose constructor first calls `use_assigned_cpus`."""

    class OnAssignedCpus(actor_class):
        def __init__(self, *args, **kwargs):
            use_assigned_cpus()
            super().__init__(*args, **kwargs)

    OnAssignedCpus.__name__ = OnAssignedCpus.__qualname__ = actor_class.__name__
    return OnAssignedCpus
