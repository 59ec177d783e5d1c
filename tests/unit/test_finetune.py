"""LoRA fine-tuning core and the proof of control, on tiny SD-layout components (no Ray)."""

import numpy as np
import pytest
import torch

from raysys.generation import finetune as ft
from raysys.core.config import SamplingConfig
from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.control import (
    control_grid,
    hard_factor_grid,
    spearman,
    within_class_spearman,
)
from raysys.generation.pipeline import LORA_WEIGHTS, DifficultyDiffusionPipeline
from raysys.generation.training import training_scheduler

WORDS = "a photo of the digit zero one two three".split()
PROMPTS = [f"a photo of the digit {w}" for w in ("zero", "one", "two", "three")]


def base_pipeline(vae: bool, cross_attention_levels=None) -> DifficultyDiffusionPipeline:
    torch.manual_seed(0)
    return build_components(ComponentSpec(image_size=16, block_out_channels=[16, 32], cross_attention_dim=32,
                                          cross_attention_levels=cross_attention_levels, vae=vae, vocabulary=WORDS))


def finetuned(vae: bool, difficulty: bool = True, use_class: bool = True,
              targets=ft.LORA_TARGETS, cross_attention_levels=None) -> DifficultyDiffusionPipeline:
    """A base pipeline with LoRA (non-zero, as after training) and optionally a difficulty encoder."""
    pipe = base_pipeline(vae, cross_attention_levels)
    ft.add_lora(pipe, rank=4, alpha=4, targets=targets)
    if difficulty:
        ft.add_difficulty_encoder(pipe, num_classes=4, num_tokens=2, use_class=use_class)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return pipe


def unet_out(unet, seed=0, extra_tokens=0):
    g = torch.Generator().manual_seed(seed)
    channels, size = unet.config.in_channels, unet.config.sample_size
    x = torch.randn(2, channels, size, size, generator=g)
    ctx = torch.randn(2, 16 + extra_tokens, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample


def test_lora_touches_only_attention_projections_and_freezes_the_base():
    pipe = finetuned(vae=False)
    trainable = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} >= {"to_q", "to_k", "to_v"}
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())
    params = ft.trainable_parameters(pipe)
    encoder = sum(p.numel() for p in pipe.difficulty_encoder.parameters())
    assert sum(p.numel() for p in params) == encoder + sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad)


def test_saved_lora_loads_in_plain_diffusers_stable_diffusion(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = finetuned(vae=True, difficulty=False)
    ft.save_adapters(pipe, str(tmp_path / "adapters"))
    assert (tmp_path / "adapters" / LORA_WEIGHTS).is_file()
    from safetensors.torch import load_file

    keys = list(load_file(str(tmp_path / "adapters" / LORA_WEIGHTS)))
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)

    base = base_pipeline(vae=True)  # same seed: the same base weights, no LoRA
    plain = StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    before = unet_out(plain.unet)
    plain.load_lora_weights(str(tmp_path / "adapters"))
    after = unet_out(plain.unet)
    ours = unet_out(pipe.unet)
    assert (after - before).abs().max() > 1e-2  # the LoRA changed the plain pipeline's UNet ...
    torch.testing.assert_close(after, ours, atol=1e-5, rtol=1e-4)  # ... into exactly ours


@pytest.mark.parametrize("vae", [False, True], ids=["pixel", "latent-sd-layout"])
def test_whole_pipeline_with_encoder_and_lora_round_trips(tmp_path, vae):
    pipe = finetuned(vae)
    with torch.no_grad():
        pipe.difficulty_encoder.null_tokens.normal_()
    kwargs = dict(prompt=PROMPTS[:3], seeds=[1, 2, 3], class_labels=[0, 1, 2], difficulty=[0.2, None, 0.9],
                  guidance_scale=2.0, num_inference_steps=4, output_type="pt")
    before = pipe(**kwargs).images
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / LORA_WEIGHTS).is_file() and (tmp_path / "pipe" / "difficulty_encoder").is_dir()
    torch.testing.assert_close(pipe(**kwargs).images, before)  # saving leaves the LoRA in place
    loaded = DifficultyDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.difficulty_encoder is not None and getattr(loaded.unet, "peft_config", None)
    torch.testing.assert_close(loaded(**kwargs).images, before, atol=1e-5, rtol=1e-4)
    # Both still save their LoRA (the loaded one's adapter is named by load_lora_weights).
    for i, p in enumerate([pipe, loaded]):
        p.save_lora(str(tmp_path / f"lora{i}"))
    from safetensors.torch import load_file

    first, second = (load_file(str(tmp_path / f"lora{i}" / LORA_WEIGHTS)) for i in range(2))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # The component folder holds the *base* UNet: without the LoRA file the output differs.
    (tmp_path / "pipe" / LORA_WEIGHTS).unlink()
    bare = DifficultyDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert (bare(**kwargs).images - before).abs().max() > 1e-3


