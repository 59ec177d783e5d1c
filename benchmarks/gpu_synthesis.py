"""Generation on one GPU: raysys's generation actor against plain diffusers, on the same work.

No Ray: the raysys path calls `GenerateBatch` (the class Ray Data runs as the generation actor)
directly on plan tables; the plain path is `StableDiffusionPipeline` (text) or
`StableDiffusionImg2ImgPipeline` (img2img) from the same folder. Prints, as it goes, images/s of
each path, the ratio raysys / plain, the UNet's FLOPs per image and MFU, and peak memory;
`--json` writes every figure.

Run on a GPU. With real weights, `--base` a Stable Diffusion folder (SD 1.5 / 2.1 layout, with a
VAE; e.g. `huggingface-cli download stabilityai/stable-diffusion-2-1-base --local-dir /data/sd21`);
on a machine that cannot download, `--arch sd21-base` writes SD 2.1 base's released layout (UNet,
VAE, text encoder at their real sizes: 866M + 84M + 340M parameters) with random weights, and
`--keep DIR` keeps that folder for the next runs (building it takes about a minute):

    python benchmarks/gpu_synthesis.py --arch sd21-base --keep /tmp/sd21-random --resolution 512 --dtype fp16 \
        --images 64 --batch-size 8 --steps 30 --json synthesis_text_fp16.json
    python benchmarks/gpu_synthesis.py --arch sd21-base --keep /tmp/sd21-random --resolution 512 --dtype fp16 \
        --images 64 --batch-size 8 --steps 30 --mode img2img --strength 0.5 --json synthesis_img2img_fp16.json
    python benchmarks/gpu_synthesis.py --arch sd21-base --keep /tmp/sd21-random --resolution 512 --dtype bf16 \
        --images 64 --batch-size 16 --steps 30 --image-format webp --json synthesis_text_bf16_webp.json
    python benchmarks/gpu_synthesis.py --base /data/sd21 --resolution 512 --dtype fp16 \
        --images 64 --batch-size 8 --steps 30 --json synthesis_text_fp16_sd21.json

Each path should take well under a minute on an H100 after loading (an estimate: not yet run on
a GPU). With random weights the UNet's
arithmetic is the real model's but the images are not real images, which changes only how long
PNG/WebP encoding takes (the same for both paths). Without `--base` and `--arch` a tiny
SD-layout generator (ComponentSpec: a VAE, 3 channels) is built at --resolution; the unit test
runs it on a CPU at 32 px. Whatever is built is saved as a StableDiffusionPipeline folder and
loaded by both paths from it, exactly as a downloaded folder would be.

**The same plan for both paths**: `--images` prompts and seeds, cut into batches of
`--batch-size`; DDIM with `--steps` steps; classifier-free guidance with `--guidance-scale`
(negative prompt ""; both paths run the unconditional and conditional branches as one UNet
batch of 2B rows); `--resolution`. img2img: plain uses `strength`; raysys the image guidance
λ = 1 - strength, which starts from the source noised to the same step and runs the same number
of UNet steps (printed for both; a warning if they differ).

**What each timed path includes, per batch** (model loading and one warm-up batch are not
timed; `torch.cuda.synchronize()` before and after the timed loop):

- raysys: `GenerateBatch.__call__(plan table)`: tokenise and encode the prompts and the
  negative prompts; each row's starting noise drawn on the CPU from its own
  `torch.Generator(seed)`; [img2img: decode the source PNGs, VAE-encode them (posterior
  mean), noise them]; the denoising loop; VAE decode; to uint8 on the CPU; encode each image
  (`--image-format`: PNG, or lossless WebP); the output Arrow table with the image bytes.
- plain: `pipe(prompts, generator=[torch.Generator("cpu").manual_seed(s) per row],
  output_type="pil")` (the same per-row CPU noise as raysys, so fp32 images are the same),
  then `PIL.Image.save` of each image in the same format. [img2img: decode the source PNGs to
  PIL images first; the pipeline VAE-encodes them (sampling the posterior) and noises them.]
  No safety checker.

raysys's actor loads its pipeline in fp32; for fp16/bf16 the benchmark casts the loaded pipeline
(`pipe.to(dtype=...)`), as a dtype option of the actor would, and the plain pipeline is loaded
and cast the same way, so both hold the same weights. raysys generates at its UNet's configured `sample_size`; a `--resolution` other
than the model's own is set there (`unet.register_to_config(sample_size=...)`).

**UNet MFU**: FLOPs of one UNet forward at the benchmark's shape (2B rows with guidance, B
without; `torch.utils.flop_counter.FlopCounterMode`, on the run's device and dtype) x the UNet
calls per batch / B = UNet FLOPs per image; times images/s, over the device's peak dense FLOP/s
(`--peak-tflops`, or the table in gpu_common.py by GPU name; n/a on a CPU without
`--peak-tflops`). The time is the whole path's (text encoder, VAE, encoding included), so this
is the share of the GPU's peak the UNet's arithmetic gets end to end.

**Peak memory**: GPU: `torch.cuda.max_memory_allocated()`, reset after each path's model is
loaded (weights + activations of the warm-up and timed batches). CPU: peak RSS of the process
(VmHWM) over the same stretch, reset per path through /proc/self/clear_refs; process-wide, so
only indicative. The paths run one after another (plain first), the first one's models freed
before the second loads.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import tempfile
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpu_common, beside this file
from gpu_common import (  # noqa: E402
    DTYPES, PeakMemory, count_flops, device_name, fmt, mfu, peak_flops, percent, quiet_libraries, synthetic_png, timed,
    versions,
)

from raysys.core.config import SamplingConfig  # noqa: E402
from raysys.generation.plans import PLAN_SCHEMA, stable_int  # noqa: E402
from raysys.generation.synthesis import GenerateBatch, GeneratorSpec  # noqa: E402

CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse", "ship", "truck", "plane", "frog", "deer"]


# ---- the generator and the plan -------------------------------------------------------------

ARCHS = ["tiny", "sd15", "sd21-base"]
"""Generators this script builds with random weights: a tiny one, or a released Stable Diffusion
layout at full size (`raysys.generation.layouts`; the plain path is StableDiffusionPipeline, so
not the SDXL refiner)."""


def build_generator(directory: str, arch: str, resolution: int) -> None:
    """A generator with random weights saved as a StableDiffusionPipeline folder (the layout of a
    downloaded SD 1.5 / 2.1 folder). tiny: a small one from raysys's ComponentSpec (the unit
    test's); sd15 / sd21-base: the released layout at full size (`write_random_pipeline`; the UNet's arithmetic is
    the real model's; the images are not, which changes only how long PNG/WebP encoding takes)."""
    from diffusers import StableDiffusionPipeline

    from raysys.generation.components import ComponentSpec, build_components
    from raysys.generation.layouts import write_random_pipeline

    if arch != "tiny":  # the released folder's layout; the UNet's sample_size is set at load time
        write_random_pipeline(arch, directory)
        return
    torch.manual_seed(0)
    words = "a photo of".split() + CLASS_NAMES
    parts = build_components(ComponentSpec(
        image_size=resolution, image_channels=3, vae=True, block_out_channels=[32, 64],
        vae_block_out_channels=[16, 32], cross_attention_dim=64, vocabulary=words,
    ))
    parts.scheduler.register_to_config(steps_offset=1)  # as SD's own configs (diffusers warns about 0)
    vae, text_encoder, tokenizer, unet, scheduler = (parts.vae, parts.text_encoder, parts.tokenizer, parts.unet,
                                                      parts.scheduler)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)


