"""The built-in base generator, candidate by candidate: a research measurement, not a speed benchmark.

Pretrains the quickstart's base model (plain torch, one process, no Ray) on one run's `pretrain`
split with `pretrain.*` fields overridden, samples `--samples` images per class with the run's
sampling settings (or `--sampling` overrides), and prints, per pretraining seed and as mean ± std
over the seeds:

- `recognition` (and per class): the share of the samples the run's baseline classifier calls the
  prompted class, as the control stage measures it;
- `fid`, `precision`, `recall`, `density`: the samples against the real test images, in the
  baseline classifier's feature space, as the quality stage measures a synthetic set;
- `steps_per_s` and `train_seconds`: the cost of the candidate on this host.

    THREADS=1 python benchmarks/base_generator.py runs/quickstart --name v-minsnr \\
        --set prediction_type=v_prediction --set snr_gamma=5 --seeds 0 1

`--data all` pretrains on the pretrain split and every built-in MNIST image the run's prepare
left unused (no train, val or test image): `builtin:mnist` runs only.

The run root must hold the prepare and train_classifier stages; pretrain fields come from the
root's pretrain_generator/config.yaml when there is one, else from the dataclass defaults.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.control_spread import sampling_settings  # noqa: E402
from raysys.core.config import PretrainConfig, SamplingConfig  # noqa: E402
from raysys.generation.components import load_pipeline  # noqa: E402
from raysys.generation.control import control_grid, encode_images  # noqa: E402
from raysys.generation.pretrain import StreamedImages, pretrain_base  # noqa: E402
from raysys.quality.features import FeatureExtractor  # noqa: E402
from raysys.quality.measures import fid, prdc  # noqa: E402
from raysys.scoring.difficulty import DifficultyScorer  # noqa: E402
from raysys.training.classifier import manifest_rows  # noqa: E402

FIRST_SEED = 10_000
"""The sampling seeds start here, as the control stage's recognition set does."""


def split_images(manifest: str, split: str, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    files, rows = manifest_rows(manifest, [split])
    images = StreamedImages(files, rows, size, channels)(np.arange(rows.num_rows))
    return np.asarray(images), rows["label"].to_numpy().astype(np.int64)


def unused_mnist(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The built-in MNIST images that no split of the run's prepare took, at `size` px."""
    from raysys.core.schema import read_manifest
    from raysys.data.images import decode_batch, encode_png
    from raysys.data.sources.builtin import builtin_pixels

    pixels, y = builtin_pixels("mnist")
    used = read_manifest(str(root / "prepare" / "manifest"), columns=["path"])["path"].to_pylist()
    if not all(p.startswith("builtin:mnist#") for p in used):
        raise SystemExit(f"--data all needs a builtin:mnist run; {root} holds other images")
    taken = {int(p.rsplit("#", 1)[-1]) for p in used}
    keep = np.array([i for i in range(len(y)) if i not in taken])
    return decode_batch([encode_png(pixels[i]) for i in keep], size, 1), y[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a run root with prepare and train_classifier")
    parser.add_argument("--name", required=True, help="the candidate's name in the results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], help="a pretrain field, e.g. steps=960")
    parser.add_argument("--sampling", action="append", default=[], help="a generator sampling field, e.g. scheduler=dpm++")
    parser.add_argument("--data", choices=["pretrain", "all"], default="pretrain")
    parser.add_argument("--samples", type=int, default=40, help="images per class")
    parser.add_argument("--pipeline", type=Path, help="measure this saved pipeline instead of pretraining")
    parser.add_argument("--out", type=Path, default=Path("base_generator"), help="pipelines and results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("THREADS", "1"))))

    saved_file = args.root / "pretrain_generator" / "config.yaml"
    saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else {}
    p = {k: v for k, v in saved.get("pretrain", {}).items() if k in PretrainConfig.__dataclass_fields__}
    for item in args.set:
        key, value = item.split("=", 1)
        p[key] = ast.literal_eval(value)
    cfg = PretrainConfig(**p)
    generator = saved.get("generator", {})
    opts = replace(SamplingConfig(**sampling_settings(generator, args.sampling)), difficulty_guidance_scale=None)
    template = generator.get("prompt_template", "a photo of the digit {name}")
    channels = saved.get("data", {}).get("channels", 1)
    names = json.loads((args.root / "prepare" / "metrics.json").read_text())["class_names"]
    manifest = str(args.root / "prepare" / "manifest")
    images, labels = split_images(manifest, "pretrain", cfg.image_size, channels)
    if args.data == "all":
        more, more_labels = unused_mnist(args.root, cfg.image_size)
        images, labels = np.concatenate([images, more]), np.concatenate([labels, more_labels])
    test, test_labels = split_images(manifest, "test", cfg.image_size, channels)
    classifier = str(args.root / "train_classifier" / "model")
    scorer = DifficultyScorer({"baseline": classifier})
    extractor = FeatureExtractor("classifier", classifier_dir=classifier)
    real = torch.from_numpy(extractor(encode_images(test.transpose(0, 2, 3, 1))))
    prompts = [template.format(name=n) for n in names]
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    for seed in args.seeds:
        directory = args.out / args.name / f"seed{seed}"
        row: dict = {"name": args.name, "seed": seed, "set": args.set, "sampling": args.sampling, "data": args.data,
                     "pretrain_images": len(labels)}
        if args.pipeline is None:
            metrics = pretrain_base(images, labels, names, cfg, template, str(directory / "pipeline"), seed=seed,
                                    log=None)
            row.update(train_seconds=metrics["train_seconds"], steps_per_s=round(cfg.steps / metrics["train_seconds"], 3),
                       loss_end=round(metrics["loss_end"], 4))
        pipe = load_pipeline(str(args.pipeline or directory / "pipeline"))
        t0 = time.time()
        with torch.no_grad():
            grid = control_grid(pipe, prompts, [0.0], args.samples, opts, with_difficulty=False, first_seed=FIRST_SEED)
        row["sample_seconds"] = round(time.time() - t0, 1)
        flat = grid.images[:, 0].reshape(-1, *grid.images.shape[3:])
        flat_labels = grid.labels[:, 0].ravel()
        encoded = encode_images(flat)
        correct = (scorer(encoded, flat_labels, ["baseline"] * len(flat))["pred"] == flat_labels).reshape(len(names), -1)
        fake = torch.from_numpy(extractor(encoded))
        row.update(recognition=round(float(correct.mean()), 4),
                   recognition_per_class=[round(float(x), 2) for x in correct.mean(axis=1)],
                   fid=round(fid(real, fake), 2), **{k: round(v, 3) for k, v in prdc(real, fake).items()})
        print(json.dumps(row), flush=True)
        results.append(row)
        with open(args.out / "results.jsonl", "a") as out:
            out.write(json.dumps(row) + "\n")
    keys = [k for k in ("recognition", "fid", "precision", "recall", "density", "steps_per_s") if k in results[0]]
    spread = {k: (np.mean([r[k] for r in results]), np.std([r[k] for r in results], ddof=1) if len(results) > 1 else 0.0)
              for k in keys}
    print(f"{args.name}, {len(results)} seeds: " + "; ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in spread.items()))


if __name__ == "__main__":
    main()
