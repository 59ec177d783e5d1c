"""Scoring on one GPU: raysys's scoring core against plain timm, on the same work.

No Ray: the raysys path is `DifficultyScorer` (what the scoring actor holds and calls on each
batch of a manifest part) with a classifier saved as raysys saves classifiers
(`save_classifier`: classifier.json + model.safetensors); the plain path loads the same weights
the plain way (`timm.create_model` + `load_state_dict`) and does the same per-image work in a
loop a timm user would write. Both score the same PNG images (as the manifest stores them).
Prints, as it goes, images/s of each path, the ratio raysys / plain, the classifier's FLOPs per
image and MFU, and peak memory; `--json` writes every figure.

Run on a GPU (resnet10t is the project's timm classifier at GPU scale, configs/imagenet_lt_sd21.yaml;
the project's default classifier, small_cnn, is not a timm model):

    python benchmarks/gpu_scoring.py --model resnet10t --resolution 224 --source-size 512 --dtype fp32 \\
        --images 2048 --batch-size 256 --json scoring_resnet10t_fp32.json
    python benchmarks/gpu_scoring.py --model resnet50 --resolution 224 --source-size 512 --dtype bf16 \\
        --images 2048 --batch-size 256 --json scoring_resnet50_bf16.json
    python benchmarks/gpu_scoring.py --model vit_base_patch16_clip_224 --resolution 224 --source-size 512 \\
        --dtype bf16 --images 1024 --batch-size 128 --json scoring_vitb16_bf16.json

Each should take well under a minute per path on an H100 (an estimate: not yet run on a GPU;
PNG decoding on the CPU, one thread, likely dominates for the small models). The classifier has
random weights (nothing is downloaded), which changes no FLOP and no timing. The unit test runs
it on a CPU at 32 px.

**What each timed path includes, per batch of `--batch-size` images** (model loading and one
warm-up batch are not timed; `torch.cuda.synchronize()` around the timed loop):

- raysys: `DifficultyScorer(images, labels, ["full"] * B)`: decode each PNG with PIL, convert to
  RGB, resize (bilinear) to the classifier's image size when it differs; normalise on the CPU
  with the model's mean/std; move to the device; forward; softmax in fp32; back to the CPU;
  difficulty, p_true, loss, prediction and entropy per image (float64, on the CPU).
- plain: the same steps written out: PIL decode, RGB, bilinear resize, uint8 -> float, the
  mean/std of `timm.data.resolve_model_data_config(model)`, to the device, forward, softmax in
  fp32, to the CPU, p(true label) and 1 - p per image.

raysys scores in fp32 (its scorer has no dtype option); for fp16/bf16 both paths run under
`torch.autocast(device, dtype)`, which is what such an option would do. Model FLOPs per image:
one forward at the batch's shape under `FlopCounterMode` / B; MFU, peak FLOP/s and peak memory
as in gpu_synthesis.py (gpu_common.py). The paths run one after another, plain first.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import tempfile
from typing import Optional

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpu_common, beside this file
from gpu_common import (  # noqa: E402
    DTYPES, PeakMemory, count_flops, device_name, fmt, mfu, peak_flops, percent, quiet_libraries, synthetic_png, timed,
    versions,
)

from raysys.models.classifiers import create_classifier, save_classifier  # noqa: E402
from raysys.scoring.difficulty import DifficultyScorer  # noqa: E402

DEFAULT_MODEL = "resnet10t"  # classifier.name of configs/imagenet_lt_sd21.yaml


def save_random_classifier(directory: str, name: str, num_classes: int, resolution: int) -> None:
    """A timm classifier with random weights, saved the way raysys's training saves its models."""
    torch.manual_seed(0)
    model = create_classifier(name, num_classes, 3, image_size=resolution)
    save_classifier(model, directory, {"name": name, "num_classes": num_classes, "in_chans": 3, "width": 32,
                                       "image_size": resolution})


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---- the two paths ----------------------------------------------------------------------------

