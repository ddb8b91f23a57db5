"""Hessian of the training loss with respect to the parameters, from Hessian-vector products.

The Hessian is never built: ``H v`` is forward-over-reverse differentiation
(``jvp`` of ``grad``, ``torch.func``) of the loss at the model's current
parameters. On a dataset, ``H`` is the Hessian of the mean loss over all its
examples: the batch Hessians weighted by batch size, which assumes ``loss_fn``
averages over its batch (as ``F.cross_entropy`` does by default).

* top-k eigenvalues: power iteration with deflation, or Lanczos with full
  reorthogonalisation (the Ritz values of its tridiagonal matrix);
* the trace: Hutchinson's estimator with Rademacher probes, and its standard error.

"Top" means largest in magnitude (the eigenvalues power iteration finds; the
Hessian may be indefinite), reported signed, in order of decreasing magnitude.
Random vectors come from a CPU generator seeded by ``seed``, so results are
deterministic given the seed, whatever the device.

The model runs in eval mode (BatchNorm on its running statistics, no dropout):
with batch statistics the loss, hence its Hessian, would depend on how the data
are batched, and BatchNorm would write its buffers. Modes are restored afterwards.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.func import functional_call, grad, jvp

from workflow.runtime import eval_mode, model_device
from workflow.analysis.ntk import as_inputs, functional_params

HESSIAN_METHODS: tuple[str, ...] = ("lanczos", "power")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]


def _random_vector(dim: int, generator: torch.Generator, device: torch.device | str,
                   rademacher: bool = False) -> torch.Tensor:
    """A float64 random vector drawn on the CPU (so a seed means the same on any device)."""
    if rademacher:
        v = torch.randint(0, 2, (dim,), generator=generator).to(torch.float64) * 2 - 1
    else:
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v.to(device)


def _orthogonalise(v: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """``v`` minus its projection on orthonormal ``basis``, twice (one pass loses orthogonality)."""
    if not basis:
        return v
    q = torch.stack(basis)
    for _ in range(2):
        v = v - q.T @ (q @ v)
    return v


def _top_by_magnitude(values: torch.Tensor, k: int) -> torch.Tensor:
    return values[values.abs().argsort(descending=True)[:k]]


def lanczos_eigenvalues(
    matvec: MatVec,
    dim: int,
    k: int,
    *,
    num_iter: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The ``k`` largest-magnitude eigenvalues of a symmetric operator, by Lanczos.

    ``num_iter`` Lanczos steps (default ``max(4k, 40)``, at most ``dim``), each
    vector reorthogonalised against all earlier ones, so the Ritz values carry no
    spurious copies. When the Krylov space closes (an invariant subspace: a
    vector orthogonal to the earlier ones has ``β ≈ 0``) a fresh random vector,
    orthogonalised against the others, continues the basis, so eigenvalues of
    multiplicity above one are found again. Returns the Ritz values, float64.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k must be between 1 and the dimension {dim}, got {k}")
    steps = min(dim, max(4 * k, 40) if num_iter is None else num_iter)
    if steps < k:
        raise ValueError(f"num_iter={num_iter} is fewer than k={k}")
    generator = torch.Generator().manual_seed(seed)
    v = _random_vector(dim, generator, device)
    basis = [v / torch.linalg.norm(v)]
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for step in range(steps):
        w = matvec(basis[-1])
        alphas.append(float(basis[-1] @ w))
        if step == steps - 1:
            break
        w = _orthogonalise(w, basis)
        beta = float(torch.linalg.norm(w))
        scale = max(scale, abs(alphas[-1]), beta)
        if beta <= 1e-10 * scale:  # invariant subspace: restart, uncoupled (β = 0)
            w, beta = _orthogonalise(_random_vector(dim, generator, device), basis), 0.0
        betas.append(beta)
        basis.append(w / torch.linalg.norm(w))
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return _top_by_magnitude(torch.linalg.eigvalsh(tridiagonal), k)


def power_iteration_eigenvalues(
    matvec: MatVec,
    dim: int,
    k: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-7,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The ``k`` largest-magnitude eigenvalues of a symmetric operator, by power iteration with deflation.

    Each eigenpair is found on the complement of the earlier eigenvectors (the
    iterate is projected off them: deflation without changing the operator).
    An eigenvalue is taken once its Rayleigh quotient changes by less than
    ``tol`` relative; a warning says when ``max_iter`` iterations did not get
    there (convergence goes as ``|λ_{i+1} / λ_i|`` per step). Float64.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k must be between 1 and the dimension {dim}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    vectors: list[torch.Tensor] = []
    values: list[float] = []
    for i in range(k):
        v = _orthogonalise(_random_vector(dim, generator, device), vectors)
        v = v / torch.linalg.norm(v)
        value = float("nan")
        for _ in range(max_iter):
            w = _orthogonalise(matvec(v), vectors)
            new = float(v @ w)
            norm = torch.linalg.norm(w)
            converged = abs(new - value) <= tol * abs(new)
            value = new
            if converged or norm == 0:
                break
            v = w / norm
        else:
            warnings.warn(f"power iteration: eigenvalue {i} did not converge in {max_iter} iterations", stacklevel=2)
        vectors.append(v)
        values.append(value)
    return _top_by_magnitude(torch.tensor(values, dtype=torch.float64), k)


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    *,
    num_probes: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Hutchinson's estimate of the trace, ``mean zᵀAz`` over Rademacher ``z``, and its standard error.

    The standard error is the sample standard deviation of ``zᵀAz`` over
    ``sqrt(num_probes)``.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be at least 2 (for a standard error), got {num_probes}")
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num_probes):
        z = _random_vector(dim, generator, device, rademacher=True)
        samples.append(float(z @ matvec(z)))
    values = torch.tensor(samples, dtype=torch.float64)
    return float(values.mean()), float(values.std() / num_probes**0.5)


class LossHessian:
    """The Hessian of the mean loss on ``(x, y)`` at the model's current parameters, as an operator.

    Vectors are flat over the trainable parameters, in ``named_parameters``
    order, float64. ``batch_size=None`` takes ``x`` as one batch; otherwise ``H``
    is accumulated over batches (the mean-loss Hessian, whatever the batching).
    ``dtype`` (e.g. ``torch.float64``) evaluates the model in that precision
    without changing it. The parameters are copied now: later training does not
    change this operator. Each product runs the model in eval mode and restores
    every module's mode.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        loss_fn: LossFn = F.cross_entropy,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must hold the same, non-zero number of examples: {len(x)} vs {len(y)}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.loss_fn = model, loss_fn
        self.params, self.fixed = functional_params(model, dtype)
        self.device = model_device(model)
        compute = next(iter(self.params.values())).dtype
        self.x, self.y = as_inputs(x, self.device, compute), as_inputs(y, self.device, compute)
        self.batch_size = batch_size or len(x)
        self.dim = sum(p.numel() for p in self.params.values())

    def _batch_loss(self, theta: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(functional_call(self.model, {**theta, **self.fixed}, (xb,)), yb)

    def _unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        first = next(iter(self.params.values()))
        pieces = v.to(device=self.device, dtype=first.dtype).split([p.numel() for p in self.params.values()])
        return {name: piece.view(p.shape) for (name, p), piece in zip(self.params.items(), pieces)}

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v``: forward-over-reverse (``jvp`` of ``grad``), batch Hessians weighted by batch size."""
        tangent = self._unflatten(v)
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        n = len(self.x)
        with eval_mode(self.model):
            for start in range(0, n, self.batch_size):
                xb, yb = self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
                gradient = lambda theta: grad(self._batch_loss)(theta, xb, yb)  # noqa: E731
                _, hv = jvp(gradient, (self.params,), (tangent,))
                total += torch.cat([h.reshape(-1) for h in hv.values()]).to(torch.float64) * (len(xb) / n)
        return total

    def eigenvalues(self, k: int = 5, *, method: str = "lanczos", seed: int = 0, **options) -> torch.Tensor:
        """The ``k`` largest-magnitude eigenvalues, float64.

        ``method`` is ``"lanczos"`` or ``"power"``; ``options`` go to
        :func:`lanczos_eigenvalues` (``num_iter``) or
        :func:`power_iteration_eigenvalues` (``max_iter``, ``tol``).
        """
        if method not in HESSIAN_METHODS:
            raise ValueError(f"method must be one of {HESSIAN_METHODS}, got {method!r}")
        solve = lanczos_eigenvalues if method == "lanczos" else power_iteration_eigenvalues
        return solve(self.matvec, self.dim, k, seed=seed, device=self.device, **options)

    def trace(self, *, num_probes: int = 100, seed: int = 0) -> tuple[float, float]:
        """Hutchinson's estimate of the trace and its standard error (:func:`hutchinson_trace`)."""
        return hutchinson_trace(self.matvec, self.dim, num_probes=num_probes, seed=seed, device=self.device)


def hessian_analysis(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 5, *, method: str = "lanczos",
                     num_probes: int = 100, seed: int = 0, solver: Mapping[str, Any] | None = None,
                     **settings) -> xr.Dataset:
    """Top-``k`` eigenvalues (dim ``eig``), ``trace`` and ``trace_stderr`` of the loss Hessian on ``(x, y)``.

    ``settings`` (``loss_fn``, ``batch_size``, ``dtype``) are those of
    :class:`LossHessian`; ``solver`` holds options of the eigenvalue ``method``.
    """
    hess = LossHessian(model, x, y, **settings)
    eigenvalues = hess.eigenvalues(k, method=method, seed=seed, **(solver or {}))
    trace, stderr = hess.trace(num_probes=num_probes, seed=seed)
    attrs = {
        "method": method,
        "num_probes": num_probes,
        "seed": seed,
        "loss": getattr(hess.loss_fn, "__name__", type(hess.loss_fn).__name__),
        "num_examples": len(x),
        "num_params": hess.dim,
    }
    return xr.Dataset(
        {
            "eigenvalues": xr.Variable("eig", eigenvalues.cpu().numpy()),
            "trace": xr.Variable((), trace),
            "trace_stderr": xr.Variable((), stderr),
        },
        coords={"eig": range(len(eigenvalues))},
        attrs=attrs,
    )
