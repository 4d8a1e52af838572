"""Seeded, weighted principle sampling.

Seeds are derived from strings (a run seed plus a record id) rather than from a shared random
stream, so the principles chosen for an item do not depend on which other items were in its
batch, which shard it landed on, or whether the run was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from cai.core.ids import derive_seed

T = TypeVar("T")
__all__ = ["derive_seed", "weighted_sample"]


def weighted_sample(
    items: Sequence[T], k: int, seed: int | str, weight: Callable[[T], float] = lambda x: x.weight
) -> list[T]:
    """Draw k items without replacement, each draw proportional to weight.

    Uses Efraimidis-Spirakis keys (u ** (1/w), keep the k largest), which gives exactly the
    successive-draws distribution in one pass. k larger than the pool returns the whole pool in
    sampled order.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    rng = random.Random(seed if isinstance(seed, int) else derive_seed(seed))
    keyed = []
    for i, item in enumerate(items):
        w = weight(item)
        if w <= 0:
            raise ValueError(f"weights must be positive, got {w}")
        keyed.append((rng.random() ** (1.0 / w), i))
    keyed.sort(reverse=True)
    return [items[i] for _, i in keyed[:k]]
