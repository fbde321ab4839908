"""One transformer encoder layer, written out op by op.

Not `nn.TransformerEncoderLayer`: in eval mode that module takes a fused "fast path"
(`torch._transformer_encoder_layer_fwd`) that tracers see as one opaque call. Here every step is
a plain op a frontend can map: linear, reshape, transpose, matmul, scale, softmax, layer norm,
GELU, dropout (the identity at inference).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """softmax(Q Kᵀ / √d_head) V per head, with separate q/k/v/out linear projections.

    Heads are split with `unflatten` and merged with `flatten` on the channel dim, so the model
    never reads a tensor's shape at run time (no symbolic sizes for a tracer to resolve).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, S, D) → (N, H, S, D/H)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(weights, v).transpose(1, 2).flatten(2)
        return self.out_proj(context)


class TransformerLayer(nn.Module):
    """Pre-LayerNorm encoder layer: x + MHSA(LN(x)), then x + MLP(LN(x)).

    d_model 64, 4 heads of 16, MLP 64 → 128 → GELU → 64, dropout 0.1 (identity in eval).
    Input (N, 16, 64), output (N, 16, 64). Parameters: 33,472 (layer norms 256, attention
    16,640, MLP 16,576). Weights random, layer-norm affine parameters randomized (seeded).
    """

    def __init__(self, d_model: int = 64, num_heads: int = 4, d_hidden: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, num_heads, dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(d_hidden, d_model)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.attn(self.norm1(x)))
        return x + self.dropout2(self.fc2(self.gelu(self.fc1(self.norm2(x)))))
