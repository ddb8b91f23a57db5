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
    steps: int = 500  # Adam steps within a subspace
    lr: float = 0.3


def reaches(model: nn.Module, x0: torch.Tensor, basis: torch.Tensor, label: int, cutting: Cutting) -> bool:
    """Whether optimising within ``x0 + basis @ t`` (``basis``: D x d) raises the model's
    probability of ``label`` to ``cutting.threshold``."""
    t = torch.zeros(basis.shape[1], dtype=basis.dtype, device=basis.device, requires_grad=True)
    optimiser = torch.optim.Adam([t], lr=cutting.lr)
    # annealed to 0, so that the search settles into a narrow region instead of circling it
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cutting.steps)
    log_threshold = float(np.log(cutting.threshold))
    for _ in range(cutting.steps + 1):
        x = (x0.reshape(-1) + basis @ t).reshape(1, *x0.shape)
        log_p = F.log_softmax(model(x), dim=-1)[0, label]
        if float(log_p.detach()) >= log_threshold:
            return True
        optimiser.zero_grad()
        (-log_p).backward()
        optimiser.step()
        schedule.step()
    return False


def success_rates(model: nn.Module, label: int, dims: Sequence[int], draw_point: Callable[[torch.Generator], torch.Tensor],
                  cutting: Cutting = Cutting(), seed: int = 0) -> dict[int, float]:
    """The fraction of trials that reach the class, per subspace dimension ``d``.

    ``draw_point(generator)`` gives a trial's starting point in the model's input shape.
    The model runs in eval mode, its parameters untouched (only ``t`` is optimised).
    """
    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    try:
        rates = {}
        for d in dims:
            hits = 0
            for _ in range(cutting.trials):
                x0 = draw_point(generator)
                size = x0.numel()
                if not 1 <= d <= size:
                    raise ValueError(f"subspace dimension {d} must lie in 1..{size} (the input's dimension)")
                gaussian = torch.randn(size, d, generator=generator, dtype=torch.float64).to(x0.dtype)
                basis, _ = torch.linalg.qr(gaussian)
                hits += reaches(model, x0, basis.to(x0.device), label, cutting)
            rates[d] = hits / cutting.trials
        return rates
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def effective_dimension(rates: dict[int, float], input_dim: int) -> float:
    """``D - d*``, ``d*`` the smallest dimension at which at least half of the trials
    succeeded (NaN if none did)."""
    reached = [d for d in sorted(rates) if rates[d] >= 0.5]
    return float(input_dim - reached[0]) if reached else float("nan")
