"""How an epoch is cut into batches: the one rule the training loop follows and the
config check counts steps by (no torch here, so a study is checked without it)."""

from __future__ import annotations


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Where each batch of an epoch of ``n`` examples starts and ends."""
    starts = list(range(0, n, batch_size))
    # A batch of one breaks BatchNorm in train mode; fold it into the previous one.
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """The optimiser steps of one epoch over ``n`` examples."""
    return len(batch_bounds(n, batch_size))
