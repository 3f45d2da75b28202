"""What the state-carrying parts of HSC and DSRPGC cost per training step, and the memory they hold.

In one process, on random images of the `cpu` profile's shape (8 labeled + 16 unlabeled images at 64 px, both
unlabeled views, an EfficientNet-Lite0 encoder with a 128-wide projection head, random weights: the cost does not
depend on them), each timed step is a whole training step (forward, losses, backward, optimiser step, teacher
update). Printed: medians over the timed steps, and the size of the state from its buffers.

- ``--method hsc``: HSC's step and, inside it, the neighbour search in the memory bank and the update of bank
  and prototypes (their milliseconds and share of the step); the bank is filled before timing, so every search
  scans all of it.
- ``--method dsrpgc``: DSRPGC on MedFuseNet with its meta step on every iteration and without it, the two
  alternating step by step in the same process (so a change of load falls on both alike), and the size of
  the PGC queue.

    python scripts/component_costs.py --method hsc [--bank_size 4096] [--steps 30] [--threads 2]
    python scripts/component_costs.py --method dsrpgc [--bank_size 4096] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from monai_ssl_ext.algorithms import DSRPGC, HSC, SemiSupervisedAlgorithm
from monai_ssl_ext.networks import Classifier, MedFuseNet


def _batches(num_classes: int, size: int) -> tuple[dict, dict]:
    labeled = {"image": torch.rand(8, 3, size, size), "label": torch.randint(0, num_classes, (8,))}
    unlabeled = {
        "image_weak": torch.rand(16, 3, size, size),
        "image_strong": torch.rand(16, 3, size, size),
        "index": torch.arange(16),
    }
    return labeled, unlabeled


def _step(
    alg: SemiSupervisedAlgorithm, net: nn.Module, optimizer: torch.optim.Optimizer, step: int, size: int
) -> float:
    """Seconds of one whole training step."""
    labeled, unlabeled = _batches(alg.num_classes, size)
    start = time.perf_counter()
    out = alg.train_step(net, labeled, unlabeled, step)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    alg.after_optimizer_step(net, step)
    return time.perf_counter() - start


def _timed(function: Callable, record: list[float]) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        record.append(time.perf_counter() - start)
        return result

    return wrapper


def _mib(module: nn.Module) -> float:
    return sum(b.numel() * b.element_size() for b in module.buffers()) / 2**20


def hsc_costs(args: argparse.Namespace) -> None:
    net = Classifier(args.num_classes, in_channels=3, backbone="efficientnet-lite0", return_dict=True, embed_dim=128)
    hsc = HSC(args.num_classes, embed_dim=128, bank_size=args.bank_size, k=args.k)
    hsc.setup(net, total_steps=1500, num_unlabeled=5000)
    hsc.bank.enqueue(torch.randn(args.bank_size, 128), torch.softmax(torch.randn(args.bank_size, args.num_classes), 1))
    search, update = [], []
    hsc.neighbourhood.forward = _timed(hsc.neighbourhood.forward, search)
    hsc.update_context = _timed(hsc.update_context, update)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    steps = []
    for step in range(args.steps + 3):
        seconds = _step(hsc, net, optimizer, step + 300, args.image_size)
        if step >= 3:  # the first steps warm the allocator up
            steps.append(seconds)
    step_ms = statistics.median(steps) * 1000
    print(f"HSC step ({args.threads} threads, {args.steps} steps, medians): {step_ms:.1f} ms")
    for label, record in (("neighbour search", search[3:]), ("bank and prototype update", update[3:])):
        ms = statistics.median(record) * 1000
        print(f"  {label}: {ms:.2f} ms ({100 * ms / step_ms:.2f} % of the step)")
    print(
        f"memory bank: {args.bank_size} x (128 + {args.num_classes}) floats = {_mib(hsc.bank):.2f} MiB; "
        f"prototypes: {_mib(hsc.prototypes) * 1024:.1f} KiB"
    )


def dsrpgc_costs(args: argparse.Namespace) -> None:
    net = MedFuseNet(args.num_classes, in_channels=3, backbone="efficientnet-lite0", embed_dim=128, return_dict=True)
    runs = {
        "with the meta step": DSRPGC(args.num_classes, embed_dim=128, queue_size=args.bank_size),
        "without it (entropy weights only)": DSRPGC(
            args.num_classes, embed_dim=128, queue_size=args.bank_size, use_meta=False
        ),
    }
    for alg in runs.values():
        alg.setup(net, total_steps=1500, num_unlabeled=5000)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(args.steps + 3):
        for name, alg in runs.items():
            elapsed = _step(alg, net, optimizer, step, args.image_size)
            if step >= 3:
                seconds[name].append(elapsed)
    print(f"DSRPGC step on MedFuseNet ({args.threads} threads, {args.steps} steps each, alternating, medians):")
    base = statistics.median(seconds["without it (entropy weights only)"])
    for name, record in seconds.items():
        ms = statistics.median(record) * 1000
        print(f"  {name}: {ms:.1f} ms ({statistics.median(record) / base:.2f}x)")
    queue = runs["with the meta step"].queue
    print(f"PGC queue: {args.bank_size} x (128 + {args.num_classes}) floats = {_mib(queue):.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("hsc", "dsrpgc"), required=True)
    parser.add_argument("--bank_size", type=int, default=4096, help="HSC's memory bank or DSRPGC's queue")
    parser.add_argument("--k", type=int, default=10, help="HSC's neighbours")
    parser.add_argument("--num_classes", type=int, default=7)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    (hsc_costs if args.method == "hsc" else dsrpgc_costs)(args)


if __name__ == "__main__":
    main()