def make_plan(n: int, mode: str, strength: float, resolution: int, tag: str = "bench") -> pa.Table:
    """n plan rows (PLAN_SCHEMA) for the base model: prompt, seed, and for img2img a source image
    (PNG) with λ = 1 - strength. `tag` makes other seeds (the warm-up plan)."""
    labels = np.arange(n) % len(CLASS_NAMES)
    img2img = mode == "img2img"
    return pa.table({
        "sample_id": [f"{tag}{i:06d}" for i in range(n)], "plan": [tag] * n, "model": ["base"] * n,
        "label": pa.array(labels, pa.int32()), "class_name": [CLASS_NAMES[c] for c in labels],
        "prompt": [f"a photo of a {CLASS_NAMES[c]}" for c in labels],
        "negative_prompt": pa.array([None] * n, pa.string()),
        "requested_difficulty": pa.array([None] * n, pa.float32()),
        "guidance": pa.array([1.0 - strength if img2img else None] * n, pa.float32()),
        "source_id": pa.array([f"src{i}" if img2img else None for i in range(n)], pa.string()),
        "source_image": pa.array([synthetic_png(i, resolution, seed=stable_int(tag)) if img2img else None
                                  for i in range(n)], pa.binary()),
        "seed": pa.array([stable_int(tag, i) for i in range(n)], pa.int64()),
    }, schema=PLAN_SCHEMA)


