"""CLIP tokenizers made locally (no download): a small one for the built-in generator and tests,
and the real one that Stable Diffusion uses, built offline from open_clip's vocabulary file.

`make_clip_tokenizer(directory, words)` makes a byte-level BPE `transformers.CLIPTokenizer`:
every byte is a token (so any text encodes), and merges build each of `words` into a single
token, so prompts like "a photo of the digit seven" become one token per word. It is saved with
`save_pretrained` (transformers 5 writes `tokenizer.json` + `tokenizer_config.json`), and
`CLIPTokenizer.from_pretrained(directory)` loads it.

`write_clip_tokenizer(directory, pad_token)` writes the real CLIP tokenizer (49,408 tokens: 256
byte tokens, the same 256 with `</w>`, 48,894 merges, then `<|startoftext|>` = 49406 and
`<|endoftext|>` = 49407; 77-token prompts) in the file format of the tokenizer folders of the
Stable Diffusion checkpoints: `vocab.json`, `merges.txt`, `tokenizer_config.json`,
`special_tokens_map.json`. The vocabulary comes from `bpe_simple_vocab_16e6.txt.gz`, which the
`open-clip-torch` package ships (`clip_vocabulary_file()`); the vocabulary and merges are built
exactly as open_clip's `SimpleTokenizer` builds them. Their tokenizers differ only in the pad token:
`PAD_ENDOFTEXT` for SD 1.x and SDXL's `tokenizer`, `PAD_EXCLAMATION` for SD 2.x and SDXL's
`tokenizer_2`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# The pad token of the real CLIP tokenizer, the one thing its Stable Diffusion folders differ in.
# Either way the prompt ends with EOS (49407) and the padding follows it.
PAD_ENDOFTEXT = EOS  # id 49407: SD 1.x and SDXL `tokenizer` (OpenAI CLIP ViT-L/14)
PAD_EXCLAMATION = "!"  # id 0: SD 2.x and SDXL `tokenizer_2` (OpenCLIP ViT-H/14, ViT-bigG/14)

CLIP_VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2  # 48,894 merges: 49,408 tokens = 2 x 256 bytes + merges + BOS, EOS


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: each byte mapped to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn `word` (as byte-level chars, last one with </w>) into one token."""
    chars = [bytes_to_unicode()[b] for b in word.encode()]
    chars[-1] += "</w>"
    merges, current = [], chars[0]
    for nxt in chars[1:]:
        merges.append((current, nxt))
        current += nxt
    return merges


def make_clip_tokenizer(directory: str, words: list[str], model_max_length: int = 32) -> CLIPTokenizer:
    os.makedirs(directory, exist_ok=True)
    byte_chars = list(bytes_to_unicode().values())
    vocab: list[str] = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words}):
        for a, b in _merges_for(word):
            if (a, b) not in merges:
                merges.append((a, b))
                if a + b not in vocab:
                    vocab.append(a + b)
    vocab += [BOS, EOS]
    tok = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=list(merges),
        model_max_length=model_max_length,
    )
    tok.save_pretrained(directory)
    return tok


def clip_vocabulary_file() -> str:
    """Path of CLIP's BPE vocabulary file in the installed open_clip package (open_clip not imported:
    importing it loads torch models and more)."""
    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(spec.submodule_search_locations[0], CLIP_VOCABULARY_FILE) if spec else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP's vocabulary file {CLIP_VOCABULARY_FILE} comes with open_clip"
            f" ({'not installed' if spec is None else f'not found at {path}'}): pip install open-clip-torch"
        )
    return path


def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real CLIP vocabulary (token -> id) and merges (in rank order), as open_clip's
    `SimpleTokenizer.__init__` builds them from the vocabulary file (its first line is a header)."""
    with gzip.open(clip_vocabulary_file()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(directory: str, pad_token: str = PAD_ENDOFTEXT, model_max_length: int = 77) -> CLIPTokenizer:
    """Write the real CLIP tokenizer to `directory` and return it, loaded from there.

    The files are those of the Stable Diffusion tokenizer folders (written here rather than by
    `save_pretrained`, which in transformers 5 writes `tokenizer.json` instead of the vocabulary
    and merges): `vocab.json`, `merges.txt` (`#version: 0.2`, then one merge a line, in rank order),
    `tokenizer_config.json` and `special_tokens_map.json`. `pad_token`: `PAD_ENDOFTEXT` (SD 1.x,
    SDXL `tokenizer`) or `PAD_EXCLAMATION` (SD 2.x, SDXL `tokenizer_2`).
    """
    vocab, merges = clip_vocabulary()
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not a CLIP token (SD uses {PAD_ENDOFTEXT!r} or {PAD_EXCLAMATION!r})")
    special_tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    config = {
        "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
        "model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer", **special_tokens,
    }
    os.makedirs(directory, exist_ok=True)
    files = {
        "vocab.json": vocab,
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": config,
        "special_tokens_map.json": special_tokens,
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return CLIPTokenizer.from_pretrained(directory)
