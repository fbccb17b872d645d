"""The networks phasemap trains, K members of one architecture at a time: the stacked MLP
(`mlp`, the fast path) and, through the packed engine (`packed`), one member of any other
family (`cnn`, `resnet`, `transformer`, or a factory of yours). `build_model` picks by config."""

import math

import torch
from torch import nn

from ..config import load_factory
from .cnn import cnn
from .mlp import ACTIVATION_FNS, ACTIVATION_MODULES, StackedMLP, mlp_dims
from .packed import PackedModel
from .resnet import resnet
from .ssl import SimCLR, simclr
from .transformer import Transformer

__all__ = ["ACTIVATION_FNS", "ACTIVATION_MODULES", "PackedModel", "SimCLR", "StackedMLP", "build_model",
           "factory_cost", "mlp_dims"]


def build_model(spec, input_shape: tuple[int, ...], n_outputs: int, seeds, ssl: bool = False):
    """(model, prepare) for the `model` config section `spec`: a model mapping (N, ...) inputs
    to (K, N, ..., n_outputs), and `prepare`, the task's inputs as the model takes them (an MLP
    flattens images). `ssl`: SimCLR's backbone and projection head (`ssl.simclr`; n_outputs is
    the projection's width)."""
    if ssl:
        factory = load_factory(spec.factory) if spec.family == "factory" else None

        def make() -> nn.Module:
            return simclr(spec, input_shape, n_outputs, factory)

        return PackedModel(make, seeds), (lambda x: x)
    if spec.family == "mlp":
        d_in = math.prod(input_shape)
        model = StackedMLP(mlp_dims(d_in, spec.width, spec.depth, n_outputs), spec.activation, seeds, spec.bias)
        return model, ((lambda x: x.flatten(1)) if len(input_shape) > 1 else (lambda x: x))
    if spec.family == "cnn":
        def make() -> nn.Module:
            return cnn(input_shape, n_outputs, spec.depth, spec.width, spec.activation, spec.norm, spec.bias)
    elif spec.family == "resnet":
        def make() -> nn.Module:
            return resnet(input_shape, n_outputs, spec.depth, spec.width, spec.activation, spec.norm)
    elif spec.family == "transformer":  # n_outputs: the vocabulary; input_shape: (block length,)
        def make() -> nn.Module:
            return Transformer(n_outputs, input_shape[0], spec.depth, spec.width, spec.heads, spec.activation,
                               spec.tied)
    else:
        factory = load_factory(spec.factory)

        def make() -> nn.Module:
            return factory(**spec.kwargs)
    return PackedModel(make, seeds), (lambda x: x)


def factory_cost(spec, task) -> tuple[float, float]:
    """(multiply-adds, activations) per sample of one member of a factory model (`model` config
    section `spec`), from one forward pass on two of `task`'s samples: the multiply-adds as
    torch's FLOP counter counts them, the activations as the outputs of every leaf module (about
    what a probe holds per sample)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]):
        model = load_factory(spec.factory)(**spec.kwargs)
        x, _ = task.sample(2, torch.Generator().manual_seed(0))  # a task made on the CPU
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _in, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
             for m in model.modules() if not any(m.children())]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return flops.get_total_flops() / 2 / len(x), sum(sizes) / len(x)
