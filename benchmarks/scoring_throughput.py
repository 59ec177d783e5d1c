"""Throughput of the Ray Data scoring path against a plain PyTorch loop, measured in one run.

Both score the same encoded images with the same saved classifier, PNG decoding included:
  plain: decode_batch -> normalize -> model -> softmax, batch by batch, in this process
  ray:   raysys.ray.scoring.score_table (Ray Data map_batches over an ActorPoolStrategy)
Ray start-up (ray.init) is excluded; dataset creation, actor start-up and model loading in
the actor are included. Prints images/s for both and the ratio ray/plain (target >= 0.8 with
one actor on a 2-core machine).

    python benchmarks/scoring_throughput.py [--images 40000] [--model small_cnn] [--size 28]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

from raysys.core.config import ScoreConfig
from raysys.data.images import decode_batch
from raysys.data.sources import load_builtin_mnist
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.ray.scoring import score_table
from raysys.ray.session import init_ray
from raysys.scoring.difficulty import scores_from_probs
from raysys.models.classifiers import normalize


def plain_loop(model, images, labels, batch_size, size):
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(decode_batch(images[start : start + batch_size], size, 1))
            probs = torch.softmax(model(normalize(x)), 1)
            out.append(scores_from_probs(probs, torch.as_tensor(labels[start : start + batch_size]))["difficulty"])
    return np.concatenate(out)


def fmt(times):
    return ", ".join(f"{t:.2f}s" for t in times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40000)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to wait after ray.init")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each path (best is reported)")
    ap.add_argument("--cpus-per-actor", type=float, default=None, help="default: all CPUs / actors")
    args = ap.parse_args()

    src = load_builtin_mnist()
    reps = -(-args.images // len(src))
    images = (src.images * reps)[: args.images]
    labels = np.tile(src.labels, reps)[: args.images]
    model = create_classifier(args.model, 10, 1).eval()

    import os

    ncpu = os.cpu_count() or 1
    cpus = args.cpus_per_actor or max(1.0, ncpu / args.actors)
    with tempfile.TemporaryDirectory() as d:
        save_classifier(model, d, {"name": args.model, "num_classes": 10, "in_chans": 1, "width": 32,
                                   "image_size": args.size})
        table = pa.table({
            "sample_id": [f"b{i}" for i in range(len(images))],
            "image": pa.array(images, pa.binary()),
            "label": pa.array(labels, pa.int32()),
            "score_mode": ["full"] * len(images),
        })
        init_ray(None, num_cpus=ncpu)
        time.sleep(args.settle)  # let Ray's own start-up processes finish before timing anything
        cfg = ScoreConfig(batch_size=args.batch_size, min_actors=args.actors, max_actors=args.actors,
                          cpus_per_actor=cpus)

        plain_times, ray_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift on the machine hits both paths
            t0 = time.perf_counter()
            expected = plain_loop(model, images, labels, args.batch_size, args.size)
            plain_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scored = score_table(table, {"full": d}, cfg)
            ray_times.append(time.perf_counter() - t0)
        plain_s, ray_s = min(plain_times), min(ray_times)

    order = np.argsort(np.asarray([int(s[1:]) for s in scored["sample_id"].to_pylist()]))
    got = scored["difficulty"].to_numpy()[order]
    assert np.allclose(got, expected, atol=1e-5), "the two paths disagree"
    plain_ips, ray_ips = len(images) / plain_s, len(images) / ray_s
    print(f"images {len(images)}  model {args.model} {args.size}x{args.size}  batch {args.batch_size}  "
          f"actors {args.actors} x {cpus:g} CPU  torch threads (plain) {torch.get_num_threads()}")
    print(f"plain PyTorch loop : {plain_s:7.2f} s  {plain_ips:9.1f} images/s  (runs: {fmt(plain_times)})")
    print(f"Ray Data scoring   : {ray_s:7.2f} s  {ray_ips:9.1f} images/s  (runs: {fmt(ray_times)})")
    print(f"ratio ray/plain    : {ray_ips / plain_ips:.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
