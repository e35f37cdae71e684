"""Transformer encoder classifier for windows of daily features. Pure PyTorch: no I/O.

Building blocks first (attention, MLP, block), then the config, then the model. Its parameter
count equals `models.arch_grid.count_parameters` exactly (tested for every grid entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, n_heads, T, head_dim): the layout scaled_dot_product_attention's flash path wants
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.out(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@dataclass(frozen=True)
class ModelConfig:
    num_features: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    dropout: float = 0.1
    max_len: int = 1024
    # Recompute each block's activations in backward: trades ~30% more compute for memory (2B).
    activation_checkpointing: bool = False
    # How the window's hidden states become one vector for the head: "last" takes the last day's
    # (the day the label is about; bench/RESULTS.md "Readout" measured it against "mean", the
    # average over the window's days). Neither adds parameters, so counts do not depend on it.
    readout: Literal["last", "mean"] = "last"


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model) fixed sinusoidal encodings: no parameters, so counts are window-free."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    return table


class TransformerClassifier(nn.Module):
    """(B, T, num_features) windows -> (B,) logits of the binary event."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.num_features, config.d_model)
        self.register_buffer("positions", sinusoidal_positions(config.max_len, config.d_model), persistent=False)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, 1)
        self.apply(self._init_weights)
        self._scale_residual_projections()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # meta tensors (counting the large grids) have no values to set; skipping saves ~4 ms a call
        if isinstance(module, nn.Linear) and not module.weight.is_meta:
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)

    def _scale_residual_projections(self) -> None:
        """GPT-2's init: the two projections that write into the residual stream (attention out,
        MLP fc2) get std 0.02/sqrt(2 n_layers). Each of the 2 n_layers residual branches adds its
        output to the stream, so with a fixed std the stream's variance grows with depth; scaled,
        the 96- to 180-layer grid entries start with the same output scale as a 2-layer one."""
        std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            for proj in (block.attn.out, block.mlp.fc2):
                if not proj.weight.is_meta:
                    nn.init.normal_(proj.weight, mean=0.0, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        if T > self.config.max_len:
            raise ValueError(f"window of {T} days exceeds max_len={self.config.max_len}")
        h = self.input_proj(x) + self.positions[:T].to(x.dtype)  # (B, T, d_model)
        h = self.input_dropout(h)
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        h = self.ln_f(h)  # (B, T, d_model)
        pooled = h[:, -1] if self.config.readout == "last" else h.mean(dim=1)  # (B, d_model)
        return self.head(pooled).squeeze(-1)  # (B,)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
