"""Aligning hidden units: a permutation leaves the function unchanged, activation matching
recovers a planted permutation exactly, and the line between a model and a permuted copy
of it, flat once aligned, shows the barrier the order alone made."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from workflow.analysis.alignment import match_units, permute_units, unit_blocks, unit_correlation
from workflow.analysis.connectivity import linear_connectivity
from workflow.models import build_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SPECS = {"cnn1d": {"name": "cnn1d", "channels": 6}, "mlp": {"name": "mlp", "width": 7, "depth": 3}}


def _model(kind: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(dict(SPECS[kind]), 40, 10)
    with torch.no_grad():  # BatchNorm away from its identity start, so a wrong permutation shows
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def _random_perms(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.permutation(getattr(model, name)[1].num_features) for name in unit_blocks(model)}


@pytest.mark.parametrize("kind", list(SPECS))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_permuting_units_leaves_the_function_unchanged(kind: str, seed: int) -> None:
    model = _model(kind, seed)
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(seed))
    permuted = permute_units(model, _random_perms(model, seed))
    assert not torch.equal(permuted.state_dict()[f"{unit_blocks(model)[0]}.0.weight"],
                           model.state_dict()[f"{unit_blocks(model)[0]}.0.weight"])
    torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(SPECS))
def test_matching_recovers_a_planted_permutation(kind: str) -> None:
    model = _model(kind, 0)
    planted = _random_perms(model, 1)
    shuffled = permute_units(model, planted)
    x = torch.randn(200, 40, generator=torch.Generator().manual_seed(2))
    matched = match_units(model, shuffled, x)
    perms = matched.perms
    for name, perm in planted.items():  # shuffled's unit j is model's unit planted[j]
        np.testing.assert_array_equal(perms[name], np.argsort(perm))
    restored = permute_units(shuffled, perms)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, rtol=0, atol=0)
    itself = match_units(model, model, x).correlation  # 1 per unit that varies, 0 per dead one
    assert matched.correlation == pytest.approx(itself)
    assert all(0 < c <= 1 + 1e-9 for c in itself.values())


def test_the_aligned_line_between_a_model_and_its_permutation_is_flat() -> None:
    model = _model("mlp", 3)
    shuffled = permute_units(model, _random_perms(model, 4))
    x = torch.randn(256, 40, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)  # labels the model gets all right
    kwargs = dict(x_train=x, y_train=y, alphas=[0.0, 0.5, 1.0], recompute_bn=False)
    plain = linear_connectivity(model, shuffled, x, y, **kwargs)
    aligned = linear_connectivity(model, permute_units(shuffled, match_units(model, shuffled, x).perms), x, y,
                                  **kwargs)
    assert float(plain["test_error_barrier"]) > 0.1
    assert float(aligned["test_error_barrier"]) == 0.0
    np.testing.assert_allclose(aligned["test_loss"], aligned["test_loss"][0], rtol=1e-5)


def test_correlation_closed_form_and_dead_units() -> None:
    a = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]], dtype=torch.float64)  # unit 1 never varies
    b = torch.tensor([[4.0, 0.0], [2.0, 1.0], [0.0, 5.0]], dtype=torch.float64)
    corr = unit_correlation(a, b)
    assert corr[0, 0] == pytest.approx(-1.0)
    assert corr[0, 1] == pytest.approx(np.corrcoef([0, 1, 2], [0, 1, 5])[0, 1])
    np.testing.assert_array_equal(corr[1], [0.0, 0.0])


def test_a_residual_network_is_refused() -> None:
    resnet = build_model({"name": "resnet20", "width": 4, "depth": 8, "channels_in": 1}, 64, 10)
    with pytest.raises(ValueError, match="supported models: cnn1d, mlp"):
        unit_blocks(resnet)


def test_the_config_check_names_exactly_the_models_alignment_supports() -> None:
    from workflow.analysis.alignment import ALIGNABLE
    from workflow.analysis.plan import ALIGNABLE_MODELS

    assert tuple(ALIGNABLE) == ALIGNABLE_MODELS
