"""Prompts: `generator.prompt_template` filled per image, and what the text encoder makes of them.

The template is a format string with two fields: `{name}`, the class name (required), and
`{caption}`, what the image shows (optional; Real-Fake's prompt is `photo of {name}, {caption},
best quality`). `fill_prompt` fills it; where a row has no caption, the empty field and the comma
it leaves are dropped, so the prompt reads as a class prompt.

The text encoder conditions the UNet on the first `model_max_length` tokens of a prompt (77 for
CLIP) and cuts the rest; a long caption can push the end of a prompt out of that window.
`cut_prompts` counts the prompts that happens to, with the tokenizer `prompt_tokenizer` loads.
"""

from __future__ import annotations

import functools
import json
import os
import string
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

FIELDS = ("name", "caption")
"""The fields a prompt template may use: the class name and the image's caption."""


def _placeholders(template: str) -> list[str]:
    """The fields `template.format(...)` fills, those in format specs (`{name:{width}}`) included."""
    out = []
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is not None:
            out += [field, *_placeholders(spec or "")]
    return out


@functools.lru_cache(maxsize=64)
def uses_caption(template: str) -> bool:
    """Whether the prompt template has a `{caption}` field."""
    return "caption" in _placeholders(template)


def template_words(template: str) -> list[str]:
    """The words of the template's own text, its fields left out."""
    return " ".join(literal for literal, _, _, _ in string.Formatter().parse(template)).split()


def fill_prompt(template: str, name: str, caption: Optional[str] = None) -> str:
    """The prompt of one image: `template` with `{name}` the class name and `{caption}` the caption.

    Without a caption (None, empty or blank) a template that uses `{caption}` loses the empty
    field and the separator it leaves: the text is split on commas and its non-empty parts are
    joined again with ", " ("photo of {name}, {caption}, best quality" -> "photo of seven, best
    quality"). With a caption, or for a template without `{caption}`, it is the text as formatted."""
    has_caption = bool(caption and caption.strip())
    text = template.format(name=name, caption=caption if has_caption else "")
    if has_caption or not uses_caption(template):
        return text
    return ", ".join(part.strip() for part in text.split(",") if part.strip())


def check_prompt_template(template: str) -> list[str]:
    """Problems of `generator.prompt_template`: it is filled with the class name, as `{name}`, and
    optionally the image's caption, as `{caption}`."""
    literal = "a literal brace is written {{ or }}"
    try:
        fields = _placeholders(template)
    except ValueError as exc:
        return [f"generator.prompt_template '{template}' is not a format string ({exc}); {literal}"]
    others = sorted({f for f in fields if f not in FIELDS})
    if others:
        shown = ", ".join("{" + f + "}" for f in others)
        return [f"generator.prompt_template '{template}' has placeholder(s) {shown}: only {{name}} (the class name) "
                f"and {{caption}} (the image's caption) are filled in; {literal}"]
    if "name" not in fields:
        return [f"generator.prompt_template must contain {{name}} (the class name), got '{template}'"]
    return []


def cut_prompts(tokenizer: "CLIPTokenizer", prompts: Iterable[str]) -> int:
    """How many of `prompts` have more tokens (special tokens included) than the tokenizer's
    `model_max_length`, the text encoder's window: the encoder sees them cut. A prompt counts
    as often as it occurs; each distinct text is tokenized once."""
    counts = Counter(prompts)
    if not counts:
        return 0
    texts = list(counts)
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False).input_ids]
    return sum(counts[text] for text, n in zip(texts, lengths) if n > tokenizer.model_max_length)


def _model_index(base: str) -> dict:
    """The model_index.json of a pipeline folder or hub id (from the hub's cache if it is there)."""
    if os.path.isdir(base):
        path = os.path.join(base, "model_index.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(base, "model_index.json")
    with open(path) as f:
        return json.load(f)


def prompt_tokenizer(base: str) -> "CLIPTokenizer":
    """The tokenizer whose tokens condition the UNet of the pipeline `base` (a folder or hub id):
    `tokenizer`, or `tokenizer_2` for a layout without `text_encoder` (the SDXL refiner), as
    `DifficultyDiffusionPipeline.encode_text` chooses."""
    from transformers import CLIPTokenizer

    text_encoder = _model_index(base).get("text_encoder") or [None]
    subfolder = "tokenizer" if text_encoder[0] is not None else "tokenizer_2"
    return CLIPTokenizer.from_pretrained(base, subfolder=subfolder)
