"""The real CLIP tokenizer written offline (`write_clip_tokenizer`) against open_clip's own tokenizer.

open_clip's `SimpleTokenizer` is OpenAI's CLIP tokenizer, read from the same vocabulary file; its
special tokens are named `<start_of_text>` / `<end_of_text>` but have the ids 49406 / 49407.
Expected ids are taken from it here, never hard-coded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
from transformers import AutoTokenizer, CLIPTokenizer

from raysys.generation import tokenizer as clip
from raysys.generation.tokenizer import PAD_ENDOFTEXT, PAD_EXCLAMATION, clip_vocabulary_file, write_clip_tokenizer

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

LONG = (
    "a highly detailed photograph of a red fox sitting in a snowy forest at dawn, soft golden light, "
    "shallow depth of field, 85mm lens, bokeh, trending on artstation, award winning, ultra realistic, "
    "intricate fur texture, frost on the branches, mist in the background, cinematic composition, "
    "sharp focus, volumetric lighting, national geographic, 8k resolution, masterpiece, best quality"
)

# Every category here encodes to the same ids as open_clip.
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",  # plain words
    "A Photo Of THE Digit Seven, DSLR",  # mixed case
    "Hello, world! It's a dog's life; isn't it? (yes) -- 100% [sic] {x} #tag @user",  # punctuation
    "don't can't we'll I'm you're they've he'd",  # the contractions the pattern splits off
    "3.14159 and 2024 and 1,000,000 and 42nd street",  # numbers: one token a digit
    "café naïve résumé Zürich São Paulo Ångström",  # accents (composed)
    "cafe\u0301 with a combining accent",  # decomposed: both normalize to NFC
    "東京の写真, Москва, Ελλάδα",  # other scripts
    "  lots   of\twhitespace\n\nhere  ",  # extra whitespace
    "a cute cat 🐱 in a 🎩, 👍🏽",  # emoji (byte tokens and merged emoji)
    LONG,  # over 77 tokens
]

# Where the two differ, only the text cleaning differs: open_clip runs `ftfy.fix_text` (uncurls
# quotes, expands ligatures, folds fullwidth letters, repairs mojibake, drops control characters),
# `html.unescape` twice and Python's `str.lower` (final sigma -> ς) before encoding;
# transformers' CLIPTokenizer (the `tokenizers` backend, the only one in transformers 5) applies
# NFC, collapses whitespace and lowercases character by character. Encoding open_clip's cleaned
# text with transformers gives open_clip's ids. Stable Diffusion pipelines use transformers.
CLEANED_BY_OPEN_CLIP_ONLY = [
    "&amp; fish &lt;3 &quot;quoted&quot;",  # html entities
    "“curly quotes” and ‘single’",  # curly quotes
    "ﬁne ligature, ｆｕｌｌｗｉｄｔｈ ＡＢＣ",  # ligature, fullwidth
    "Ã©tÃ© mojibake",  # mojibake of "été"
    "ΣΟΦΟΣ final sigma",  # final sigma
    "x\x1cy control character",  # control character
]


def open_clip_ids(simple: object, text: str) -> list[int]:
    return [simple.sot_token_id, *simple.encode(text), simple.eot_token_id]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tokenizer written once per pad convention: {pad token: (folder, returned tokenizer)}."""
    root = tmp_path_factory.mktemp("clip")
    return {pad: (str(root / name), write_clip_tokenizer(str(root / name), pad_token=pad))
            for name, pad in [("sd15", PAD_ENDOFTEXT), ("sd21", PAD_EXCLAMATION)]}


@pytest.fixture(scope="module")
def simple():
    return open_clip_tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def tok(folders):
    return folders[PAD_ENDOFTEXT][1]


def test_vocabulary_file_is_open_clips_found_without_importing_it():
    assert clip_vocabulary_file() == open_clip_tokenizer.default_bpe()
    code = ("import sys; from raysys.generation.tokenizer import clip_vocabulary_file as f; "
            "print(f()); print('open_clip' in sys.modules)")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(clip.__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == [open_clip_tokenizer.default_bpe(), "False"]


def test_vocabulary_file_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(clip.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install open-clip-torch"):
        clip_vocabulary_file()
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])  # installed, file absent
    monkeypatch.setattr(clip.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="pip install open-clip-torch"):
        clip_vocabulary_file()


def test_vocabulary_and_merges_are_open_clips(simple, tok):
    vocab, merges = clip.clip_vocabulary()
    expected = [clip.BOS if t == "<start_of_text>" else clip.EOS if t == "<end_of_text>" else t for t in simple.encoder]
    assert list(vocab) == expected and list(vocab.values()) == list(range(49408))
    assert merges == sorted(simple.bpe_ranks, key=simple.bpe_ranks.get) and len(merges) == 48894
    assert tok.get_vocab() == vocab
    loaded_merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert [tuple(m) for m in loaded_merges] == merges