def unet_calls(steps: int, mode: str, strength: float, path: str) -> int:
    """UNet forward calls per batch (each over all branches at once).

    text: every step. img2img: plain diffusers runs min(int(steps * strength), steps) steps;
    raysys round(steps * (1 - λ)) with λ = 1 - strength as the plan stores it (float32)."""
    if mode == "text":
        return steps
    if path == "plain":
        return min(int(steps * strength), steps)
    lam = float(np.float32(1.0 - strength))
    return int(round(steps * (1.0 - lam)))


def unet_forward_flops(unet, rows: int, sample_size: int, context_tokens: int) -> int:
    """FLOPs of one UNet forward over `rows` latent rows (on the UNet's device and dtype)."""
    p = next(unet.parameters())
    cross = unet.config.cross_attention_dim
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    x = torch.randn(rows, unet.config.in_channels, sample_size, sample_size, device=p.device, dtype=p.dtype)
    context = torch.randn(rows, context_tokens, cross, device=p.device, dtype=p.dtype)
    t = torch.tensor(500, device=p.device)
    return count_flops(lambda: unet(x, t, encoder_hidden_states=context))


def unet_flops_per_image(forward_flops: int, calls: int, batch: int) -> float:
    """One forward over the batch (all branches) x calls per batch / images per batch."""
    return forward_flops * calls / batch


# ---- the two paths ----------------------------------------------------------------------------

def load_raysys(base: str, device: torch.device, dtype: torch.dtype, resolution: int, sampling: SamplingConfig,
                image_format: str) -> GenerateBatch:
    """The generation actor as Ray Data constructs it, its pipeline loaded by itself."""
    gen = GenerateBatch({"base": GeneratorSpec(base, label="bench")}, sampling, image_format=image_format,
                        use_gpu=device.type == "cuda")
    pipe = gen.pipeline("base")  # load_pipeline(base), progress bar off, .to(device)
    pipe.to(dtype=dtype)
    if pipe.image_size != resolution:
        pipe.unet.register_to_config(sample_size=resolution // pipe.vae_scale_factor)
    return gen


def run_raysys(gen: GenerateBatch, plan: pa.Table, batch_size: int, progress=None) -> list[bytes]:
    images: list[bytes] = []
    for start in range(0, len(plan), batch_size):
        images += gen(plan.slice(start, batch_size))["image"].to_pylist()
        if progress:
            progress(len(images))
    return images


def load_plain(base: str, mode: str, device: torch.device, dtype: torch.dtype):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    cls = StableDiffusionImg2ImgPipeline if mode == "img2img" else StableDiffusionPipeline
    pipe = cls.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)  # loaded and cast as raysys's are: the same weights