def load_raysys(directory: str, device: torch.device) -> DifficultyScorer:
    return DifficultyScorer({"full": directory}, str(device))


def run_raysys(scorer: DifficultyScorer, images: list[bytes], labels: np.ndarray, batch_size: int, dtype,
               progress=None) -> np.ndarray:
    """p(true label) per image."""
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(scorer.device, dtype):
            scores = scorer(images[start:start + batch_size], labels[start:start + batch_size],
                            ["full"] * len(images[start:start + batch_size]))
        out.append(scores["p_true"])
        if progress:
            progress(sum(len(o) for o in out))
    return np.concatenate(out)


class PlainTimm:
    """The classifier loaded the plain timm way, with its data config."""

    def __init__(self, directory: str, device: torch.device):
        import timm
        from safetensors.torch import load_file

        with open(os.path.join(directory, "classifier.json")) as f:
            meta = json.load(f)
        kwargs = {"num_classes": meta["num_classes"], "in_chans": meta["in_chans"]}
        try:  # ViTs take the input size; CNNs refuse it
            model = timm.create_model(meta["name"], pretrained=False, img_size=meta["image_size"], **kwargs)
        except TypeError:
            model = timm.create_model(meta["name"], pretrained=False, **kwargs)
        model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
        self.model = model.to(device).eval()
        self.device = device
        self.size = meta["image_size"]
        config = timm.data.resolve_model_data_config(model)
        self.mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(config["std"]).view(1, 3, 1, 1)

    def pixels(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.BILINEAR)
            return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # C, H, W as ToTensor

    @torch.no_grad()
    def __call__(self, images: list[bytes], labels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([self.pixels(b) for b in images]))  # N, C, H, W, contiguous
        x = ((x.float() / 255.0 - self.mean) / self.std).to(self.device)
        probs = torch.softmax(self.model(x).float(), dim=1).cpu()
        p_true = probs.gather(1, torch.as_tensor(labels, dtype=torch.long).view(-1, 1)).squeeze(1)
        return p_true.numpy()  # difficulty = 1 - p_true


def run_plain(model: PlainTimm, images: list[bytes], labels: np.ndarray, batch_size: int, dtype,
              progress=None) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(model.device, dtype):
            out.append(model(images[start:start + batch_size], labels[start:start + batch_size]))
        if progress:
            progress(sum(len(o) for o in out))
    return np.concatenate(out)


def model_flops(model: torch.nn.Module, batch: int, resolution: int, device: torch.device, dtype) -> int:
    """FLOPs of one forward over a batch of `batch` images (under autocast for fp16/bf16)."""
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    with autocast(device, dtype):
        return count_flops(lambda: model(x))


def measure(name: str, load, run, warm, images, labels, device: torch.device, flops_of) -> dict:
    """Load, count FLOPs, warm up on one batch, then time all the images."""
    model = load()
    flops = flops_of(model)
    memory = PeakMemory(device)
    memory.start()
    run(model, warm, labels[:len(warm)])
    total = len(images)
    p_true, seconds = timed(lambda: run(model, images, labels, progress=lambda done: print(
        f"  {name}: {done}/{total} images", flush=True)), device)
    peak = memory.peak_mib()
    model = None  # free it before the next path loads
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"images": int(len(p_true)), "seconds": seconds, "images_per_s": len(p_true) / seconds,
            "peak_memory_mib": peak, "memory_kind": memory.kind, "forward_flops": flops, "_p_true": p_true}


