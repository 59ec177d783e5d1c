"""Tiny captioners for tests, built here without downloading anything.

`make_tiny_blip(directory)` and `make_tiny_blip2(directory)` save a BLIP and a BLIP-2 (OPT) captioner,
model and processor, into `directory` as `save_pretrained` lays them out on the hub, so that
`raysys.models.captioner.Captioner(directory)` loads them by the same code a hub id takes. They are
sized as transformers' own model testers size them (hidden 32, 2 layers, 4 heads, 30 px images in
2 px patches): about 50k and 70k parameters, 0.2 and 0.3 MB on disk, built in a tenth of a second
(once transformers' model modules are imported: ~2.5 s the first time).

Their tokenizers are built here too: a WordPiece (BERT) vocabulary of whole words for BLIP, a
byte-level BPE (GPT-2/OPT) one for BLIP-2 whose merges spell each word with its leading space
("Ġdigit"). The weights are random (torch.manual_seed(0): the same model every time), drawn wider
than the library's default (std 0.5, not 0.02) so that the image visibly changes the caption (BLIP-2's
query tokens too, which the library starts at 0), and every token embedding but those of the words
is zero: the output head is tied to the embeddings, so those tokens score exactly 0 and greedy search
writes words, never special tokens, word pieces or end-of-text (each caption is max_new_tokens words).
"""

from __future__ import annotations

import torch

WORDS = ("a photo of the digit zero one two three four five six seven eight nine dark light thin thick "
         "blurry small large handwritten number white black on background an image picture with bright "
         "faint bold grey shape stroke").split()
"""The words the tiny captioners write."""

_INIT_STD = 0.5
_IMAGE_SIZE = 30


def _image_processor(size: int = _IMAGE_SIZE):
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": size, "width": size})


def _mlp(hidden: int) -> int:
    """An MLP's width for a layer of `hidden`: 37 for the tiny 32 (as transformers' tests size them), else 4x."""
    return 37 if hidden == 32 else 4 * hidden


def _keep_only_rows(embeddings: torch.nn.Embedding, token_ids: list[int]) -> None:
    """Zero every row of `embeddings` but those of `token_ids` (see the module docstring)."""
    keep = torch.zeros(embeddings.num_embeddings, dtype=torch.bool)
    keep[token_ids] = True
    with torch.no_grad():
        embeddings.weight[~keep] = 0.0


def make_tiny_blip(directory, image_size: int = _IMAGE_SIZE, patch_size: int = 2, vision_hidden: int = 32,
                   text_hidden: int = 32, layers: int = 2, heads: int = 4) -> str:
    """Save a tiny random BLIP captioner (BlipForConditionalGeneration, a BERT WordPiece tokenizer of
    `WORDS`) into `directory`; return its path. The sizes are for the memory plan's tests; MLPs are
    4x wider than their layer."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor, BlipTextConfig,
                              BlipVisionConfig)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]  # [DEC]: BLIP's decoder BOS
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    vision = BlipVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                              intermediate_size=_mlp(vision_hidden), num_hidden_layers=layers, num_attention_heads=heads,
                              projection_dim=32, initializer_range=_INIT_STD)
    text = BlipTextConfig(vocab_size=len(vocab), hidden_size=text_hidden, encoder_hidden_size=vision_hidden,
                          intermediate_size=_mlp(text_hidden), projection_dim=32, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=128,
                          initializer_range=_INIT_STD, bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"],
                          eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"])
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32,
                        image_text_hidden_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    _keep_only_rows(model.text_decoder.get_input_embeddings(), [vocab[w] for w in WORDS])
    model.save_pretrained(directory)
    BlipProcessor(_image_processor(image_size), tokenizer).save_pretrained(directory)
    return str(directory)


def _byte_level_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a GPT-2 style tokenizer: OPT's special tokens at OPT's ids, the 256 byte
    characters, and merges that join "Ġ" + each word (Ġ: the byte-level space) letter by letter."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    merges = []
    for word in WORDS:
        piece = "\u0120"
        for char in word:
            if (piece, char) not in merges:
                merges.append((piece, char))
            piece += char
            vocab.setdefault(piece, len(vocab))
    return vocab, merges


def make_tiny_blip2(directory, image_size: int = _IMAGE_SIZE, patch_size: int = 2, vision_hidden: int = 32,
                    text_hidden: int = 32, layers: int = 2, heads: int = 4) -> str:
    """Save a tiny random BLIP-2 captioner (Blip2ForConditionalGeneration with a tiny Q-Former and OPT,
    4 query tokens, a byte-level BPE tokenizer of `WORDS`) into `directory`; return its path. The
    sizes are for the memory plan's tests; MLPs are 4x wider than their layer."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                              Blip2VisionConfig, GPT2Tokenizer, OPTConfig)

    vocab, merges = _byte_level_bpe()
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                              unk_token="<unk>", add_bos_token=True)  # as OPT's: "</s>" first
    num_query_tokens = 4
    processor = Blip2Processor(_image_processor(image_size), tokenizer, num_query_tokens=num_query_tokens)  # adds <image>
    vision = Blip2VisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                               intermediate_size=_mlp(vision_hidden), num_hidden_layers=layers, num_attention_heads=heads,
                               initializer_range=_INIT_STD)
    qformer = Blip2QFormerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, encoder_hidden_size=vision_hidden, max_position_embeddings=128,
                                 initializer_range=_INIT_STD)
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, ffn_dim=_mlp(text_hidden), word_embed_proj_dim=text_hidden,
                     max_position_embeddings=128, init_std=_INIT_STD,
                     bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=num_query_tokens, initializer_range=_INIT_STD,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # at 0 (the library's start) every query attends alike: to the image's mean
        model.query_tokens.normal_(std=1.0)
    _keep_only_rows(model.get_input_embeddings(), [vocab["\u0120" + w] for w in WORDS])
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)
