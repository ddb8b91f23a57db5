"""Representational similarity measures: their defining properties, streaming, and
agreement with independent transcriptions of the published formulas.

References written out here, independently of the implementation:

* Kornblith et al. 2019 (``gram_linear``, ``gram_rbf``, ``center_gram``, ``cka``,
  ``feature_space_linear_cka`` from their published notebook);
* Song et al. 2012, unbiased HSIC, eq. (5), in its trace form;
* CCA by QR of the centred data and an SVD (Björck & Golub), SVCCA (Raghu et al.
  2017) by an SVD of the data, PWCCA (Morcos et al. 2018) weights from the
  canonical variates, all with scipy.linalg;
* Procrustes distance by solving the Procrustes problem (scipy.linalg.orthogonal_procrustes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow import storage
from workflow.analysis.activations import activations_dataset
from workflow.analysis import hsic as hsic_module
from workflow.analysis.similarity import (
    MEASURES,
    debiased_cka,
    linear_cka,
    linear_cka_gram,
    procrustes_distance,
    pwcca,
    rbf_cka,
    similarity_matrices,
    svcca,
)

PROPERTY = settings(max_examples=20, deadline=None)


# --- data -------------------------------------------------------------------------------------


def related(seed: int, n: int, dx: int, dy: int, noise: float = 0.5, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two representations of the same n samples: y a noisy linear read-out of x.

    Columns of x get unequal scales so that no measure is trivially isotropic.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) * rng.uniform(0.5, 3.0, size=dx) + offset
    y = x @ rng.normal(size=(dx, dy)) + noise * rng.normal(size=(n, dy)) + offset
    return x, y


@st.composite
def pairs(draw: st.DrawFn, min_n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A related pair with n comfortably above dx + dy (so CCA is well posed), dx < dy."""
    dx = draw(st.integers(2, 6))
    dy = draw(st.integers(dx + 1, 9))
    n = draw(st.integers(max(min_n, 3 * (dx + dy)), 60))
    return related(draw(st.integers(0, 2**32 - 1)), n, dx, dy, draw(st.floats(0.1, 2.0)), draw(st.floats(-50, 50)))


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def ill_conditioned(d: int, seed: int) -> np.ndarray:
    """An invertible map far from a scaled rotation (condition number 100)."""
    return random_orthogonal(d, seed) @ np.diag(np.geomspace(1.0, 100.0, d)) @ random_orthogonal(d, seed + 1)


# --- reference transcriptions -----------------------------------------------------------------------


def gram_linear(x: np.ndarray) -> np.ndarray:
    return x.dot(x.T)


