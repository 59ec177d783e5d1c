"""Every GPU figure of docs/PERFORMANCE.md's H100 section in one run: synthesis (raysys's generation actor against plain
diffusers, SD 1.5 and SD 2.1-base at 512 px, text and img2img, batch 8 / 16 / 32), the actor's
speed options one by one (bf16, channels_last, fused QKV, torch.compile and its cache), scoring
(ResNet-50 at 224 px against plain timm), a LoRA + difficulty-encoder fine-tune step, a ResNet-50
training step, and the memory plan's predictions against the measured peaks.

No Ray; the functions of gpu_synthesis.py / gpu_scoring.py run the two paths. Each phase writes
its figures as one JSON line to `--out`/suite.jsonl as soon as it ends, and a phase that fails
is recorded with its error and the run goes on, so a cut-off run still returns what it measured.
`--budget` seconds: a phase whose estimated cost no longer fits is skipped (and recorded so).

    python benchmarks/gpu_suite.py --out /tmp/suite --budget 500          # on the GPU
    python benchmarks/gpu_suite.py --out /tmp/suite --tiny                # a CPU check at tiny size

Timing: model loading and one warm-up batch are not timed; then one batch (synthesis) or a few
steps (training) are timed with `torch.cuda.synchronize()` around them. Images: 512 px, 50 DDIM
steps, classifier-free guidance 7.5 (the UNet runs 2 x batch rows), img2img at strength 0.5
(raysys: λ = 0.5), both 25 UNet calls. Random weights (nothing can be downloaded): the real
models' FLOPs; the images are noise, which makes PNG encoding slower than for real images, and
equally so for both paths.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpu_synthesis as syn  # noqa: E402
from gpu_common import PeakMemory, count_flops, device_name, mfu, peak_flops, quiet_libraries, timed, versions  # noqa: E402

from raysys.core.config import SamplingConfig, SpeedConfig  # noqa: E402
from raysys.generation.synthesis import GenerateBatch, GeneratorSpec  # noqa: E402

STEPS, GUIDANCE, STRENGTH = 50, 7.5, 0.5


class Suite:
    def __init__(self, out: str, budget: float, tiny: bool):
        self.out, self.budget, self.tiny = out, budget, tiny
        self.t0 = time.perf_counter()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.name = device_name(self.device)
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "suite.jsonl")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def record(self, **fields) -> None:
        fields["at_s"] = round(time.perf_counter() - self.t0, 1)
        with open(self.path, "a") as f:
            f.write(json.dumps(fields) + "\n")
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items() if k != "error"}
        print("RESULT", json.dumps(shown), flush=True)
        if "error" in fields:
            print(fields["error"], flush=True)

    def phase(self, name: str, cost_s: float, fn, *args) -> None:
        """Run fn unless `cost_s` (its cost on a GPU at full size; a tenth of it with --tiny) no
        longer fits the budget; record a failure and go on."""
        cost_s = cost_s / 10 if self.tiny else cost_s
        if self.left() < cost_s:
            self.record(phase=name, skipped=f"{self.left():.0f} s left, needs about {cost_s:.0f}")
            return
        print(f"=== {name} ({self.left():.0f} s left)", flush=True)
        try:
            fn(*args)
        except Exception:  # keep going: the next phase may work
            self.record(phase=name, error=traceback.format_exc()[-3000:])
        finally:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


# ---- synthesis --------------------------------------------------------------------------------

def plan(n: int, mode: str, resolution: int, tag: str):
    return syn.make_plan(n, mode, STRENGTH, resolution, tag=tag)


class Args:  # what gpu_synthesis.run_plain reads
    def __init__(self, mode, resolution, fmt="png"):
        self.mode, self.resolution, self.image_format = mode, resolution, fmt
        self.steps, self.guidance_scale, self.strength = STEPS, GUIDANCE, STRENGTH


def time_batches(suite: Suite, run_batch, warm, timed_plan) -> tuple[float, float, float]:
    """(seconds of the timed plan, peak allocated MiB, peak reserved MiB) after one warm-up call."""
    memory = PeakMemory(suite.device)
    memory.start()
    if suite.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_batch(warm)
    _, seconds = timed(lambda: run_batch(timed_plan), suite.device)
    reserved = torch.cuda.max_memory_reserved() / 2**20 if suite.device.type == "cuda" else None
    return seconds, memory.peak_mib(), reserved


def synthesis_arch(suite: Suite, arch: str, folder: str, batch_sizes: list[int], resolution: int) -> None:
    """Plain diffusers fp16 and the raysys actor (bf16 + its default speed options), text and
    img2img, at each batch size; the memory plan's prediction beside each raysys peak."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from raysys.generation.memory import predict_generation
    from raysys.generation.memory_table import RUNTIME_BYTES

    dev, peak = suite.device, peak_flops(suite.name, "bf16")
    branches = 2
    flops = {}
    steps = {"text": STEPS, "img2img": syn.unet_calls(STEPS, "img2img", STRENGTH, "plain")}

    # plain diffusers, fp16, as a user writes it
    text_pipe = syn.load_plain(folder, "text", dev, torch.float16 if dev.type == "cuda" else torch.float32)
    latent = resolution // 2 ** (len(text_pipe.vae.config.block_out_channels) - 1)
    tokens = text_pipe.tokenizer.model_max_length
    pipes = {"text": text_pipe, "img2img": StableDiffusionImg2ImgPipeline.from_pipe(text_pipe)}
    pipes["img2img"].set_progress_bar_config(disable=True)
    for bs in batch_sizes:
        flops[bs] = syn.unet_forward_flops(text_pipe.unet, branches * bs, latent, tokens)
    for mode in ("text", "img2img"):
        for bs in batch_sizes:
            args = Args(mode, resolution)
            seconds, peak_mib, reserved = time_batches(
                suite, lambda rows: syn.run_plain(pipes[mode], rows, bs, args),
                plan(bs, mode, resolution, "warm"), plan(bs, mode, resolution, "bench"))
            per_image = flops[bs] * steps[mode] / bs
            suite.record(phase="synthesis", arch=arch, path="plain_fp16", mode=mode, batch=bs, images=bs,
                         seconds=seconds, images_per_s=bs / seconds, unet_gflop_per_image=per_image / 1e9,
                         mfu=mfu(per_image * bs, seconds, peak), peak_allocated_mib=peak_mib,
                         peak_reserved_mib=reserved)
    text_pipe = pipes = None  # freed before the raysys actor loads
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # the raysys actor, bf16, with its default speed options
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    sampling = SamplingConfig(guidance_scale=GUIDANCE, num_inference_steps=STEPS, scheduler="ddim", negative_prompt="")
    for bs in batch_sizes:
        gen = GenerateBatch({"base": GeneratorSpec(folder, label=arch, dtype=dtype)}, sampling,
                            use_gpu=dev.type == "cuda", speed=SpeedConfig(micro_batch=bs))
        pipe = gen.pipeline("base")
        if pipe.image_size != resolution:
            pipe.unet.register_to_config(sample_size=latent)
        for mode in ("text", "img2img"):
            seconds, peak_mib, reserved = time_batches(
                suite, gen, plan(bs, mode, resolution, "warm"), plan(bs, mode, resolution, "bench"))
            per_image = flops[bs] * steps[mode] / bs
            layout = None if suite.tiny else arch
            predicted = (predict_generation(layout, resolution, bs, "bf16", img2img=mode == "img2img")
                         if layout else None)
            suite.record(phase="synthesis", arch=arch, path="raysys_bf16", mode=mode, batch=bs, images=bs,
                         seconds=seconds, images_per_s=bs / seconds, unet_gflop_per_image=per_image / 1e9,
                         mfu=mfu(per_image * bs, seconds, peak), peak_allocated_mib=peak_mib,
                         peak_reserved_mib=reserved,
                         predicted_mib=None if predicted is None else (predicted.total - RUNTIME_BYTES) / 2**20,
                         predicted_phase=None if predicted is None else predicted.phase)
        del gen, pipe
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def speed_ladder(suite: Suite, arch: str, folder: str, bs: int, resolution: int) -> None:
    """The raysys actor at one batch size, text, with its speed options added one at a time on the
    same pipeline: fp16 (none) -> bf16 -> + channels_last -> + fused QKV -> + encoding threads ->
    + torch.compile (first call timed: the compile)."""
    from raysys.generation.speed import attention_backends, channels_last, compile_pipeline, fuse_qkv

    dev = suite.device
    on_gpu = dev.type == "cuda"
    sampling = SamplingConfig(guidance_scale=GUIDANCE, num_inference_steps=STEPS, scheduler="ddim", negative_prompt="")
    none = SpeedConfig(channels_last=False, fuse_qkv=False, compile=False, encode_threads=1, micro_batch=bs)
    warm, bench = plan(bs, "text", resolution, "warm"), plan(bs, "text", resolution, "bench")

    def measure(step: str, gen) -> None:
        seconds, peak_mib, _ = time_batches(suite, gen, warm, bench)
        suite.record(phase="speed_ladder", arch=arch, step=step, batch=bs, seconds=seconds,
                     images_per_s=bs / seconds, peak_allocated_mib=peak_mib,
                     attention=attention_backends(gen.pipeline("base").unet))

    for dtype in (["float16", "bfloat16"] if on_gpu else ["float32"]):
        gen = GenerateBatch({"base": GeneratorSpec(folder, dtype=dtype)}, sampling, use_gpu=on_gpu, speed=none)
        gen.pipeline("base")
        measure(dtype, gen)
        if dtype != "bfloat16" and on_gpu:
            del gen
            gc.collect()
            torch.cuda.empty_cache()
    pipe = gen.pipeline("base")
    channels_last(pipe)
    measure("+channels_last", gen)
    fuse_qkv(pipe)
    measure("+fused_qkv", gen)
    gen.speed = SpeedConfig(channels_last=True, fuse_qkv=True, compile=False, encode_threads=4, micro_batch=bs)
    measure("+encode_threads_4", gen)
    # an option that changes the images, off by default: DPM-Solver++ at 20 steps instead of DDIM at 50
    fast = GenerateBatch({"base": GeneratorSpec(folder, dtype=gen.generators["base"].dtype)},
                         SamplingConfig(guidance_scale=GUIDANCE, num_inference_steps=20, scheduler="dpm++",
                                        negative_prompt=""), use_gpu=on_gpu, speed=gen.speed)
    fast.pipes["base"] = pipe
    measure("dpm++_20_steps (changes the images)", fast)
    del fast
    if not suite.compile:
        return
    cache = os.path.join(suite.out_cache, arch)
    compile_pipeline(pipe, cache)
    gen.speed = SpeedConfig(compile=True, compile_cache=cache, micro_batch=bs)
    _, first = timed(lambda: gen(warm), dev)
    suite.record(phase="speed_ladder", arch=arch, step="compile_first_call", batch=bs, seconds=first,
                 cache="cold")
    measure("+compile", gen)
    # a short last batch is padded to the compiled shape: no recompile
    _, short = timed(lambda: gen(plan(bs - 3, "text", resolution, "short")), dev)
    suite.record(phase="speed_ladder", arch=arch, step="compile_short_batch", batch=bs - 3, seconds=short,
                 images_per_s=(bs - 3) / short)


