"""Deterministic seeds derived from a run seed and a position (step, sample, rank).

Deriving every random choice from ``(seed, step, ...)`` instead of from a global generator that has
been advanced by everything before it makes a run reproducible from any step: a run resumed from a
checkpoint draws exactly the numbers the uninterrupted run would have drawn.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derive_seed", "seed_everything"]

_MASK32 = 2**32 - 1


def derive_seed(*entropy: int) -> int:
    """Return a 32-bit seed that is a fixed, well-mixed function of the integers given.

    Example: ``derive_seed(run_seed, step, rank)``. Uses NumPy's ``SeedSequence`` hashing, so nearby
    inputs give unrelated seeds. The number of integers is part of the input (``SeedSequence`` pads
    with zeros, so ``(5,)`` and ``(5, 0)`` would otherwise collide) and each integer is taken modulo
    ``2**64`` in two 32-bit words (so ``2`` and ``2 + 2**32`` differ).
    """
    words = [len(entropy)]
    for e in entropy:
        value = int(e) % 2**64
        words += [value & _MASK32, value >> 32]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    import random

    random.seed(seed)
    np.random.seed(seed & _MASK32)
    torch.manual_seed(seed)
