"""Start or join Ray: --address / $RAY_ADDRESS joins a cluster, otherwise an embedded Ray starts."""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> str:
    """Idempotent. Returns 'cluster' or 'embedded'."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return "cluster" if address else "embedded"
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return "cluster"
    # Ray Train's controller polls workers every 2 s and each ray.train.report waits for the
    # previous one to be taken: on one machine with short epochs that poll dominates the run.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(num_cpus=num_cpus, logging_level=logging.WARNING)
    return "embedded"
