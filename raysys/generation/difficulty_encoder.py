"""The difficulty encoder of Wang et al. (arXiv 2411.18109): [class embedding ⊕ s] -> k tokens.

An MLP maps a learned class embedding concatenated with Fourier features of the difficulty
s in [0, 1] to `num_tokens` vectors of the text encoder's width. The pipeline appends them to
the text embeddings that feed the UNet's cross-attention.

For classifier-free guidance the encoder also owns `null_tokens`: learned tokens that stand
for "no difficulty condition". Training drops the condition (prompt -> "", difficulty tokens
-> null tokens) with a small probability; at sampling time the unconditional branch is the
negative prompt followed by the null tokens, so the guidance scale amplifies text and
difficulty together.

`use_class=False` drops the class input (the paper's ablation): tokens depend on s alone.
A diffusers ModelMixin, so `save_pretrained` / `from_pretrained` write and read
`config.json` + `diffusion_pytorch_model.safetensors`.
"""

from __future__ import annotations

import math

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn


class DifficultyEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        num_classes: int,
        cross_attention_dim: int,
        num_tokens: int = 4,
        class_embed_dim: int = 64,
        num_frequencies: int = 2,
        hidden_dim: int = 256,
        use_class: bool = True,
    ):
        """
        Args:
            num_classes: classes the class embedding covers (labels 0..num_classes-1).
            cross_attention_dim: width of the text encoder's hidden states (the tokens' width).
            num_tokens: k, the number of difficulty tokens appended to the text tokens.
            class_embed_dim: width of the learned class embedding.
            num_frequencies: Fourier features of s: sin/cos(2^j * pi * s) for j < num_frequencies,
                plus s itself. Few (2) keep the tokens smooth in s: the train set measures s
                sparsely, and high frequencies let the encoder memorise those values instead
                of ordering between them.
            hidden_dim: width of the MLP's hidden layer.
            use_class: False drops the class input (tokens depend on s only).
        """
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes, class_embed_dim) if use_class else None
        in_dim = (class_embed_dim if use_class else 0) + 1 + 2 * num_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, num_tokens * cross_attention_dim),
        )
        self.null_tokens = nn.Parameter(torch.zeros(num_tokens, cross_attention_dim))
        self.register_buffer(
            "frequencies", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False
        )

    def fourier(self, s: torch.Tensor) -> torch.Tensor:
        angles = s[:, None] * self.frequencies[None, :]
        return torch.cat([s[:, None], torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, class_labels: torch.Tensor, difficulty: torch.Tensor) -> torch.Tensor:
        """class_labels (B,) int, difficulty (B,) in [0, 1] -> tokens (B, num_tokens, dim)."""
        s = difficulty.to(self.null_tokens.dtype).clamp(0.0, 1.0)
        features = [self.fourier(s)]
        if self.class_embedding is not None:
            features.insert(0, self.class_embedding(class_labels.long()))
        out = self.mlp(torch.cat(features, dim=1))
        return out.view(len(s), self.config.num_tokens, self.config.cross_attention_dim)

    def null(self, batch_size: int) -> torch.Tensor:
        """The 'no difficulty condition' tokens, (B, num_tokens, dim)."""
        return self.null_tokens[None].expand(batch_size, -1, -1)

    def tokens(self, class_labels: torch.Tensor, difficulty: torch.Tensor, has_difficulty: torch.Tensor) -> torch.Tensor:
        """Per row: encoder tokens where has_difficulty, else the null tokens."""
        cond = self(class_labels, difficulty.nan_to_num(0.0))
        return torch.where(has_difficulty[:, None, None], cond, self.null(len(cond)))
