"""The caption stage's memory plan (raysys.generation.memory_captioner): the predicted activations of a
BLIP and a BLIP-2, one shaped so that the ViT sets the peak and one so that the text decoder does,
against the live tensor bytes measured while they caption (CPU, float32); the batch it fits a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysys.core.config import CaptionsConfig
from raysys.data.images import encode_png
from raysys.generation.memory import MemoryEstimate
from raysys.generation.memory_captioner import (captioner_shape, captioning_batch_size, check_captions,
                                                largest_captioning_batch, predict_captioning)
from raysys.generation.memory_profiler import measure
from raysys.generation.memory_table import GPUS, GiB
from raysys.models.captioner import Captioner
from tests.captioners import make_tiny_blip, make_tiny_blip2

SHAPES = {"vision": dict(image_size=96, patch_size=8, vision_hidden=128),  # 145 image tokens, a short caption
          "text": dict(image_size=32, patch_size=16, text_hidden=256, layers=4)}  # 5 image tokens, a wide decoder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], str]:
    root = tmp_path_factory.mktemp("captioner-memory")
    return {(kind, phase): make(root / f"{kind}-{phase}", **sizes)
            for kind, make in (("blip", make_tiny_blip), ("blip-2", make_tiny_blip2)) for phase, sizes in SHAPES.items()}


@pytest.mark.parametrize("kind", ["blip", "blip-2"])
@pytest.mark.parametrize("phase", ["vision", "text"])
def test_predicted_activations_are_within_a_fifth_of_the_measured(models, kind, phase):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = models[(kind, phase)]
        shape = captioner_shape(folder)
        captioner = Captioner(folder, max_new_tokens=40, num_beams=3)
        assert shape.parameters == captioner.parameter_count  # counted on the meta device, from the config
        images = [encode_png(np.full((28, 28), 40 * i, np.uint8)) for i in range(4)]
        measured = measure(lambda: captioner(images))
    finally:
        torch.set_num_threads(threads)
    predicted = predict_captioning(shape, 4, "fp32", max_new_tokens=40, num_beams=3, gpu=False)
    assert predicted.phase == phase
    assert 0.85 <= predicted.activations / measured <= 1.25, (predicted.describe(), measured)
    assert shape.eager_vision_attention == (kind == "blip")  # BLIP-2's ViT fuses its attention (sdpa)
    one = predict_captioning(shape, 1, "fp32", max_new_tokens=40, num_beams=3, gpu=False)
    assert predicted.activations == pytest.approx(4 * one.activations, rel=1e-6)  # per image
    half = predict_captioning(shape, 4, "bf16", max_new_tokens=40, num_beams=3, gpu=False)
    assert half.weights * 2 == predicted.weights


def _blip2_opt_2_7b(tmp_path) -> str:
    """The config of Salesforce/blip2-opt-2.7b (no weights): ViT-g/14 at 224 px, 32 queries, OPT-2.7b."""
    from transformers import Blip2Config, OPTConfig

    text = OPTConfig(vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
                     word_embed_proj_dim=2560)
    Blip2Config(text_config=text.to_dict(), num_query_tokens=32).save_pretrained(tmp_path)
    return str(tmp_path)


def test_the_batch_that_fits_a_gpu(tmp_path):
    shape = captioner_shape(_blip2_opt_2_7b(tmp_path))
    assert 3.7e9 < shape.parameters < 3.8e9  # BLIP-2 OPT-2.7b's 3.74 B
    c = CaptionsConfig(model="blip2", dtype="bfloat16", batch_size="auto", gpu="A10G", num_gpus=1)
    best = captioning_batch_size(c, shape)
    budget = GPUS["A10G"] * GiB * 0.9
    fits = lambda b: predict_captioning(shape, b, "bfloat16", 0, c.max_new_tokens, c.num_beams).total  # noqa: E731
    assert fits(best) <= budget < fits(best + 1)
    assert largest_captioning_batch(CaptionsConfig(dtype="float32", gpu="A10G"), shape, GPUS["A10G"] * GiB) < best
    with pytest.raises(ValueError, match=f"batch_size <= {best} fits"):
        captioning_batch_size(CaptionsConfig(model="blip2", dtype="bfloat16", batch_size=best + 1, gpu="A10G",
                                             num_gpus=1), shape)
    assert captioning_batch_size(CaptionsConfig(batch_size=best, gpu="A10G", num_gpus=1, dtype="bfloat16"),
                                 shape) == best
    assert captioning_batch_size(CaptionsConfig(batch_size=10_000)) == 10_000  # no GPU named: not checked
    half = captioning_batch_size(CaptionsConfig(dtype="bfloat16", batch_size="auto", gpu="A10G", num_gpus=0.5), shape)
    assert half < best  # a shared GPU: the actor's share
    assert isinstance(predict_captioning(shape, 1), MemoryEstimate)


def test_captions_section_problems():
    assert check_captions(CaptionsConfig(model="m")) == []
    problems = " ".join(check_captions(CaptionsConfig(model="m", max_new_tokens=0, batch_size="auto", gpu="T4",
                                                      min_actors=2, max_actors=1, splits=[], dtype="float16")))
    for needle in ("max_new_tokens", "batch_size=auto needs captions.gpu", "'T4'", "min_actors", "splits",
                   "float16 needs GPUs"):
        assert needle in problems