@pytest.mark.parametrize("targets", [ft.LORA_TARGETS, [*ft.LORA_TARGETS, "conv1", "conv2"]])
def test_load_finetuned_rebuilds_base_plus_adapters(tmp_path, targets):
    levels = [False, True]  # attention only at the second level, as the quickstart's: a ResNet conv comes first
    pipe = finetuned(vae=False, targets=targets, cross_attention_levels=levels)
    trainable = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert all(any(f".{t}.lora_" in n for n in trainable) for t in targets)
    assert all(any(n.endswith(f".{t}") for t in targets) for n in (n.split(".lora_")[0] for n in trainable))
    ft.save_adapters(pipe, str(tmp_path / "adapters"))
    base_pipeline(False, levels).save_pretrained(tmp_path / "base")
    again = ft.load_finetuned(str(tmp_path / "base"), str(tmp_path / "adapters"))
    kwargs = dict(prompt=PROMPTS[:2], seeds=[4, 5], class_labels=[0, 3], difficulty=[0.1, 0.7],
                  num_inference_steps=3, output_type="pt")
    # every adapted module comes back (a file that mixed key formats loaded without its attention LoRA)
    torch.testing.assert_close(again(**kwargs).images, pipe(**kwargs).images, atol=1e-5, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match=LORA_WEIGHTS):
        ft.load_finetuned(str(tmp_path / "base"), str(tmp_path / "base"))


def test_finetune_steps_train_lora_and_encoder_only():
    pipe = finetuned(vae=False)
    base_weights = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if not p.requires_grad}
    text_weights = [p.detach().clone() for p in pipe.text_encoder.parameters()]
    g = torch.Generator().manual_seed(0)
    n = 32
    rows = ft.FinetuneRows(
        images=torch.rand(n, 1, 16, 16, generator=g) * 2 - 1,
        prompts=[PROMPTS[i % 4] for i in range(n)],
        labels=torch.arange(n) % 4,
        difficulty=torch.rand(n, generator=g),
    )
    scheduler = training_scheduler(pipe)
    params = ft.trainable_parameters(pipe)
    encoder_before = [p.detach().clone() for p in pipe.difficulty_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3)
    fixed = torch.arange(n)

    def fixed_loss():
        return ft.finetune_step(pipe, scheduler, rows, fixed, use_difficulty=True, condition_dropout=0.0,
                                snr_gamma=5.0, generator=torch.Generator().manual_seed(123))

    with torch.no_grad():
        start = fixed_loss().item()
    for step in range(40):
        idx = ft.batch_indices(n, 16, seed=0, step=step, rank=0)
        loss = ft.finetune_step(pipe, scheduler, rows, idx, use_difficulty=True, condition_dropout=0.1,
                                snr_gamma=5.0, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert fixed_loss().item() < 0.9 * start
    for name, p in pipe.unet.named_parameters():
        if name in base_weights:
            assert torch.equal(p, base_weights[name]), name
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), text_weights))
    assert any(not torch.equal(a, b) for a, b in zip(pipe.difficulty_encoder.parameters(), encoder_before))
    # Same (seed, step, rank): same rows; another rank: other rows.
    assert torch.equal(ft.batch_indices(n, 8, 0, 5, 0), ft.batch_indices(n, 8, 0, 5, 0))
    assert not torch.equal(ft.batch_indices(n, 8, 0, 5, 0), ft.batch_indices(n, 8, 0, 5, 1))


