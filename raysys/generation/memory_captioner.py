"""The memory plan of the caption stage: the peak GPU memory of a BLIP / BLIP-2 captioner actor,
predicted from the model's config before any actor starts, and the batch size that fits a GPU.

**Weights** are the model's parameters (counted on the meta device from its config: no weights
are read) times the dtype's size.

**Activations** per image, in the dtype, counted in elements of the tensors one layer holds at
once (inference: no graph, one layer's intermediates live at a time), as in
raysys.generation.memory, times GPU_ACTIVATIONS on a GPU:
- *vision*: the ViT's T tokens (patches + class token): a layer's residual, normed input and
  q, k, v, or its MLP's two hidden tensors, T·(4·H + 2·I); with eager attention (BLIP's) also the
  attention scores and probabilities, 2·heads·T² (scaled-dot-product attention, BLIP-2's, makes
  none); and its output, the image embedding T·H, which the text phase keeps;
- *text* (per beam): the decoder's key / value cache over the whole caption, 2·layers·S·H, S the
  prefix (BLIP-2's query tokens), the prompt and the new tokens; BLIP's decoder also caches the
  keys / values of its cross-attention over the T image tokens, 2·layers·T·H; one layer's
  intermediates of the first forward over the prefix and prompt, P·(4·H + I) + 2·heads·P²; the
  next-token logits, vocabulary-wide in float32.
The peak is the weights plus the larger phase for the batch, plus RUNTIME_BYTES on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raysys.core.config import CaptionsConfig
from raysys.generation.memory import MemoryEstimate, dtype_bytes
from raysys.generation.memory_table import GPU_ACTIVATIONS, GPUS, HEADROOM, RUNTIME_BYTES, GiB


@dataclass
class CaptionerShape:
    """What a captioner's activations scale with, read from its transformers config."""

    parameters: int
    vision_tokens: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    text_layers: int
    text_hidden: int
    text_intermediate: int
    text_heads: int
    vocab: int
    prefix_tokens: int
    """Tokens before the prompt in the language model's input (BLIP-2's query tokens; BLIP: 1, its BOS)."""
    cross_attention: bool
    """Whether the text decoder attends to the image tokens (BLIP) rather than taking a prefix (BLIP-2)."""
    eager_vision_attention: bool
    """Whether the ViT's attention materialises its scores (eager) rather than fusing them (sdpa)."""