def encode(image: Image.Image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "webp":
        image.save(buf, format="WEBP", lossless=True)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def run_plain(pipe, plan: pa.Table, batch_size: int, args, progress=None) -> list[bytes]:
    images: list[bytes] = []
    for start in range(0, len(plan), batch_size):
        rows = plan.slice(start, batch_size)
        common = dict(
            prompt=rows["prompt"].to_pylist(), num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in rows["seed"].to_pylist()],
            output_type="pil",
        )
        if args.mode == "img2img":
            sources = [Image.open(io.BytesIO(b)).convert("RGB") for b in rows["source_image"].to_pylist()]
            out = pipe(image=sources, strength=args.strength, **common).images
        else:
            out = pipe(height=args.resolution, width=args.resolution, **common).images
        images += [encode(im, args.image_format) for im in out]
        if progress:
            progress(len(images))
    return images


def measure(name: str, load, run, warm: pa.Table, plan: pa.Table, device: torch.device, flops_of=None) -> dict:
    """Load, (count FLOPs,) warm up on one batch, then time the whole plan."""
    model = load()
    flops = flops_of(model) if flops_of else None
    memory = PeakMemory(device)
    memory.start()
    run(model, warm)
    total = len(plan)
    images, seconds = timed(lambda: run(model, plan, progress=lambda done: print(
        f"  {name}: {done}/{total} images", flush=True)), device)
    peak = memory.peak_mib()
    model = None  # free it before the next path loads
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"images": sum(1 for b in images if b), "seconds": seconds, "images_per_s": len(images) / seconds,
            "peak_memory_mib": peak, "memory_kind": memory.kind, "unet_forward_flops": flops, "_encoded": images}


# ---- main -------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="diffusers SD 1.5/2.1 folder (with a VAE); default: one built here (--arch)")
    ap.add_argument("--arch", choices=ARCHS, default="tiny",
                    help="without --base: the generator built with random weights (tiny, or SD's own size)")
    ap.add_argument("--keep", metavar="DIR", help="without --base: build the generator in DIR, or reuse the one there")
    ap.add_argument("--mode", choices=["text", "img2img"], default="text")
    ap.add_argument("--strength", type=float, default=0.5, help="img2img strength (raysys: λ = 1 - strength)")
    ap.add_argument("--images", type=int, default=64, help="timed images per path")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance-scale", type=float, default=SamplingConfig.guidance_scale)
    ap.add_argument("--resolution", type=int, help="default: the model's own (32 for the tiny one)")
    ap.add_argument("--image-format", choices=["png", "webp"], default="png")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on a GPU, fp32 on a CPU")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak dense TFLOP/s (default: table by GPU name)")
    ap.add_argument("--save-images", metavar="DIR", help="write each path's timed images to DIR/<path>/")
    ap.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.images % args.batch_size:
        raise SystemExit("--images must be a multiple of --batch-size (whole batches for both paths)")
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            base = args.keep or os.path.join(tmp, "generator")
            if os.path.isfile(os.path.join(base, "model_index.json")):
                print(f"reusing the generator in {base}", flush=True)
            else:
                print(f"building a {args.arch} generator (random weights) in {base}", flush=True)
                build_generator(base, args.arch, args.resolution or (32 if args.arch == "tiny" else 512))
        sampling = SamplingConfig(guidance_scale=args.guidance_scale, num_inference_steps=args.steps,
                                  scheduler="ddim", negative_prompt="")
        results = run(args, base, device, dtype, sampling)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