def compile_cache_reuse(suite: Suite, arch: str, folder: str, bs: int, resolution: int) -> None:
    """A fresh process (a restarted actor) compiles the same pipeline with the cache the ladder
    filled: its first call, against the ladder's cold one."""
    code = f"""
import sys, time, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import gpu_synthesis as syn
from raysys.core.config import SamplingConfig, SpeedConfig
from raysys.generation.synthesis import GenerateBatch, GeneratorSpec
sampling = SamplingConfig(guidance_scale={GUIDANCE}, num_inference_steps={STEPS}, scheduler="ddim", negative_prompt="")
gen = GenerateBatch({{"base": GeneratorSpec({folder!r}, dtype="bfloat16")}}, sampling, use_gpu=True,
                    speed=SpeedConfig(compile=True, compile_cache={os.path.join(suite.out_cache, arch)!r}, micro_batch={bs}))
gen.pipeline("base")
torch.cuda.synchronize(); t = time.perf_counter()
gen(syn.make_plan({bs}, "text", {STRENGTH}, {resolution}, tag="warm"))
torch.cuda.synchronize(); print("FIRST_CALL_S", time.perf_counter() - t)
"""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=max(30, suite.left()))
    total = time.perf_counter() - t
    first = [float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("FIRST_CALL_S")]
    if not first:
        raise RuntimeError(f"the cache-reuse process failed: {out.stderr[-2000:]}")
    suite.record(phase="speed_ladder", arch=arch, step="compile_first_call", batch=bs, seconds=first[0],
                 cache="warm (new process)", process_s=total)


