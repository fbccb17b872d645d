"""Packed training against a loop over the same K models: member-steps per second.

The packed engine (`phasemap.models.packed`: stacked parameters, one stacked SGD step; vmap
over functional_call on a GPU, a member loop on a CPU, `--vectorize` to force vmap) against K
separate `nn.Module`s, each with its own torch.optim.SGD, stepped one after the other on the
same batch. `--family cnn`: the conv stack with `--norm` and two fully connected layers on
`--size` x `--size` images; `--family transformer`: the GPT-style family on `--size` tokens of a
vocabulary of 64, `--width` d_model, 4 heads.

    python benchmarks/packed_vs_loop.py [--family cnn] [--k 8] [--depth 2] [--width 32] [--size 16]
                                        [--batch 64] [--steps 30] [--device auto] [--threads N]
                                        [--norm batch] [--vectorize]
"""

from __future__ import annotations

import argparse

import torch

from phasemap.models.cnn import cnn
from phasemap.models.packed import PackedModel
from phasemap.models.transformer import Transformer
from phasemap.train.optim import make_optimizer
from timing import seconds_per_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["cnn", "transformer"], default="cnn")
    p.add_argument("--vectorize", action="store_true", help="vmap on a CPU too")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", type=int, default=16, help="cnn: image side (1 channel); transformer: tokens")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--norm", default="batch", choices=["none", "batch", "group"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    K = args.k
    if args.family == "cnn":
        make = lambda: cnn((1, args.size, args.size), 10, args.depth, args.width, norm=args.norm)  # noqa: E731
        x = torch.randn(args.batch, 1, args.size, args.size, device=device)
        y = torch.randint(10, (args.batch,), device=device)
        classes, shape = 10, f"{args.size}x{args.size} images, norm {args.norm}"
    else:
        make = lambda: Transformer(64, args.size, args.depth, args.width, 4)  # noqa: E731
        x = torch.randint(64, (args.batch, args.size), device=device)
        y = torch.randint(64, (args.batch, args.size), device=device)
        classes, shape = 64, f"{args.size} tokens, vocabulary 64"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}; {args.family} depth "
          f"{args.depth}, width {args.width}, {shape}, batch {args.batch}, K = {K}, {args.steps} steps")

    packed = PackedModel(make, list(range(K))).to(device)
    packed.vectorize = True if args.vectorize else None
    opt = make_optimizer("sgd", packed.parameters(), [0.01] * K, [1e-4] * K, [0.9] * K, (0.9, 0.999), 1e-8)

    def packed_step():
        out = packed(x)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, classes), y.expand(out.shape[:-1]).reshape(-1),
                                                 reduction="none")
        opt.zero_grad()
        loss.view(K, -1).mean(1).sum().backward()
        opt.step()

    models = [make().to(device) for _ in range(K)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4) for m in models]

    def loop_step():
        for m, o in zip(models, opts):
            out = m(x)
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, classes), y.reshape(-1))
            o.zero_grad()
            loss.backward()
            o.step()

    for name, step in (("packed", packed_step), ("loop", loop_step), ("packed", packed_step), ("loop", loop_step)):
        rate = K / seconds_per_call(step, args.steps, device)
        print(f"{name:>7}: {rate:8.1f} member-steps/s", flush=True)


if __name__ == "__main__":
    main()
