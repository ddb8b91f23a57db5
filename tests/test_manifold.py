"""Tests for the class-manifold dimension on planted regions of known dimension."""

from __future__ import annotations

import math

import torch
from torch import nn

from workflow.analysis.manifold import Cutting, effective_dimension, success_rates

D = 8


class Tube(nn.Module):
    """Class 1 is confident only near a k-dimensional affine set: its logit falls with the
    squared distance from ``anchor + span(first k axes)``; class 0's logit is 0."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.anchor = nn.Parameter(torch.full((D,), 0.5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off = (x - self.anchor)[:, self.k:]  # the directions the set does not span
        logit = 5.0 - 50.0 * off.square().sum(1)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def _point(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(D, generator=generator, dtype=torch.float64)


CUT = Cutting(threshold=0.99, trials=6, steps=500, lr=1.0)


def test_a_planted_k_dimensional_region_has_dimension_k() -> None:
    for k in (2, 5):
        # a random subspace meets the k-dimensional set once d + k >= D (at d = D - k in
        # one point, which the search must find), and misses it before
        rates = success_rates(Tube(k), 1, [D - k - 1, D - k, D - k + 1], _point, CUT)
        assert rates[D - k - 1] < 0.5 <= rates[D - k] and rates[D - k + 1] == 1, rates
        assert effective_dimension(rates, D) == k


def test_a_half_space_is_reached_from_any_line() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(D, 2).double()
    with torch.no_grad():
        linear.weight.mul_(20)  # a boundary steep enough to cross within the search's reach
    rates = success_rates(linear, 0, [1, 2], _point, CUT)
    assert rates == {1: 1.0, 2: 1.0}
    assert effective_dimension(rates, D) == D - 1  # the line is the smallest subspace tried


def test_the_model_is_left_as_it_was() -> None:
    model = Tube(3).train()
    before = model.anchor.detach().clone()
    success_rates(model, 1, [2], _point, CUT)
    assert torch.equal(model.anchor, before) and model.training and model.anchor.requires_grad


def test_no_success_gives_no_dimension() -> None:
    assert math.isnan(effective_dimension({1: 0.0, 2: 0.25}, D))
    assert effective_dimension({1: 0.0, 2: 0.5, 3: 1.0}, D) == D - 2
