"""Prototype scores: planted clusters, outliers, scale invariance, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from workflow.prototypes import kmeans, prototype_scores

K, DIM, PER_BLOB = 5, 8, 40


def blobs(seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, labels, centres)``: K Gaussian blobs around orthogonal directions of length 10.

    Orthogonal centres stay far apart after L2 normalisation too (sqrt(2) apart).
    """
    rng = np.random.default_rng(seed)
    centres = 10 * np.eye(DIM)[:K]
    labels = np.repeat(np.arange(K), PER_BLOB)
    x = centres[labels] + noise * 10 * rng.standard_normal((len(labels), DIM))
    return x, labels, centres


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_planted_blobs(seed: int) -> None:
    x, labels, _ = blobs(seed)
    centroids, found = kmeans(x, K, seed=seed)
    assert centroids.shape == (K, DIM) and centroids.dtype == np.float64
    assert found.shape == (len(x),)
    # A perfect partition up to relabelling: every planted blob lands in exactly
    # one found cluster and every found cluster holds exactly one blob.
    table = contingency(labels, found)
    assert table.shape == (K, K)
    assert ((table > 0).sum(axis=0) == 1).all() and ((table > 0).sum(axis=1) == 1).all()


def test_centres_score_below_outliers() -> None:
    x, _, centres = blobs()
    # Outliers point along the unused dimensions, away from every blob direction.
    outliers = 10 * np.eye(DIM)[K:]
    data = np.concatenate([x, centres, outliers])
    scores = prototype_scores(data, K, seed=0)
    assert scores.shape == (len(data),) and scores.dtype == np.float64
    at_centres = scores[len(x) : len(x) + K]
    at_outliers = scores[len(x) + K :]
    # A planted centre sits near its blob's centroid, closer than a typical member;
    # a unit outlier orthogonal to a centroid of norm ~1 lies ~sqrt(2) from it.
    assert at_centres.max() < np.median(scores[: len(x)])
    assert scores[: len(x)].max() < 0.5 and at_outliers.min() > 1.2
    assert (scores >= 0).all() and (scores <= 2).all()


def test_scores_invariant_to_scale() -> None:
    x, _, _ = blobs()
    np.testing.assert_allclose(prototype_scores(7 * x, K, seed=3), prototype_scores(x, K, seed=3), atol=1e-12)


def test_deterministic_for_a_seed() -> None:
    x, _, _ = blobs(noise=0.5)  # overlapping blobs, so the start actually matters
    c1, a1 = kmeans(x, K, seed=1)
    c2, a2 = kmeans(x, K, seed=1)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(prototype_scores(x, K, seed=1), prototype_scores(x, K, seed=1))


def test_assignments_are_nearest_centroids() -> None:
    x, _, _ = blobs(noise=0.5)
    centroids, found = kmeans(x, K, seed=0, iters=2)
    dist = np.linalg.norm(x[:, None] - centroids[None], axis=2)
    np.testing.assert_array_equal(found, dist.argmin(axis=1))


def test_restarts_never_raise_the_inertia() -> None:
    # The first restart replays the single run of the same seed, so more restarts
    # can only find an equal or lower within-cluster sum of squares.
    x, _, _ = blobs(noise=0.5)

    def inertia(n_init: int) -> float:
        centroids, found = kmeans(x, K, seed=4, n_init=n_init)
        return float(((x - centroids[found]) ** 2).sum())

    assert inertia(4) <= inertia(1)


@pytest.mark.parametrize("k", [0, -1, K * PER_BLOB + 1])
def test_invalid_k_raises(k: int) -> None:
    x, _, _ = blobs()
    with pytest.raises(ValueError, match="1 <= k <= n"):
        kmeans(x, k, seed=0)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        prototype_scores(x, k, seed=0)


def test_bad_embeddings_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        prototype_scores(np.ones(5), 1, seed=0)
    with pytest.raises(ValueError, match="zero"):
        prototype_scores(np.array([[1.0, 0.0], [0.0, 0.0]]), 1, seed=0)
