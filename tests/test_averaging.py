"""Tests for WiSE-FT, model soups and ensembles: exact endpoints, soups of copies,
and agreement with closed forms on linear models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workflow.averaging import accuracy_and_loss, ensemble_probabilities, greedy_soup, interpolate, uniform_soup

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _states(make_cnn, *seeds: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in seeds:
        model = make_cnn(seed=seed)
        with torch.no_grad():  # BatchNorm statistics that differ between the models
            for name, buffer in model.named_buffers():
                if buffer.is_floating_point():
                    buffer.add_(torch.rand(buffer.shape, generator=torch.Generator().manual_seed(seed)))
        out.append({k: v.clone() for k, v in model.state_dict().items()})
    return out


def test_wiseft_endpoints_are_the_two_models_exactly(make_cnn) -> None:
    a, b = _states(make_cnn, 0, 1)
    for alpha, expected in ((0.0, a), (1.0, b)):
        out = interpolate(a, b, alpha)
        assert all(torch.equal(out[k], expected[k]) for k in a), alpha


def test_wiseft_midpoint_is_the_soup_of_the_two(make_cnn) -> None:
    a, b = _states(make_cnn, 0, 1)
    mid, soup = interpolate(a, b, 0.5), uniform_soup([a, b])
    for k in a:
        torch.testing.assert_close(mid[k], soup[k], rtol=1e-6, atol=1e-7)


def test_the_soup_of_copies_of_one_model_is_that_model(make_cnn) -> None:
    (a,) = _states(make_cnn, 3)
    soup = uniform_soup([a, a, a])
    assert all(torch.equal(soup[k], a[k]) for k in a)


def test_the_soup_is_the_mean_of_every_floating_tensor(make_cnn) -> None:
    states = _states(make_cnn, 0, 1, 2)
    soup = uniform_soup(states)
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in states]).mean(0), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(v, states[0][k])


def test_interpolating_a_linear_model_interpolates_its_outputs() -> None:
    """No nonlinearity: the outputs of the interpolated weights are the interpolated outputs."""
    torch.manual_seed(0)
    a, b = nn.Linear(6, 3).double(), nn.Linear(6, 3).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        model = nn.Linear(6, 3).double()
        model.load_state_dict(interpolate(a.state_dict(), b.state_dict(), alpha))
        torch.testing.assert_close(model(x), (1 - alpha) * a(x) + alpha * b(x))


def test_mismatched_models_are_refused(make_cnn) -> None:
    (a,) = _states(make_cnn, 0)
    with pytest.raises(ValueError, match="state dicts differ"):
        uniform_soup([a, {k: v for k, v in a.items() if not k.startswith("head.")}])


def test_an_ensemble_averages_the_members_probabilities() -> None:
    torch.manual_seed(0)
    members = [nn.Linear(4, 3) for _ in range(3)]
    x = torch.randn(7, 4)
    probs = ensemble_probabilities(members, x)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(ensemble_probabilities(members[:1] * 4, x), members[0](x).softmax(1))


def test_accuracy_and_loss_of_probabilities_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]])
    y = torch.tensor([0, 2, 2])
    acc, nll = accuracy_and_loss(probs, y)
    assert acc == pytest.approx(2 / 3)
    assert nll == pytest.approx(-(math.log(0.7) + math.log(0.25) + math.log(0.8)) / 3)


def _closeness(target: float):
    """A held-out 'accuracy' of a one-weight state: higher the closer its weight is to ``target``."""
    return lambda state: -abs(float(state["w"]) - target)


def test_a_greedy_soup_adds_members_in_order_while_held_out_accuracy_strictly_rises() -> None:
    states = [{"w": torch.tensor(v)} for v in (0.0, 4.0, 1.0, 3.0)]
    # members by their own accuracy for target 2: 1 and 3 (tied, order kept), then 0 and 4
    kept, accuracy = greedy_soup(states, _closeness(2.0))
    assert kept == [2, 3] and accuracy == 0.0  # soup of 1 and 3 is 2; adding 0 or 4 would move it away
    # a soup never does worse than its best member: it starts as that member
    kept, accuracy = greedy_soup(states, _closeness(4.0))
    assert kept == [1] and accuracy == 0.0
    for target in (-1.0, 0.5, 2.2, 10.0):
        kept, accuracy = greedy_soup(states, _closeness(target))
        assert accuracy >= max(_closeness(target)(s) for s in states)
        assert accuracy == _closeness(target)(uniform_soup([states[i] for i in kept]))


def test_a_greedy_soup_adds_nothing_that_only_ties() -> None:
    states = [{"w": torch.tensor(1.0)}, {"w": torch.tensor(1.0)}]
    assert greedy_soup(states, _closeness(1.0))[0] == [0]  # the copy would not strictly improve
