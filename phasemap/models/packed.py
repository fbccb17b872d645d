"""The packed engine: K members of any `nn.Module` architecture as one computation.

The members are built one by one, each from its own seed (so a member is initialised the
same in a pack as alone), then their parameters and buffers are stacked with a leading K
dimension (`torch.func.stack_module_state`) and the forward pass runs under `torch.func.vmap`
over `functional_call` on one shared batch (on a GPU; on a CPU, where vmap'd convolutions are
slower than a loop, member after member on slices of the same tensors). The stacked tensors are ordinary parameters with a
leading K, so the stacked optimizers (`train/optim.py`) train them with per-member learning
rate, momentum and weight decay. BatchNorm's running statistics are stacked buffers: each
member keeps its own, updated in place under vmap. `member(k)` rebuilds member k as a plain
module (for probes, which run in eval mode one member at a time).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter names may not contain dots


def _aliases(module: nn.Module) -> dict[str, str]:
    """{other name: first name} of every parameter or buffer registered under several names."""
    first, aliases = {}, {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        aliases.update({name: first[id(t)]} if id(t) in first else {})
        first.setdefault(id(t), name)
    return aliases


class PackedModel(nn.Module):
    """`make()` builds one member; `seeds` (K,) seed each member's initialisation."""

    def __init__(self, make: Callable[[], nn.Module], seeds: Sequence[int]):
        super().__init__()
        self.make = make
        self.K = len(seeds)
        members = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
                torch.manual_seed(int(seed))
                members.append(make())
        params, buffers = stack_module_state(members)  # a tied parameter once, under its first name
        self.param_names, self.buffer_names = list(params), list(buffers)
        # tied parameters' other names (a transformer's `unembed.weight` -> `tok.weight`): given
        # the same stacked tensor under each name, so the pack has one parameter per tied group
        # (one gradient, summed over its uses; one update), as each member alone has
        self.aliases = _aliases(members[0])
        self.stacked = nn.ParameterDict({_key(n): nn.Parameter(p.detach()) for n, p in params.items()})
        for n, b in buffers.items():
            self.register_buffer("buf__" + _key(n), b)
        self._base = [copy.deepcopy(members[0]).to("meta")]  # the structure only; not a submodule
        self.vectorize: bool | None = None  # None: vmap on a GPU, a member loop on a CPU

    def _member_params(self) -> dict[str, torch.Tensor]:
        params = {n: self.stacked[_key(n)] for n in self.param_names}
        return params | {alias: params[n] for alias, n in self.aliases.items() if n in params}

    def _member_buffers(self) -> dict[str, torch.Tensor]:
        buffers = {n: getattr(self, "buf__" + _key(n)) for n in self.buffer_names}
        return buffers | {alias: buffers[n] for alias, n in self.aliases.items() if n in buffers}

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """x (N, ...) shared by every member -> (K, N, outputs); `kwargs` go to each member's forward.

        Vectorised over members (vmap) on a GPU; on a CPU member after member, on slices of
        the same stacked tensors (vmap'd convolutions ran at 0.57x of a loop over the K models
        there, the member loop at 0.9-1.0x: `benchmarks/packed_vs_loop.py`). `vectorize` overrides.
        """
        base = self._base[0]
        base.train(self.training)
        params, buffers = self._member_params(), self._member_buffers()
        if self.vectorize if self.vectorize is not None else x.is_cuda:
            def one(p, b, inputs):
                return functional_call(base, (p, b), (inputs,), kwargs, tie_weights=False)  # p names every tied name

            return vmap(one, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
        # buffers[k] are views: BatchNorm's running statistics update the stacked buffer in place
        return torch.stack([functional_call(base, ({n: p[k] for n, p in params.items()},
                                                   {n: b[k] for n, b in buffers.items()}), (x,), kwargs,
                                            tie_weights=False)
                            for k in range(self.K)])

    def functional(self) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(one member's structure (on the meta device), stacked parameters, stacked buffers):
        `functional_call(base, (params[k], buffers[k]), ...)` is member k (tied parameters under
        each of their names, `tie_weights=False`)."""
        return self._base[0], self._member_params(), self._member_buffers()

    def member(self, k: int) -> nn.Module:
        """Member k as a plain module holding copies of its parameters and buffers."""
        device = next(iter(self.stacked.values())).device
        with torch.random.fork_rng(devices=[]):
            m = self.make()
        state = {n: t[k].detach().clone() for n, t in {**self._member_params(), **self._member_buffers()}.items()}
        m.load_state_dict(state)  # copies into m's own parameters: tied ones stay one parameter
        return m.to(device)