def captioner_shape(model: str) -> CaptionerShape:
    """The shape of the captioner `model` (hub id or folder), from its config alone."""
    import torch
    from transformers import AutoConfig

    import transformers
    from raysys.models.captioner import CAPTIONER_CLASSES

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        model = getattr(transformers, CAPTIONER_CLASSES[config.model_type])(config)
    parameters = sum(p.numel() for p in model.parameters())
    attention = model.vision_model.config._attn_implementation or "eager"
    v, t = config.vision_config, config.text_config
    blip2 = config.model_type == "blip-2"
    return CaptionerShape(
        parameters=parameters, vision_tokens=(v.image_size // v.patch_size) ** 2 + 1, vision_hidden=v.hidden_size,
        vision_intermediate=v.intermediate_size, vision_heads=v.num_attention_heads,
        text_layers=t.num_hidden_layers, text_hidden=t.hidden_size,
        text_intermediate=getattr(t, "intermediate_size", None) or getattr(t, "ffn_dim", None) or 4 * t.hidden_size,
        text_heads=t.num_attention_heads, vocab=t.vocab_size,
        prefix_tokens=config.num_query_tokens if blip2 else 1, cross_attention=not blip2,
        eager_vision_attention=attention == "eager")


def predict_captioning(shape: CaptionerShape, batch_size: int, dtype: str = "bf16", prompt_tokens: int = 0,
                       max_new_tokens: int = 30, num_beams: int = 1, gpu: bool = True) -> MemoryEstimate:
    """The predicted peak of captioning `batch_size` images (see the module docstring)."""
    b = dtype_bytes(dtype)
    s = shape
    t_v = s.vision_tokens
    embedding = t_v * s.vision_hidden
    scores = 2 * s.vision_heads * t_v ** 2 if s.eager_vision_attention else 0
    vision = t_v * (4 * s.vision_hidden + 2 * s.vision_intermediate) + scores + embedding
    first = s.prefix_tokens + prompt_tokens
    length = first + max_new_tokens
    cache = 2 * s.text_layers * (length + (t_v if s.cross_attention else 0)) * s.text_hidden
    layer = first * (4 * s.text_hidden + s.text_intermediate) + 2 * s.text_heads * first ** 2
    text = embedding + num_beams * (cache + layer + s.vocab * 4 // b)
    parts = {"vision": int(batch_size * vision * b), "text": int(batch_size * text * b)}
    phase = max(parts, key=parts.get)
    scale = GPU_ACTIVATIONS if gpu else 1.0
    return MemoryEstimate(what=f"captioning batch {batch_size} in {dtype}", weights=s.parameters * b,
                          activations=int(scale * parts[phase]), phase=phase,
                          runtime=RUNTIME_BYTES if gpu else 0, parts=parts)


def _prediction(c: CaptionsConfig, shape: CaptionerShape, batch_size: int) -> MemoryEstimate:
    prompt_tokens = len(c.prompt.split()) * 2 if c.prompt else 0  # about two tokens a word, an upper bound
    return predict_captioning(shape, batch_size, c.dtype, prompt_tokens, c.max_new_tokens, c.num_beams)


def largest_captioning_batch(c: CaptionsConfig, shape: CaptionerShape, memory_bytes: int, limit: int = 1024) -> int:
    """The largest batch whose predicted peak fits in (1 - HEADROOM) of `memory_bytes`; 0 if none does."""
    budget = memory_bytes * (1 - HEADROOM)
    best = 0
    size = 1
    while size <= limit and _prediction(c, shape, size).total <= budget:
        best, size = size, size * 2
    step = best // 2
    while step >= 1:  # best fits, 2·best (or the limit) does not
        if best + step <= limit and _prediction(c, shape, best + step).total <= budget:
            best += step
        step //= 2
    return best


def _memory(c: CaptionsConfig) -> int:
    return int(GPUS[c.gpu] * GiB * min(1.0, c.num_gpus))  # a shared GPU: the actor's share


def captioning_batch_size(c: CaptionsConfig, shape: Optional[CaptionerShape] = None) -> int:
    """captions.batch_size as a number: itself (checked against captions.gpu when one is named), or for
    auto the largest batch the memory plan fits on captions.gpu. Raises ValueError, one line, when it
    does not fit."""
    if c.batch_size != "auto" and not (c.gpu and c.num_gpus > 0):
        return int(c.batch_size)
    shape = shape or captioner_shape(c.model)
    if c.batch_size == "auto":
        best = largest_captioning_batch(c, shape, _memory(c))
        if best == 0:
            raise ValueError(f"captions.batch_size=auto: not even one image fits captions.gpu={c.gpu} "
                             f"({_prediction(c, shape, 1).describe()}); use captions.dtype=bfloat16 or a larger GPU")
        return best
    est = _prediction(c, shape, int(c.batch_size))
    if est.total > _memory(c) * (1 - HEADROOM):
        best = largest_captioning_batch(c, shape, _memory(c))
        raise ValueError(f"captions.batch_size={c.batch_size} needs {est.total / GiB:.1f} GiB predicted on "
                         f"captions.gpu={c.gpu} ({est.describe()}); batch_size <= {best} fits")
    return int(c.batch_size)


def check_captions(c: CaptionsConfig) -> list[str]:
    """Problems of the `captions` section (a CaptionsConfig) that need no file: sizes and pools."""
    problems = []
    if c.max_new_tokens < 1 or c.num_beams < 1:
        problems.append("captions.max_new_tokens and captions.num_beams must be >= 1")
    if c.repetition_penalty <= 0:
        problems.append(f"captions.repetition_penalty must be > 0 (1.0: none), got {c.repetition_penalty}")
    if not c.splits:
        problems.append("captions.splits must name at least one split (e.g. [train])")
    if c.batch_size != "auto" and int(c.batch_size) < 1:
        problems.append("captions.batch_size must be >= 1 or auto")
    if c.batch_size == "auto" and not (c.gpu and c.num_gpus > 0):
        problems.append("captions.batch_size=auto needs captions.gpu (one of " + ", ".join(GPUS) + ") and "
                        "captions.num_gpus > 0: the memory plan sizes the batch for that GPU; else give a number")
    if c.gpu is not None and c.gpu not in GPUS:
        problems.append(f"captions.gpu '{c.gpu}' is not a GPU the memory plan knows ({', '.join(GPUS)})")
    if c.min_actors < 1 or c.max_actors < c.min_actors:
        problems.append("captions needs 1 <= min_actors <= max_actors")
    if c.dtype == "float16" and c.num_gpus <= 0:
        problems.append("captions.dtype=float16 needs GPUs (captions.num_gpus > 0); on CPUs use float32 or bfloat16")
    return problems