def test_adapter_state_restores_a_checkpoint():
    pipe = finetuned(vae=False)
    state = ft.adapter_state(pipe)
    other = finetuned(vae=False)
    with torch.no_grad():
        for p in ft.trainable_parameters(other):
            p.add_(1.0)
    ft.load_adapter_state(other, state)
    kwargs = dict(prompt=PROMPTS[:1], seeds=[9], class_labels=[2], difficulty=[0.5], num_inference_steps=3,
                  output_type="pt")
    torch.testing.assert_close(other(**kwargs).images, pipe(**kwargs).images)


def test_control_grid_layout_and_hard_factors():
    pipe = finetuned(vae=False)
    opts = SamplingConfig(guidance_scale=1.0, num_inference_steps=3)
    levels = [0.1, 0.5, 0.9]
    grid = control_grid(pipe, PROMPTS, levels, 2, opts, batch_size=5)
    assert grid.images.shape == (4, 3, 2, 16, 16, 1)
    assert (grid.labels[2] == 2).all() and np.allclose(grid.requested[:, 1], 0.5)
    # Only s differs along a row: images change with s; seeds differ along the last axis.
    assert np.abs(grid.images[1, 0, 0].astype(int) - grid.images[1, 2, 0].astype(int)).max() > 0
    plain = control_grid(pipe, PROMPTS, levels, 2, opts, with_difficulty=False, batch_size=5)
    assert np.isnan(plain.requested).all() and plain.images.shape == grid.images.shape
    assert (plain.labels == grid.labels).all()
    assert (plain.images[:, 0] == plain.images[:, 2]).all()  # no s: the level axis is the same image
    assert np.abs(plain.images[0, 0, 0].astype(int) - plain.images[0, 0, 1].astype(int)).max() > 0
    hard = hard_factor_grid(pipe, 4, levels, seed=0, opts=opts, batch_size=5)
    assert hard.shape == (4, 3, 16, 16, 1)
    assert np.abs(hard[0].astype(int) - hard[1].astype(int)).max() > 0  # rows: classes, same seed
    # Without class input the tokens depend on s alone: rows are seeds 0..3, not four copies.
    no_class = finetuned(vae=False, use_class=False)
    hard = hard_factor_grid(no_class, 4, levels, seed=0, opts=opts, batch_size=5)
    assert hard.shape == (4, 3, 16, 16, 1)
    assert len({hard[r].tobytes() for r in range(4)}) == 4
    first_seed = no_class(["", ""], seeds=[0, 1], class_labels=[0, 0], difficulty=[0.1, 0.1], guidance_scale=1.0,
                          num_inference_steps=3).images
    assert (hard[:2, 0] == first_seed).all()
    with pytest.raises(ValueError, match="difficulty encoder"):
        hard_factor_grid(finetuned(vae=False, difficulty=False), 4, levels, 0, opts)


def test_spearman_and_within_class():
    requested = np.array([0.1, 0.5, 0.9] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert spearman(requested, np.array([0.2, 0.3, 0.4, 0.0, 0.1, 0.15])) == pytest.approx(8 / np.sqrt(16 * 17.5))  # ranks by hand
    assert spearman(requested, -requested) == pytest.approx(-1.0)
    assert spearman(requested, np.ones(6)) is None
    # Class 1 is harder overall, but inside each class measured rises with requested.
    measured = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert within_class_spearman(labels, requested, measured) == pytest.approx(1.0)
    assert within_class_spearman(labels, requested, measured[[2, 1, 0, 5, 4, 3]]) == pytest.approx(-1.0)


def test_difficulty_balanced_sampling_draws_every_bin_equally():
    difficulty = torch.tensor([0.02] * 90 + [0.55] * 8 + [0.97] * 2)
    assert ft.sampling_weights(difficulty, "uniform") is None
    weights = ft.sampling_weights(difficulty, "difficulty_balanced")
    idx = ft.batch_indices(100, 3000, seed=0, step=0, rank=0, weights=weights)
    share = np.bincount(np.digitize(difficulty[idx].numpy(), [0.1, 0.9]), minlength=3) / 3000
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.04)  # uniform draws would give 0.90 / 0.08 / 0.02
    assert torch.equal(idx, ft.batch_indices(100, 3000, seed=0, step=0, rank=0, weights=weights))
    with pytest.raises(ValueError, match="unknown sampling"):
        ft.sampling_weights(difficulty, "by_class")


