"""Collecting each layer's h_a, h_b, g_b and W from a model, then measuring them:

- `probe_stacked` for the stacked MLP (one forward, one backward for all K members, or for
  chunks of members that fit in a CPU's cache),
- `probe_packed` for a pack of any other architecture (`PackedModel.functional()`): the same
  rows and values as `measure` on each member, captured for all members under
  `torch.func.vmap` on a GPU (member after member on a CPU) and measured batched over them,
- `measure` for any `torch.nn.Module`, by hooks on its `nn.Linear` layers and on the q, k, v
  and output projections of `nn.MultiheadAttention` (run step by step: `attention`).

For a linear layer h_b = W h_a + b, the per-sample gradient g_a = -dl/dh_a through the layer
is W^T g_b: `measure` computes it so, `probe_stacked` takes it from the backward pass, which
computes it for every layer but the first anyway.
"""

from __future__ import annotations

import functools
import logging
import math

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap

from . import attention
from .columns import METRIC_COLUMNS
from .layers import (
    NULL_SAMPLES, Stationarity, _layer_matrices, _layer_spectra, _spectral_metrics, head_baselines,
    _stationarity, layer_metrics, output_directions, output_gradient_grams,
)
from .maths import neural_collapse

log = logging.getLogger(__name__)

MAX_SAMPLES = 32768  # samples per layer (conv: images x positions) above which measure subsamples


def _linear_maps(model: nn.Module):
    """(attention projections, [(name, module)] of every linear map in module order: an
    attention's q, k, v before its out_proj)."""
    qkv = attention.projections(model)
    maps = []
    for name, m in model.named_modules():
        maps += [(n, p) for n, p, owner in qkv if owner is m]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            maps.append((name, m))
    return qkv, maps


