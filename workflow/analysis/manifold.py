"""The effective dimension of a class's high-confidence region (Fort et al., "What does a
deep network confidently perceive? The effective dimension of high-certainty class
manifolds"), by cutting input space with random affine subspaces.

In input space of dimension D, a trial draws a random point ``x0`` and a random
d-dimensional subspace through it, ``x = x0 + M t`` with ``M`` a D x d orthonormal basis
(the Q of a Gaussian matrix's QR), and optimises ``t`` (Adam from 0, its step annealed to 0 by a cosine) to raise the model's
probability of class ``c``; it succeeds if that probability reaches ``threshold``. By
Gordon's escape theorem a random subspace of dimension d meets a set of dimension m with
high probability once ``d + m >= D``, so with ``d*`` the smallest d at which at least half
of the trials succeed, the class region's effective dimension is ``D - d*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Cutting:
    """How each trial searches its subspace."""

    threshold: float = 0.9  # the probability of the class that counts as reaching it
    trials: int = 8  # per subspace dimension
    steps: int = 300  # Adam steps within a subspace
    lr: float = 0.3


def _reached(model: nn.Module, x0: torch.Tensor, bases: torch.Tensor, labels: torch.Tensor,
             cutting: Cutting) -> torch.Tensor:
    """Which trials reach their class: trial ``i`` optimises ``x0[i] + bases[i] @ t[i]``
    (``x0``: trials x D, ``bases``: trials x D x d) for the probability of ``labels[i]``.

    The trials run as one batch: in eval mode a trial's output depends on its own input
    only and Adam's update is elementwise, so each ``t[i]`` follows the path it would
    alone; a trial counts as reached from the first step at which it was.
    """
    t = torch.zeros(bases.shape[0], bases.shape[2], dtype=bases.dtype, device=bases.device, requires_grad=True)
    optimiser = torch.optim.Adam([t], lr=cutting.lr)
    # annealed to 0, so that the search settles into a narrow region instead of circling it
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cutting.steps)
    log_threshold = float(np.log(cutting.threshold))
    reached = torch.zeros(len(labels), dtype=torch.bool, device=bases.device)
    for _ in range(cutting.steps + 1):
        x = x0 + torch.einsum("nij,nj->ni", bases, t)  # flat inputs: every model here takes them
        log_p = F.log_softmax(model(x), dim=-1).gather(1, labels[:, None])[:, 0]
        reached |= log_p.detach() >= log_threshold
        if bool(reached.all()):
            break
        optimiser.zero_grad()
        (-log_p.sum()).backward()
        optimiser.step()
        schedule.step()
    return reached


def class_success_rates(model: nn.Module, labels: Sequence[int], dims: Sequence[int],
                        draw_point: Callable[[torch.Generator], torch.Tensor], cutting: Cutting = Cutting(),
                        seed: int = 0) -> np.ndarray:
    """The fraction of trials that reach each class (rows: ``labels``) per subspace
    dimension (columns: ``dims``).

    Per dimension, ``cutting.trials`` random points (``draw_point(generator)``, one input,
    flattened) and random subspaces through them are drawn from ``seed``; every class is
    sought in the same subspaces. The model runs in eval mode, its parameters untouched
    (only the subspace coordinates are optimised).
    """
    # Every dimension checked before any search (a throwaway draw tells the input's size;
    # the search's own generator is untouched).
    n = draw_point(torch.Generator().manual_seed(seed)).numel()
    if beyond := [d for d in dims if not 1 <= d <= n]:
        raise ValueError(f"subspace dimensions {beyond} must lie in 1..{n} (the input's dimension)")
    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    rates = np.zeros((len(labels), len(dims)))
    try:
        for j, d in enumerate(dims):
            points, bases = [], []
            for _ in range(cutting.trials):
                x0 = draw_point(generator).reshape(-1)
                gaussian = torch.randn(x0.numel(), d, generator=generator, dtype=torch.float64)
                points.append(x0)
                bases.append(torch.linalg.qr(gaussian)[0].to(x0.dtype))
            device = points[0].device
            x0 = torch.stack(points).repeat(len(labels), 1)  # class-major: trials of class 0, then 1, ...
            basis = torch.stack(bases).to(device).repeat(len(labels), 1, 1)
            targets = torch.as_tensor(list(labels), device=device).repeat_interleave(cutting.trials)
            reached = _reached(model, x0, basis, targets, cutting).reshape(len(labels), cutting.trials)
            rates[:, j] = reached.double().mean(1).cpu().numpy()
        return rates
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def success_rates(model: nn.Module, label: int, dims: Sequence[int], draw_point: Callable[[torch.Generator], torch.Tensor],
                  cutting: Cutting = Cutting(), seed: int = 0) -> dict[int, float]:
    """:func:`class_success_rates` of one class, per subspace dimension."""
    rates = class_success_rates(model, [label], dims, draw_point, cutting, seed)[0]
    return {d: float(r) for d, r in zip(dims, rates)}


def effective_dimension(rates: dict[int, float], input_dim: int) -> float:
    """``D - d*``, ``d*`` the smallest dimension at which at least half of the trials
    succeeded (NaN if none did)."""
    reached = [d for d in sorted(rates) if rates[d] >= 0.5]
    return float(input_dim - reached[0]) if reached else float("nan")
