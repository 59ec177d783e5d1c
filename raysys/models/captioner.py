"""Image captioning in plain torch: a BLIP or BLIP-2 model from transformers, loaded once, run greedy.

`Captioner(model)` loads the processor and the model that `CAPTIONER_CLASSES` names for the
checkpoint's `model_type` (a hub id or a local folder, the same code for both) and turns a batch of
encoded images into one caption each:

    captioner = Captioner("Salesforce/blip-image-captioning-base", prompt="a photo of")
    captioner([png_bytes, jpeg_bytes])   # -> ["a dog on a couch", ...] without the prompt

Images are opened as every stage opens them (`raysys.data.images.open_image`: upright, 8 bits, alpha
onto white), then as RGB. Decoding is greedy or beam search, never sampling, so the same images give
the same captions. A caption is only the text the model wrote: both models' `generate` return the
ids they were started from (BLIP: its BOS and the prompt; BLIP-2 with OPT: the image placeholder
tokens, BOS and the prompt) followed by the new ones, and those first ids are cut off before decoding
(`new_tokens`), so a prompt is never repeated in the caption.

`captioner_problem(model)` reads only a checkpoint's config and processor, never its weights, so a
driver can refuse a model that cannot caption before any worker starts.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from raysys.data.images import open_image

CAPTIONER_CLASSES: dict[str, str] = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
}
"""config.model_type -> the transformers class that captions with it."""

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a captioner may be loaded in, by their torch names."""

WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
"""A local checkpoint folder holds at least one of these."""


def _looks_like_path(model: str) -> bool:
    """True when `model` can only be a local path, not a hub id ("name" or "owner/name")."""
    if os.path.isabs(model) or model.startswith((".", "~")):
        return True
    return model.count("/") > 1 or "\\" in model