@pytest.mark.parametrize("pad, pad_id", [(PAD_ENDOFTEXT, 49407), (PAD_EXCLAMATION, 0)])
def test_size_and_special_ids(folders, pad, pad_id):
    tok = folders[pad][1]
    assert len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (49406, 49407, 49407, pad_id)
    assert tok.model_max_length == 77


@pytest.mark.parametrize("text", PROMPTS)
def test_encodes_like_open_clip(tok, simple, text):
    assert tok(text).input_ids == open_clip_ids(simple, text)


@pytest.mark.parametrize("text", CLEANED_BY_OPEN_CLIP_ONLY)
def test_differs_from_open_clip_only_by_text_cleaning(tok, simple, text):
    expected = open_clip_ids(simple, text)
    assert tok(text).input_ids != expected
    assert tok(open_clip_tokenizer._clean_lower(text)).input_ids == expected


def test_special_token_text_is_special_in_transformers_only(tok, simple):
    # OpenAI's CLIP tokenizer matches "<|endoftext|>" typed in a prompt as the special token, as
    # transformers does; open_clip renamed its special tokens, so for it that is plain text.
    text = "a cat <|endoftext|> a dog"
    cat, dog = simple.encode("a cat"), simple.encode("a dog")
    assert tok(text).input_ids == [49406, *cat, 49407, *dog, 49407]
    assert open_clip_ids(simple, text) != tok(text).input_ids


def test_truncation_and_padding_at_77(folders, simple):
    sd15, sd21 = folders[PAD_ENDOFTEXT][1], folders[PAD_EXCLAMATION][1]
    assert len(simple.encode(LONG)) > 75
    kwargs = dict(padding="max_length", truncation=True, max_length=77)  # as SD's pipelines call it
    for tok in (sd15, sd21):
        ids = tok(LONG, **kwargs).input_ids
        assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407  # EOS last, as SD relies on
        assert ids == open_clip_tokenizer.tokenize(LONG)[0].tolist()  # open_clip: first 76, EOS over the last
        assert ids[1:76] == simple.encode(LONG)[:75]
    # the boundary: 75 words of one token fit exactly; a 76th is cut, EOS stays last
    a = simple.encode("a")
    assert len(a) == 1
    fits = sd15(" ".join(["a"] * 75), **kwargs)
    assert fits.input_ids == [49406, *a * 75, 49407] and sum(fits.attention_mask) == 77
    assert sd15(" ".join(["a"] * 76), **kwargs).input_ids == fits.input_ids
    # short prompts: EOS, then the pad id to 77
    short = "a photo of the digit seven"
    body = open_clip_ids(simple, short)
    for tok, pad_id in [(sd15, 49407), (sd21, 0)]:
        enc = tok(short, **kwargs)
        assert enc.input_ids == body + [pad_id] * (77 - len(body))
        assert enc.attention_mask == [1] * len(body) + [0] * (77 - len(body))
    assert sd21(short, **kwargs).input_ids == open_clip_tokenizer.tokenize(short)[0].tolist()  # open_clip pads 0


@pytest.mark.parametrize("pad", [PAD_ENDOFTEXT, PAD_EXCLAMATION])
def test_folder_files_and_reload(folders, pad):
    folder, tok = folders[pad]
    assert sorted(os.listdir(folder)) == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == ""
    merges = lines[1:-1]
    assert len(merges) == 48894 and merges[:3] == ["i n", "t h", "a n"] and all(len(m.split(" ")) == 2 for m in merges)
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        assert json.load(f) == tok.get_vocab()
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>"}
    with open(os.path.join(folder, "special_tokens_map.json"), encoding="utf-8") as f:
        assert json.load(f) == special
    with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
        assert json.load(f) == {"add_prefix_space": False, "do_lower_case": True, "errors": "replace",
                                "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", **special}

    # transformers 5 has one CLIPTokenizer (CLIPTokenizerFast is the same class); load it every way
    import transformers

    loaders = [CLIPTokenizer, AutoTokenizer, getattr(transformers, "CLIPTokenizerFast", CLIPTokenizer)]
    texts = PROMPTS + CLEANED_BY_OPEN_CLIP_ONLY + ["a photo of the digit seven"]
    expected = tok(texts, padding="max_length", truncation=True, max_length=77).input_ids
    for loader in loaders:
        loaded = loader.from_pretrained(folder)
        assert len(loaded) == 49408 and loaded.pad_token_id == tok.pad_token_id
        assert loaded(texts, padding="max_length", truncation=True, max_length=77).input_ids == expected


def test_pad_token_must_be_a_clip_token(tmp_path):
    with pytest.raises(ValueError, match="not a CLIP token"):
        write_clip_tokenizer(str(tmp_path / "tok"), pad_token="<pad>")
