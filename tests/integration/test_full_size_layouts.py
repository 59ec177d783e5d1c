"""The released Stable Diffusion layouts at full size, random weights, on the CPU.

For SD 1.5, SD 2.1 base and the SDXL refiner, one test writes the layout's pipeline folder
(`raysys random-generator LAYOUT OUT`: every component at full size, the real CLIP tokenizer)
and then runs, at a low resolution and few steps:

1. loading as raysys loads a base model, with the released parameter counts and the real
   tokenizer (77 tokens);
2. text + difficulty generation with classifier-free guidance;
3. img2img at λ = 0.5 (half the steps run);
4. one LoRA + difficulty-encoder training step with gradient checkpointing (and one under bf16
   autocast, as on a GPU, where the CPU has bf16 instructions);
5. save_pretrained / from_pretrained of the fine-tuned pipeline;
6. plain diffusers (the released pipeline class) loading the folder and the LoRA file with
   `load_lora_weights`, its UNet then giving our UNet's outputs;
7. bf16 generation where the CPU has bf16 instructions.

Each step is printed with its time and the process's peak RSS (`pytest -s` shows them).
"""

from __future__ import annotations

import gc
import shutil
import time

import numpy as np
import pytest
import torch

from raysys.generation import finetune as ft
from raysys.generation.components import load_pipeline
from raysys.cli import main
from raysys.generation.layouts import LAYOUTS, components, parameter_counts
from raysys.generation.pipeline import LORA_WEIGHTS, Condition, DifficultyDiffusionPipeline, load_dtype_argument
from raysys.generation.training import training_scheduler

from tests.unit.test_layouts import RELEASED_PARAMETERS

pytestmark = pytest.mark.slow

