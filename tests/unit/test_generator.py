"""The difficulty encoder and the pipeline, built at tiny size from config (no download)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from raysys.generation.components import ComponentSpec, GeneratorNotFound, build_components, load_pipeline
from raysys.generation.difficulty_encoder import DifficultyEncoder
from raysys.generation.pipeline import DifficultyDiffusionPipeline

WORDS = "a photo of the digit zero one two three".split()


def tiny_pipeline(vae: bool, seed: int = 0) -> DifficultyDiffusionPipeline:
    torch.manual_seed(seed)
    spec = ComponentSpec(image_size=16 if not vae else 16, block_out_channels=[16, 32], cross_attention_dim=32,
                         attention_head_dim=8, vae=vae, vocabulary=WORDS)
    pipe = build_components(spec)
    pipe.difficulty_encoder = DifficultyEncoder(num_classes=4, cross_attention_dim=32, num_tokens=2, hidden_dim=32)
    pipe.register_modules(difficulty_encoder=pipe.difficulty_encoder)
    with torch.no_grad():  # random, non-zero null tokens so the unconditional branch differs
        pipe.difficulty_encoder.null_tokens.normal_()
    return pipe


def test_encoder_tokens_depend_on_class_and_difficulty(tmp_path):
    enc = DifficultyEncoder(num_classes=3, cross_attention_dim=16, num_tokens=4, hidden_dim=32)
    labels, s = torch.tensor([0, 0, 1]), torch.tensor([0.2, 0.8, 0.2])
    out = enc(labels, s)
    assert out.shape == (3, 4, 16)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])
    no_class = DifficultyEncoder(num_classes=3, cross_attention_dim=16, use_class=False)
    o = no_class(labels, s)
    assert torch.allclose(o[0], o[2], atol=1e-6) and not torch.allclose(o[0], o[1], atol=1e-6)
    mixed = enc.tokens(labels, torch.tensor([0.2, float("nan"), 0.2]), torch.tensor([True, False, True]))
    assert torch.equal(mixed[1], enc.null_tokens) and torch.allclose(mixed[0], out[0])
    enc.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "diffusion_pytorch_model.safetensors").is_file()
    again = DifficultyEncoder.from_pretrained(tmp_path / "enc")
    assert again.config.num_tokens == 4 and torch.allclose(again(labels, s), out)


@pytest.mark.parametrize("vae", [False, True], ids=["pixel", "latent-sd-layout"])
def test_same_seed_same_image_whatever_the_batch(vae):
    pipe = tiny_pipeline(vae)
    prompts = ["a photo of the digit one", "a photo of the digit two", "a photo of the digit three"]
    kwargs = dict(class_labels=[1, 2, 3], difficulty=[0.3, None, 0.9], guidance_scale=2.0, num_inference_steps=4)
    batch = pipe(prompts, seeds=[11, 12, 13], **kwargs).images
    single = pipe(prompts[1:2], seeds=[12], class_labels=[2], difficulty=[None], guidance_scale=2.0,
                  num_inference_steps=4).images
    assert batch.shape == (3, 16, 16, 1) and batch.dtype == np.uint8
    assert np.abs(batch[1].astype(int) - single[0].astype(int)).max() <= 1
    other_seed = pipe(prompts[1:2], seeds=[99], class_labels=[2], difficulty=[None], guidance_scale=2.0,
                      num_inference_steps=4).images
    assert np.abs(other_seed[0].astype(int) - single[0].astype(int)).max() > 10


def test_difficulty_and_guidance_change_the_output():
    pipe = tiny_pipeline(False)
    base = dict(prompt=["a photo of the digit one"] * 2, seeds=[5, 5], class_labels=[1, 1], num_inference_steps=4)
    out = pipe(difficulty=[0.1, 0.9], output_type="latent", **base).images
    assert (out[0] - out[1]).abs().max() > 1e-4  # only s differs (equal inputs agree within 1e-5)
    same = pipe(difficulty=[0.1, 0.1], output_type="latent", **base).images
    assert torch.allclose(same[0], same[1], atol=1e-5)
    cfg = pipe(difficulty=[0.1, 0.1], guidance_scale=3.0, output_type="latent", **base).images
    assert (same - cfg).abs().max() > 1e-3


def test_image_guidance_endpoints_and_spectrum():
    pipe = tiny_pipeline(False)
    torch.manual_seed(1)
    source = torch.rand(4, 1, 16, 16) * 2 - 1
    out = pipe(["a photo of the digit two"] * 4, seeds=[3] * 4, source_images=source,
               guidance=[1.0, 0.75, 0.25, 0.0], num_inference_steps=8, output_type="pt").images
    dist = [(out[i] - source[i]).abs().mean().item() for i in range(4)]
    assert dist[0] == pytest.approx(0.0, abs=1e-6)  # λ = 1 returns the source
    assert dist[1] < dist[2]  # closer to the source at higher λ
    text_only = pipe(["a photo of the digit two"], seeds=[3], num_inference_steps=8, output_type="pt").images
    assert torch.allclose(out[3], text_only[0], atol=1e-5)  # λ = 0 is pure text-to-image
    with pytest.raises(ValueError, match="needs source_images"):
        pipe(["x"], seeds=[0], guidance=[0.5])


@pytest.mark.parametrize("name", ["ddim", "dpm++", "unipc", "euler"])
def test_every_scheduler_samples_finite_images(name):
    pipe = tiny_pipeline(False)
    out = pipe(["a photo of the digit one"], seeds=[0], num_inference_steps=5, scheduler=name, output_type="pt").images
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    assert type(pipe.scheduler).__name__.lower().startswith({"ddim": "ddim", "dpm++": "dpm", "unipc": "unipc",
                                                             "euler": "euler"}[name])


def test_pipeline_round_trip_through_save_pretrained(tmp_path):
    pipe = tiny_pipeline(True)
    kwargs = dict(prompt=["a photo of the digit three"], seeds=[7], class_labels=[3], difficulty=[0.6],
                  guidance_scale=2.0, num_inference_steps=3, output_type="pt")
    before = pipe(**kwargs).images
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(str(tmp_path / "pipe"))
    assert isinstance(loaded.difficulty_encoder, DifficultyEncoder) and loaded.vae is not None
    assert torch.allclose(loaded(**kwargs).images, before, atol=1e-5)


def test_missing_base_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorNotFound, match="without model_index.json"):
        load_pipeline(str(tmp_path / "empty"))
    with pytest.raises(GeneratorNotFound, match="no such local directory"):
        load_pipeline("nobody/no-such-model-here")


def test_diffusion_loss_trains_every_conditioned_part():
    from raysys.generation.training import diffusion_loss, min_snr_weights, training_scheduler

    pipe = tiny_pipeline(False)
    sched = training_scheduler(pipe)
    t = torch.tensor([0, 500, 999])
    w = min_snr_weights(sched, t, gamma=5.0)
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / snr)
    assert w[0] < 1.0 and w[2] == pytest.approx(1.0)  # low noise is down-weighted, high noise kept

    images = torch.rand(8, 1, 16, 16) * 2 - 1
    prompts = ["a photo of the digit one"] * 8
    labels, s = torch.arange(8) % 4, torch.linspace(0, 1, 8)
    parts = [pipe.unet, pipe.text_encoder, pipe.difficulty_encoder]
    params = [p for m in parts for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    g = torch.Generator().manual_seed(0)
    loss = diffusion_loss(pipe, sched, images, prompts, class_labels=labels, difficulty=s,
                          condition_dropout=0.0, generator=g)
    loss.backward()
    for m in parts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()), type(m).__name__

    def fixed_loss():
        return diffusion_loss(pipe, sched, images, prompts, class_labels=labels, difficulty=s,
                              condition_dropout=0.0, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        before = fixed_loss().item()
    for _ in range(30):
        opt.zero_grad()
        diffusion_loss(pipe, sched, images, prompts, class_labels=labels, difficulty=s, generator=g).backward()
        opt.step()
    with torch.no_grad():
        assert fixed_loss().item() < 0.8 * before


def test_pretrain_base_writes_a_loadable_text_to_image_model(tmp_path):
    from raysys.data.images import decode_batch
    from raysys.data.sources import load_builtin_digits
    from raysys.core.config import PretrainConfig
    from raysys.generation.pretrain import pretrain_base

    src = load_builtin_digits()
    images = decode_batch(src.images[:200], 8, 1)
    cfg = PretrainConfig(image_size=8, block_out_channels=[16, 32], cross_attention_levels=[False, True],
                         cross_attention_dim=32, steps=60, batch_size=16, lr=0.003)
    metrics = pretrain_base(images, src.labels[:200], src.class_names, cfg, "a photo of the digit {name}",
                            str(tmp_path / "base"), log=None)
    assert metrics["loss_end"] < 0.8 * metrics["loss_start"]
    assert metrics["prompts"][7] == "a photo of the digit seven"
    pipe = load_pipeline(str(tmp_path / "base"))
    assert pipe.difficulty_encoder is None and pipe.vae is None and pipe.image_size == 8
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("seven").input_ids)[1] == "seven</w>"
    out = pipe(["a photo of the digit seven"] * 2, seeds=[1, 2], num_inference_steps=4).images
    assert out.shape == (2, 8, 8, 1) and out.dtype == np.uint8 and out.std() > 0

    # Streamed (what the stage does: each step's rows read and decoded from the manifest when
    # drawn, the split never held), the same steps see the same images: the same fit.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysys.data.stream import Decode, index_rows, stream_refs

    path = str(tmp_path / "pretrain.parquet")
    pq.write_table(pa.table({"image": src.images[:200], "label": pa.array(src.labels[:200], pa.int32())}), path,
                   row_group_size=64)
    rows, asked = index_rows([path], ["label"]), []
    decode = Decode([path], 8, 1)

    def read(idx):
        asked.append(len(idx))
        return decode(stream_refs(rows, idx))["image"]

    short = replace(cfg, steps=5)
    held = pretrain_base(images, src.labels[:200], src.class_names, short, "a photo of the digit {name}",
                         str(tmp_path / "held"), log=None)
    streamed = pretrain_base(read, rows["label"].to_numpy(), src.class_names, short, "a photo of the digit {name}",
                             str(tmp_path / "streamed"), log=None)
    assert asked == [1] + [16] * 5  # the size check, then one batch per step
    assert streamed["loss_start"] == held["loss_start"] and streamed["loss_end"] == held["loss_end"]

    # pretrain.snr_gamma reaches the loss: min-SNR weights of an x0 loss are min(SNR, γ) <= γ = 1,
    # below 1 on the noisy steps, so the same draws give a smaller first loss
    weighted = pretrain_base(images, src.labels[:200], src.class_names, replace(short, snr_gamma=1.0),
                             "a photo of the digit {name}", str(tmp_path / "weighted"), log=None)
    assert weighted["loss_start"] < 0.9 * held["loss_start"]


def test_encoder_fourier_features_are_configurable_and_round_trip(tmp_path):
    s = torch.linspace(0, 1, 11)
    for frequencies in (0, 2, 8):
        enc = DifficultyEncoder(num_classes=2, cross_attention_dim=8, num_frequencies=frequencies)
        features = enc.fourier(s)
        assert features.shape == (11, 1 + 2 * frequencies)
        assert torch.allclose(features[:, 0], s)
    enc.save_pretrained(tmp_path / "enc")
    assert DifficultyEncoder.from_pretrained(tmp_path / "enc").config.num_frequencies == 8


def test_difficulty_dropout_drops_only_the_difficulty_of_kept_prompts():
    from raysys.generation.training import diffusion_loss, training_scheduler

    pipe = tiny_pipeline(False)
    seen = []
    condition = pipe.condition

    def spy(prompts, labels, difficulty):
        seen.append((list(prompts), difficulty.clone()))
        return condition(prompts, labels, difficulty)

    pipe.condition = spy
    n = 400
    images, prompts = torch.zeros(n, 1, 16, 16), ["a photo of the digit one"] * n
    for rate in (0.0, 0.5):
        with torch.no_grad():
            diffusion_loss(pipe, training_scheduler(pipe), images, prompts, class_labels=torch.zeros(n, dtype=torch.long),
                           difficulty=torch.full((n,), 0.4), condition_dropout=0.0, difficulty_dropout=rate,
                           generator=torch.Generator().manual_seed(0))
    (kept0, s0), (kept, s) = seen
    assert kept0 == prompts and kept == prompts and not torch.isnan(s0).any()
    assert 0.4 < torch.isnan(s).float().mean() < 0.6


def test_separate_difficulty_guidance_reduces_to_joint_guidance_and_strengthens_s():
    pipe = tiny_pipeline(False)
    base = dict(prompt=["a photo of the digit one"] * 2, seeds=[5, 5], class_labels=[1, 1], num_inference_steps=4,
                difficulty=[0.1, 0.9], guidance_scale=3.0, output_type="latent")
    joint = pipe(**base).images
    same = pipe(difficulty_guidance_scale=3.0, **base).images
    assert torch.allclose(joint, same, atol=1e-4)
    gaps = [(pipe(difficulty_guidance_scale=w, **base).images.diff(dim=0)).abs().mean().item() for w in (0.0, 3.0, 9.0)]
    assert gaps[0] < 1e-5 < gaps[1] < gaps[2]  # w_d = 0 ignores s; a larger w_d separates s = 0.1 from 0.9 more


@pytest.mark.parametrize("force_upcast", [True, False])
def test_float16_vae_is_upcast_only_when_its_config_says_so(force_upcast):
    pipe = tiny_pipeline(vae=True).to(torch.float16)
    pipe.vae.register_to_config(force_upcast=force_upcast)  # the SDXL VAE's config sets it
    images = pipe.decode_latents(torch.randn(1, 4, 8, 8, dtype=torch.float16))
    assert torch.isfinite(images.float()).all()
    assert pipe.vae.dtype == (torch.float32 if force_upcast else torch.float16)
    assert pipe.unet.dtype == torch.float16  # only the VAE