def where_time_goes(suite: Suite, arch: str, folder: str, resolution: int, bs: int = 8, steps: int = 10) -> None:
    """Plain diffusers fp16 against the raysys pipeline in fp16 with no speed option: the same
    UNet called alone, each pipeline to latents (no VAE decode), to decoded images, to PIL; and the
    top CUDA kernels of one call of each."""
    dev = suite.device
    half = torch.float16 if dev.type == "cuda" else torch.float32
    prompts = [f"a photo of a {syn.CLASS_NAMES[i % 10]}" for i in range(bs)]
    plain = syn.load_plain(folder, "text", dev, half)
    latent = resolution // 2 ** (len(plain.vae.config.block_out_channels) - 1)

    def plain_call(output_type):
        return plain(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, height=resolution, width=resolution,
                     generator=[torch.Generator("cpu").manual_seed(i) for i in range(bs)], output_type=output_type)

    x = torch.randn(2 * bs, 4, latent, latent, device=dev, dtype=half)
    ctx = torch.randn(2 * bs, plain.tokenizer.model_max_length, plain.unet.config.cross_attention_dim, device=dev,
                      dtype=half)
    t = torch.tensor(500, device=dev)

    def unet_alone(unet):
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
            return timed(lambda: [unet(x, t, encoder_hidden_states=ctx) for _ in range(steps)], dev)[1]

    figures = {"plain_unet_alone": unet_alone(plain.unet)}
    plain_call("latent")
    for output_type in ("latent", "pt", "pil"):
        figures[f"plain_to_{output_type}"] = timed(lambda: plain_call(output_type), dev)[1]
    if dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            plain_call("latent")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    figures["plain_unet_dtype"] = str(plain.unet.dtype)
    figures["plain_attention"] = next(iter(set(type(p).__name__ for p in plain.unet.attn_processors.values())))
    plain = None  # freed before the raysys pipeline loads
    gc.collect()
    gen = GenerateBatch({"base": GeneratorSpec(folder, dtype="float16" if dev.type == "cuda" else "float32")},
                        SamplingConfig(guidance_scale=GUIDANCE, num_inference_steps=steps, scheduler="ddim"),
                        use_gpu=dev.type == "cuda", speed=SpeedConfig(channels_last=False, fuse_qkv=False))
    pipe = gen.pipeline("base")
    figures["raysys_unet_alone"] = unet_alone(pipe.unet)

    def raysys_call(output_type):
        return pipe(prompts, seeds=list(range(bs)), guidance_scale=GUIDANCE, num_inference_steps=steps,
                    scheduler="ddim", output_type=output_type, image_size=resolution)

    raysys_call("latent")
    for output_type in ("latent", "np"):
        figures[f"raysys_to_{output_type}"] = timed(lambda: raysys_call(output_type), dev)[1]
    if dev.type == "cuda":  # the same table for raysys: which attention and conv kernels each one runs
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            raysys_call("latent")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    suite.record(phase="where_time_goes", arch=arch, batch=bs, steps=steps, **figures)