def _first_line(error: Exception) -> str:
    """The first line of an error's message (transformers' run to several)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unsupported_type(model: str, model_type: Optional[str]) -> str:
    """Why `model`, whose config has `model_type`, is not a captioner, naming the supported types."""
    return (f"captions.model '{model}' is a '{model_type}' model, not a captioner: supported model types are "
            f"{', '.join(sorted(CAPTIONER_CLASSES))}")


def captioner_problem(model: str) -> Optional[str]:
    """One line saying why `model` (a hub id or a local folder) cannot be loaded as a captioner, or None.

    Reads only its config and processor (AutoConfig / AutoProcessor.from_pretrained), never the weights:
    a local path that does not exist; a config that cannot be read (for a hub id on a machine without
    network or cache, the line says how to download it into a folder); a model type that is not in
    `CAPTIONER_CLASSES`; a local folder with none of `WEIGHTS_FILES`; a processor that cannot be loaded,
    lacks an image processor or a tokenizer, or whose tokenizer knows no words (a folder without the
    tokenizer's files). A hub id's weights are not checked (that needs the hub).
    """
    from transformers import AutoConfig, AutoProcessor

    local = os.path.isdir(model)
    if not local and os.path.exists(model):
        return f"captions.model '{model}' is a file: give the folder a captioner was saved into, or a hub id"
    if not local and _looks_like_path(model):
        return f"captions.model '{model}' does not exist: give the folder a captioner was saved into, or a hub id"
    try:
        config = AutoConfig.from_pretrained(model)
    except Exception as e:  # any failure to read it is the answer, in one line
        if local:
            return f"captions.model '{model}': cannot read its config.json ({_first_line(e)})"
        return (f"captions.model '{model}': cannot read its config from the hub or the local cache "
                f"({_first_line(e)}); on a machine without network, download it first "
                f"(`huggingface-cli download {model} --local-dir DIR`, or from_pretrained(...).save_pretrained(DIR) "
                f"for model and processor) and point captions.model at DIR")
    model_type = getattr(config, "model_type", None)
    if model_type not in CAPTIONER_CLASSES:
        return _unsupported_type(model, model_type)
    if local and not any(os.path.exists(os.path.join(model, name)) for name in WEIGHTS_FILES):
        return (f"captions.model '{model}' holds no weights (none of {', '.join(WEIGHTS_FILES)}): "
                f"save the model into it with save_pretrained")
    try:
        processor = AutoProcessor.from_pretrained(model)
    except Exception as e:  # as for the config
        return (f"captions.model '{model}': cannot load its processor ({_first_line(e)}); "
                f"save the processor into it with save_pretrained")
    missing = [name for name in ("image_processor", "tokenizer") if getattr(processor, name, None) is None]
    if missing:
        return (f"captions.model '{model}': its processor has no {' and no '.join(missing)}; "
                f"save the model's processor (e.g. BlipProcessor) into it with save_pretrained")
    tokenizer = processor.tokenizer
    ids = tokenizer("a photo", add_special_tokens=False)["input_ids"]
    if all(i == tokenizer.unk_token_id for i in ids):  # no tokenizer files: transformers builds an empty one
        return (f"captions.model '{model}': its tokenizer has no vocabulary (it encodes 'a photo' as {ids}); "
                f"save the processor, tokenizer included, into it with save_pretrained")
    return None


def decoder_prefix(model_type: str, config, input_ids: Optional[torch.Tensor], batch: int) -> torch.Tensor:
    """The ids each row of `generate`'s output starts with, for a batch of `batch` images prompted with
    `input_ids` (the processor's; None without a prompt), as transformers' generate builds them:
    BLIP: the prompt's ids without the closing [SEP], the first ([CLS]) made the decoder's BOS, or BOS
    alone; BLIP-2: the processor's ids (image placeholders, BOS, prompt), or placeholders and BOS."""
    if model_type == "blip":
        bos = config.text_config.bos_token_id
        if input_ids is None:
            return torch.full((batch, 1), bos, dtype=torch.long)
        prefix = input_ids[:, :-1].clone()
        prefix[:, 0] = bos
        return prefix
    if input_ids is not None:
        return input_ids
    start = [config.image_token_index] * config.num_query_tokens + [config.text_config.bos_token_id]
    return torch.tensor([start], dtype=torch.long).repeat(batch, 1)


def new_tokens(output: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """`output` without its first `prefix.shape[1]` ids when every row starts with `prefix`; else all of it
    (a model that returns only the new ids: an encoder-decoder language model, say)."""
    n = prefix.shape[1]
    if output.shape[1] >= n and torch.equal(output[:, :n].cpu(), prefix.cpu()):
        return output[:, n:]
    return output


class Captioner:
    """A BLIP or BLIP-2 captioner, loaded once, that writes one caption per encoded image."""

    def __init__(self, model: str, prompt: Optional[str] = None, max_new_tokens: int = 30, num_beams: int = 1,
                 repetition_penalty: float = 1.0, dtype: str = "float32", device: str = "cpu"):
        """Load the processor and the model `model` (hub id or local folder) in `dtype` (a `DTYPES` name) on
        `device`. `prompt` starts every caption (and is not part of it); greedy search when num_beams is 1."""
        import transformers
        from transformers import AutoConfig, AutoProcessor

        if dtype not in DTYPES:
            raise ValueError(f"captioner dtype '{dtype}' is not one of {', '.join(DTYPES)}")
        config = AutoConfig.from_pretrained(model)
        if config.model_type not in CAPTIONER_CLASSES:
            raise ValueError(_unsupported_type(model, config.model_type))
        self.model_type: str = config.model_type
        self.prompt = prompt or None
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.repetition_penalty = repetition_penalty
        self.dtype = DTYPES[dtype]
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(model)
        if self.model_type == "blip-2" and getattr(self.processor, "num_query_tokens", None) is None:
            self.processor.num_query_tokens = config.num_query_tokens  # older checkpoints: prompts need it
        model_class = getattr(transformers, CAPTIONER_CLASSES[self.model_type])
        self.model = model_class.from_pretrained(model, dtype=self.dtype).eval().to(self.device)

    @property
    def parameter_count(self) -> int:
        """Number of parameters of the model (all of them, every tower)."""
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self, images: list[bytes]) -> list[str]:
        """Encoded images (PNG, JPEG, WebP, ...; grey or colour, any size) -> one caption each: only the text
        the model wrote after the prompt, without special tokens or surrounding whitespace."""
        if not images:
            return []
        pictures = [open_image(data).convert("RGB") for data in images]
        text = [self.prompt] * len(pictures) if self.prompt else None
        inputs = self.processor(images=pictures, text=text, return_tensors="pt")
        input_ids = inputs.get("input_ids")
        prefix = decoder_prefix(self.model_type, self.model.config, input_ids, len(pictures))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                         repetition_penalty=self.repetition_penalty, do_sample=False)
        captions = self.processor.batch_decode(new_tokens(output, prefix), skip_special_tokens=True)
        return [caption.strip() for caption in captions]
