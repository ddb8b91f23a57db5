"""Data pruning: score every training example, then keep a fraction of them.

Scores here are pure functions of model outputs (EL2N) or of a seed (random);
the stage code trains the scoring runs, averages their scores and calls
:func:`select` to choose the kept subset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The data-pruning methods; all but rs2 score every example once into a store.
SCORE_METHODS: tuple[str, ...] = ("el2n", "grand", "forgetting", "prototypes", "random", "rs2")
KEEP_RULES: tuple[str, ...] = ("hard", "easy")


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N score per example: ``||softmax(logits) - onehot(labels)||_2`` (float64).

    ``logits`` is ``(N, C)``, ``labels`` ``(N,)`` class indices. The softmax is taken
    in float64 so that near-confident predictions do not round to a score of 0.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}"
        )
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
    onehot = F.one_hot(labels.long(), num_classes=logits.shape[1]).to(torch.float64)
    return torch.linalg.vector_norm(probs - onehot, dim=1)


def random_scores(n: int, seed: int) -> np.ndarray:
    """``n`` uniform draws in [0, 1) from ``np.random.default_rng(seed)`` (float64)."""
    return np.random.default_rng(seed).random(n, dtype=np.float64)


def _kept_count(fraction: float, n: int) -> int:
    # Python's round (half to even), but never an empty set from a positive fraction.
    return min(n, max(1, round(fraction * n))) if n > 0 else 0


def _keep_extreme(scores: np.ndarray, count: int, keep: str, skip: int = 0) -> np.ndarray:
    """Positions of the ``count`` highest ("hard") or lowest ("easy") scores after the
    ``skip`` most extreme ones.

    A stable sort makes ties go to the lower position, whichever rule is used.
    """
    key = -scores if keep == "hard" else scores
    return np.argsort(key, kind="stable")[skip:skip + count]


def select(
    scores: np.ndarray,
    fraction: float,
    keep: str = "hard",
    labels: np.ndarray | None = None,
    class_balanced: bool = False,
    offset: float = 0.0,
) -> np.ndarray:
    """Indices (ascending, int64) of the examples kept when pruning to ``fraction``.

    ``keep="hard"`` keeps the highest scores, ``"easy"`` the lowest; ties go to the
    lower index, so the result is deterministic. ``round(fraction * N)`` examples are
    kept (at least one). With ``offset``, the ``round(offset * N)`` most extreme scores
    are skipped first, as Data Diet skips the very hardest examples (likely mislabelled):
    the kept ranks are ``[round(offset * N), round(offset * N) + round(fraction * N))``.
    With ``class_balanced=True`` every class keeps (and skips) its share of its own
    examples by the same rule, so the total may differ from ``round(fraction * N)`` by
    the per-class rounding.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores must not contain NaN (ordering would be undefined)")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must satisfy 0 < fraction <= 1, got {fraction!r}")
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}, got {keep!r}")
    if not 0 <= offset < 1 or offset + fraction > 1 + 1e-12:
        raise ValueError(f"offset must satisfy 0 <= offset < 1 and offset + fraction <= 1, got offset={offset!r}, "
                         f"fraction={fraction!r}")

    def skipped(n: int) -> int:
        return min(round(offset * n), n - _kept_count(fraction, n))

    if not class_balanced:
        kept = _keep_extreme(scores, _kept_count(fraction, len(scores)), keep, skipped(len(scores)))
        return np.sort(kept).astype(np.int64)

    if labels is None:
        raise ValueError("labels must be given when class_balanced=True")
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the shape of scores {scores.shape}, got {labels.shape}")
    kept = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)  # ascending, so ties still go to the lower index
        kept.append(members[_keep_extreme(scores[members], _kept_count(fraction, len(members)), keep,
                                          skipped(len(members)))])
    return np.sort(np.concatenate(kept)).astype(np.int64)


class RepeatedRandomSubsets:
    """Repeated random sampling without replacement (RS2): a fresh subset every epoch.

    Each epoch trains on ``round(fraction * n)`` examples, the next disjoint slice of
    a random order of all ``n``; when fewer than a slice remain, they are topped up
    from a new random order of the others, which the following epochs continue. So
    every example is seen once in each pass, and the first ``ceil(1 / fraction)``
    epochs see every example. An :class:`workflow.train.EpochSampler`.
    """

    def __init__(self, n: int, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.n = n
        self.size = _kept_count(fraction, n)
        self._order: torch.Tensor | None = None
        self._pos = 0

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        if self._order is None:
            self._order = torch.randperm(self.n, generator=generator)
        end = self._pos + self.size
        if end <= self.n:
            self._pos = end
            return self._order[end - self.size : end]
        rest = self._order[self._pos :]
        seen = torch.zeros(self.n, dtype=torch.bool)
        seen[rest] = True
        others = torch.randperm(self.n, generator=generator)
        others = others[~seen[others]]
        fill = others[: self.size - len(rest)]
        # The new pass: this epoch's top-up, the remaining others, then the examples
        # this epoch finished the old pass with.
        self._order = torch.cat([others, rest])
        self._pos = len(fill)
        return torch.cat([rest, fill])

    def state_dict(self) -> dict[str, Any]:
        """Where in its passes the sampler is, for a training checkpoint."""
        return {"order": self._order, "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order, self._pos = state["order"], state["pos"]
