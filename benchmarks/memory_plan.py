"""The memory plan (raysys.generation.memory) against measured memory on the CPU, and its
predictions for GPUs at 512 px.

    nice -n 19 python benchmarks/memory_plan.py                      # sd15 and sd21-base, then the tables
    nice -n 19 python benchmarks/memory_plan.py --layouts sd15 sdxl-refiner
    nice -n 19 python benchmarks/memory_plan.py --layouts sdxl-refiner --max-px 128   # its cheaper cases
    python benchmarks/memory_plan.py --tables                         # only the predictions (no model)

**The check**: each case runs in a fresh child process, so its peak belongs to it alone. The child
builds the layout's components at full size with random weights in memory (float32, the real
configs: `layouts.build_component`; no folder is written), the real CLIP tokenizer, and the
pipeline; then resets the kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`) and runs
the case: generation with classifier-free guidance (2 steps, 2·batch UNet rows, the batch
decoded at once) or one LoRA (rank 4) + difficulty-encoder step with gradient checkpointing and
AdamW. The measured peak is VmHWM minus the file-backed and shared pages (RssFile + RssShmem:
the mapped torch libraries) minus the private memory the process had before building anything
(the interpreter and imports): the private memory the case added at its peak. Weights built in
memory are private (anonymous), so they count, as they would on a GPU; weights loaded from
safetensors would be file-backed (mmap) and need the other accounting.

The prediction is `predict_generation` / `predict_finetune` in float32 with no GPU runtime
allowance. The run fails (exit 1) if any measured / predicted ratio is outside [0.75, 1.25].
At these sizes the weights dominate; the activation share is printed beside it for information:
predicted, measured (RSS minus the exact weight and optimizer bytes: it includes the process's
fixed overhead, about 0.15 GiB, and what glibc keeps), and live (the case's peak of live tensor
bytes, `memory_profiler.LiveTensorBytes` around it: what the profile models).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysys.generation import memory, memory_profiler, memory_table  # noqa: E402
from raysys.generation.memory import largest_batch, predict_finetune, predict_generation  # noqa: E402
from raysys.generation.memory_table import GPUS, GiB  # noqa: E402

CASES = [  # (kind, px, batch)
    ("generation", 64, 1),
    ("generation", 128, 2),
    ("generation", 256, 4),
    ("finetune", 128, 1),
    ("finetune", 256, 2),
]
LIMITS = (0.75, 1.25)


def status_kib() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f if line.split(":")[0] in
                ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")}


def run_case(layout: str, kind: str, px: int, batch: int) -> dict:
    """In the child: build, reset the peak mark, run, measure."""
    import gc

    import torch

    from raysys.generation import finetune as ft
    from raysys.generation.layouts import CONFIG_ROOT, build_component, components, get_layout
    from raysys.generation.pipeline import DifficultyDiffusionPipeline
    from raysys.generation.tokenizer import write_clip_tokenizer
    from raysys.generation.training import training_scheduler

    torch.set_num_threads(2)
    gc.collect()
    baseline = status_kib()["RssAnon"] * 1024
    folders = components(layout)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(tmp, pad_token=get_layout(layout).pad_token)
    library, scheduler_class = folders["scheduler"]
    import diffusers
    cls = getattr(diffusers, scheduler_class)
    scheduler = cls.from_config(cls.load_config(os.path.join(CONFIG_ROOT, layout, "scheduler")))
    text = "text_encoder" if "text_encoder" in folders else "text_encoder_2"
    pipe = DifficultyDiffusionPipeline(
        unet=build_component(layout, "unet"), scheduler=scheduler, vae=build_component(layout, "vae"),
        **{text: build_component(layout, text).float(), text.replace("text_encoder", "tokenizer"): tokenizer})
    ft.add_difficulty_encoder(pipe, num_classes=1000, num_tokens=4, use_class=True)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS mark starts again from what is resident now
    t0 = time.time()
    prompts = ["a photo of a tabby cat on a sofa"] * batch
    memory.GPU_ACTIVATIONS = 1.0  # a CPU holds the profile's tensors as measured (no GPU intermediates)
    meter = memory_profiler.LiveTensorBytes()  # the live tensor bytes too, to tell the model's error from the allocator's
    meter.__enter__()
    if kind == "generation":
        pipe(prompt=prompts, seeds=list(range(batch)), class_labels=[0] * batch, difficulty=[0.5] * batch,
             guidance_scale=3.0, num_inference_steps=2, image_size=px)
        predicted = predict_generation(layout, px, batch, "fp32", guidance=True, runtime=0)
    else:
        ft.add_lora(pipe, rank=4, alpha=4)
        pipe.unet.enable_gradient_checkpointing()
        pipe.unet.train()
        params = ft.trainable_parameters(pipe)
        opt = torch.optim.AdamW(params, lr=1e-4)
        rows = ft.FinetuneRows(images=torch.rand(batch, 3, px, px) * 2 - 1, prompts=prompts,
                               labels=torch.zeros(batch, dtype=torch.long), difficulty=torch.full((batch,), 0.5))
        loss = ft.finetune_step(pipe, training_scheduler(pipe), rows, torch.arange(batch), use_difficulty=True,
                                condition_dropout=0.0, snr_gamma=5.0, generator=torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        predicted = predict_finetune(layout, px, batch, "fp32", gradient_checkpointing=True, lora_rank=4,
                                     runtime=0)
    meter.__exit__(None, None, None)
    seconds = time.time() - t0
    kib = status_kib()
    measured = (kib["VmHWM"] - kib["RssFile"] - kib["RssShmem"]) * 1024 - baseline
    return {"layout": layout, "kind": kind, "px": px, "batch": batch, "measured": measured,
            "predicted": predicted.total, "weights": predicted.weights + predicted.trainable,
            "activations": predicted.activations, "phase": predicted.phase, "seconds": round(seconds, 1),
            "live": meter.peak - predicted.trainable}


def check(layouts: list[str], max_px: int = 10**6) -> bool:
    print("measured vs predicted peak memory on the CPU (float32, full size, random weights; private bytes added "
          "by the case at its peak)")
    print(f"{'layout':13} {'case':24} {'predicted':>10} {'measured':>10} {'ratio':>6}   "
          f"{'act. pred':>9} {'act. meas':>9} {'act. live':>9}  phase")
    ok = True
    for layout in layouts:
        for kind, px, batch in CASES:
            if px > max_px:
                continue
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", layout, kind, str(px),
                                   str(batch)], capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or not lines:
                print(f"{layout:13} {kind} {px} px batch {batch}: FAILED\n{proc.stderr[-2000:]}")
                ok = False
                continue
            r = json.loads(lines[-1])
            ratio = r["measured"] / r["predicted"]
            inside = LIMITS[0] <= ratio <= LIMITS[1]
            ok &= inside
            act_measured = r["measured"] - r["weights"]
            print(f"{layout:13} {f'{kind} {px} px batch {batch}':24} {r['predicted'] / GiB:9.2f}G "
                  f"{r['measured'] / GiB:9.2f}G {ratio:6.3f}{'' if inside else ' !!'} "
                  f"{r['activations'] / GiB:8.2f}G {act_measured / GiB:8.2f}G "
                  f"{r.get('live', float('nan')) / GiB:8.2f}G  {r['phase']} ({r['seconds']} s)",
                  flush=True)
    return ok


def tables() -> None:
    print("\npredicted peak GPU memory, GiB (weights + activations x GPU_ACTIVATIONS + 1.0 runtime allowance; "
          "generation in bf16: fp16 runs the VAE in fp32)")
    for layout, pxs in (("sd15", (512,)), ("sd21-base", (512,)), ("sdxl-refiner", (1024, 512))):
        if layout not in memory_table.PROFILES:
            print(f"  {layout}: not profiled (python -m raysys.generation.memory_profiler {layout})")
            continue
        for px in pxs:
            gen = [predict_generation(layout, px, b, "bf16") for b in (1, 8, 16)]
            tune = [predict_finetune(layout, px, b, "bf16", gradient_checkpointing=True) for b in (1, 4, 8)]
            mixed = [predict_finetune(layout, px, b, "bf16", weight_dtype="fp32") for b in (1, 4, 8)]
            print(f"  {layout} {px} px: generation bf16, guidance, batch 1/8/16: "
                  + " / ".join(f"{e.total / GiB:.1f}" for e in gen)
                  + f" (weights {gen[0].weights / GiB:.1f}; largest phase at 16: {gen[2].phase})")
            print(f"  {'':{len(layout)}} {px} px: LoRA r4 fine-tuning bf16, checkpointed, batch 1/4/8: "
                  + " / ".join(f"{e.total / GiB:.1f}" for e in tune)
                  + "; fp32 weights + bf16 autocast (raysys today): "
                  + " / ".join(f"{e.total / GiB:.1f}" for e in mixed))
    print(f"\nlargest batch that fits ({memory_table.HEADROOM:.0%} headroom), generation bf16 with guidance / "
          "LoRA fine-tuning bf16 checkpointed / fp32 weights + bf16 autocast")
    gpus = ["A10G", "A100-40", "A100-80", "H100"]
    print(f"  {'':22}" + "".join(f"{g + f' ({GPUS[g]} GiB)':>22}" for g in gpus))
    for layout, px in (("sd15", 512), ("sd21-base", 512), ("sdxl-refiner", 1024), ("sdxl-refiner", 512)):
        if layout not in memory_table.PROFILES:
            continue
        cells = []
        for g in gpus:
            a = largest_batch(layout, px, "bf16", g)
            b = largest_batch(layout, px, "bf16", g, kind="finetune")
            c = largest_batch(layout, px, "bf16", g, kind="finetune", weight_dtype="fp32")
            cells.append(f"{a} / {b} / {c}")
        print(f"  {f'{layout} {px} px':22}" + "".join(f"{c:>22}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="*", default=["sd15", "sd21-base"])
    parser.add_argument("--tables", action="store_true", help="only print the predictions")
    parser.add_argument("--max-px", type=int, default=10**6, help="skip the cases above this resolution")
    parser.add_argument("--case", nargs=4, metavar=("LAYOUT", "KIND", "PX", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        layout, kind, px, batch = args.case
        print(json.dumps(run_case(layout, kind, int(px), int(batch))))
        return 0
    ok = True
    if not args.tables:
        ok = check(args.layouts, args.max_px)
        print(f"\nall ratios within [{LIMITS[0]}, {LIMITS[1]}]" if ok else "\nSOME RATIOS OUTSIDE THE LIMITS")
    tables()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