# ---- scoring and training ---------------------------------------------------------------------

def scoring(suite: Suite) -> None:
    import gpu_scoring

    model, images, bs = ("resnet18", 64, 32) if suite.tiny else ("resnet50", 2048, 256)
    res = gpu_scoring.main(["--model", model, "--resolution", "64" if suite.tiny else "224",
                            "--source-size", "64" if suite.tiny else "512", "--dtype", "bf16" if not suite.tiny
                            else "fp32", "--images", str(images), "--batch-size", str(bs)]
                           + (["--device", "cpu"] if suite.device.type == "cpu" else []))
    for path, r in res["paths"].items():
        suite.record(phase="scoring", model=model, path=path, batch=bs, images=r["images"], seconds=r["seconds"],
                     images_per_s=r["images_per_s"], mfu=r["mfu"], peak_allocated_mib=r["peak_memory_mib"])
    suite.record(phase="scoring", model=model, ratio=res["ratio"], p_true_max_abs_diff=res["p_true_max_abs_diff"])


def finetune_step(suite: Suite, arch: str, folder: str, resolution: int, bs: int) -> None:
    """raysys's LoRA + difficulty-encoder step (finetune_step: VAE encode, text, UNet forward +
    backward, bf16 autocast over float32 weights, gradient checkpointing), AdamW on the
    trainable parameters; the memory plan's prediction beside the peak."""
    from raysys.generation.components import load_pipeline
    from raysys.generation.finetune import FinetuneRows, add_difficulty_encoder, add_lora, trainable_parameters
    from raysys.generation.finetune import finetune_step as step_loss
    from raysys.generation.memory import predict_finetune
    from raysys.generation.memory_table import RUNTIME_BYTES
    from raysys.generation.training import training_scheduler

    dev = suite.device
    on_gpu = dev.type == "cuda"
    pipe = load_pipeline(folder, dtype=torch.float32).to(dev)
    if pipe.image_size != resolution:
        pipe.unet.register_to_config(sample_size=resolution // 8)
    add_lora(pipe, rank=4, alpha=4.0)
    add_difficulty_encoder(pipe, num_classes=10, num_tokens=4, use_class=True)
    if on_gpu:
        pipe.unet.enable_gradient_checkpointing()
    params = trainable_parameters(pipe)
    opt = torch.optim.AdamW(params, lr=1e-4)
    scheduler = training_scheduler(pipe)
    g = torch.Generator().manual_seed(0)
    n = 4 * bs
    rows = FinetuneRows(images=torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1,
                        prompts=[f"a photo of a {syn.CLASS_NAMES[i % 10]}" for i in range(n)],
                        labels=torch.arange(n) % 10, difficulty=torch.rand(n, generator=g))

    def one(i: int) -> None:
        idx = torch.arange(i * bs, (i + 1) * bs) % n
        loss = step_loss(pipe, scheduler, rows, idx, use_difficulty=True, condition_dropout=0.1, snr_gamma=5.0,
                         generator=g, autocast_dtype=torch.bfloat16 if on_gpu else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    memory = PeakMemory(dev)
    memory.start()
    one(0)
    one(1)
    k = 2 if suite.tiny else 5
    _, seconds = timed(lambda: [one(i) for i in range(k)], dev)
    predicted = None if suite.tiny else predict_finetune(arch, resolution, bs, "bf16", gradient_checkpointing=True,
                                                         lora_rank=4, weight_dtype="fp32")
    suite.record(phase="finetune_step", arch=arch, batch=bs, steps=k, seconds=seconds,
                 images_per_s=k * bs / seconds, step_s=seconds / k, peak_allocated_mib=memory.peak_mib(),
                 gradient_checkpointing=on_gpu, trainable_params=sum(p.numel() for p in params),
                 predicted_mib=None if predicted is None else (predicted.total - RUNTIME_BYTES) / 2**20,
                 predicted_phase=None if predicted is None else predicted.phase)


def classifier_step(suite: Suite) -> None:
    """raysys's classifier training step (train_epoch's body: channels_last model and inputs, bf16
    autocast, cross-entropy, SGD + OneCycle via make_optimizer) for ResNet-50 at 224 px."""
    import torch.nn.functional as F

    from raysys.core.config import TrainConfig
    from raysys.models.classifiers import create_classifier
    from raysys.training.classifier import _autocast, _inputs, for_device, make_optimizer

    dev = suite.device
    name, size, bs, k = ("resnet18", 64, 16, 2) if suite.tiny else ("resnet50", 224, 256, 10)
    model = for_device(create_classifier(name, 1000, 3, image_size=size).to(dev), dev).train()
    opt, sched = make_optimizer(model, TrainConfig(epochs=1), steps_per_epoch=k + 3)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=g).to(dev)
    labels = torch.randint(0, 1000, (bs,), generator=g).to(dev)

    def one() -> None:
        x = _inputs(images, model, dev)
        with _autocast(dev):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    memory = PeakMemory(dev)
    memory.start()
    for _ in range(3):
        one()
    _, seconds = timed(lambda: [one() for _ in range(k)], dev)
    with _autocast(dev):
        forward = count_flops(lambda: model(_inputs(images, model, dev)))
    per_image = 3 * forward / bs  # forward + backward ~ 3 x forward
    suite.record(phase="classifier_step", model=name, batch=bs, steps=k, seconds=seconds,
                 images_per_s=k * bs / seconds, mfu=mfu(per_image * k * bs, seconds, peak_flops(suite.name, "bf16")),
                 gflop_per_image=per_image / 1e9, peak_allocated_mib=memory.peak_mib())


# ---- main -------------------------------------------------------------------------------------

def build(suite: Suite, arch: str, folder: str, resolution: int) -> None:
    from raysys.generation.layouts import write_random_pipeline

    t = time.perf_counter()
    if arch == "tiny":
        syn.build_generator(folder, "tiny", resolution)
    else:
        write_random_pipeline(arch, folder, dtype=torch.float16, device=suite.device.type,
                              progress=lambda line: print(line, flush=True))
    suite.record(phase="build", arch=arch, seconds=time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for suite.jsonl")
    ap.add_argument("--work", help="folder for the generators and the compile cache (default: a temporary one)")
    ap.add_argument("--budget", type=float, default=500.0, help="seconds; phases that no longer fit are skipped")
    ap.add_argument("--tiny", action="store_true", help="tiny models at 32 px: a CPU check of the whole suite")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it takes minutes on a CPU)")
    ap.add_argument("--second", action="store_true",
                    help="the second GPU run: where plain diffusers' time goes, scoring, the fine-tune step, the "
                         "compile cache, SD 2.1-base at the smallest batch")
    args = ap.parse_args(argv)
    suite = Suite(args.out, args.budget, args.tiny)
    suite.compile = not args.no_compile
    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="gpu_suite_")
    try:
        run_phases(args, suite, args.work or temporary.name)
    finally:
        if temporary is not None:
            temporary.cleanup()


