"""Lazy vs rich: effective ranks against closed forms, and distances from the
initialisation against known perturbations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workflow.analysis.rank import (
    EFFECTIVE_RANKS,
    distance_from_init,
    entropy_effective_rank,
    participation_ratio,
    representation_ranks,
    weight_ranks,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DEFINITIONS = pytest.mark.parametrize("rank", list(EFFECTIVE_RANKS.values()), ids=list(EFFECTIVE_RANKS))


@DEFINITIONS
@pytest.mark.parametrize("k", [1, 3, 10])
def test_the_identity_has_effective_rank_k(rank, k: int) -> None:
    assert rank(np.eye(k)) == pytest.approx(k, rel=1e-12)


@DEFINITIONS
def test_a_rank_one_matrix_has_effective_rank_1(rank) -> None:
    rng = np.random.default_rng(0)
    assert rank(np.outer(rng.standard_normal(7), rng.standard_normal(5))) == pytest.approx(1, rel=1e-9)


def test_a_diagonal_matrix_matches_the_formulas_by_hand() -> None:
    sigma = np.array([4.0, 2.0, 1.0, 1.0])
    p = sigma / 8
    assert entropy_effective_rank(np.diag(sigma)) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
    # (16 + 4 + 1 + 1)^2 / (256 + 16 + 1 + 1)
    assert participation_ratio(np.diag(sigma)) == pytest.approx(22.0**2 / 274.0, rel=1e-12)
    # the order and sign of the singular values' directions do not matter
    assert entropy_effective_rank(np.diag(-sigma[::-1])) == pytest.approx(entropy_effective_rank(np.diag(sigma)))


@DEFINITIONS
@pytest.mark.parametrize("scale", [1e-6, 0.5, 1e6])
def test_effective_rank_is_invariant_to_scaling(rank, scale: float) -> None:
    m = np.random.default_rng(1).standard_normal((6, 9))
    assert rank(scale * m) == pytest.approx(rank(m), rel=1e-10)


@DEFINITIONS
def test_a_zero_matrix_is_refused(rank) -> None:
    with pytest.raises(ValueError, match="zero"):
        rank(np.zeros((3, 3)))


def test_weight_ranks_flatten_conv_kernels_per_output_channel(make_cnn) -> None:
    state = make_cnn(seed=0).state_dict()
    ds = weight_ranks(state)
    assert ds.entropy.dims == ("param",)
    assert list(ds.param.values) == ["conv1.0.weight", "conv2.0.weight", "conv3.0.weight", "head.weight"]  # no BatchNorm scales
    kernel = state["conv2.0.weight"]  # (out, in, k)
    by_hand = kernel.reshape(kernel.shape[0], -1).double().numpy()
    assert float(ds.entropy.sel(param="conv2.0.weight")) == pytest.approx(entropy_effective_rank(by_hand), rel=1e-12)
    assert int(ds.max_rank.sel(param="conv2.0.weight")) == min(by_hand.shape)


def test_representation_ranks_are_of_the_centred_activations() -> None:
    rng = np.random.default_rng(2)
    acts = rng.standard_normal((50, 2)) @ rng.standard_normal((2, 6))  # rank 2
    ds = representation_ranks({"flat": acts + 100.0, "conv": (acts + 5.0).reshape(50, 2, 3)})
    centred = acts - acts.mean(0)
    for layer in ("flat", "conv"):
        for name, rank in EFFECTIVE_RANKS.items():
            assert float(ds[name].sel(layer=layer)) == pytest.approx(rank(centred), rel=1e-9)
    assert ds.entropy.sel(layer="flat") <= 2 + 1e-9


def _state(make_cnn, seed: int) -> dict[str, torch.Tensor]:
    return copy.deepcopy(make_cnn(seed=seed).state_dict())


def test_a_model_is_at_distance_0_from_itself(make_cnn) -> None:
    state = _state(make_cnn, 0)
    ds = distance_from_init(state, copy.deepcopy(state))
    assert float(ds.total_distance) == 0 and float(ds.total_relative_distance) == 0
    assert np.all(ds.distance.values == 0)


def test_a_known_perturbation_is_at_its_norm(make_cnn) -> None:
    init = _state(make_cnn, 0)
    state = copy.deepcopy(init)
    delta = torch.randn(state["head.weight"].shape, generator=torch.Generator().manual_seed(1))
    state["head.weight"] += delta
    ds = distance_from_init(state, init)
    norm = float(delta.double().norm())
    assert float(ds.distance.sel(layer="head")) == pytest.approx(norm, rel=1e-6)
    assert float(ds.total_distance) == pytest.approx(norm, rel=1e-6)
    assert float(ds.distance.drop_sel(layer="head").sum()) == 0
    head_init = float(torch.cat([init["head.weight"].flatten(), init["head.bias"]]).double().norm())
    assert float(ds.relative_distance.sel(layer="head")) == pytest.approx(norm / head_init, rel=1e-6)


def test_per_layer_squares_sum_to_the_total_square(make_cnn) -> None:
    ds = distance_from_init(_state(make_cnn, 1), _state(make_cnn, 0))
    assert float((ds.distance**2).sum()) == pytest.approx(float(ds.total_distance) ** 2, rel=1e-12)
    assert float((ds.init_norm**2).sum()) == pytest.approx(float(ds.total_init_norm) ** 2, rel=1e-12)
    assert ds.distance.dims == ("layer",)


def test_batchnorm_statistics_are_not_weights(make_cnn) -> None:
    init = _state(make_cnn, 0)
    state = copy.deepcopy(init)
    state["conv1.1.running_mean"] += 1.0
    state["conv1.1.num_batches_tracked"] += 5
    assert float(distance_from_init(state, init).total_distance) == 0
    chosen = distance_from_init(state, init, names=["conv1.1.running_mean"])
    assert float(chosen.total_distance) == pytest.approx(np.sqrt(len(state["conv1.1.running_mean"])))


def test_a_zero_initial_norm_gives_a_nan_ratio() -> None:
    init = {"fc.bias": torch.zeros(3)}
    ds = distance_from_init({"fc.bias": torch.ones(3)}, init)
    assert float(ds.distance.sel(layer="fc")) == pytest.approx(np.sqrt(3))
    assert np.isnan(float(ds.relative_distance.sel(layer="fc")))
