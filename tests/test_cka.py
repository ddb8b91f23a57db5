"""Linear CKA: the defining properties (Kornblith et al. 2019) and its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workflow.analysis.similarity import cka_matrix, linear_cka, linear_cka_gram

# Enough examples to find counterexamples, few enough for a fast suite.
PROPERTY = settings(max_examples=40, deadline=None)
VALUES = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)


def _varies(x: np.ndarray) -> bool:
    """Far from constant: CKA of a constant representation is undefined.

    Also keeps the spread within 20x of the offset: the Gram form and the published
    formula use uncentred kernels and lose about eps * (offset / spread)^2, which
    would swamp their tolerances (linear_cka itself centres first and does not).
    """
    spread = float(np.linalg.norm(x - x.mean(axis=0)))
    return spread > 1e-2 and spread > 0.05 * float(np.linalg.norm(x))


@st.composite
def representations(draw: st.DrawFn, count: int = 2) -> list[np.ndarray]:
    """``count`` float64 representations of the same n examples, widths drawn apart."""
    n = draw(st.integers(8, 40))
    reps = []
    for _ in range(count):
        d = draw(st.integers(2, 12))
        x = draw(hnp.arrays(np.float64, (n, d), elements=VALUES))
        assume(_varies(x))
        reps.append(x)
    return reps


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))  # sign fix: Haar-distributed, not just orthogonal


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The published formula, written out: HSIC(K, L) = trace(K H L H) / (n-1)^2."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@PROPERTY
@given(representations(count=1))
def test_self_similarity_is_one(reps):
    (x,) = reps
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-10)


@PROPERTY
@given(representations())
def test_symmetric(reps):
    x, y = reps
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


@PROPERTY
@given(representations(), st.integers(0, 2**32 - 1))
def test_invariant_to_orthogonal_transforms(reps, seed):
    x, y = reps
    q = random_orthogonal(y.shape[1], seed)
    assert linear_cka(x, y @ q) == pytest.approx(linear_cka(x, y), abs=1e-9)


@PROPERTY
@given(representations(), st.floats(1e-3, 1e3))
def test_invariant_to_isotropic_scaling(reps, scale):
    x, y = reps
    assert linear_cka(x, scale * y) == pytest.approx(linear_cka(x, y), abs=1e-9)


@PROPERTY
@given(representations(), st.data())
def test_invariant_to_constant_offset(reps, data):
    x, y = reps
    offset = data.draw(hnp.arrays(np.float64, y.shape[1], elements=st.floats(-1e3, 1e3)))
    assert linear_cka(x, y + offset) == pytest.approx(linear_cka(x, y), abs=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_not_invariant_to_general_invertible_maps(seed):
    # Generic data on purpose: for a rank-one centred X every map leaves CKA at 1.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 8))
    singular_values = np.geomspace(1.0, 1e3, 8)  # invertible, far from isotropic
    a = random_orthogonal(8, seed) @ np.diag(singular_values) @ random_orthogonal(8, seed + 100)
    assert np.linalg.matrix_rank(a) == 8
    assert abs(linear_cka(x, x @ a) - linear_cka(x, x)) > 1e-3


@PROPERTY
@given(representations())
def test_feature_and_gram_forms_agree(reps):
    x, y = reps
    assert linear_cka(x, y) == pytest.approx(linear_cka_gram(x, y), abs=1e-10)


@PROPERTY
@given(representations())
def test_matches_published_formula(reps):
    x, y = reps
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), abs=1e-6)


def test_float64_matters_with_large_offsets():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(100, 10)) + 1e3).astype(np.float32)
    y = 2 * x[:, :5] + rng.normal(size=(100, 5)).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    # CKA ignores offsets, so centring in float64 first gives the accurate value
    exact = reference_cka(x64 - x64.mean(axis=0), y64 - y64.mean(axis=0))
    assert abs(reference_cka(x, y) - exact) > 1e-3  # the same formula in float32
    # float32 inputs, numpy or torch, are converted before any arithmetic
    assert linear_cka(x, y) == pytest.approx(exact, abs=1e-10)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(exact, abs=1e-10)


@PROPERTY
@given(representations(count=3))
def test_cka_matrix_matches_pairwise(reps):
    # one wide layer (d > n) exercises the Gram path inside cka_matrix
    n = len(reps[0])
    wide = np.random.default_rng(n).normal(size=(n, 2 * n + 1))
    acts_a = {"first": reps[0], "second": reps[1].reshape(n, 1, -1)}  # 3-D: flattened
    acts_b = {"wide": wide, "third": reps[2], "first": reps[0]}
    cka = cka_matrix(acts_a, acts_b)
    assert cka.name == "cka"
    assert cka.dims == ("layer_a", "layer_b")
    assert list(cka["layer_a"].values) == ["first", "second"]
    assert list(cka["layer_b"].values) == ["wide", "third", "first"]
    for name_a, a in acts_a.items():
        for name_b, b in acts_b.items():
            expected = linear_cka(a.reshape(n, -1), b)
            assert float(cka.sel(layer_a=name_a, layer_b=name_b)) == pytest.approx(expected, abs=1e-10)


def test_cka_matrix_of_a_model_with_itself_has_unit_diagonal():
    rng = np.random.default_rng(1)
    acts = {"narrow": rng.normal(size=(20, 3)), "wide": rng.normal(size=(20, 4, 30))}
    cka = cka_matrix(acts, acts)
    np.testing.assert_allclose(np.diag(cka.values), 1.0, atol=1e-12)
    np.testing.assert_allclose(cka.values, cka.values.T, atol=1e-12)


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_gram])
def test_mismatched_sample_counts_raise(cka):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))


def test_cka_matrix_mismatched_sample_counts_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        cka_matrix({"a": rng.normal(size=(10, 3))}, {"b": rng.normal(size=(11, 30))})


@pytest.mark.parametrize("cka", [linear_cka, linear_cka_gram])
def test_constant_representation_raises(cka):
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="constant"):
        cka(x, np.full((10, 4), 0.1))
