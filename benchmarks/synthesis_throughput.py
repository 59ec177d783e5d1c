"""Throughput of the Ray Data synthesis path against a plain diffusers loop, measured in one run.

The same tiny pixel-space generator (built from config, random weights, saved and loaded with
from_pretrained), the same plan (prompts, per-image s and seeds), the same scheduler and steps,
and the same work per image: generate, encode PNG, re-score with the classifier, write Parquet.

  plain:    one process, torch on 1 thread: pipe(...) -> PNG -> classifier -> pq.write_table,
            batch by batch, as a user would write it
  ray x1:   raysys.ray.synthesis.run_synthesis, one generation actor with 1 CPU
  ray x2:   the same with two generation actors, 1 CPU each

ray.init is excluded; dataset creation, actor start-up and model loading are included in every
path (the plain loop loads its pipeline inside the timed region too). Prints images/s and the
ratios ray x1 / plain (target >= 0.85) and ray x2 / ray x1 (target >= 1.5 on 2 cores).

    python benchmarks/synthesis_throughput.py [--images 512] [--steps 20] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysys.core.config import SamplingConfig, SynthesisConfig
from raysys.data.images import encode_png
from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.difficulty_encoder import DifficultyEncoder
from raysys.generation.pipeline import DifficultyDiffusionPipeline
from raysys.generation.plans import PLAN_SCHEMA, stable_int
from raysys.generation.synthesis import GeneratorSpec
from raysys.models.classifiers import create_classifier, save_classifier
from raysys.ray.session import init_ray
from raysys.ray.synthesis import run_synthesis
from raysys.scoring.difficulty import DifficultyScorer

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_plan(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    return pa.table({
        "sample_id": [f"bench{i:06d}" for i in range(n)], "plan": ["bench"] * n, "model": ["difficulty"] * n,
        "label": pa.array(labels, pa.int32()), "class_name": [NAMES[c] for c in labels],
        "prompt": [f"a photo of the digit {NAMES[c]}" for c in labels],
        "negative_prompt": pa.array([None] * n, pa.string()),
        "requested_difficulty": pa.array(rng.uniform(0, 1, n), pa.float32()),
        "guidance": pa.array([None] * n, pa.float32()), "source_id": pa.array([None] * n, pa.string()),
        "source_image": pa.array([None] * n, pa.binary()),
        "seed": pa.array([stable_int("bench", i) for i in range(n)], pa.int64()),
    }, schema=PLAN_SCHEMA)


def plain_loop(generator_dir, classifier_dir, plan, sampling, batch_size, out_dir):
    pipe = DifficultyDiffusionPipeline.from_pretrained(generator_dir)
    pipe.set_progress_bar_config(disable=True)
    scorer = DifficultyScorer({"full": classifier_dir})
    for start in range(0, len(plan), batch_size):
        rows = plan.slice(start, batch_size)
        images = pipe(rows["prompt"].to_pylist(), seeds=rows["seed"].to_pylist(),
                      class_labels=rows["label"].to_pylist(), difficulty=rows["requested_difficulty"].to_pylist(),
                      guidance_scale=sampling.guidance_scale, num_inference_steps=sampling.num_inference_steps,
                      scheduler=sampling.scheduler).images
        encoded = [encode_png(im[..., 0]) for im in images]
        scores = scorer(encoded, rows["label"].to_numpy(), ["full"] * len(rows))
        table = pa.table({"sample_id": rows["sample_id"], "image": pa.array(encoded, pa.binary()),
                          "difficulty": scores["difficulty"]})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        with open(os.path.join(out_dir, f"part-{start:06d}.parquet"), "wb") as f:
            f.write(buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds to wait after ray.init")
    args = ap.parse_args()

    torch.manual_seed(0)
    pipe = build_components(ComponentSpec(image_size=args.size, block_out_channels=[32, 64], cross_attention_dim=64,
                                          vocabulary="a photo of the digit".split() + NAMES))
    pipe.register_modules(difficulty_encoder=DifficultyEncoder(num_classes=10, cross_attention_dim=64, num_tokens=4))
    params = sum(p.numel() for p in pipe.unet.parameters())
    sampling = SamplingConfig(guidance_scale=3.0, num_inference_steps=args.steps, scheduler="ddim")
    plan = make_plan(args.images)
    with tempfile.TemporaryDirectory() as d:
        gen_dir, clf_dir = os.path.join(d, "gen"), os.path.join(d, "clf")
        pipe.save_pretrained(gen_dir)
        save_classifier(create_classifier("small_cnn", 10, 1), clf_dir,
                        {"name": "small_cnn", "num_classes": 10, "in_chans": 1, "width": 32, "image_size": 28})
        print(f"plan: {args.images} images, {args.size}x{args.size}, UNet {params / 1e6:.2f}M params, "
              f"{args.steps} DDIM steps, CFG 3.0, batch {args.batch_size}, {os.cpu_count()} CPUs")

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        os.makedirs(os.path.join(d, "plain"))
        t0 = time.perf_counter()
        plain_loop(gen_dir, clf_dir, plan, sampling, args.batch_size, os.path.join(d, "plain"))
        plain = args.images / (time.perf_counter() - t0)
        torch.set_num_threads(threads)
        print(f"plain diffusers loop (1 thread): {plain:.2f} images/s")

        init_ray(None, num_cpus=os.cpu_count())
        time.sleep(args.settle)
        rates = {}
        for actors in (1, 2):
            cfg = SynthesisConfig(batch_size=args.batch_size, min_actors=actors, max_actors=actors,
                                  cpus_per_actor=1.0, rows_per_block=args.batch_size * 2)
            t0 = time.perf_counter()
            run = run_synthesis(plan, {"difficulty": GeneratorSpec(gen_dir, label="bench")}, sampling, cfg, clf_dir,
                                os.path.join(d, f"ray{actors}"), progress=False)
            seconds = time.perf_counter() - t0
            assert len(run.summary) == args.images
            rates[actors] = args.images / seconds
            busy = ", ".join(f"{a['utilisation']:.2f}" for a in run.actors.values())
            print(f"ray data, {actors} actor(s) x 1 CPU: {rates[actors]:.2f} images/s (actor busy/wall: {busy})")
    print(f"ratio ray x1 / plain: {rates[1] / plain:.2f} (target >= 0.85)")
    print(f"ratio ray x2 / ray x1: {rates[2] / rates[1]:.2f} (target >= 1.5)")


if __name__ == "__main__":
    main()
