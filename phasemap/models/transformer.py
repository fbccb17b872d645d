"""A decoder-only, GPT-style transformer (the `transformer` family): one member.

Token and position embeddings, `depth` pre-LayerNorm blocks (causal self-attention with
`heads` heads through `nn.MultiheadAttention`, then an MLP of width 4 d with the activation,
each on a residual path), a final LayerNorm and the unembedding (untied, or tied to the token
embedding). depth = blocks, width = d_model. Input (N, T) token ids, output (N, T, vocab).

Named so that records read well: `block2.attn.q_proj` (measured as q, k, v and output
projections, `phasemap.measure.attention`), `block2.mlp_in`, `block2.mlp_out`, `unembed`.
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import ACTIVATION_MODULES


class Block(nn.Module):
    def __init__(self, width: int, heads: int, activation: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, 4 * width)
        self.act = ACTIVATION_MODULES[activation]()
        self.mlp_out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp_out(self.act(self.mlp_in(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, vocab: int, block_size: int, depth: int, width: int, heads: int,
                 activation: str = "gelu", tied: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"`width divisible by heads` must hold, but got width={width}, heads={heads}")
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(block_size, width)
        self.depth = depth
        for i in range(1, depth + 1):  # attributes of their own: layer names read `block2.attn.q_proj`
            self.add_module(f"block{i}", Block(width, heads, activation))
        self.ln_f = nn.LayerNorm(width)
        self.unembed = nn.Linear(width, vocab, bias=False)
        if tied:
            self.unembed.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[-1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)  # True: not attended
        for i in range(1, self.depth + 1):
            x = getattr(self, f"block{i}")(x, causal)
        return self.unembed(self.ln_f(x))
