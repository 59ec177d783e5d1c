"""The generation actor's speed options (raysys/generation/speed.py), on a tiny SD-layout pipeline on
the CPU: each leaves the images as they were (rounding aside), and the actor's micro-batches with
threaded encoding give the images of one whole call."""

import numpy as np
import pyarrow as pa
import torch

from raysys.core.config import SamplingConfig, SpeedConfig
from raysys.generation.components import ComponentSpec, build_components
from raysys.generation.difficulty_encoder import DifficultyEncoder
from raysys.generation.finetune import add_lora
from raysys.generation.pipeline import lora_adapter_name
from raysys.generation.speed import (attention_backends, channels_last, fuse_qkv, merge_lora, pad_rows,
                                     prepare_for_gpu)
from raysys.generation.synthesis import GenerateBatch, GeneratorSpec
from tests.unit.test_synthesis import decode, generator_dir, plan_rows  # noqa: F401  (fixture)

WORDS = "a photo of c0 c1 c2 c3".split()


def sd_pipeline(seed: int = 0):
    """A tiny SD-layout pipeline: VAE (with its attention), UNet, CLIP text encoder, difficulty encoder."""
    torch.manual_seed(seed)
    pipe = build_components(ComponentSpec(image_size=32, image_channels=3, vae=True, block_out_channels=[16, 32],
                                          vae_block_out_channels=[16, 32], cross_attention_dim=32,
                                          attention_head_dim=8, vocabulary=WORDS))
    pipe.register_modules(difficulty_encoder=DifficultyEncoder(num_classes=4, cross_attention_dim=32, num_tokens=2,
                                                               hidden_dim=32))
    with torch.no_grad():
        pipe.difficulty_encoder.null_tokens.normal_()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe) -> np.ndarray:
    sources = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return pipe(["a photo of c0", "a photo of c1", "a photo of c2", "a photo of c3"], seeds=[1, 2, 3, 4],
                class_labels=[0, 1, 2, 3], difficulty=[0.2, None, 0.9, 0.5], source_images=sources,
                guidance=[None, 0.5, None, 0.5], guidance_scale=3.0, num_inference_steps=4,
                output_type="pt").images.numpy()


def test_pad_rows_fills_a_batch_with_copies_of_its_last_row():
    rows = pa.table({"sample_id": ["a", "b", "c"], "seed": [1, 2, 3]})
    padded = pad_rows(rows, 5)
    assert padded["sample_id"].to_pylist() == ["a", "b", "c", "c", "c"]
    assert padded["seed"].to_pylist() == [1, 2, 3, 3, 3]
    assert pad_rows(rows, 3) is rows and pad_rows(rows, 2) is rows


def test_fused_qkv_and_channels_last_give_the_same_images():
    pipe = sd_pipeline()
    before = generate(pipe)
    assert set(attention_backends(pipe.unet)) == {"AttnProcessor2_0"}  # SDPA
    fuse_qkv(pipe)
    channels_last(pipe)
    assert set(attention_backends(pipe.unet)) == {"FusedAttnProcessor2_0"}
    convs = [m for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last)
               for c in pipe.vae.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size != (1, 1))
    after = generate(pipe)
    assert np.abs(before - after).max() < 1e-4  # the same images (float32 rounding of the fused matmuls)
    assert np.abs(before).mean() > 0.05


def test_a_lora_adapter_is_merged_into_the_weights_before_fusing():
    pipe = sd_pipeline()
    add_lora(pipe, rank=4, alpha=4.0)
    with torch.no_grad():  # a LoRA that changes the output (lora_B starts at zero)
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    with_lora = generate(pipe)
    assert merge_lora(pipe) is True
    assert lora_adapter_name(pipe.unet) is None
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    merged = generate(pipe)
    assert np.abs(with_lora - merged).max() < 1e-4
    base = sd_pipeline()
    assert np.abs(generate(base) - merged).max() > 1e-3  # the LoRA is in the merged weights
    assert merge_lora(pipe) is False


def test_prepare_for_gpu_leaves_a_cpu_pipeline_as_it_is():
    pipe = sd_pipeline()
    prepare_for_gpu(pipe, SpeedConfig(compile=True))
    assert set(attention_backends(pipe.unet)) == {"AttnProcessor2_0"}
    conv = next(m for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_micro_batches_encoded_on_threads_give_the_images_of_one_call(generator_dir):  # noqa: F811
    rows = plan_rows()
    sampling = SamplingConfig(guidance_scale=2.0, num_inference_steps=3)
    spec = {"difficulty": GeneratorSpec(generator_dir, label="tiny")}
    whole = GenerateBatch(spec, sampling, speed=SpeedConfig(encode_threads=1))(rows)
    split = GenerateBatch(spec, sampling, speed=SpeedConfig(encode_threads=3, micro_batch=3))(rows)
    assert split["sample_id"].to_pylist() == whole["sample_id"].to_pylist()
    assert [decode(b).tobytes() for b in split["image"].to_pylist()] == \
        [decode(b).tobytes() for b in whole["image"].to_pylist()]
    assert len({decode(b).tobytes() for b in split["image"].to_pylist()}) == len(rows)
