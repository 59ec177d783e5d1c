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
    ray.init(num_cpus=num_cpus, logging_level=logging.WARNING)
    return "embedded"
