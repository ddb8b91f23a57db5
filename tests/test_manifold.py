"""Tests for the class-manifold dimension on planted regions of known dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from workflow.analysis.manifold import Cutting, class_success_rates, effective_dimension, success_rates

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


def _sequential_rates(model: nn.Module, labels: list[int], dims: list[int], cut: Cutting, seed: int) -> np.ndarray:
    """The search one trial at a time, as the paper describes it: the reference for the batch."""
    generator = torch.Generator().manual_seed(seed)
    rates = np.zeros((len(labels), len(dims)))
    for j, d in enumerate(dims):
        for _ in range(cut.trials):
            x0 = _point(generator)
            basis = torch.linalg.qr(torch.randn(D, d, generator=generator, dtype=torch.float64))[0]
            for i, label in enumerate(labels):
                t = torch.zeros(d, dtype=torch.float64, requires_grad=True)
                optimiser = torch.optim.Adam([t], lr=cut.lr)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cut.steps)
                for _ in range(cut.steps + 1):
                    log_p = torch.log_softmax(model((x0 + basis @ t)[None]), -1)[0, label]
                    if float(log_p) >= math.log(cut.threshold):
                        rates[i, j] += 1 / cut.trials
                        break
                    optimiser.zero_grad()
                    (-log_p).backward()
                    optimiser.step()
                    schedule.step()
    return rates


def test_the_batched_search_finds_what_one_trial_at_a_time_finds() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        model[2].weight.mul_(3)
    cut = Cutting(threshold=0.9, trials=4, steps=60, lr=0.3)
    labels, dims = [0, 1, 2], [1, 2, 4]
    batched = class_success_rates(model, labels, dims, _point, cut, seed=5)
    np.testing.assert_allclose(batched, _sequential_rates(model, labels, dims, cut, seed=5))
    assert 0 < batched.mean() < 1  # some trials reach their class and some do not: the test can tell


def test_dimensions_beyond_the_input_are_refused_before_any_search() -> None:
    model = nn.Sequential(nn.Linear(D, 3)).double()
    calls = []

    def draw(generator: torch.Generator) -> torch.Tensor:
        calls.append(1)
        return _point(generator)

    with pytest.raises(ValueError, match=rf"subspace dimensions \[{D + 1}\] must lie in 1..{D}"):
        class_success_rates(model, [0], [1, D + 1], draw, Cutting(trials=2, steps=5))
    assert len(calls) == 1  # only the draw that tells the input's size: no search ran
    assert model.training and all(p.requires_grad for p in model.parameters())
