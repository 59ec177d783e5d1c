"""A small CLIP tokenizer made locally (no download), for the built-in generator and tests.

`make_clip_tokenizer(directory, words)` writes `vocab.json` and `merges.txt` in the byte-level
BPE format of `transformers.CLIPTokenizer`: every byte is a token (so any text encodes), and
merges build each of `words` into a single token, so prompts like "a photo of the digit seven"
become one token per word. `CLIPTokenizer.from_pretrained(directory)` loads it.
"""

from __future__ import annotations

import os

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


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
