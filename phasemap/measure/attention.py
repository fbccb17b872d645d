"""`nn.MultiheadAttention` with its projections as modules, so `measure` can see them.

`nn.MultiheadAttention` applies its q, k, v projections (one fused `in_proj_weight`, or three
separate weights when key and value dimensions differ) and its `out_proj` functionally: no
forward hook ever fires on them. While `decomposed(model)` is active, every such module
computes the same attention step by step, calling each projection as a module: `q_proj`,
`k_proj`, `v_proj` (the slices of the fused weight, views that share its storage and its
gradient) and its own `out_proj`. Tokens count as samples: each (sequence, position) pair is
one row of h_a and h_b (SCIENCE.md, Transformers).

Modules built with `add_bias_kv` or `add_zero_attn` are left as they are (their extra key and
value rows are not a projection of any input): `unsupported` says why.
"""

from __future__ import annotations

import contextlib
import math
import types

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """One of q, k, v: rows `part` of a MultiheadAttention's input projection, as a linear map.

    Holds no parameters of its own: `weight` and `bias` are views of the owner's, taken on
    every access, so they are the tensors the owner trains.
    """

    def __init__(self, owner: nn.MultiheadAttention, part: int):
        super().__init__()
        self._owner = [owner]  # a list: not registered as a submodule (no cycle in named_modules)
        self.part = part
        E = owner.embed_dim
        self.in_features = (owner.embed_dim, owner.kdim, owner.vdim)[part]
        self.out_features = E
        self.heads = owner.num_heads  # h_b's columns are the heads' slices, E // heads each

    @property
    def weight(self) -> torch.Tensor:
        mha = self._owner[0]
        if mha._qkv_same_embed_dim:
            E = mha.embed_dim
            return mha.in_proj_weight[self.part * E:(self.part + 1) * E]
        return (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[self.part]

    @property
    def parameter(self) -> nn.Parameter:
        """The trained parameter the weight is (part of)."""
        mha = self._owner[0]
        if mha._qkv_same_embed_dim:
            return mha.in_proj_weight
        return (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[self.part]

    @property
    def bias(self) -> torch.Tensor | None:
        mha = self._owner[0]
        if mha.in_proj_bias is None:
            return None
        E = mha.embed_dim
        return mha.in_proj_bias[self.part * E:(self.part + 1) * E]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def unsupported(mha: nn.MultiheadAttention) -> str:
    """Why `decomposed` leaves this module as it is ('' when it does not)."""
    if mha.bias_k is not None:
        return "add_bias_kv=True is not decomposed"
    if mha.add_zero_attn:
        return "add_zero_attn=True is not decomposed"
    return ""


def projections(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, projection, its MultiheadAttention) for every q, k, v projection in `model`
    that `decomposed` makes visible, named `<attention>.q_proj` and so on."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and not unsupported(m):
            for part, label in enumerate(("q_proj", "k_proj", "v_proj")):
                found.append((f"{name}.{label}" if name else label, Projection(m, part), m))
    return found


@contextlib.contextmanager
def decomposed(model: nn.Module, found: list[tuple[str, nn.Module, nn.Module]]):
    """Within the block, the attention modules of `found` (from `projections(model)`) run
    step by step through their projection modules; their forward is restored after."""
    by_owner: dict[nn.MultiheadAttention, list[Projection]] = {}
    for _, proj, mha in found:
        by_owner.setdefault(mha, []).append(proj)
    patched = []
    try:
        for mha, (q, k, v) in by_owner.items():
            mha.forward = types.MethodType(_stepwise_forward(q, k, v), mha)
            patched.append(mha)
        yield
    finally:
        for mha in patched:
            del mha.forward  # back to the class's forward


def _stepwise_forward(q_proj: Projection, k_proj: Projection, v_proj: Projection):
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        # is_causal is only a hint in nn.MultiheadAttention: attn_mask holds the causal mask
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: is_causal=True needs attn_mask (as in torch)")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, N, E = query.shape
        S, H = key.shape[0], self.num_heads
        hd = E // H
        q = q_proj(query).reshape(L, N * H, hd).transpose(0, 1)  # (N*H, L, hd)
        k = k_proj(key).reshape(S, N * H, hd).transpose(0, 1)
        v = v_proj(value).reshape(S, N * H, hd).transpose(0, 1)
        mask = _float_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)  # (1, L, S)
        padding = _float_mask(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.reshape(N, 1, 1, S).expand(N, H, 1, S).reshape(N * H, 1, S)
            mask = padding if mask is None else mask + padding
        scores = (q / math.sqrt(hd)) @ k.transpose(1, 2)  # (N*H, L, S)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout, training=self.training)
        out = (weights @ v).transpose(0, 1).reshape(L, N, E)
        out = self.out_proj(out)  # a module call: its hook fires
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.reshape(N, H, L, S)
        weights = weights.mean(1) if average_attn_weights else weights
        return out, (weights.squeeze(0) if not batched else weights)

    return forward


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as an additive float mask; float masks as they are."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)
