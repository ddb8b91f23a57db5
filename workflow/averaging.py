"""Combining fine-tuned models: weight interpolation (WiSE-FT), uniform model soups,
and output ensembles.

Weights are combined as state dicts: every floating tensor, parameters and
BatchNorm statistics alike (models of one architecture fine-tuned from one
checkpoint); integer buffers (BatchNorm's batch counter) are taken from one model,
as they do not change what the model computes.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

State = Mapping[str, torch.Tensor]


def _check_same_keys(states: Sequence[State]) -> None:
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"state dicts differ: {sorted(keys ^ set(s))}")


def interpolate(start: State, end: State, alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``(1 - alpha) * start + alpha * end`` for every floating tensor.

    Written as a weighted sum, so that ``alpha = 0`` gives ``start`` and ``alpha = 1``
    gives ``end`` exactly.
    """
    _check_same_keys([start, end])
    return {
        k: (1 - alpha) * start[k] + alpha * end[k] if start[k].is_floating_point()
        else (start[k] if alpha < 0.5 else end[k]).clone()
        for k in start
    }


def uniform_soup(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """The uniform model soup: the mean of every floating tensor over ``states``.

    Computed as the first state plus the mean difference from it, so that a soup of
    copies of one model is that model exactly.
    """
    if not states:
        raise ValueError("a soup needs at least one model")
    _check_same_keys(states)
    first = states[0]
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = v + sum((s[k] - v for s in states[1:]), torch.zeros_like(v)) / len(states)
        else:
            out[k] = v.clone()
    return out


@torch.no_grad()
def greedy_soup(states: Sequence[State], accuracy: Callable[[State], float]) -> tuple[list[int], float]:
    """Wortsman et al.'s greedy soup: the members sorted by their own held-out ``accuracy``
    (best first, ties in their order), each added to the soup only if the uniform soup
    of the members so far and it is strictly more accurate than the soup without it.

    Returns the members kept (positions in ``states``, in the order they joined) and the
    soup's accuracy, which is never below the best member's: the soup starts as it.
    """
    if not states:
        raise ValueError("a soup needs at least one model")
    own = [accuracy(state) for state in states]
    order = sorted(range(len(states)), key=lambda i: -own[i])
    kept, best = [order[0]], own[order[0]]
    for i in order[1:]:
        tried = accuracy(uniform_soup([states[j] for j in kept + [i]]))
        if tried > best:
            kept, best = kept + [i], tried
    return kept, best


def ensemble_probabilities(models: Sequence[nn.Module], x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The mean of the members' softmax outputs (each model in eval mode)."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    total = None
    for model in models:
        model.eval()
        probs = torch.cat([F.softmax(model(xb), dim=1) for xb in x.split(batch_size)])
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(models)


def accuracy_and_loss(probabilities: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean negative log-likelihood of predicted class probabilities."""
    nll = F.nll_loss(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log(), y)
    return (probabilities.argmax(1) == y).sum().item() / len(y), float(nll)
