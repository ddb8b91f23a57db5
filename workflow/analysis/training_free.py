"""Training-free architecture scores, computed at initialisation, and how well they rank
trained models.

* **Hidden covariance** ("Training-free Neural Architecture Search for RNNs and
  Transformers", Serianni and Kalita): the Pearson correlation matrix of one layer's
  hidden units, with the examples of one minibatch as observations (and, for a
  convolution, every position of every example, as the paper's RNN takes every time
  step), its eigenvalues ``lambda`` and ``k = 1e-5``:
  ``score = -sum(log(lambda + k) + 1 / (lambda + k))``, the form of Mellor et al.'s
  Jacobian-covariance score. Each term is smallest at ``lambda = 1 - k``, so the score
  is highest (``-units * (log 1 + 1)``, about ``-units``) when the units are uncorrelated
  and falls as they become redundant. Units that are constant over the minibatch (dead)
  have no correlation and are left out.
* **Rank agreement** of a score with trained accuracy: Kendall's tau and Spearman's rho
  (:mod:`scipy.stats`), the measure of "Demystifying the Neural Tangent Kernel from a
  Practical Perspective" and of the NAS papers.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import nn

from workflow.analysis.activations import record_activations

K = 1e-5


def hidden_units(outputs: np.ndarray) -> np.ndarray:
    """A layer's outputs as (observations, units): ``(n, units)`` as it is, a convolution's
    ``(n, channels, *positions)`` with every position of every example an observation."""
    if outputs.ndim == 2:
        return outputs
    if outputs.ndim < 2:
        raise ValueError(f"a layer's outputs need a sample and a unit dimension, not shape {outputs.shape}")
    channels = outputs.shape[1]
    return np.moveaxis(outputs, 1, -1).reshape(-1, channels)


def hidden_covariance_score(hidden: np.ndarray, k: float = K) -> float:
    """``-sum(log(lambda + k) + 1 / (lambda + k))`` over the eigenvalues of the units'
    correlation matrix; ``hidden`` is (observations, units). NaN with fewer than two
    units that vary."""
    hidden = np.asarray(hidden, dtype=np.float64)
    varying = hidden[:, hidden.std(axis=0) > 0]
    if varying.shape[1] < 2 or varying.shape[0] < 2:
        return float("nan")
    eigenvalues = np.clip(np.linalg.eigvalsh(np.corrcoef(varying, rowvar=False)), 0.0, None)
    return float(-np.sum(np.log(eigenvalues + k) + 1.0 / (eigenvalues + k)))


def layer_scores(model: nn.Module, x: torch.Tensor, layers: list[str] | None = None) -> dict[str, float]:
    """The hidden-covariance score of each named layer (``model.layers`` by default, the
    head's outputs included) on the minibatch ``x``, the model in eval mode."""
    outputs = record_activations(model, x, layers, batch_size=len(x))
    return {name: hidden_covariance_score(hidden_units(values)) for name, values in outputs.items()}


def rank_agreement(score: np.ndarray, accuracy: np.ndarray) -> dict[str, float]:
    """Kendall's tau (tau-b, ties counted) and Spearman's rho between a score and trained
    accuracy over the same models (NaN pairs left out), with their two-sided p-values."""
    score, accuracy = np.asarray(score, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if score.shape != accuracy.shape:
        raise ValueError(f"score and accuracy differ in shape: {score.shape} and {accuracy.shape}")
    both = np.isfinite(score) & np.isfinite(accuracy)
    if both.sum() < 3:
        nan = float("nan")
        return {"kendall_tau": nan, "kendall_p": nan, "spearman_rho": nan, "spearman_p": nan}
    tau = stats.kendalltau(score[both], accuracy[both])
    rho = stats.spearmanr(score[both], accuracy[both])
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue)}