# ---- main -------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a timm model name")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=224, help="the classifier's input size")
    ap.add_argument("--source-size", type=int, help="side of the PNG images scored (default: --resolution)")
    ap.add_argument("--images", type=int, default=2048, help="timed images per path")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="fp16/bf16: torch.autocast")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak dense TFLOP/s (default: table by GPU name)")
    ap.add_argument("--json", metavar="PATH", help="write every figure (and each path's p_true) as JSON")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    import timm

    if not timm.is_model(args.model):
        raise SystemExit(f"--model {args.model}: not a timm model (the plain path needs one)")
    if args.images % args.batch_size:
        raise SystemExit("--images must be a multiple of --batch-size (whole batches for both paths)")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    source = args.source_size or args.resolution
    name = device_name(device)
    peak = peak_flops(name, args.dtype, args.peak_tflops)
    images = [synthetic_png(i, source) for i in range(args.images)]
    warm = [synthetic_png(i, source, seed=1) for i in range(args.batch_size)]
    labels = np.arange(args.images) % args.num_classes
    print(f"{args.model}, {args.num_classes} classes, {args.images} PNG images of {source}px (+{args.batch_size} "
          f"warm-up) per path scored at {args.resolution}px, batch {args.batch_size}, {args.dtype} on {name}; "
          f"peak {fmt(peak and peak / 1e12, '.0f')} TFLOP/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "classifier")
        save_random_classifier(directory, args.model, args.num_classes, args.resolution)
        paths = {}
        paths["plain"] = measure(
            "plain", lambda: PlainTimm(directory, device),
            lambda m, ims, lab, progress=None: run_plain(m, ims, lab, args.batch_size, dtype, progress),
            warm, images, labels, device,
            lambda m: model_flops(m.model, args.batch_size, args.resolution, device, dtype))
        report_path("plain", paths["plain"], args, peak)
        paths["raysys"] = measure(
            "raysys", lambda: load_raysys(directory, device),
            lambda s, ims, lab, progress=None: run_raysys(s, ims, lab, args.batch_size, dtype, progress),
            warm, images, labels, device,
            lambda s: model_flops(s.models["full"], args.batch_size, args.resolution, device, dtype))
        report_path("raysys", paths["raysys"], args, peak)

    p_plain, p_raysys = paths["plain"].pop("_p_true"), paths["raysys"].pop("_p_true")
    max_diff = float(np.abs(p_plain.astype(np.float64) - p_raysys).max())
    ratio = paths["raysys"]["images_per_s"] / paths["plain"]["images_per_s"]
    print(f"\n{'path':<8}{'images':>8}{'s':>9}{'images/s':>10}{'GFLOP/img':>11}{'MFU':>8}{'peak MiB':>10}")
    for p, r in paths.items():
        print(f"{p:<8}{r['images']:>8}{r['seconds']:>9.2f}{r['images_per_s']:>10.1f}"
              f"{r['flops_per_image'] / 1e9:>11.3f}{percent(r['mfu']):>8}{fmt(r['peak_memory_mib'], '.0f'):>10}")
    print(f"ratio raysys / plain: {ratio:.3f}; largest |p_true(raysys) - p_true(plain)|: {max_diff:.2e}", flush=True)
    results = {
        "benchmark": "gpu_scoring", "model": args.model, "num_classes": args.num_classes, "device": name,
        "dtype": args.dtype, "resolution": args.resolution, "source_size": source, "batch_size": args.batch_size,
        "images": args.images, "peak_flops": peak, "ratio": ratio, "p_true_max_abs_diff": max_diff,
        "paths": paths, "p_true": {"plain": p_plain.tolist(), "raysys": p_raysys.tolist()}, "versions": versions(),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


def report_path(name: str, r: dict, args, peak: Optional[float]) -> None:
    """Fill in the path's FLOPs and MFU, and print its line."""
    r["flops_per_image"] = r["forward_flops"] / args.batch_size
    r["mfu"] = mfu(r["flops_per_image"] * r["images"], r["seconds"], peak)
    print(f"{name}: {r['images']} images in {r['seconds']:.2f} s = {r['images_per_s']:.1f} images/s; "
          f"{r['flops_per_image'] / 1e9:.3f} GFLOP/image, MFU {percent(r['mfu'])}; "
          f"peak memory {fmt(r['peak_memory_mib'], '.0f')} MiB ({r['memory_kind']})", flush=True)


if __name__ == "__main__":
    quiet_libraries()
    main()
