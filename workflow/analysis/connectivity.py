"""Linear mode connectivity (Frankle et al. 2020): loss and error along the straight
line between two models' weights, and the barrier on it.

At every point the BatchNorm statistics are, by default, re-estimated on training
data: interpolated running means and variances are not the statistics of the
interpolated network's activations, and keeping them inflates the barrier
(Jordan et al. 2023, "REPAIR").
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from workflow.averaging import interpolate
from workflow.runtime import evaluate, model_device

DEFAULT_ALPHAS = np.linspace(0.0, 1.0, 30)
"""30 evenly spaced points of [0, 1], endpoints included."""


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _batches(x: torch.Tensor, batch_size: int, num_batches: int | None) -> Iterator[torch.Tensor]:
    """The first ``num_batches`` batches of ``x`` in order (all of them for None)."""
    batches = x.split(batch_size)
    return iter(batches if num_batches is None else batches[:num_batches])


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256,
                        num_batches: int | None = None) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on ``x``.

    Forward passes without gradients over the first ``num_batches`` batches of
    ``x`` (all for None), with only the BatchNorm layers in train mode: the
    statistics serve evaluation, so everything else (dropout, say) behaves as it
    will then. The running mean and variance become the plain average over the
    batches of each batch's mean and unbiased variance (momentum None), so they do
    not depend on the layer's momentum. Parameters are untouched; every module's
    mode and every BatchNorm's momentum are restored afterwards.
    """
    norms = _batchnorms(model)
    if not norms:
        return
    if len(x) == 0 or (num_batches is not None and num_batches < 1):
        raise ValueError("recompute_batchnorm: no data to estimate the statistics on")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = model_device(model)
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for xb in _batches(x, batch_size, num_batches):
            model(xb.to(device))
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)


def _curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Loss and error (1 - accuracy) of ``model`` in eval mode."""
    loss, accuracy = evaluate(model, x, y, batch_size=batch_size)
    return loss, 1.0 - accuracy


def barrier(values: np.ndarray, alphas: np.ndarray) -> float:
    """``max over alpha of values - ((1 - alpha) v0 + alpha v1)``: how far the curve rises above
    the straight line between its ends.

    A curve that falls monotonically from a worse end to a better one has none (the
    form of Entezari et al. 2022); it is never negative, since the ends lie on the line.
    """
    ends = [values[np.flatnonzero(alphas == end)[0]] for end in (0.0, 1.0)]
    return float(np.max(values - ((1 - alphas) * ends[0] + alphas * ends[1])))


def max_minus_mean_of_ends(values: np.ndarray, alphas: np.ndarray) -> float:
    """``max over alpha of values - mean of the values at alpha = 0 and alpha = 1`` (Frankle et al. 2020).

    Equal to :func:`barrier` when the ends are equal; between ends of different
    values it counts half their gap even on a curve that only falls.
    """
    ends = [values[np.flatnonzero(alphas == end)[0]] for end in (0.0, 1.0)]
    return float(values.max() - (ends[0] + ends[1]) / 2)


def _check_alphas(alphas: Sequence[float] | np.ndarray) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or not {0.0, 1.0} <= set(alphas.tolist()):
        raise ValueError("linear_connectivity: alphas must be a list containing 0 and 1 "
                         "(the barrier needs both ends)")
    return alphas


def linear_connectivity(
    model_a: nn.Module,
    model_b: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    x_train: torch.Tensor | None = None,
    y_train: torch.Tensor | None = None,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    recompute_bn: bool = True,
    bn_batches: int | None = None,
    batch_size: int = 256,
    stable_below: float = 0.02,
    names: tuple[str, str] = ("a", "b"),
) -> xr.Dataset:
    """Loss and error along ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``.

    Weights, BatchNorm statistics included, are interpolated by
    :func:`workflow.averaging.interpolate`. With ``recompute_bn`` the statistics
    at every alpha, ends included, are then re-estimated by
    :func:`recompute_batchnorm` on ``bn_batches`` batches of ``x_train`` (needed
    when the models have BatchNorm). Train loss and error are added when
    ``y_train`` is given too. The inputs' devices must match the models'.

    Returns a dataset with ``{split}_loss`` and ``{split}_error`` along dim
    ``alpha``; the scalar barriers ``{split}_{loss,error}_barrier`` (the rise above
    the straight line between the ends, :func:`barrier`) and, beside them,
    ``{split}_{loss,error}_max_minus_mean_of_ends`` (:func:`max_minus_mean_of_ends`);
    ``alphas`` must contain 0 and 1. ``stable``: whether the test error barrier is
    below ``stable_below``. The
    models' ``names`` are attrs ``model_a`` and ``model_b``. The two models are
    left as they were; the work is done on a copy.
    """
    alphas = _check_alphas(alphas)
    if recompute_bn and x_train is None and _batchnorms(model_a):
        raise ValueError("linear_connectivity: recomputing BatchNorm statistics needs x_train")
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    work = copy.deepcopy(model_a)
    splits = {"test": (x_test, y_test)}
    if x_train is not None and y_train is not None:
        splits["train"] = (x_train, y_train)
    rows = []
    for alpha in alphas:
        work.load_state_dict(interpolate(state_a, state_b, float(alpha)))
        if recompute_bn:
            recompute_batchnorm(work, x_train, batch_size=batch_size, num_batches=bn_batches)
        rows.append({split: _curve(work, x, y, batch_size) for split, (x, y) in splits.items()})
    return _connectivity_dataset(rows, alphas, stable_below, names,
                                 recompute_bn=recompute_bn, bn_batches=bn_batches)


def _connectivity_dataset(rows: list[dict[str, tuple[float, float]]], alphas: np.ndarray, stable_below: float,
                          names: tuple[str, str], **attrs: object) -> xr.Dataset:
    """Curves, barriers and the stability flag as one dataset."""
    data: dict[str, object] = {}
    for split in rows[0]:
        for i, metric in enumerate(("loss", "error")):
            curve = np.array([row[split][i] for row in rows], dtype=np.float64)
            data[f"{split}_{metric}"] = ("alpha", curve)
            data[f"{split}_{metric}_barrier"] = ((), barrier(curve, alphas))
            data[f"{split}_{metric}_max_minus_mean_of_ends"] = ((), max_minus_mean_of_ends(curve, alphas))
    data["stable"] = ((), bool(data["test_error_barrier"][1] < stable_below))
    # attrs that netCDF and zarr both store: no None, no bools
    stored = {k: ("all" if v is None else int(v) if isinstance(v, bool) else v) for k, v in attrs.items()}
    return xr.Dataset(data, coords={"alpha": alphas},
                      attrs={"model_a": names[0], "model_b": names[1], "stable_below": stable_below, **stored})