def run_phases(args, suite: Suite, work: str) -> None:
    """Every phase of the first or (--second) the second run, generators and caches under `work`."""
    suite.out_cache = os.path.join(work, "compile_cache")
    info = {"device": suite.name, "versions": versions(), "peak_bf16_tflops": (peak_flops(suite.name, "bf16") or 0) / 1e12}
    if suite.device.type == "cuda":
        info["flash_sdp"] = torch.backends.cuda.flash_sdp_enabled()
        info["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    suite.record(phase="environment", **info)

    if args.tiny:
        archs, sizes, res = ["tiny"], [2, 4], 32
    else:
        archs, sizes, res = ["sd15", "sd21-base"], [8, 16, 32], 512
    folders = {a: os.path.join(work, a) for a in archs}
    first = archs[0]
    global STEPS
    if args.tiny:
        STEPS = 4
    mid = sizes[len(sizes) // 2]
    if args.second:  # what the first GPU run left out, and why plain diffusers ran slower
        suite.phase(f"build {first}", 20, build, suite, first, folders[first], res)
        suite.phase(f"where_time_goes {first}", 40, where_time_goes, suite, first, folders[first], res, sizes[0])
        suite.phase("scoring", 40, scoring, suite)
        suite.phase(f"finetune_step {first}", 40, finetune_step, suite, first, folders[first], res, 2 if args.tiny else 8)
        if suite.compile:
            suite.phase(f"compile_cache {first}", 60, compile_cache_reuse, suite, first, folders[first], mid, res)
        if len(archs) > 1:
            suite.phase(f"build {archs[1]}", 10, build, suite, archs[1], folders[archs[1]], res)
            suite.phase(f"synthesis {archs[1]}", 60, synthesis_arch, suite, archs[1], folders[archs[1]], sizes[:1], res)
        print(f"done in {time.perf_counter() - suite.t0:.0f} s; figures in {suite.path}", flush=True)
        return
    suite.phase(f"build {first}", 20, build, suite, first, folders[first], res)
    suite.phase(f"synthesis {first}", 150, synthesis_arch, suite, first, folders[first], sizes, res)
    suite.phase(f"speed_ladder {first}", 150, speed_ladder, suite, first, folders[first], mid, res)
    suite.phase("scoring", 40, scoring, suite)
    suite.phase(f"finetune_step {first}", 40, finetune_step, suite, first, folders[first], res, 2 if args.tiny else 8)
    suite.phase("classifier_step", 25, classifier_step, suite)
    if len(archs) > 1:
        suite.phase(f"build {archs[1]}", 20, build, suite, archs[1], folders[archs[1]], res)
        suite.phase(f"synthesis {archs[1]}", 120, synthesis_arch, suite, archs[1], folders[archs[1]], sizes, res)
    if suite.device.type == "cuda" and suite.compile:
        suite.phase(f"compile_cache {first}", 60, compile_cache_reuse, suite, first, folders[first], mid, res)
    print(f"done in {time.perf_counter() - suite.t0:.0f} s; figures in {suite.path}", flush=True)


if __name__ == "__main__":
    quiet_libraries()
    main()