CONTEXT_WIDTH = {"sd15": 768, "sd21-base": 1024, "sdxl-refiner": 1280}
PAD_ID = {"sd15": 49407, "sd21-base": 0, "sdxl-refiner": 0}
PLAIN_PIPELINE = {"sd15": "StableDiffusionPipeline", "sd21-base": "StableDiffusionPipeline",
                  "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}
SIZE = 128  # pixels: a 16 x 16 latent
STEPS = 2
TOKENS = 4  # difficulty tokens
PROMPTS = ["a photo of a tabby cat on a sofa", "a photo of a red fox in the snow"]


def memory_gib() -> dict[str, float]:
    """The process's peak RSS (VmHWM: it counts the mapped weight files' pages too) and its
    private memory now (RssAnon)."""
    with open("/proc/self/status") as f:
        kib = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmHWM:", "RssAnon:"))}
    return {k: v / 2**20 for k, v in kib.items()}


class Steps:
    """Prints each step's time and memory."""

    def __init__(self, layout: str):
        self.layout, self.t = layout, time.time()

    def done(self, what: str) -> None:
        now, memory = time.time(), memory_gib()
        print(f"[{self.layout}] {what}: {now - self.t:.1f} s, peak RSS {memory['VmHWM']:.1f} GiB, "
              f"private now {memory['RssAnon']:.1f} GiB", flush=True)
        self.t = now


def count_unet_rows(unet) -> list[int]:
    """Batch rows of every UNet call from now on."""
    rows: list[int] = []
    unet.register_forward_hook(lambda module, args, output: rows.append(int(args[0].shape[0])))
    return rows


def unet_output(pipe, x, t, condition: Condition) -> torch.Tensor:
    with torch.no_grad():
        return pipe.predict(x, t, condition)


def has_cpu_bf16() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.fixture
def workdir(tmp_path):
    """tmp_path, emptied after the test: pytest keeps its last three runs' folders, and these
    hold up to 24 GB of weights."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_full_size_layout_end_to_end_on_cpu(layout, workdir):
    tmp_path = workdir
    steps = Steps(layout)
    base = str(tmp_path / "base")
    assert main(["random-generator", layout, base]) == 0
    assert main(["random-generator", layout, base]) == 2  # never writes over a folder
    assert parameter_counts(layout) == RELEASED_PARAMETERS[layout]
    steps.done("write the random-weight folder")

    # 1. Load as raysys loads generator.base.
    pipe = load_pipeline(base)
    assert pipe.vae is not None and pipe.vae_scale_factor == 8 and pipe.unet.config.in_channels == 4
    for folder, count in RELEASED_PARAMETERS[layout].items():
        if folder != "safety_checker":  # in the folder; raysys does not load it
            assert sum(p.numel() for p in getattr(pipe, folder).parameters()) == count
    assert not hasattr(pipe, "safety_checker")
    tokenizer = pipe.tokenizer if pipe.text_encoder is not None else pipe.tokenizer_2
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    ids = tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    assert ids[0] == 49406 and ids[3] == 49407 and ids[-1] == PAD_ID[layout]  # BOS, a, cat, EOS, pads
    assert {getattr(pipe, f).dtype for f in RELEASED_PARAMETERS[layout] if f != "safety_checker"} == {torch.float32}
    ft.add_difficulty_encoder(pipe, num_classes=2, num_tokens=TOKENS, use_class=True)
    with torch.no_grad():
        long_prompt = " ".join(["cat"] * 200)
        cond = pipe.condition([long_prompt], torch.tensor([0]), torch.tensor([0.3]))
    assert cond.tokens.shape == (1, 77 + TOKENS, CONTEXT_WIDTH[layout])
    assert (cond.pooled is None) == (layout != "sdxl-refiner")
    if cond.pooled is not None:
        assert cond.pooled.shape == (1, 1280)
    steps.done("load with raysys, tokenize, condition")

    # 2. Text + difficulty generation, classifier-free guidance: 2 branches x STEPS calls. The two
    # rows share prompt, class and seed, so they differ only if the difficulty tokens reach the UNet.
    rows = count_unet_rows(pipe.unet)
    kwargs = dict(prompt=PROMPTS[:1] * 2, seeds=[11, 11], class_labels=[0, 0], difficulty=[0.1, 0.9],
                  guidance_scale=3.0, num_inference_steps=STEPS, image_size=SIZE)
    easy_hard = pipe(**kwargs).images
    assert easy_hard.shape == (2, SIZE, SIZE, 3) and easy_hard.dtype == np.uint8
    assert rows == [4] * STEPS
    assert not np.array_equal(easy_hard[0], easy_hard[1])
    steps.done("text + difficulty generation")

    # 3. img2img at λ = 0.5: the source noised to half way, so half the steps run.
    rows.clear()
    source = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    guided = pipe(source_images=source, guidance=[0.5, 0.5], **kwargs).images
    assert guided.shape == easy_hard.shape and rows == [4] * (STEPS // 2)
    assert not np.array_equal(guided, easy_hard)
    steps.done("img2img at λ = 0.5")

    # 4. One LoRA + difficulty-encoder step with gradient checkpointing.
    ft.add_lora(pipe, rank=4, alpha=4)
    pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()
    frozen_name, frozen = next((n, p) for n, p in pipe.unet.named_parameters() if not p.requires_grad)
    frozen_before = frozen.detach().clone()
    params = ft.trainable_parameters(pipe)
    lora = {n: p for n, p in pipe.unet.named_parameters() if p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in lora.items()}
    mlp_before = pipe.difficulty_encoder.mlp[0].weight.detach().clone()
    data = ft.FinetuneRows(images=source, prompts=PROMPTS, labels=torch.tensor([0, 1]),
                           difficulty=torch.tensor([0.2, 0.8]))
    loss = ft.finetune_step(pipe, training_scheduler(pipe), data, torch.tensor([0]), use_difficulty=True,
                            condition_dropout=0.0, snr_gamma=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(params, lr=1.0).step()
    # LoRA's B (up) matrices start at zero, so one step moves every B and no A.
    assert len(lora) > 100 and all(("lora_B" in n) != torch.equal(p, lora_before[n]) for n, p in lora.items())
    assert not torch.equal(pipe.difficulty_encoder.mlp[0].weight, mlp_before)
    assert torch.equal(frozen, frozen_before), frozen_name
    if has_cpu_bf16():  # the GPU path: bf16 autocast over float32 weights
        loss = ft.finetune_step(pipe, training_scheduler(pipe), data, torch.tensor([1]), use_difficulty=True,
                                condition_dropout=0.0, snr_gamma=5.0, generator=torch.Generator().manual_seed(1),
                                autocast_dtype=torch.bfloat16)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for n, p in lora.items() if "lora_B" in n)
    pipe.unet.eval()
    pipe.unet.disable_gradient_checkpointing()
    steps.done("LoRA + encoder step, gradient checkpointing")

    # 5. save_pretrained / from_pretrained of the fine-tuned pipeline.
    x, t = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7)), torch.tensor([500])
    with torch.no_grad():
        cond = pipe.condition(PROMPTS[:1], torch.tensor([1]), torch.tensor([0.6]))
    ours = unet_output(pipe, x, t, cond)
    saved = tmp_path / "finetuned"
    pipe.save_pretrained(saved)
    assert (saved / LORA_WEIGHTS).is_file() and (saved / "difficulty_encoder").is_dir()
    ft.save_adapters(pipe, str(tmp_path / "adapters"))
    del pipe
    gc.collect()
    loaded = DifficultyDiffusionPipeline.from_pretrained(saved)
    with torch.no_grad():
        loaded_cond = loaded.condition(PROMPTS[:1], torch.tensor([1]), torch.tensor([0.6]))
    torch.testing.assert_close(loaded_cond.tokens, cond.tokens)
    torch.testing.assert_close(unet_output(loaded, x, t, loaded_cond), ours, atol=1e-4, rtol=1e-4)
    del loaded
    gc.collect()
    shutil.rmtree(saved)
    steps.done("save_pretrained / from_pretrained")

    # 6. Plain diffusers: the released pipeline class, the LoRA file through load_lora_weights.
    import diffusers

    plain = diffusers.DiffusionPipeline.from_pretrained(base, **{load_dtype_argument(): torch.float32})
    assert type(plain).__name__ == PLAIN_PIPELINE[layout]
    assert set(components(layout)) <= set(plain.components)
    added = None
    if layout == "sdxl-refiner":
        added = {"text_embeds": cond.pooled, "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, 6.0]])}
    with torch.no_grad():
        bare = plain.unet(x, t, encoder_hidden_states=cond.tokens, added_cond_kwargs=added).sample
    plain.load_lora_weights(str(tmp_path / "adapters"))
    with torch.no_grad():
        with_lora = plain.unet(x, t, encoder_hidden_states=cond.tokens, added_cond_kwargs=added).sample
    assert (with_lora - bare).abs().max() > 0  # the LoRA changed the plain UNet ...
    torch.testing.assert_close(with_lora, ours, atol=1e-4, rtol=1e-4)  # ... into ours
    del plain
    gc.collect()
    steps.done("plain diffusers + load_lora_weights")

    # 7. bf16 where the CPU has it.
    if not has_cpu_bf16():
        print(f"[{layout}] bf16 skipped: no avx512_bf16 / amx_bf16 on this CPU")
        return
    half = ft.load_finetuned(base, str(tmp_path / "adapters"), dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16 and half.text_model.dtype == torch.bfloat16
    images = half(prompt=PROMPTS[:1], seeds=[11], class_labels=[0], difficulty=[0.1], guidance_scale=3.0,
                  num_inference_steps=1, image_size=SIZE).images
    assert images.shape == (1, SIZE, SIZE, 3) and images.dtype == np.uint8 and images.std() > 0
    steps.done("bf16 generation")