def run(args, base: str, device: torch.device, dtype: torch.dtype, sampling: SamplingConfig) -> dict:
    if args.resolution is None:  # the model's own: the UNet's sample size x the VAE's downsampling
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet_size = UNet2DConditionModel.load_config(base, subfolder="unet")["sample_size"]
        vae_levels = len(AutoencoderKL.load_config(base, subfolder="vae")["block_out_channels"])
        args.resolution = unet_size * 2 ** (vae_levels - 1)
    branches = 2 if args.guidance_scale > 1.0 else 1
    name = device_name(device)
    peak = peak_flops(name, args.dtype, args.peak_tflops)
    calls = {p: unet_calls(args.steps, args.mode, args.strength, p) for p in ("plain", "raysys")}
    print(f"{args.mode}: {args.images} images (+{args.batch_size} warm-up) per path, batch {args.batch_size}, "
          f"{args.resolution}px, {args.steps} DDIM steps (UNet calls per batch: plain {calls['plain']}, raysys "
          f"{calls['raysys']}), CFG {args.guidance_scale} ({branches} branches), {args.dtype} on {name}, "
          f"{args.image_format}; peak {fmt(peak and peak / 1e12, '.0f')} TFLOP/s", flush=True)
    if calls["plain"] != calls["raysys"]:
        print(f"WARNING: the paths run different numbers of UNet steps at strength {args.strength}", flush=True)

    plan = make_plan(args.images, args.mode, args.strength, args.resolution)
    warm = make_plan(args.batch_size, args.mode, args.strength, args.resolution, tag="warmup")

    def flops_of(pipe):  # the latent side: resolution / the VAE's downsampling
        latent = args.resolution // 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return unet_forward_flops(pipe.unet, branches * args.batch_size, latent, pipe.tokenizer.model_max_length)

    paths = {}
    paths["plain"] = measure(
        "plain", lambda: load_plain(base, args.mode, device, dtype),
        lambda pipe, rows, progress=None: run_plain(pipe, rows, args.batch_size, args, progress),
        warm, plan, device, flops_of)
    report_path("plain", paths["plain"], calls["plain"], args, peak)
    paths["raysys"] = measure(
        "raysys", lambda: load_raysys(base, device, dtype, args.resolution, sampling, args.image_format),
        lambda gen, rows, progress=None: run_raysys(gen, rows, args.batch_size, progress),
        warm, plan, device, lambda gen: flops_of(gen.pipeline("base")))
    report_path("raysys", paths["raysys"], calls["raysys"], args, peak)

    if args.save_images:
        for p, r in paths.items():
            os.makedirs(os.path.join(args.save_images, p), exist_ok=True)
            for sid, data in zip(plan["sample_id"].to_pylist(), r["_encoded"]):
                with open(os.path.join(args.save_images, p, f"{sid}.{args.image_format}"), "wb") as f:
                    f.write(data)
    for r in paths.values():
        r.pop("_encoded")
    ratio = paths["raysys"]["images_per_s"] / paths["plain"]["images_per_s"]
    print(f"\n{'path':<8}{'images':>8}{'s':>9}{'images/s':>10}{'UNet GFLOP/img':>16}{'MFU':>8}{'peak MiB':>10}")
    for p, r in paths.items():
        print(f"{p:<8}{r['images']:>8}{r['seconds']:>9.2f}{r['images_per_s']:>10.3f}"
              f"{r['unet_flops_per_image'] / 1e9:>16.2f}{percent(r['mfu']):>8}"
              f"{fmt(r['peak_memory_mib'], '.0f'):>10}")
    print(f"ratio raysys / plain: {ratio:.3f}", flush=True)
    return {
        "benchmark": "gpu_synthesis", "mode": args.mode, "strength": args.strength if args.mode == "img2img" else None,
        "base": args.base or f"{args.arch} (random weights)", "device": name, "dtype": args.dtype,
        "resolution": args.resolution, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "cfg_branches": branches, "batch_size": args.batch_size, "images": args.images,
        "image_format": args.image_format, "peak_flops": peak, "ratio": ratio, "paths": paths,
        "versions": versions(),
    }


def report_path(name: str, r: dict, calls: int, args, peak: Optional[float]) -> None:
    """Fill in the path's FLOPs and MFU, and print its line."""
    r["unet_calls_per_batch"] = calls
    r["unet_flops_per_image"] = unet_flops_per_image(r["unet_forward_flops"], calls, args.batch_size)
    r["mfu"] = mfu(r["unet_flops_per_image"] * r["images"], r["seconds"], peak)
    print(f"{name}: {r['images']} images in {r['seconds']:.2f} s = {r['images_per_s']:.3f} images/s; UNet "
          f"{r['unet_flops_per_image'] / 1e9:.2f} GFLOP/image, MFU {percent(r['mfu'])}; "
          f"peak memory {fmt(r['peak_memory_mib'], '.0f')} MiB ({r['memory_kind']})", flush=True)


if __name__ == "__main__":
    quiet_libraries()
    main()
