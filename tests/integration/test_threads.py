"""Ray reuses worker processes, and torch keeps the thread count of the task that first used it:
tasks and actors set torch's threads to the CPUs Ray gave them."""

import ray
import torch

from raysys.ray.train import remote_task
from raysys.ray.session import on_assigned_cpus, use_assigned_cpus


def _threads_after_stale_count(stale: int) -> int:
    torch.set_num_threads(stale)  # what a reused worker may carry from an earlier task
    return use_assigned_cpus()


def test_a_task_computes_on_the_cpus_it_holds_whatever_ran_before_in_its_process(ray_session):
    two = ray.remote(num_cpus=2)(_threads_after_stale_count)
    one = ray.remote(num_cpus=1)(_threads_after_stale_count)
    assert ray.get(two.remote(1)) == 2
    assert ray.get(one.remote(2)) == 1
    assert remote_task(torch.get_num_threads, num_cpus=2)() == 2


class _Threads:
    def __call__(self, batch):
        return {"threads": [torch.get_num_threads()] * len(batch["id"])}


def test_a_ray_data_actor_computes_on_the_cpus_it_holds(ray_session):
    stale = {"env_vars": {"OMP_NUM_THREADS": "2"}}  # torch would start on 2 threads in a 1-CPU actor
    ds = ray.data.from_items([{"id": i} for i in range(4)]).map_batches(
        on_assigned_cpus(_Threads), compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=4,
        runtime_env=stale)
    assert [row["threads"] for row in ds.take_all()] == [1, 1, 1, 1]
