"""Self-supervised prototype scores ("Beyond neural scaling laws", Sorscher et al.).

Cluster the embeddings of a pretrained model with k-means; an example's score is
its distance to the nearest centroid. High = far from every prototype = hard;
low = prototypical = easy.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

PROTOTYPE_DEFAULTS: dict[str, int] = {"k": 10}


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings must be finite")
    return x


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``c`` for each row of ``x``.

    ``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` by one matrix product; ``|x|^2`` is the
    same for every centre and drops out of the argmin.
    """
    return ((c * c).sum(1)[None, :] - x @ (2 * c).T).argmin(1)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ start: each next centre drawn with probability proportional to D^2."""
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        # All points already sit on a centre (duplicates): any choice is as good.
        i = rng.integers(len(x)) if total == 0 else rng.choice(len(x), p=d2 / total)
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return np.stack(centres)


def _lloyd(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> tuple[np.ndarray, np.ndarray]:
    centroids = _kmeans_pp(x, k, rng)
    assign = _nearest(x, centroids)
    for _ in range(iters):
        # Cluster sums as a sparse one-hot product: O(n d), no Python loop over clusters.
        onehot = sparse.csr_matrix((np.ones(len(x)), (assign, np.arange(len(x)))), shape=(k, len(x)))
        sizes = np.bincount(assign, minlength=k)
        # An empty cluster keeps its old centroid rather than becoming NaN.
        centroids = np.where(sizes[:, None] > 0, onehot @ x / np.maximum(sizes, 1)[:, None], centroids)
        new = _nearest(x, centroids)
        if np.array_equal(new, assign):
            break
        assign = new
    return centroids, assign


def kmeans(
    x: np.ndarray, k: int, seed: int, iters: int = 100, n_init: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x``: ``(centroids (k, d) float64, assignments (n,) int64)``.

    k-means++ starts, then at most ``iters`` Lloyd steps (stopping once no
    assignment changes); of ``n_init`` restarts the lowest within-cluster sum of
    squares wins, since k-means++ alone can still put two centres in one cluster.
    Assignments are to the nearest returned centroid; the same ``seed`` gives the
    same result.
    """
    x = _as_matrix(x)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must satisfy 1 <= k <= n = {len(x)}, got {k}")
    if iters < 1 or n_init < 1:
        raise ValueError(f"iters and n_init must be >= 1, got {iters} and {n_init}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centroids, assign = _lloyd(x, k, rng, iters)
        inertia = float(((x - centroids[assign]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids, assign)
    _, centroids, assign = best
    return centroids, assign.astype(np.int64)


def prototype_scores(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Distance of each example to its nearest k-means centroid (float64, (n,)).

    The embeddings are L2-normalised first, as the paper does with its
    self-supervised (SwAV) features, so only their direction counts and the scores
    do not depend on the embeddings' scale; they lie in [0, 2]. A zero embedding
    has no direction and raises ``ValueError``.
    """
    x = _as_matrix(embeddings)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embedding(s) are zero and cannot be normalised")
    x = x / norms
    centroids, assign = kmeans(x, k, seed)
    # Exact differences, not the matrix-product shortcut: near-zero distances matter here.
    return np.linalg.norm(x - centroids[assign], axis=1)
