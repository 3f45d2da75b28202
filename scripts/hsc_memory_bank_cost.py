"""What HSC's memory bank and prototypes cost per training step, and how much memory they hold.

In one process, on random images of the `cpu` profile's shape (8 labeled + 16 unlabeled images at 64 px, both
unlabeled views, EfficientNet-Lite0 with a 128-wide projection head, random weights: the cost does not depend
on them), this times HSC's whole step (forward, losses, backward, optimiser step) and, inside it, the parts that
only HSC has: the neighbour search in the bank and the update of bank and prototypes. Printed: the median
milliseconds of each over the timed steps, their share of the step, and the size of the bank and prototypes in
memory (from their buffers). The bank is filled before timing, so every search scans all of it.

    python scripts/hsc_memory_bank_cost.py [--bank_size 4096] [--embed_dim 128] [--k 10] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

from monai_ssl_ext.algorithms import HSC
from monai_ssl_ext.networks import Classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank_size", type=int, default=4096)
    parser.add_argument("--embed_dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num_classes", type=int, default=7)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    net = Classifier(
        args.num_classes, in_channels=3, backbone="efficientnet-lite0", return_dict=True, embed_dim=args.embed_dim
    )
    hsc = HSC(args.num_classes, embed_dim=args.embed_dim, bank_size=args.bank_size, k=args.k)
    hsc.setup(net, total_steps=1500, num_unlabeled=5000)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    # a full bank: every search scans bank_size entries
    probs = torch.softmax(torch.randn(args.bank_size, args.num_classes), dim=1)
    hsc.bank.enqueue(torch.randn(args.bank_size, args.embed_dim), probs)

    timings: dict[str, list[float]] = {"search": [], "update": []}

    @contextmanager
    def timed(name: str):
        start = time.perf_counter()
        yield
        timings[name].append(time.perf_counter() - start)

    search, update = hsc.neighbourhood.forward, hsc.update_context

    def timed_search(*a, **kw):
        with timed("search"):
            return search(*a, **kw)

    def timed_update(*a, **kw):
        with timed("update"):
            return update(*a, **kw)

    hsc.neighbourhood.forward = timed_search
    hsc.update_context = timed_update

    size = args.image_size
    steps = []
    for step in range(args.steps + 3):
        labeled = {"image": torch.rand(8, 3, size, size), "label": torch.randint(0, args.num_classes, (8,))}
        unlabeled = {
            "image_weak": torch.rand(16, 3, size, size),
            "image_strong": torch.rand(16, 3, size, size),
            "index": torch.arange(16),
        }
        start = time.perf_counter()
        out = hsc.train_step(net, labeled, unlabeled, step + 300)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        steps.append(time.perf_counter() - start)
        if step == 2:  # the first steps warm the allocator up
            steps.clear()
            timings = {"search": [], "update": []}

    step_ms = statistics.median(steps) * 1000
    print(f"HSC step ({args.threads} threads, {args.steps} steps, medians): {step_ms:.1f} ms")
    for name, label in (("search", "neighbour search"), ("update", "bank and prototype update")):
        ms = statistics.median(timings[name]) * 1000
        print(f"  {label}: {ms:.2f} ms ({100 * ms / step_ms:.2f} % of the step)")
    bank_bytes = sum(b.numel() * b.element_size() for b in hsc.bank.buffers())
    proto_bytes = sum(b.numel() * b.element_size() for b in hsc.prototypes.buffers())
    print(
        f"memory bank: {args.bank_size} x ({args.embed_dim} + {args.num_classes}) floats = "
        f"{bank_bytes / 2**20:.2f} MiB; prototypes: {proto_bytes / 2**10:.1f} KiB"
    )


if __name__ == "__main__":
    main()
