"""raysys.models.captioner on the tiny BLIP and BLIP-2 captioners of tests/captioners.py (built here,
nothing downloaded): captions of words, deterministic and independent of the batch, only the text after
the prompt, bounded by max_new_tokens; captioner_problem's answers for good and bad folders."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from raysys.data.images import encode_png
from raysys.data.sources.builtin import builtin_pixels
from raysys.models.captioner import Captioner, captioner_problem
from tests.captioners import WORDS, make_tiny_blip, make_tiny_blip2

KINDS = ["blip", "blip-2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread; two OpenMP threads on a busy 2-core machine wait on
    each other (a batch took 2-3 s instead of 0.03 s while other tests ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """model_type -> folder of a tiny captioner, built once for the module."""
    root = tmp_path_factory.mktemp("captioners")
    return {"blip": make_tiny_blip(root / "blip"), "blip-2": make_tiny_blip2(root / "blip2")}


def _encoded(array: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=image_format)
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits() -> list[bytes]:
    """Six digits as a stage holds them: 28x28 grey MNIST PNGs, one as an RGB JPEG, one 8x8 grey WebP."""
    mnist, _ = builtin_pixels("mnist")
    small, _ = builtin_pixels("digits")
    rgb = np.stack([mnist[4], mnist[4] // 2, 255 - mnist[4]], axis=-1)
    return [encode_png(p) for p in mnist[:4]] + [_encoded(rgb, "JPEG"), _encoded(small[0], "WEBP")]


def _words(caption: str) -> list[str]:
    return caption.split()


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_captioners_load_by_path_and_write_captions_of_words(tiny, digits, kind):
    captioner = Captioner(tiny[kind], max_new_tokens=6)
    captions = captioner(digits)
    assert len(captions) == 6
    for caption in captions:
        assert caption and caption == caption.strip()
        assert set(_words(caption)) <= set(WORDS), caption
        assert len(_words(caption)) == 6  # the tiny models never end early (tests/captioners.py)
    assert len(set(captions)) > 1  # the image changes the caption
    assert captioner.model_type == kind
    assert captioner([]) == []
    assert 10_000 < captioner.parameter_count < 200_000
    assert captioner.parameter_count == sum(p.numel() for p in captioner.model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_captions_are_deterministic_and_do_not_depend_on_the_batch(tiny, digits, kind):
    first = Captioner(tiny[kind], max_new_tokens=8)(digits)
    again = Captioner(tiny[kind], max_new_tokens=8)
    assert again(digits) == first
    assert [again([image])[0] for image in digits] == first
    assert again(digits[3:]) + again(digits[:3]) == first[3:] + first[:3]


@pytest.mark.parametrize("kind", KINDS)
def test_a_prompt_starts_the_text_but_is_not_part_of_the_caption(tiny, digits, kind):
    prompt = "a photo of"
    captioner = Captioner(tiny[kind], prompt=prompt, max_new_tokens=5)
    captions = captioner(digits)
    assert all(caption and not caption.startswith(prompt) for caption in captions)
    assert all(len(_words(caption)) == 5 for caption in captions)
    assert captions != Captioner(tiny[kind], max_new_tokens=5)(digits)  # the prompt steers the text
    # What the model wrote, decoded whole, is the prompt and then the caption.
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in digits]
    inputs = captioner.processor(images=pictures, text=[prompt] * len(pictures), return_tensors="pt")
    with torch.inference_mode():
        output = captioner.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    whole = captioner.processor.batch_decode(output, skip_special_tokens=True)
    assert [text.strip() for text in whole] == [f"{prompt} {caption}" for caption in captions]


@pytest.mark.parametrize("kind", KINDS)
def test_max_new_tokens_bounds_the_caption(tiny, digits, kind):
    long = Captioner(tiny[kind], max_new_tokens=8)(digits)
    short_captioner = Captioner(tiny[kind], max_new_tokens=3)
    short = short_captioner(digits)
    tokenizer = short_captioner.processor.tokenizer
    for caption in short:
        # the tokens as written: GPT-2 style BPE spells a word that follows another with its space
        assert 0 < len(tokenizer(" " + caption, add_special_tokens=False)["input_ids"]) <= 3
    assert short == [" ".join(_words(caption)[:3]) for caption in long]  # greedy: the same first words


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_and_bfloat16_caption_too(tiny, digits, kind):
    beams = Captioner(tiny[kind], max_new_tokens=4, num_beams=3)
    assert beams(digits) == beams(digits)
    assert all(len(_words(c)) == 4 and set(_words(c)) <= set(WORDS) for c in beams(digits))
    half = Captioner(tiny[kind], max_new_tokens=4, dtype="bfloat16")
    assert half.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert half.parameter_count == Captioner(tiny[kind]).parameter_count
    assert all(len(_words(c)) == 4 and set(_words(c)) <= set(WORDS) for c in half(digits))
    with pytest.raises(ValueError, match="float64"):
        Captioner(tiny[kind], dtype="float64")


def test_captioner_problem_accepts_the_tiny_captioners(tiny):
    assert captioner_problem(tiny["blip"]) is None
    assert captioner_problem(tiny["blip-2"]) is None


def test_captioner_problem_names_what_is_wrong(tiny, tmp_path):
    from transformers import CLIPTextConfig

    missing = str(tmp_path / "nowhere" / "blip")
    problem = captioner_problem(missing)
    assert missing in problem and "does not exist" in problem

    clip = tmp_path / "clip"
    CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                   bos_token_id=0, eos_token_id=2).save_pretrained(clip)
    problem = captioner_problem(str(clip))
    assert str(clip) in problem and "'clip_text_model'" in problem and "blip, blip-2" in problem
    with pytest.raises(ValueError, match="clip_text_model"):
        Captioner(str(clip))

    no_config = tmp_path / "empty"
    no_config.mkdir()
    problem = captioner_problem(str(no_config))
    assert str(no_config) in problem and "config" in problem

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny["blip"], no_weights)
    (no_weights / "model.safetensors").unlink()
    problem = captioner_problem(str(no_weights))
    assert str(no_weights) in problem and "no weights" in problem and "model.safetensors" in problem

    no_processor = tmp_path / "no_processor"
    shutil.copytree(tiny["blip-2"], no_processor)
    (no_processor / "processor_config.json").unlink()
    problem = captioner_problem(str(no_processor))
    assert str(no_processor) in problem and "cannot load its processor" in problem

    for kind in KINDS:  # without its files transformers builds an empty tokenizer, and says nothing
        no_tokenizer = tmp_path / f"no_tokenizer_{kind}"
        shutil.copytree(tiny[kind], no_tokenizer)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (no_tokenizer / name).unlink()
        problem = captioner_problem(str(no_tokenizer))
        assert str(no_tokenizer) in problem and "tokenizer has no vocabulary" in problem
