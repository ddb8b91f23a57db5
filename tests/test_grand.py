"""Tests for the GraNd score: batched per-example gradients against plain autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workflow.grand import GRAND_PARAMS, grand
from workflow.models import MLP, CNN1d

LENGTH, CLASSES = 40, 10


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    yield


def _warm_bn(model: nn.Module, seed: int) -> nn.Module:
    """A few train-mode forward passes, so BatchNorm running statistics are not (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(2.0 * torch.randn(32, LENGTH, generator=gen) + 0.5)
    return model


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return _warm_bn(CNN1d(LENGTH, CLASSES, channels=4), seed=1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return _warm_bn(MLP(LENGTH, CLASSES, width=16, depth=2), seed=1)


def _data(n: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, LENGTH, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)


def _loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """Reference: one ``backward`` per example in eval mode, norm over parameters named ``prefix*``."""
    was_training = model.training
    model.eval()
    out = []
    for x_i, y_i in zip(x, y):
        model.zero_grad()
        F.cross_entropy(model(x_i.unsqueeze(0)), y_i.unsqueeze(0)).backward()
        out.append(
            sum(p.grad.double().pow(2).sum() for n, p in model.named_parameters() if n.startswith(prefix))
        )
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return torch.stack(out).sqrt()


@pytest.mark.parametrize("make", [_cnn, _mlp], ids=["cnn1d", "mlp"])
def test_matches_per_example_autograd_loop(make) -> None:
    model = make()
    x, y = _data(24)
    expected = _loop_norms(model, x, y)
    got = grand(model, x, y, batch_size=10)
    assert got.dtype == torch.float64 and got.shape == (24,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_batch_size_does_not_change_results() -> None:
    model = _cnn()
    x, y = _data(50)
    torch.testing.assert_close(grand(model, x, y, batch_size=3), grand(model, x, y, batch_size=64), rtol=1e-6, atol=0)


class _Linear(nn.Module):
    """``nn.Linear`` with the head named ``head``, as the project's models name it."""

    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.head = nn.Linear(d, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_linear_model_closed_form() -> None:
    # For logits Wx + b the cross-entropy gradient is (p - e_y) outer [x, 1], so its
    # norm is ||p - e_y|| * sqrt(||x||^2 + 1): GraNd = EL2N * sqrt(||x||^2 + 1). This is
    # the input-norm correlation a published reproduction reported for GraNd at init.
    torch.manual_seed(0)
    d, c, n = 7, 5, 30
    model = _Linear(d, c)
    gen = torch.Generator().manual_seed(3)
    # Varied input scales, so the sqrt(||x||^2 + 1) factor matters.
    x = torch.randn(n, d, generator=gen) * torch.linspace(0.1, 5.0, n).unsqueeze(1)
    y = torch.randint(0, c, (n,), generator=gen)
    with torch.no_grad():
        p = torch.softmax(model(x).double(), dim=1)
    el2n = torch.linalg.vector_norm(p - F.one_hot(y, c).double(), dim=1)
    expected = el2n * (x.double().pow(2).sum(1) + 1).sqrt()
    torch.testing.assert_close(grand(model, x, y), expected, rtol=1e-5, atol=0)
    # Here the head is the whole model, so the approximation is exact.
    torch.testing.assert_close(grand(model, x, y, params="head"), expected, rtol=1e-5, atol=0)


def test_head_only_matches_loop_and_is_a_lower_bound() -> None:
    model = _cnn()
    x, y = _data(20)
    head = grand(model, x, y, params="head")
    torch.testing.assert_close(head, _loop_norms(model, x, y, prefix="head."), rtol=1e-5, atol=0)
    assert (head <= grand(model, x, y)).all()


@pytest.mark.parametrize("training", [True, False])
def test_model_state_and_mode_untouched(training: bool) -> None:
    model = _cnn()
    model.train(training)
    model.conv2[1].eval()  # a mixed-mode model (as a frozen BatchNorm leaves it) stays mixed
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(16)
    grand(model, x, y, batch_size=5)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, value in before.items():
        assert torch.equal(value, after[k]), k
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_are_left_out() -> None:
    # "all" means every parameter with requires_grad: a frozen body drops out of the norm.
    model = _cnn()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    x, y = _data(8)
    torch.testing.assert_close(grand(model, x, y), grand(model, x, y, params="head"), rtol=0, atol=0)


def test_empty_input() -> None:
    x, y = _data(0)
    assert grand(_mlp(), x, y).shape == (0,)


def test_bad_params_value_names_allowed_values() -> None:
    model = _mlp()
    x, y = _data(4)
    with pytest.raises(ValueError, match="all.*head"):
        grand(model, x, y, params="last")
    assert GRAND_PARAMS == ("all", "head")
