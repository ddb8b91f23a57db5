"""Tests for the training-free architecture scores: the hidden-covariance score on cases
computed by hand, and the rank agreement on fixed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workflow.analysis.training_free import K, hidden_covariance_score, hidden_units, layer_scores, rank_agreement


def _term(eigenvalue: float) -> float:
    return math.log(eigenvalue + K) + 1 / (eigenvalue + K)


def test_uncorrelated_units_score_highest() -> None:
    # four units, orthogonal and centred over the observations: the correlation is I
    hidden = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1],
                       [-1, -1, -1, -1], [-1, 1, -1, 1], [-1, -1, 1, 1], [-1, 1, 1, -1]], dtype=float)
    assert hidden_covariance_score(hidden) == pytest.approx(-4 * _term(1.0))
    # scaling and shifting a unit changes no correlation
    moved = hidden * np.array([3.0, 0.5, 1.0, 7.0]) + np.array([1.0, -2.0, 0.0, 5.0])
    assert hidden_covariance_score(moved) == pytest.approx(hidden_covariance_score(hidden))


def test_a_duplicated_unit_gives_the_eigenvalues_two_and_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(50)
    hidden = np.stack([a, 2 * a + 1], axis=1)  # perfectly correlated: [[1, 1], [1, 1]]
    assert hidden_covariance_score(hidden) == pytest.approx(-(_term(2.0) + _term(0.0)), rel=1e-6)
    # correlation c: eigenvalues 1 + c and 1 - c
    b = rng.standard_normal(50)
    hidden = np.stack([a, b], axis=1)
    c = np.corrcoef(a, b)[0, 1]
    assert hidden_covariance_score(hidden) == pytest.approx(-(_term(1 + c) + _term(1 - c)))


def test_dead_units_are_left_out() -> None:
    hidden = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [3.0, 5.0, 0.0]])
    assert hidden_covariance_score(hidden) == pytest.approx(hidden_covariance_score(hidden[:, :2]))
    assert math.isnan(hidden_covariance_score(hidden[:, [0, 2]]))


def test_a_convolution_counts_every_position_as_an_observation() -> None:
    outputs = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # (n, channels, length)
    units = hidden_units(outputs)
    assert units.shape == (8, 3)
    np.testing.assert_array_equal(units[5], outputs[1, :, 1])


def test_layer_scores_read_each_layer_of_the_model(make_cnn, task) -> None:
    scores = layer_scores(make_cnn(seed=0), task.x_train[:64])
    assert list(scores) == ["conv1", "conv2", "conv3", "head"]
    assert all(np.isfinite(v) and v < 0 for v in scores.values())


def test_rank_agreement_on_fixed_rankings() -> None:
    # one discordant pair of six: tau = (5 - 1) / 6
    agreement = rank_agreement(np.array([1, 2, 3, 4]), np.array([0.1, 0.2, 0.4, 0.3]))
    assert agreement["kendall_tau"] == pytest.approx(4 / 6)
    assert agreement["spearman_rho"] == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert rank_agreement(np.arange(5), -np.arange(5.0))["kendall_tau"] == pytest.approx(-1)
    # NaN pairs are left out
    assert rank_agreement(np.array([1, 2, np.nan, 3]), np.array([1, 2, 5, 3]))["kendall_tau"] == pytest.approx(1)
    assert math.isnan(rank_agreement(np.array([1.0, 2.0]), np.array([1.0, 2.0]))["kendall_tau"])