def test_fine_tune_prompts_carry_each_rows_caption():
    names = ["zero", "one", "two"]
    labels = np.array([2, 0, 1])
    template = "photo of {name}, {caption}"
    assert ft.prompts_for(labels, names, template, ["a bold stroke", None, ""]) == [
        "photo of two, a bold stroke", "photo of zero", "photo of one"]
    assert ft.prompts_for(labels, names, template) == ["photo of two", "photo of zero", "photo of one"]
    assert ft.prompts_for(labels, names, "a photo of the digit {name}", ["ignored"] * 3) == [
        "a photo of the digit two", "a photo of the digit zero", "a photo of the digit one"]


def test_finetune_rows_read_the_caption_column_or_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"label": pa.array([0, 1, 1], pa.int32()), "difficulty": pa.array([0.1, 0.5, 0.9], pa.float32()),
            "split": ["train", "val", "train"], "image": [b"", b"", b""]}
    for name, extra in [("captioned", {"caption": ["a thin zero", "a one", None]}), ("older", {})]:
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({**rows, **extra}), tmp_path / name / "part-00000.parquet")
    job = ft.FinetuneJob(variant="plain", base="", manifest=str(tmp_path / "captioned"), class_names=["0", "1"],
                         prompt_template="{name}, {caption}", cfg=None, seed=0)
    _, mine = ft.finetune_rows(job, rank=0, world=1)
    assert mine["caption"].to_pylist() == ["a thin zero", None] and mine["label"].to_pylist() == [0, 1]
    job.manifest = str(tmp_path / "older")
    _, mine = ft.finetune_rows(job, rank=0, world=1)
    assert mine["caption"].to_pylist() == [None, None]


def test_the_checkpoint_keeps_the_first_steps_prompts_across_a_resume(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysys.core.config import FinetuneConfig
    from raysys.core.context import LocalContext, read_checkpoint
    from raysys.data.images import encode_png
    from tests.unit.test_checkpoint import Killed, KilledAfter

    base = str(tmp_path / "base")
    base_pipeline(vae=False).save_pretrained(base)
    names = ["zero", "one", "two", "three"]
    labels = np.array([0, 1, 2, 3, 0, 1])
    captions = ["a thin zero", None, "a curly two", "a three", "a wide zero", "a slanted one"]
    difficulty = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.2], np.float32)
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.table({
        "label": pa.array(labels, pa.int32()), "difficulty": pa.array(difficulty), "split": ["train"] * 6,
        "caption": captions, "image": [encode_png(np.full((16, 16), 40 * i, np.uint8)) for i in range(6)],
    }), tmp_path / "manifest" / "part-00000.parquet")
    cfg = FinetuneConfig(variants=["plain"], steps=3, batch_size=2, lora_rank=2, lora_alpha=2, checkpoint_every=1,
                         sampling="uniform")
    job = ft.FinetuneJob(variant="plain", base=base, manifest=str(tmp_path / "manifest"), class_names=names,
                         prompt_template="photo of {name}, {caption}", cfg=cfg, seed=0)
    with pytest.raises(Killed):
        ft.finetune_loop(KilledAfter(str(tmp_path / "ckpt"), 1), job)
    first = ft.batch_indices(6, 2, seed=0, step=0, rank=0).numpy()
    expected = ft.prompts_for(labels[first], names, job.prompt_template, [captions[i] for i in first])
    assert read_checkpoint(str(tmp_path / "ckpt"))[1]["prompts"] == expected
    resumed = LocalContext(str(tmp_path / "ckpt"))
    ft.finetune_loop(resumed, job)
    _, state = read_checkpoint(resumed.directory)
    assert state["step"] == 3 and state["resumes"] == [1] and state["prompts"] == expected