def describe_layers(model: nn.Module, per_head: bool = False) -> list[tuple[str, str, int, int, int, int | None]]:
    """(name, kind, dim_in, dim_out, layer, head) of every row `measure` reports, in its order,
    without running the model."""
    rows = []
    for index, (name, m) in enumerate(_linear_maps(model)[1], start=1):
        kind, (d_in, d_out) = layer_kind(model, name, m), _dims(m)
        rows.append((name, kind, d_in, d_out, index, None))
        for h in _heads(m) if per_head else ():
            rows.append((f"{name}.head{h + 1}", f"{kind}.head", d_in, d_out // m.heads, index, h + 1))
        heads = _out_heads(model, name, m) if per_head else 0
        for h in range(heads):
            rows.append((_head_out_name(name, h), HEAD_OUT, d_in, d_in // heads, index, h + 1))
    return rows


HEAD_OUT = "attention.head_out"
# A head's output o_h (its d_h columns of out_proj's input) has no weight of its own: its row
# takes W = W_o[:, head's columns]^T, so that Z_b = W_o[:, s]^T W_o[:, s] is the Gram of the
# weights that read o_h, and records only the b side (h_b = o_h, g_b = -dl/do_h = W_o[:, s]^T
# times out_proj's g_b); the a side has no input: NaN, with this reason.
NO_INPUT = "attention.head_out has no input side (a head's output mixes tokens; no weight of its own)"


def _heads(m: nn.Module) -> range:
    """The heads of an attention q, k or v projection (none for other layers or one head)."""
    return range(m.heads) if isinstance(m, attention.Projection) and m.heads > 1 else range(0)


def _out_heads(model: nn.Module, name: str, m: nn.Module) -> int:
    """How many heads' outputs an attention's out_proj reads (0: not an out_proj, or one head)."""
    owner = _owner(model, name) if isinstance(m, nn.Linear) else None
    if owner is None or attention.unsupported(owner) or owner.num_heads < 2:
        return 0
    return owner.num_heads


def _head_out_name(name: str, h: int) -> str:
    """`<attn>.head<h>.out` for out_proj `<attn>.out_proj` (h 0-based)."""
    return f"{name.rsplit('.', 1)[0]}.head{h + 1}.out"


def _head_matrices(m: nn.Module, heads_out: int, h_a, h_b, g_b, W, agop, covariance, g_sign, weight_decay):
    """{row suffix: _layer_matrices} of one layer's head rows, with their baselines between
    heads: q, k, v heads (the head's columns of h_b and g_b, its rows of W; the layer's h_a)
    or, for an out_proj reading `heads_out` heads, each head's output (HEAD_OUT). Batched over
    a leading K: h_a, h_b, g_b (K, N, d), W (K, d_out, d_in), agop (K, d_out, d_out)."""
    group = {}
    d_out = W.shape[-2]
    for h in _heads(m):
        s = slice(h * (d_out // m.heads), (h + 1) * (d_out // m.heads))
        group[h] = _layer_matrices(h_a, h_b[..., s], g_b[..., s], W[:, s], covariance, g_sign=g_sign,
                                   weight_decay=weight_decay, agop_b=agop[:, s, s])
    d_in = W.shape[-1]
    for h in range(heads_out):
        s = slice(h * (d_in // heads_out), (h + 1) * (d_in // heads_out))
        W_s = W[..., s]  # (K, d_out, d_h): reads head h's output
        group[h] = _layer_matrices(None, h_a[..., s], g_b @ W_s, W_s.transpose(-1, -2), covariance,
                                   g_sign=g_sign, no_a=NO_INPUT)
    head_baselines(list(group.values()))
    return group


def probe_stacked(model, task, x: torch.Tensor, y: torch.Tensor, covariance: str, pah_floor: float,
                  chunk: int | None = None, null_samples: int = NULL_SAMPLES, weight_decay=None,
                  stationarity: Stationarity | None = None):
    """Probe every layer of a StackedMLP on (x, y); `stationarity` (kept between probes) for
    the stat_* columns (NaN without).

    On a CPU the members go through in chunks of `chunk` (default: a chunk's sample-sized
    tensors fit in the cache), on a GPU all at once. Returns (per-member probe loss (K,),
    [per layer: (metrics, reasons)]).
    """
    K = model.K
    if chunk is None:
        chunk = K if x.is_cuda else _cache_chunk(K, x.shape[0], max(model.dims), x.element_size())
    losses, parts = [], []
    for start in range(0, K, chunk):
        members = slice(start, start + chunk) if chunk < K else slice(None)
        wd = None if weight_decay is None else torch.as_tensor(weight_decay, dtype=torch.float64, device=x.device)[members]
        loss, per_layer = _probe_matrices(model, task, x, y, covariance, members, wd)
        losses.append(loss)
        parts.append(per_layer)
    per_layer = [_cat_layer(chunks) for chunks in zip(*parts)]
    for l, (out, mats) in enumerate(per_layer):
        _stationarity(stationarity, l, out, mats)
    spectra = _layer_spectra([mats for _, mats in per_layer], x.dtype)  # as few eigen calls as widths
    layers = [_spectral_metrics(out, mats, eigs, pah_floor, null_samples)
              for (out, mats), eigs in zip(per_layer, spectra)]
    return torch.cat(losses), layers


def _cache_chunk(K: int, n: int, width: int, itemsize: int, cache_bytes: float = 4e6) -> int:
    """Members per chunk, chunks of equal size, whose (n, width) activations take at most
    about `cache_bytes` each.

    A probe makes several passes over every layer's samples (norms, means, centring,
    covariances); while they fit in the CPU's cache they cost less than from memory, while
    every chunk costs its own few hundred small operations (fc1, N = 1000, width 100, on a
    2-core EPYC with 32 MB L3: a K = 32 probe took 0.61 s in chunks of 8, 0.78 s in one,
    0.82 s in chunks of 1).
    """
    most = max(1, int(cache_bytes // (n * width * itemsize)))
    return math.ceil(K / math.ceil(K / most))


def _probe_matrices(model, task, x, y, covariance: str, members: slice, weight_decay=None):
    """Probe loss (k,) and per layer _layer_matrices of the members in `members`."""
    with torch.enable_grad():
        out, h_as, h_bs = model(x, keep=True, members=members)
        loss = task.loss(out, y)  # (k, N) per-sample losses
        # the sum's gradient w.r.t. h_b holds every sample's own dl/dh_b (no batch coupling);
        # the backward pass computes dl/dh_a of every layer but the first on its way
        L = len(h_bs)
        agops = output_gradient_grams(out, h_bs, out.shape[1:])  # before the last backward frees the graph
        grads = torch.autograd.grad(loss.sum(), h_bs + h_as[1:])
    grad_b, grad_a = grads[:L], (None,) + grads[L:]
    weights = [W[members] for W in model.weights]
    per_layer = [_layer_matrices(h_as[l], h_bs[l], grad_b[l], W, covariance, g_sign=-1.0, g_a=grad_a[l],
                                 weight_decay=weight_decay, agop_b=agops[l])
                 for l, W in enumerate(weights)]
    if task.classification:  # neural collapse of every layer's input; NC3 and NC4 at the classifier
        k = out.shape[0]
        for l, (metrics, _) in enumerate(per_layer):
            last = l == L - 1
            h = h_as[l].detach()
            metrics.update(neural_collapse(h.expand(k, *h.shape[-2:]), y, out.shape[-1],
                                           W=weights[l].detach() if last else None,
                                           logits=out.detach() if last else None))
    return loss.detach().mean(1), per_layer


def _cat_layer(chunks):
    """One layer's (metrics, matrices) of consecutive member chunks joined into one."""
    if len(chunks) == 1:
        return chunks[0]
    out = {c: torch.cat([o[c] for o, _ in chunks]) for c in chunks[0][0]}
    mats = {side: tuple(torch.cat(ms) for ms in zip(*(m[side] for _, m in chunks))) for side in "ab"}
    mats["W"] = torch.cat([m["W"] for _, m in chunks])
    mats.update({key: chunks[0][1][key] for key in ("kind", "no_a", "head")})
    return out, mats


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    covariance: str = "centered",
    pah_floor: float = 1e-4,
    null_samples: int = NULL_SAMPLES,
    train_mode: bool = False,
    weight_decay: float | None = None,
    labels: torch.Tensor | None = None,
    stationarity: Stationarity | None = None,
    max_samples: int = MAX_SAMPLES,
    per_head: bool = False,
    n_classes: int | None = None,
) -> pd.DataFrame:
    """CRH/PAH metrics of every linear map in any model, one row per layer.

    Linear maps: `nn.Linear`; `nn.Conv2d` as a linear map on patches (SCIENCE.md: h_a the
    unfolded C_in*kh*kw patch, h_b the C_out outputs at its position, W reshaped to (C_out,
    C_in*kh*kw), every (image, position) pair a sample); `nn.MultiheadAttention` as four,
    `q_proj`, `k_proj`, `v_proj` (the slices of its fused input projection) and `out_proj`, by
    running it step by step for the call (`phasemap.measure.attention`; tokens as samples).
    The table says each layer's `kind` (linear, conv, attention.q/k/v/out) and `name`.

    `loss_fn(output, y)` must return one loss per sample (any shape; it is summed). Extra
    leading dimensions of a layer's activations (tokens) count as samples; a layer with more
    than `max_samples` samples (a convolution's positions) is measured on a fixed random subset
    of that many. The model runs in eval mode (dropout off, BatchNorm on its running
    statistics, so samples stay independent) unless `train_mode`; its modes are restored after.
    Hooks are removed on every path out.
    `weight_decay`: the L2 gamma the model trains with, for the `balance` column (else NaN).
    `labels` (N,): class labels of the samples, for the neural-collapse columns of every layer
    whose input has one row per sample (NC1 and NC2 over the classes present in the labels).
    `n_classes`: how many classes the labels come from (a task's class count: a probe set may
    lack some classes), by default max(labels) + 1. NC3 and NC4 at the last measured layer where
    the output is a classifier over those classes (one output per class: width n_classes), else
    NaN with a reason (an embedding or regression head); classes absent from the labels are
    left out of NC3 (their classifier rows) and count in NC4 as predictions that match no
    class mean.
    `stationarity`: one `Stationarity` passed to every probe of a run, for the stat_* columns
    (each layer's change since the previous call; NaN without or at the first).
    A layer the forward pass does not call as a module, or cannot be measured (a grouped
    convolution), gets a row that says why, with NaN metrics, and a warning names it.
    `per_head`: after each attention q, k and v row, one row per head (`<name>.head<h>`, kind
    `attention.q.head`, ..., `head` = h, the projection's `layer`): the head's slice of h_b, g_b
    and W's rows, with the same h_a (the paper's per-head spectra); and after each attention's
    out_proj row, one row per head for the head's output (`<attention>.head<h>.out`, kind
    `attention.head_out`, the out_proj's `layer`; the paper's llm measurements, its Fig. 3, 5,
    15): h_b = o_h, the head's d_h columns of out_proj's input (softmax(q k^T / sqrt(d_h)) v of
    that head), g_b = -dl/do_h (W_s^T times out_proj's g_b: o_h feeds nothing else), and W =
    W_s^T with W_s = out_proj.weight[:, head's columns], the only weight acting on o_h, so Z_b
    = W_s^T W_s (d_h x d_h) and RWA, GWA, the cross term and their PAH fits are defined on the
    b side. A head's output has no weight of its own producing it (it mixes tokens through the
    attention weights): every a-side column, balance and NFA are NaN, with that reason.
    Every head row also gets the paper's Fig. 5 baselines: `heads_h_b`, the mean alignment of
    its H_b with the other heads' H_b of the same layer, and `init_h_b`, the alignment of its
    H_b with its H_b at the first probe `stationarity` saw (1 there; NaN without it). Other
    rows have head, heads_h_b and init_h_b NaN.
    """
    qkv, maps = _linear_maps(model)
    if not maps:
        raise ValueError(f"`model has at least one nn.Linear or nn.Conv2d` must hold, but got {type(model).__name__}")
    modes = {m: m.training for m in model.modules()}
    model.train(train_mode)
    try:
        with attention.decomposed(model, qkv):
            return _measure(model, maps, x, y, loss_fn, covariance, pah_floor, null_samples, weight_decay,
                            labels, stationarity, max_samples, per_head, _classes(labels, n_classes))
    finally:
        for m, mode in modes.items():
            m.training = mode


def _classes(labels: torch.Tensor | None, n_classes: int | None) -> int:
    """The number of classes the labels come from: `n_classes`, by default max(labels) + 1
    (0 without labels)."""
    if labels is None:
        return 0
    top = int(labels.max()) + 1
    if n_classes is None:
        return top
    if int(n_classes) < top:
        raise ValueError(f"`n_classes > max(labels)` must hold, but got {n_classes=} with label {top - 1}")
    return int(n_classes)


def layer_kind(model: nn.Module, name: str, m: nn.Module) -> str:
    """What kind of linear map a layer is: linear, conv, attention.q/k/v/out."""
    if isinstance(m, attention.Projection):
        return "attention." + "qkv"[m.part]
    if isinstance(m, nn.Conv2d):
        return "conv"
    return "attention.out" if _owner(model, name) is not None else "linear"


def _dims(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Conv2d):
        return m.weight[0].numel(), m.out_channels
    return m.in_features, m.out_features


def _unmeasurable(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d) and m.groups > 1:
        return f"not measured: grouped convolution (groups={m.groups})"
    return ""


def _patches(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv's input as (N * positions, C_in * kh * kw) rows, in the order of its output's
    (N, H', W') positions: `unfold` with the conv's own geometry."""
    x = x if x.dim() == 4 else x.unsqueeze(0)
    padding = m.padding
    if m.padding_mode != "zeros":  # as Conv2d does: pad first, then a convolution without padding
        x = nn.functional.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        padding = 0
    elif isinstance(padding, str):  # "same" / "valid"
        padding = 0 if padding == "valid" else tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
        if padding != 0 and any((d * (k - 1)) % 2 for d, k in zip(m.dilation, m.kernel_size)):
            raise ValueError(f"measure: padding='same' with an even kernel ({m.kernel_size}) is not supported")
    cols = nn.functional.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _output_rows(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A layer's output (or its gradient) as (samples, d_out) rows."""
    if isinstance(m, nn.Conv2d):
        t = t if t.dim() == 4 else t.unsqueeze(0)
        return t.movedim(1, -1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


def _input_rows(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    return _patches(m, t) if isinstance(m, nn.Conv2d) else t.reshape(-1, t.shape[-1])


def _measure(model, maps, x, y, loss_fn, covariance, pah_floor, null_samples, weight_decay,
             labels, stationarity, max_samples, per_head=False, n_classes=0) -> pd.DataFrame:
    seen: dict[nn.Module, tuple] = {}

    def hook(module, inputs, output):
        if module in seen:
            raise RuntimeError(f"measure: a layer called twice in one forward is not supported "
                               f"({type(module).__name__})")
        seen[module] = (inputs[0], output)

    measurable = [(n, m) for n, m in maps if not _unmeasurable(m)]
    handles = [m.register_forward_hook(hook) for _, m in measurable]
    params = list({id(p): p for p in (_parameter(m) for _, m in measurable)}.values())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)  # so every layer's output is part of the graph
        with torch.enable_grad():
            output = model(x)
            losses = loss_fn(output, y)
            used = [m for _, m in measurable if m in seen]
            outputs = [seen[m][1] for m in used]
            agops = output_gradient_grams(output, outputs, output.shape, batch_dims=0,
                                          rows=[functools.partial(_output_rows, m) for m in used])
            grads = torch.autograd.grad(losses.sum(), outputs)
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    grad_of = dict(zip(used, grads))
    agop_of = dict(zip(used, agops))
    rows = []
    skipped = []
    for index, (name, m) in enumerate(maps, start=1):
        d_in, d_out = _dims(m)
        info = {"layer": index, "name": name, "kind": layer_kind(model, name, m), "dim_in": d_in, "dim_out": d_out,
                "head": math.nan}
        if m not in seen:
            why = _not_measured(model, name, m)
            skipped.append(f"{name} ({why})")
            rows.append({**info, **{c: (0 if c.startswith("n_zero") or c.endswith("_n") else math.nan)
                                    for c in METRIC_COLUMNS}, "nan_reason": why})
            continue
        h_a, h_b = seen[m]
        h_a, h_b, g_b = _input_rows(m, h_a), _output_rows(m, h_b), -_output_rows(m, grad_of[m])
        if h_a.shape[0] > max_samples:  # the same fixed subset of samples for all three
            keep = torch.randperm(h_a.shape[0], generator=torch.Generator().manual_seed(0))[:max_samples]
            keep = keep.sort().values.to(h_a.device)
            h_a, h_b, g_b = h_a[keep], h_b[keep], g_b[keep]
        W = m.weight.reshape(d_out, d_in)
        metrics, reasons = layer_metrics(
            h_a.unsqueeze(0), h_b.unsqueeze(0), g_b.unsqueeze(0), W.unsqueeze(0), covariance, pah_floor,
            null_samples, weight_decay, agop_b=agop_of[m].unsqueeze(0), stationarity=stationarity, key=name,
        )
        nc_reason = ""
        if labels is not None and h_a.shape[0] == labels.numel():  # one feature row per label
            # NC3 and NC4 compare the output with the class means: only where the last layer's
            # output is a classifier over the n_classes classes (an embedding or regression head is not)
            last = m is used[-1]
            classifier = last and d_out == n_classes and output.shape[-1] == n_classes \
                and output.numel() == labels.numel() * n_classes
            if last and not classifier:
                nc_reason = (f"nc3, nc4: output width {output.shape[-1]} is not the {n_classes} classes of the "
                             f"labels (not a classifier over them; `measure(n_classes=)` says how many there are)")
            metrics.update(neural_collapse(h_a.detach().unsqueeze(0), labels.reshape(-1), n_classes,
                                           W=W.detach().unsqueeze(0) if classifier else None,
                                           logits=output.detach().reshape(1, -1, n_classes) if classifier else None))
        row = dict(info)
        row.update({c: metrics[c][0].item() for c in METRIC_COLUMNS})
        row["nan_reason"] = "; ".join(r for r in (reasons[0], nc_reason) if r)
        rows.append(row)
        heads_out = _out_heads(model, name, m) if per_head else 0
        if not (per_head and (_heads(m) or heads_out)):
            continue
        group = _head_matrices(m, heads_out, h_a.unsqueeze(0), h_b.unsqueeze(0), g_b.unsqueeze(0),
                               W.unsqueeze(0), agop_of[m].unsqueeze(0), covariance, 1.0, weight_decay)
        keys = {h: _head_out_name(name, h) if heads_out else f"{name}.head{h + 1}" for h in group}
        for h, (out, mats) in group.items():
            _stationarity(stationarity, keys[h], out, mats)
        spectra = _layer_spectra([mats for _, mats in group.values()], h_b.dtype)
        for (h, (out, mats)), eigs in zip(group.items(), spectra):
            metrics, reasons = _spectral_metrics(out, mats, eigs, pah_floor, null_samples)
            width = W.shape[-1] // heads_out if heads_out else W.shape[-2] // m.heads
            row = dict(info, name=keys[h], kind=HEAD_OUT if heads_out else info["kind"] + ".head",
                       dim_out=width, head=h + 1, nan_reason=reasons[0])
            row.update({c: metrics[c][0].item() for c in METRIC_COLUMNS})
            rows.append(row)
    if skipped:
        log.warning("measure: %d layer(s) not measured: %s", len(skipped), "; ".join(skipped))
    table = pd.DataFrame(rows)
    table["probe_loss"] = losses.detach().float().mean().item()
    return table


def probe_packed(base: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, loss_fn,
                 covariance: str = "centered", pah_floor: float = 1e-4, null_samples: int = NULL_SAMPLES,
                 weight_decay=None, labels: torch.Tensor | None = None, stationarity: Stationarity | None = None,
                 max_samples: int = MAX_SAMPLES, per_head: bool = False, n_classes: int | None = None,
                 chunk: int | None = None, vectorize: bool | None = None):
    """`measure` of every member of a pack at once: the same rows and values, captured for all
    members in one `torch.func.vmap` and measured batched over them (as `probe_stacked` does).

    `base`: one member's module (its structure: its own parameters may be on the meta device);
    `params`, `buffers`: {name: (K, ...)} stacked, every name `functional_call` needs (tied
    ones under each name). A hook adds a zero tensor to each measured layer's output; dl/dh_b
    and the AGOP's vector-Jacobian products are gradients with respect to it (`torch.func.vjp`
    inside the vmap), so nothing batched leaves the vmap but its outputs. Runs in eval mode.
    `vectorize` (default: on a GPU): capture under vmap, else member after member through the
    same function, as `PackedModel.forward` does on a CPU (faster there, and each member's
    activations rounded as when it is probed alone: a pack records what its members alone
    do). On a CPU the members are measured in chunks whose samples fit in the cache
    (`_cache_chunk`), on a GPU all at once. `weight_decay` (K,); `stationarity`: one tracker
    batched over the K, keyed by row name as `measure` keys it; the other options are
    `measure`'s.

    Returns (probe loss (K,), [per row of `describe_layers(base, per_head)`: (metrics {column:
    (K,)}, K NaN reasons)]). Raises what vmap raises on a module it cannot run (the caller falls
    back to `measure`, member by member).
    """
    qkv, maps = _linear_maps(base)
    if not maps:
        raise ValueError(f"`model has at least one nn.Linear or nn.Conv2d` must hold, but got {type(base).__name__}")
    n_classes = _classes(labels, n_classes)
    K = next(iter(params.values())).shape[0]
    modes = {m: m.training for m in base.modules()}
    base.eval()
    try:
        with attention.decomposed(base, qkv):
            layout = _Layout(base, maps, params, buffers, x, max_samples)
            if chunk is None:
                widest = max(max(_dims(m)) for m in layout.used)
                itemsize = layout.dtype.itemsize
                chunk = K if x.is_cuda else _cache_chunk(K, max(layout.kept.values()), widest, itemsize)
            wd = None if weight_decay is None else torch.as_tensor(weight_decay, dtype=torch.float64, device=x.device)
            losses, parts = [], []
            for start in range(0, K, chunk):
                members = slice(start, start + chunk)
                loss, output, captured = _capture_vmapped(
                    base, layout, {n: t[members].detach() for n, t in params.items()},
                    {n: t[members] for n, t in buffers.items()}, x, y, loss_fn, keep_output=labels is not None,
                    vectorize=x.is_cuda if vectorize is None else vectorize)
                losses.append(loss)
                parts.append(_row_matrices(layout, captured, output, covariance, per_head,
                                           None if wd is None else wd[members], labels, n_classes))
    finally:
        for m, mode in modes.items():
            m.training = mode
    per_row = {key: _cat_layer([part[key] for part in parts]) for key in parts[0]}
    for key, (out, mats) in per_row.items():
        _stationarity(stationarity, key, out, mats)
    spectra = _layer_spectra([mats for _, mats in per_row.values()], layout.dtype)  # as few eigen calls as widths
    measured = {key: _spectral_metrics(out, mats, eigs, pah_floor, null_samples)
                for (key, (out, mats)), eigs in zip(per_row.items(), spectra)}
    rows, skipped = [], []
    for name, m in maps:
        if m not in layout.kept:
            why = _not_measured(base, name, m)
            skipped.append(f"{name} ({why})")
            rows.append(({c: torch.full((K,), 0.0 if c.startswith("n_zero") or c.endswith("_n") else math.nan,
                                        dtype=torch.float64) for c in METRIC_COLUMNS}, [why] * K))
            continue
        metrics, reasons = measured[name]
        nc_reason = layout.nc_reason(m, labels, n_classes)
        rows.append((metrics, ["; ".join(r for r in (reason, nc_reason) if r) for reason in reasons]))
        rows += [measured[f"{name}.head{h + 1}"] for h in (_heads(m) if per_head else ())]
        rows += [measured[_head_out_name(name, h)] for h in range(layout.heads_out[m] if per_head else 0)]
    if skipped:
        log.warning("measure: %d layer(s) not measured: %s", len(skipped), "; ".join(skipped))
    return torch.cat(losses), rows


class _Layout:
    """What one member's forward pass on x looks like, from a pass on the meta device (or, where
    the model cannot run there, member 0's under no_grad): the measured layers it calls
    (`used`, in order), their output shapes, their sample counts (`rows`, and `kept`, after the
    max_samples subset, whose indices are `keep`), the network output's shape and dtype."""

    def __init__(self, base, maps, params, buffers, x, max_samples):
        self.names = {m: name for name, m in maps}
        self.heads_out = {m: _out_heads(base, name, m) for name, m in maps}
        measurable = [m for _, m in maps if not _unmeasurable(m)]
        seen: dict = {}

        def hook(module, inputs, output):
            if module in seen:
                raise RuntimeError(f"measure: a layer called twice in one forward is not supported "
                                   f"({type(module).__name__})")
            seen[module] = (output.shape, output.dtype)

        handles = [m.register_forward_hook(hook) for m in measurable]
        try:
            with torch.no_grad():
                try:
                    output = base(x.to("meta"))
                except (NotImplementedError, RuntimeError):  # an operation without a meta kernel
                    seen.clear()
                    output = functional_call(base, ({n: p[0] for n, p in params.items()},
                                                    {n: b[0] for n, b in buffers.items()}), (x,), tie_weights=False)
        finally:
            for h in handles:
                h.remove()
        self.used = [m for m in measurable if m in seen]
        self.shapes = {m: seen[m][0] for m in self.used}
        self.dtypes = {m: seen[m][1] for m in self.used}
        self.dtype = self.dtypes[self.used[0]] if self.used else output.dtype  # the activations' (x may be token ids)
        self.output_shape, self.output_dtype = output.shape, output.dtype
        self.rows = {m: math.prod(s) // s[1] if isinstance(m, nn.Conv2d) and len(s) == 4
                     else math.prod(s) // s[-1] for m, s in self.shapes.items()}
        self.kept = {m: min(n, max_samples) for m, n in self.rows.items()}
        self.keep = {m: None if n <= max_samples else  # the same fixed subset as `measure` takes
                     torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples].sort().values
                     .to(x.device) for m, n in self.rows.items()}
        self.directions = [u.to(output.dtype) for u in output_directions(output.shape, output.shape[-1], x.device)]

    def nc_reason(self, m, labels, n_classes) -> str:
        if labels is None or self.kept[m] != labels.numel() or not self.is_last(m) or self.classifier(m, labels, n_classes):
            return ""
        return (f"nc3, nc4: output width {self.output_shape[-1]} is not the {n_classes} classes of the "
                f"labels (not a classifier over them; `measure(n_classes=)` says how many there are)")

    def is_last(self, m) -> bool:
        return m is self.used[-1]

    def classifier(self, m, labels, n_classes) -> bool:
        """Whether layer m's output is a classifier over the labels' classes (NC3 and NC4)."""
        return self.is_last(m) and _dims(m)[1] == n_classes and self.output_shape[-1] == n_classes \
            and math.prod(self.output_shape) == labels.numel() * n_classes


def _capture_vmapped(base, layout: _Layout, params, buffers, x, y, loss_fn, keep_output: bool, vectorize: bool):
    """Per member (vmapped over the leading dimension of params and buffers, or one after the
    other without `vectorize`): the probe loss (k,), the output (k, ...) if `keep_output` (else
    None), and per used layer (h_a, h_b, +dl/dh_b rows (k, n, d), W (k, d_out, d_in), the AGOP
    w.r.t. h_b (k, d_out, d_out) float64)."""
    used = layout.used
    slot = {m: i for i, m in enumerate(used)}
    state: dict = {}

    def hook(module, inputs, output):
        if module in state["seen"]:
            raise RuntimeError(f"measure: a layer called twice in one forward is not supported "
                               f"({type(module).__name__})")
        state["seen"][module] = (inputs[0], output, module.weight)
        return output + state["zs"][slot[module]]  # the zero whose gradient is dl/dh_b

    def rows(m, h_a, h_b, W):
        d_in, d_out = _dims(m)
        h_a, h_b = _input_rows(m, h_a), _output_rows(m, h_b)
        keep = layout.keep[m]
        if keep is not None:
            h_a, h_b = h_a[keep], h_b[keep]
        return h_a, h_b, W.reshape(d_out, d_in)

    def member(p, b):
        def forward(zs):
            state["seen"], state["zs"] = {}, zs
            out = functional_call(base, (p, b), (x,), tie_weights=False)
            return (out, loss_fn(out, y)), tuple(rows(m, *state["seen"][m]) for m in used)

        zs = tuple(torch.zeros(layout.shapes[m], dtype=layout.dtypes[m], device=x.device) for m in used)
        (out, losses), vjp_fn, acts = torch.func.vjp(forward, zs, has_aux=True)
        no_out, no_loss = torch.zeros_like(out), torch.zeros_like(losses)
        grads = vjp_fn((no_out, torch.ones_like(losses)))[0]  # the sum's gradient: each sample's own dl/dh_b
        agops = [0.0] * len(used)
        for u in layout.directions:  # as output_gradient_grams: over every sample, before the subset
            for i, (m, j) in enumerate(zip(used, vjp_fn((u.expand_as(out), no_loss))[0])):
                j = _output_rows(m, j)
                agops[i] = agops[i] + (j.transpose(-1, -2) @ j).to(torch.float64)
        captured = []
        for m, (h_a, h_b, W), g, agop in zip(used, acts, grads, agops):
            g = _output_rows(m, g)
            g = g if layout.keep[m] is None else g[layout.keep[m]]
            captured.append((h_a, h_b, g, W, agop / layout.rows[m]))
        return (losses.float().flatten().mean(), tuple(captured)) + ((out,) if keep_output else ())

    handles = [m.register_forward_hook(hook) for m in used]
    try:
        if vectorize:
            result = vmap(member, randomness="error")(params, buffers)
        else:
            each = [member({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()})
                    for k in range(next(iter(params.values())).shape[0])]
            loss, captured, *out = zip(*each)
            result = (torch.stack(loss), tuple(tuple(torch.stack(t) for t in zip(*layer)) for layer in zip(*captured)),
                      *(torch.stack(o) for o in out))
    finally:
        for h in handles:
            h.remove()
    loss, captured = result[:2]
    return loss, (result[2] if keep_output else None), dict(zip(used, captured))


def _row_matrices(layout: _Layout, captured: dict, output, covariance, per_head, weight_decay, labels, n_classes):
    """{row name: _layer_matrices} of one chunk of members: each used layer (with its neural
    collapse where its input has one row per label) and, with `per_head`, its heads."""
    out = {}
    for m, (h_a, h_b, g, W, agop) in captured.items():
        name = layout.names[m]
        metrics, mats = _layer_matrices(h_a, h_b, g, W, covariance, g_sign=-1.0, weight_decay=weight_decay,
                                        agop_b=agop)
        if labels is not None and layout.kept[m] == labels.numel():  # one feature row per label
            classifier = layout.classifier(m, labels, n_classes)
            metrics.update(neural_collapse(h_a, labels.reshape(-1), n_classes, W=W if classifier else None,
                                           logits=output.reshape(output.shape[0], -1, n_classes)
                                           if classifier else None))
        out[name] = (metrics, mats)
        heads_out = layout.heads_out[m] if per_head else 0
        if per_head and (_heads(m) or heads_out):
            group = _head_matrices(m, heads_out, h_a, h_b, g, W, agop, covariance, -1.0, weight_decay)
            out.update({_head_out_name(name, h) if heads_out else f"{name}.head{h + 1}": v
                        for h, v in group.items()})
    return out


def _not_measured(model: nn.Module, name: str, m: nn.Module) -> str:
    """Why a linear map of `model` got no measurements."""
    owner = _owner(model, name)
    return _unmeasurable(m) or (
        f"not measured: called functionally by its {type(owner).__name__} "
        f"({attention.unsupported(owner) or 'its forward was replaced'})"
        if owner is not None else "not measured: not called in this forward pass")


def _parameter(m: nn.Module) -> nn.Parameter:
    """The trained parameter a layer's weight is (a q/k/v projection's is a slice of one)."""
    return m.parameter if isinstance(m, attention.Projection) else m.weight


def _owner(model: nn.Module, name: str) -> nn.Module | None:
    """The module that holds a Linear and applies it itself (attention), or None."""
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return parent if isinstance(parent, nn.MultiheadAttention) else None
