"""The proof of control over fine-tune seeds: a research measurement, not a speed benchmark.

One run of the control stage measures one fine-tune, and the difficulty Spearman of one
fine-tune moves by about 0.1 from seed to seed. This script fine-tunes the difficulty variant
several times over one run's base model and scored manifest (plain torch, one process, no Ray),
draws the control stage's grid from each at one or more difficulty guidance scales, re-scores it
with the run's baseline classifier, and prints each figure as mean ± std over the seeds:

- `spearman` / `within`: requested against measured difficulty, over the grid and inside each class;
- `recognised_low`: the share of the grid's images at s <= 0.5 that the baseline calls the
  prompted class (the control stage's `recognition` is the same figure for the base model);
- `min_class_rho`: the lowest within-class Spearman over the classes with at least 20 train images.

    python benchmarks/control_spread.py runs/quickstart --seeds 0 1 2 --scales 6,15 \\
        --set difficulty_dropout=0.3

The run root must hold the prepare, train_classifier, score and pretrain_generator stages
(`make quickstart` leaves them). Fine-tune fields come from the root's config.yaml of the
finetune stage when there is one, else from the dataclass defaults; `--set` overrides them.
`--adapters DIR` measures a finished fine-tune (e.g. ROOT/finetune/difficulty/adapters) instead,
`--sampling` overrides the run's sampling settings (scheduler, num_inference_steps, ...), and
`--base` measures over another base model (benchmarks/base_generator.py writes them).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raysys.core.config import ControlConfig, FinetuneConfig, SamplingConfig  # noqa: E402
from raysys.core.context import LocalContext  # noqa: E402
from raysys.core.schema import read_manifest  # noqa: E402
from raysys.generation.control import control_grid, encode_images, spearman, within_class_spearman  # noqa: E402
from raysys.generation.finetune import FinetuneJob, finetune_loop, load_finetuned  # noqa: E402
from raysys.scoring.difficulty import DifficultyScorer  # noqa: E402

MIN_TRAIN_IMAGES = 20
"""Classes with at least this many train images must show measured difficulty rising with s."""


def sampling_settings(generator: dict, overrides: list[str]) -> dict:
    """The SamplingConfig fields of a run's `generator` section, with `FIELD=VALUE` overrides."""
    sampling = {k: generator[k] for k in SamplingConfig.__dataclass_fields__ if k in generator}
    for item in overrides:
        key, value = item.split("=", 1)
        sampling[key] = value if key == "scheduler" else ast.literal_eval(value)
    return sampling


def run_config(root: Path) -> dict:
    saved = root / "finetune" / "config.yaml"
    return yaml.safe_load(saved.read_text()) if saved.is_file() else {}


def measure(pipe, scorer, prompts, levels, seeds, opts, train_counts) -> dict:
    with torch.no_grad():
        grid = control_grid(pipe, prompts, levels, seeds, opts)
    flat = grid.images.reshape(-1, *grid.images.shape[3:])
    scored = scorer(encode_images(flat), grid.labels.ravel(), ["baseline"] * len(flat))
    measured = scored["difficulty"].reshape(grid.labels.shape)
    recognised = (scored["pred"] == grid.labels.ravel()).reshape(grid.labels.shape)
    low = np.asarray(levels) <= 0.5
    rhos = [spearman(grid.requested[c], measured[c]) for c in range(len(prompts))]
    return {
        "spearman": spearman(grid.requested, measured),
        "within": within_class_spearman(grid.labels, grid.requested, measured),
        "recognised_low": float(recognised[:, low].mean()),
        "min_class_rho": min((r if r is not None else 0.0) for c, r in enumerate(rhos) if train_counts[c] >= MIN_TRAIN_IMAGES),
        "measured_by_level": [round(float(x), 3) for x in measured.mean(axis=(0, 2))],
        "recognised_by_level": [round(float(x), 3) for x in recognised.mean(axis=(0, 2))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a run root with prepare, train_classifier, score, pretrain_generator")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scales", default="6", help="difficulty guidance scales, comma-separated ('none': joint)")
    parser.add_argument("--set", action="append", default=[], help="a finetune field, e.g. difficulty_dropout=0.3")
    parser.add_argument("--out", type=Path, default=Path("control_spread"), help="adapters and results.jsonl")
    parser.add_argument("--base", type=Path, help="the base pipeline (default: the root's pretrain_generator/pipeline)")
    parser.add_argument("--sampling", action="append", default=[], help="a generator sampling field, e.g. scheduler=dpm++")
    parser.add_argument("--adapters", type=Path, help="measure these saved adapters instead of fine-tuning")
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("THREADS", "1"))))

    saved = run_config(args.root)
    f = {k: v for k, v in saved.get("finetune", {}).items() if k in FinetuneConfig.__dataclass_fields__}
    for item in args.set:
        key, value = item.split("=", 1)
        f[key] = ast.literal_eval(value)
    cfg = FinetuneConfig(**{**f, "variants": ["difficulty"], "checkpoint_every": f.get("steps", 300)})
    grid = ControlConfig(**saved.get("control", {}))
    generator = saved.get("generator", {})
    template = generator.get("prompt_template", "a photo of the digit {name}")
    names = json.loads((args.root / "prepare" / "metrics.json").read_text())["class_names"]
    labels = read_manifest(str(args.root / "score" / "manifest"), columns=["label", "split"])
    train_counts = np.bincount(np.asarray(labels["label"])[np.asarray(labels["split"]) == "train"], minlength=len(names))
    base = str(args.base or args.root / "pretrain_generator" / "pipeline")
    sampling = sampling_settings(generator, args.sampling)
    scorer = DifficultyScorer({"baseline": str(args.root / "train_classifier" / "model")})
    prompts = [template.format(name=n) for n in names]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds if args.adapters is None else ["given"]:
        directory = args.out / f"seed{seed}"
        t0 = time.time()
        if args.adapters is None:
            job = FinetuneJob(variant="difficulty", base=base, manifest=str(args.root / "score" / "manifest"),
                              class_names=names, prompt_template=template, cfg=cfg, seed=seed, name=f"seed {seed}")
            finetune_loop(LocalContext(directory=str(directory)), job)
        pipe = load_finetuned(base, str(args.adapters or directory / "adapters"))
        for scale in args.scales.split(","):
            opts = SamplingConfig(**sampling)
            opts.difficulty_guidance_scale = None if scale == "none" else float(scale)
            row = {"seed": seed, "scale": scale, "set": args.set, "sampling": args.sampling,
                   "seconds": round(time.time() - t0)}
            row.update(measure(pipe, scorer, prompts, grid.grid_levels, grid.grid_seeds, opts, train_counts))
            print(json.dumps(row), flush=True)
            results.append(row)
            with open(args.out / "results.jsonl", "a") as out:
                out.write(json.dumps(row) + "\n")
    for scale in args.scales.split(","):
        rows = [r for r in results if r["scale"] == scale]
        spread = {k: (np.mean([r[k] for r in rows]), np.std([r[k] for r in rows], ddof=1) if len(rows) > 1 else 0.0)
                  for k in ("spearman", "within", "recognised_low", "min_class_rho")}
        print(f"scale {scale}, {len(rows)} seeds: " + "; ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in spread.items()))


if __name__ == "__main__":
    main()