def gram_rbf(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def center_gram(gram: np.ndarray, unbiased: bool = False) -> np.ndarray:
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def kornblith_cka(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool = False) -> float:
    gram_x = center_gram(gram_x, unbiased=debiased)
    gram_y = center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def _debiased_dot_product_similarity_helper(xty, sum_squared_rows_x, sum_squared_rows_y, squared_norm_x,
                                            squared_norm_y, n):
    return (xty - n / (n - 2.0) * sum_squared_rows_x.dot(sum_squared_rows_y)
            + squared_norm_x * squared_norm_y / ((n - 1) * (n - 2)))


def feature_space_linear_cka(features_x: np.ndarray, features_y: np.ndarray, debiased: bool = False) -> float:
    features_x = features_x - np.mean(features_x, 0, keepdims=True)
    features_y = features_y - np.mean(features_y, 0, keepdims=True)
    dot_product_similarity = np.linalg.norm(features_x.T.dot(features_y)) ** 2
    normalization_x = np.linalg.norm(features_x.T.dot(features_x))
    normalization_y = np.linalg.norm(features_y.T.dot(features_y))
    if debiased:
        n = features_x.shape[0]
        sum_squared_rows_x = np.einsum("ij,ij->i", features_x, features_x)
        sum_squared_rows_y = np.einsum("ij,ij->i", features_y, features_y)
        squared_norm_x, squared_norm_y = np.sum(sum_squared_rows_x), np.sum(sum_squared_rows_y)
        dot_product_similarity = _debiased_dot_product_similarity_helper(
            dot_product_similarity, sum_squared_rows_x, sum_squared_rows_y, squared_norm_x, squared_norm_y, n)
        normalization_x = np.sqrt(_debiased_dot_product_similarity_helper(
            normalization_x**2, sum_squared_rows_x, sum_squared_rows_x, squared_norm_x, squared_norm_x, n))
        normalization_y = np.sqrt(_debiased_dot_product_similarity_helper(
            normalization_y**2, sum_squared_rows_y, sum_squared_rows_y, squared_norm_y, squared_norm_y, n))
    return dot_product_similarity / (normalization_x * normalization_y)


def song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, eq. (5), with K~ and L~ the kernels with zeroed diagonals."""
    m = len(k)
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(m)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((m - 1) * (m - 2))
            - 2 / (m - 2) * one @ k @ l @ one) / (m * (m - 3))


def minibatch_cka(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Nguyen et al. 2021: mean unbiased HSIC over consecutive minibatches, then CKA."""
    starts = [s for s in range(0, len(x), batch) if len(x[s : s + batch]) >= 4]
    hsic = np.mean([[song_unbiased_hsic(gram_linear(u[s : s + batch]), gram_linear(v[s : s + batch]))
                     for u, v in ((x, y), (x, x), (y, y))] for s in starts], axis=0)
    return hsic[0] / np.sqrt(hsic[1] * hsic[2])


def qr_cca(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlations and unit-norm canonical variates (columns) of each side."""
    qx, _ = scipy.linalg.qr(x - x.mean(0), mode="economic")
    qy, _ = scipy.linalg.qr(y - y.mean(0), mode="economic")
    u, rho, vt = scipy.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho, qx @ u, qy @ vt.T


def principal_scores(x: np.ndarray, variance: float = 1.0, dims: int | None = None) -> np.ndarray:
    """SVCCA's first step: the centred data on its top principal directions."""
    u, s, _ = scipy.linalg.svd(x - x.mean(0), full_matrices=False)
    u, s = u[:, :dims], s[:dims]
    kept = np.searchsorted(np.cumsum(s**2) / np.sum(s**2), variance) + 1 if variance < 1 else len(s)
    return u[:, :kept] * s[:kept]


def reference_svcca(x: np.ndarray, y: np.ndarray, variance: float = 0.99, dims: int | None = None) -> float:
    rho, _, _ = qr_cca(principal_scores(x, variance, dims), principal_scores(y, variance, dims))
    return float(np.mean(rho))


def reference_pwcca(x: np.ndarray, y: np.ndarray, dims: int | None = None) -> float:
    """alpha_i = sum_j |<h_i, x_j>| over the units x_j of the side with fewer dims."""
    rho, hx, hy = qr_cca(principal_scores(x, dims=dims), principal_scores(y, dims=dims))
    units, variates = (x, hx) if min(x.shape[1], dims or x.shape[1]) <= min(y.shape[1], dims or y.shape[1]) else (y, hy)
    alpha = np.abs((units - units.mean(0)).T @ variates).sum(axis=0)
    return float(alpha @ rho / alpha.sum())


def reference_procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """min over orthogonal R of ||X R - Y||_F^2, narrower side zero-padded (Ding et al. 2021)."""
    x, y = (z - z.mean(0) for z in (x, y))
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    width = max(x.shape[1], y.shape[1])
    x, y = (np.pad(z, ((0, 0), (0, width - z.shape[1]))) for z in (x, y))
    r, _ = scipy.linalg.orthogonal_procrustes(x, y)
    return float(np.linalg.norm(x @ r - y) ** 2)


# --- the measures as functions of (x, y) ------------------------------------------------------------

FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "linear_cka": linear_cka,
    "rbf_cka": lambda x, y: rbf_cka(x, y, bandwidth=0.8),
    "debiased_cka": debiased_cka,
    "minibatch_cka": lambda x, y: debiased_cka(x, y, batch=10),
    "svcca": svcca,
    "pwcca": pwcca,
    "procrustes": procrustes_distance,
}
SELF_VALUE = {name: 0.0 if name == "procrustes" else 1.0 for name in FUNCTIONS}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_representation_with_itself_is_identical(name):
    x, _ = related(0, 40, 6, 6)
    assert FUNCTIONS[name](x, x) == pytest.approx(SELF_VALUE[name], abs=1e-10)


def test_a_rotated_copy_has_procrustes_distance_zero():
    x, _ = related(1, 40, 6, 6, offset=10.0)
    copy = 3.0 * x @ random_orthogonal(6, 1) + 5.0
    assert procrustes_distance(x, copy) == pytest.approx(0.0, abs=1e-10)
    assert procrustes_distance(x, x @ ill_conditioned(6, 1)) > 1e-3


@PROPERTY
@given(pairs(), st.integers(0, 2**32 - 1), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_invariant_to_rotations_isotropic_scaling_and_offsets(pair, seed, scale, offset):
    # PWCCA weighs variates by their overlap with x's units (x is the narrower side),
    # so only maps of y leave it unchanged; the other measures are symmetric.
    x, y = pair
    y_mapped = scale * y @ random_orthogonal(y.shape[1], seed) + offset
    x_mapped = scale * x @ random_orthogonal(x.shape[1], seed + 1) - offset
    for name, f in FUNCTIONS.items():
        expected = f(x, y)
        assert f(x, y_mapped) == pytest.approx(expected, abs=1e-8), name
        if name != "pwcca":
            assert f(x_mapped, y) == pytest.approx(expected, abs=1e-8), name


@PROPERTY
@given(pairs(), st.integers(0, 2**32 - 1))
def test_cca_is_invariant_to_invertible_maps(pair, seed):
    x, y = pair
    y_mapped = y @ ill_conditioned(y.shape[1], seed)
    # without the SVD cut, SVCCA is the mean canonical correlation: any invertible map
    assert svcca(x @ ill_conditioned(x.shape[1], seed), y_mapped, variance=1.0) == pytest.approx(
        svcca(x, y, variance=1.0), abs=1e-8)
    # PWCCA: invertible maps of the side that does not give the weights
    assert pwcca(x, y_mapped) == pytest.approx(pwcca(x, y), abs=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_pwcca_weights_change_under_a_rotation_of_the_units_they_count(seed):
    x, y = related(seed, 60, 4, 8, noise=2.0)
    assert abs(pwcca(x @ random_orthogonal(4, seed), y) - pwcca(x, y)) > 1e-4


@pytest.mark.parametrize("name", ["linear_cka", "rbf_cka", "debiased_cka", "procrustes"])
def test_not_invariant_to_general_invertible_maps(name):
    x, y = related(2, 60, 6, 6)
    f = FUNCTIONS[name]
    assert abs(f(x, y @ ill_conditioned(6, 2)) - f(x, y)) > 1e-3


@PROPERTY
@given(pairs(min_n=10))
def test_gram_and_feature_forms_agree(pair):
    x, y = pair
    streamed = similarity_matrices({"x": x}, {"y": y}, measures=("linear_cka",), chunk=7)
    assert float(streamed["linear_cka"].item()) == pytest.approx(linear_cka_gram(x, y), abs=1e-10)


# --- agreement with the published formulas ---------------------------------------------------------------


@PROPERTY
@given(pairs(min_n=10))
def test_cka_matches_kornblith(pair):
    x, y = pair
    assert linear_cka(x, y) == pytest.approx(kornblith_cka(gram_linear(x), gram_linear(y)), abs=1e-6)
    assert linear_cka(x, y) == pytest.approx(feature_space_linear_cka(x, y), abs=1e-6)
    assert rbf_cka(x, y, 0.5) == pytest.approx(kornblith_cka(gram_rbf(x, 0.5), gram_rbf(y, 0.5)), abs=1e-6)
    debiased = debiased_cka(x, y)
    assert debiased == pytest.approx(kornblith_cka(gram_linear(x), gram_linear(y), debiased=True), abs=1e-6)
    assert debiased == pytest.approx(feature_space_linear_cka(x, y, debiased=True), abs=1e-6)


@PROPERTY
@given(pairs(min_n=10), st.integers(4, 20))
def test_minibatch_cka_matches_song_unbiased_hsic(pair, batch):
    x, y = pair
    assert debiased_cka(x, y, batch=batch) == pytest.approx(minibatch_cka(x, y, batch), abs=1e-6)


@pytest.mark.parametrize("n", [96, 101, 98])  # whole minibatches; a last one of 5; a last one of 2, left out
def test_both_forms_of_the_minibatch_hsic_match_song_s_estimator(monkeypatch, n):
    """<K, L> from the features (||X^T Y||^2) or from the Grams: the same debiased CKA, across and within sources."""
    rng = np.random.default_rng(n)
    base = rng.normal(size=(n, 4))
    acts_a = {"a1": base @ rng.normal(size=(4, 3)) + 50.0, "a2": np.maximum(base @ rng.normal(size=(4, 9)), 0)}
    acts_b = {"b1": base @ rng.normal(size=(4, 6)) + rng.normal(size=(n, 6)), "b2": rng.normal(size=(n, 2)),
              "b3": np.tanh(base @ rng.normal(size=(4, 5)))}
    results = {}
    for features in (True, False):
        monkeypatch.setattr(hsic_module, "_prefers_features", lambda *args, features=features: features)
        results[features] = [
            similarity_matrices(*sources, measures=("debiased_cka",), chunk=32, batch=16)["debiased_cka"].values
            for sources in ((acts_a, acts_b), (acts_b,))
        ]
    for by_features, by_grams, (xs, ys) in zip(results[True], results[False], ((acts_a, acts_b), (acts_b, acts_b))):
        np.testing.assert_allclose(by_features, by_grams, rtol=1e-12, atol=1e-14)
        # the reference forms uncentred Grams, so the offset of a1 costs it digits
        expected = [[minibatch_cka(x, y, 16) for y in ys.values()] for x in xs.values()]
        np.testing.assert_allclose(by_features, expected, atol=1e-8)


def test_minibatches_too_small_for_the_estimator_are_left_out():
    x, y = related(3, 50, 3, 4)  # batches of 16, 16, 16 and 2
    assert debiased_cka(x, y, batch=16) == pytest.approx(minibatch_cka(x[:48], y[:48], 16), abs=1e-12)


@PROPERTY
@given(pairs(), st.sampled_from([0.9, 0.99, 1.0]))
def test_svcca_pwcca_procrustes_match_references(pair, variance):
    x, y = pair
    assert svcca(x, y, variance=variance) == pytest.approx(reference_svcca(x, y, variance), abs=1e-6)
    assert pwcca(x, y) == pytest.approx(reference_pwcca(x, y), abs=1e-6)
    assert pwcca(y, x) == pytest.approx(reference_pwcca(y, x), abs=1e-6)
    assert procrustes_distance(x, y) == pytest.approx(reference_procrustes(x, y), abs=1e-6)


# --- small samples ------------------------------------------------------------------------------


def test_debiased_cka_of_independent_data_is_near_zero_when_samples_are_fewer_than_units():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 500)), rng.normal(size=(40, 400))
    assert linear_cka(x, y) > 0.8  # the biased estimator sees similarity in noise
    assert abs(debiased_cka(x, y)) < 0.05
    assert abs(debiased_cka(x, y, batch=20)) < 0.05


@pytest.mark.parametrize("f", [svcca, pwcca])
def test_cca_refuses_more_units_than_samples(f):
    x, y = related(5, 20, 30, 5)
    with pytest.raises(ValueError, match=r"layer 'x' has d=30 units but only n=20 samples"):
        f(x, y)
    with pytest.raises(ValueError, match=r"layer 'x' has d=19 dims but only n=20 samples"):
        f(x, y, cca_dims=19)


def test_cca_reduces_to_principal_directions_when_asked():
    x, y = related(6, 40, 60, 50, noise=1.0)
    assert svcca(x, y, cca_dims=8) == pytest.approx(reference_svcca(x, y, dims=8), abs=1e-6)
    assert pwcca(x, y, cca_dims=8) == pytest.approx(reference_pwcca(x, y, dims=8), abs=1e-6)
    assert pwcca(x, y, cca_dims=8) < 1 - 1e-3  # not the trivial all-ones


# --- streaming from stores ---------------------------------------------------------------------


N = 101  # not a multiple of any chunk below


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """Two float32 activation stores on the same probe set, chunked by 16 samples."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(N, 5))
    acts_a = {
        "l1": base @ rng.normal(size=(5, 6)) + 100.0,
        "l2": np.tanh(base @ rng.normal(size=(5, 12))).reshape(N, 3, 4),  # a conv map, flattened
        "l3": rng.normal(size=(N, 9)),
    }
    acts_b = {"m1": base @ rng.normal(size=(5, 10)) + rng.normal(size=(N, 10)), "m2": rng.normal(size=(N, 5))}
    root = tmp_path_factory.mktemp("stores")
    paths = []
    for name, acts in (("a", acts_a), ("b", acts_b)):
        acts = {layer: x.astype(np.float32) for layer, x in acts.items()}
        storage.write_dataset(activations_dataset(acts, np.arange(N), chunk=16), root / f"{name}.zarr")
        paths.append(root / f"{name}.zarr")
    as_matrices = [{k: v.astype(np.float32).astype(np.float64).reshape(N, -1) for k, v in acts.items()}
                   for acts in (acts_a, acts_b)]
    return paths[0], paths[1], as_matrices[0], as_matrices[1]


def in_memory(measure: str, acts_a: dict, acts_b: dict, batch: int) -> np.ndarray:
    f = {**FUNCTIONS, "rbf_cka": rbf_cka, "debiased_cka": lambda x, y: debiased_cka(x, y, batch=batch)}[measure]
    return np.array([[f(x, y) for y in acts_b.values()] for x in acts_a.values()])


@pytest.mark.parametrize("chunk", [7, 32, N, 1000])
def test_streamed_matrices_equal_in_memory_measures(stores, chunk):
    path_a, path_b, acts_a, acts_b = stores
    result = similarity_matrices(path_a, path_b, measures=MEASURES, chunk=chunk, batch=12)
    assert list(result.data_vars) == list(MEASURES)
    assert result["linear_cka"].dims == ("layer_a", "layer_b")
    assert list(result["layer_a"].values) == ["l1", "l2", "l3"] and list(result["layer_b"].values) == ["m1", "m2"]
    assert result.attrs["samples"] == N and result["debiased_cka"].attrs["batch"] == 12
    for measure in MEASURES:
        np.testing.assert_allclose(result[measure].values, in_memory(measure, acts_a, acts_b, 12), atol=1e-9,
                                   err_msg=measure)


def test_covariance_measures_stream_in_blocks_that_do_not_divide_the_samples(stores):
    path_a, path_b, _, _ = stores
    measures = ("linear_cka", "svcca", "pwcca", "procrustes")
    whole = similarity_matrices(path_a, path_b, measures=measures, chunk=N)
    for chunk in (1, 5, 17):  # debiased_cka would round these to its batch
        streamed = similarity_matrices(path_a, path_b, measures=measures, chunk=chunk)
        for measure in measures:
            np.testing.assert_allclose(streamed[measure].values, whole[measure].values, atol=1e-9, err_msg=measure)


def test_one_store_against_itself(stores):
    path_a, _, acts_a, _ = stores
    within = similarity_matrices(path_a, measures=MEASURES, chunk=24, batch=12)
    twice = similarity_matrices(path_a, storage.open_dataset(path_a, load=False), measures=MEASURES, chunk=24,
                                batch=12)
    for measure in MEASURES:
        np.testing.assert_allclose(within[measure].values, twice[measure].values, atol=1e-10, err_msg=measure)
        np.testing.assert_allclose(np.diag(within[measure].values), SELF_VALUE[measure], atol=1e-10)
        np.testing.assert_allclose(within[measure].values, within[measure].values.T, atol=1e-10)
    np.testing.assert_allclose(within["linear_cka"].values, in_memory("linear_cka", acts_a, acts_a, 12), atol=1e-10)


def test_large_offsets_in_float32_stores_do_not_cost_precision(tmp_path):
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(300, 10)) + 1e3).astype(np.float32)
    y = (2 * x[:, :5] + rng.normal(size=(300, 5))).astype(np.float32)
    storage.write_dataset(activations_dataset({"x": x, "y": y}, np.arange(300), chunk=64), tmp_path / "acts.zarr")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    exact = kornblith_cka(gram_linear(x64 - x64.mean(0)), gram_linear(y64 - y64.mean(0)))
    streamed = similarity_matrices(tmp_path / "acts.zarr", measures=("linear_cka",), chunk=50)
    assert float(streamed["linear_cka"].sel(layer_a="x", layer_b="y")) == pytest.approx(exact, abs=1e-10)


# --- refusals ---------------------------------------------------------------------------------


def test_refuses_stores_of_different_probe_sets(tmp_path):
    x = np.random.default_rng(9).normal(size=(20, 3)).astype(np.float32)
    storage.write_dataset(activations_dataset({"x": x}, np.arange(20)), tmp_path / "a.zarr")
    storage.write_dataset(activations_dataset({"x": x}, np.arange(20) + 1), tmp_path / "b.zarr")
    with pytest.raises(ValueError, match="different probe sets"):
        similarity_matrices(tmp_path / "a.zarr", tmp_path / "b.zarr")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"measures": ("cka",)}, "unknown measures"),
        ({"batch": 3}, "batch >= 4"),
        ({"cca_dims": 0}, "cca_dims"),
        ({"variance": 0.0}, "variance"),
        ({"max_bytes": 100}, "GiB of cross-products"),
    ],
)
def test_refuses_bad_options(kwargs, message):
    x, y = related(10, 20, 3, 4)
    with pytest.raises(ValueError, match=message):
        similarity_matrices({"x": x}, {"y": y}, **kwargs)


@pytest.mark.parametrize("measure", MEASURES)
def test_refuses_constant_layers(measure):
    x, _ = related(11, 20, 3, 4)
    with pytest.raises(ValueError, match="constant|not positive|median pairwise distance is 0"):
        similarity_matrices({"x": x}, {"y": np.full((20, 4), 0.1)}, measures=(measure,), batch=10)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_non_finite_values(measure, bad):
    x, y = related(12, 40, 3, 4)
    y[25, 1] = bad  # not in the first block: the check must not rely on it
    with pytest.raises(ValueError, match=r"layers \['y'\] have non-finite values"):
        similarity_matrices({"x": x}, {"y": y}, measures=(measure,), chunk=20, batch=10)


def test_refuses_mismatched_sample_counts():
    x, y = related(12, 20, 3, 4)
    with pytest.raises(ValueError, match="different numbers of samples"):
        svcca(x, y[:19])


def test_accepts_torch_tensors_and_float32():
    x, y = related(13, 30, 3, 4)
    expected = svcca(x, y)
    assert svcca(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-5)
