"""Empirical neural tangent kernel (NTK) of a model on probe examples.

``Θ(x₁, x₂) = J(x₁) J(x₂)ᵀ``, where ``J(x)`` is the ``(C, P)`` Jacobian of the
model's ``C`` outputs at ``x`` with respect to its ``P`` trainable parameters.
Two methods of Novak et al. ("Fast Finite Width Neural Tangent Kernel", 2022),
both with ``torch.func``:

* ``"jacobian"`` (Jacobian contraction): per-example Jacobians by ``vmap(jacrev)``,
  contracted over the parameters; cheap when ``P`` is small relative to ``n``.
* ``"ntk_vp"`` (NTK-vector products): ``Θ e = J(x₁) (J(x₂)ᵀ e)``, a vector-Jacobian
  product followed by a Jacobian-vector product for each basis vector ``e`` of the
  outputs on ``x₂``; ``J(x₁)`` is never instantiated.

``mode="full"`` gives every output pair, ``(n₁, n₂, C, C)``; ``mode="trace"`` sums
the diagonal over outputs, ``(n₁, n₂)``. The kernel is built block by block of
``batch_size`` examples, so memory grows with the block, not with ``n``.

The model runs in eval mode: with batch statistics, BatchNorm couples the
examples of a batch and per-example Jacobians are not defined (METHODS.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from workflow.runtime import eval_mode, model_device

NTK_METHODS: tuple[str, ...] = ("jacobian", "ntk_vp")
NTK_MODES: tuple[str, ...] = ("full", "trace")

Params = dict[str, torch.Tensor]


def functional_params(model: nn.Module, dtype: torch.dtype | None = None) -> tuple[Params, Params]:
    """The trainable parameters and the fixed tensors of ``model``, detached, for ``functional_call``.

    Trainable means ``requires_grad``: frozen parameters and buffers are constants
    (the kernel and the Hessian are taken with respect to what training changes).
    With ``dtype``, floating-point tensors are cast (integer buffers such as
    BatchNorm's step count are left alone); the model itself is not modified.
    """

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    params = {name: cast(p) for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    fixed = {name: cast(p) for name, p in model.named_parameters() if name not in params}
    fixed.update({name: cast(b) for name, b in model.named_buffers()})
    return params, fixed


def as_inputs(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` on ``device``; floating-point inputs in ``dtype``, others (labels) unchanged."""
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class _Kernel:
    """The per-block computations of one NTK method, on a model's functional form."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        self.params, fixed = functional_params(model, dtype)
        self.dtype = next(iter(self.params.values())).dtype
        self.device = model_device(model)

        def batch(params: Params, xb: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, {**params, **fixed}, (xb,))
            if out.dim() != 2:
                raise ValueError(f"NTK: the model must output (batch, outputs), got shape {tuple(out.shape)}")
            return out

        self.batch = batch
        # vmap hands over single examples; the models expect a batch dimension.
        self.single = lambda params, x_i: batch(params, x_i.unsqueeze(0)).squeeze(0)

    def jacobian(self, xb: torch.Tensor) -> torch.Tensor:
        """Per-example Jacobians, flattened over the parameters: ``(b, C, P)``."""
        jac = vmap(jacrev(self.single), in_dims=(None, 0))(self.params, xb)
        return torch.cat([j.flatten(2) for j in jac.values()], dim=2)

    def pullbacks(self, xb: torch.Tensor) -> Params:
        """``J(x)ᵀ e_c`` for every example and output: parameter-shaped, ``(b·C, *shape)``."""

        def per_example(x_i: torch.Tensor) -> Params:
            out, vjp_fn = vjp(lambda p: self.single(p, x_i), self.params)
            basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
            return vmap(vjp_fn)(basis)[0]

        rows = vmap(per_example)(xb)
        return {name: r.flatten(0, 1) for name, r in rows.items()}

    def ntk_vp_block(self, x1: torch.Tensor, x2: torch.Tensor, chunk: int) -> torch.Tensor:
        """``Θ(x1, x2)`` as ``(b1, b2, C, C)`` by NTK-vector products."""
        tangents = self.pullbacks(x2)
        push = lambda t: jvp(lambda p: self.batch(p, x1), (self.params,), (t,))[1]  # noqa: E731
        # column (j, d) of the kernel is J(x1) J(x2)ᵀ e_(j,d), shaped (b1, C)
        cols = vmap(push, chunk_size=chunk)(tangents)
        b2, b1, c = len(x2), len(x1), cols.shape[-1]
        return cols.reshape(b2, c, b1, c).permute(2, 0, 3, 1)


def _contract(j1: torch.Tensor, j2: torch.Tensor, mode: str) -> torch.Tensor:
    """Jacobian contraction over the parameters: ``(b1, b2, C, C)`` or, summed over outputs, ``(b1, b2)``."""
    if mode == "trace":
        # Σ_c Σ_p J1[a,c,p] J2[b,c,p] is one dot product over (c, p): a plain matmul
        return j1.flatten(1) @ j2.flatten(1).T
    b1, c, p = j1.shape
    full = j1.reshape(b1 * c, p) @ j2.reshape(-1, p).T
    return full.reshape(b1, c, len(j2), c).permute(0, 2, 1, 3)


def _block_fn(kernel: _Kernel, method: str, mode: str, batch_size: int) -> Callable:
    """``block(left, right, same)``: the kernel between two blocks of examples.

    ``same`` says the two blocks are the same examples, so the Jacobian method
    reuses the left Jacobians instead of computing them again.
    """
    if method == "jacobian":
        def block(x1: torch.Tensor, x2: torch.Tensor, same: bool) -> torch.Tensor:
            j1 = kernel.jacobian(x1)
            return _contract(j1, j1 if same else kernel.jacobian(x2), mode)
    else:
        def block(x1: torch.Tensor, x2: torch.Tensor, same: bool) -> torch.Tensor:
            full = kernel.ntk_vp_block(x1, x2, batch_size)
            return torch.diagonal(full, dim1=2, dim2=3).sum(-1) if mode == "trace" else full
    return block


def _mirror(block: torch.Tensor) -> torch.Tensor:
    """``Θ(x₂, x₁)`` from ``Θ(x₁, x₂)``: swap the sample axes and the output axes."""
    return block.transpose(0, 1) if block.dim() == 2 else block.permute(1, 0, 3, 2)


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    method: str = "jacobian",
    mode: str = "full",
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The empirical NTK between ``x1`` and ``x2`` (``x1`` itself by default).

    Returns ``(n1, n2, C, C)`` for ``mode="full"`` and ``(n1, n2)`` (the trace over
    outputs) for ``mode="trace"``, in ``dtype`` (default: the parameters' dtype;
    pass ``torch.float64`` for eigen-analysis), on the parameters' device.
    ``method`` is ``"jacobian"`` or ``"ntk_vp"`` (same kernel, different cost).
    At most ``batch_size`` examples per side enter a block. With ``x2=None`` only
    the upper block triangle is computed and the rest mirrored. The model runs in
    eval mode; every module's mode is restored afterwards and nothing is written.
    """
    _check_choice("method", method, NTK_METHODS)
    _check_choice("mode", mode, NTK_MODES)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    with eval_mode(model):
        kernel = _Kernel(model, dtype)
        block = _block_fn(kernel, method, mode, batch_size)
        a = as_inputs(x1, kernel.device, kernel.dtype)
        b = a if x2 is None else as_inputs(x2, kernel.device, kernel.dtype)
        starts_a, starts_b = range(0, len(a), batch_size), range(0, len(b), batch_size)
        rows = []
        for i in starts_a:
            row = []
            for j in starts_b:
                if x2 is None and j < i:  # below the diagonal: already computed
                    row.append(_mirror(rows[j // batch_size][i // batch_size]))
                else:
                    row.append(block(a[i : i + batch_size], b[j : j + batch_size], x2 is None and i == j))
            rows.append(row)
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)


def kernel_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """A kernel as a matrix: ``(n1, n2)`` unchanged, ``(n1, n2, C, C)`` to ``(n1·C, n2·C)``.

    Rows and columns are sample-major: index ``i·C + c`` is output ``c`` of example ``i``.
    """
    if kernel.dim() == 2:
        return kernel
    n1, n2, c1, c2 = kernel.shape
    return kernel.permute(0, 2, 1, 3).reshape(n1 * c1, n2 * c2)


def ntk_gram(model: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """The NTK Gram matrix of ``x``: ``(n·C, n·C)`` for ``mode="full"``, ``(n, n)`` for ``"trace"``.

    Keyword arguments are those of :func:`empirical_ntk`.
    """
    return kernel_matrix(empirical_ntk(model, x, None, **kwargs))


def ntk_eigenvalues(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric Gram matrix, in descending order, in its own dtype.

    The matrix is symmetrised first, so round-off asymmetry does not matter.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(gram.shape)}")
    return torch.linalg.eigvalsh((gram + gram.T) / 2).flip(0)


def effective_rtol(eigenvalues: torch.Tensor, rtol: float | None = None) -> float:
    """``rtol``, or by default the number of eigenvalues times the machine epsilon of their dtype."""
    return len(eigenvalues) * torch.finfo(eigenvalues.dtype).eps if rtol is None else float(rtol)


def _kept(eigenvalues: torch.Tensor, rtol: float | None) -> torch.Tensor:
    """The eigenvalues above ``rtol·λ_max``."""
    rtol = effective_rtol(eigenvalues, rtol)
    top = eigenvalues.max()
    return eigenvalues[eigenvalues > rtol * top] if top > 0 else eigenvalues[:0]


def numerical_rank(eigenvalues: torch.Tensor, rtol: float | None = None) -> int:
    """How many eigenvalues exceed ``rtol·λ_max`` (the threshold of :func:`condition_number`)."""
    return len(_kept(eigenvalues, rtol))


def condition_number(eigenvalues: torch.Tensor, rtol: float | None = None) -> float:
    """``λ_max / λ_min`` over the eigenvalues above ``rtol·λ_max`` of a PSD matrix.

    Eigenvalues at or below ``rtol·λ_max`` (default ``rtol``: the number of
    eigenvalues times the machine epsilon of their dtype, the threshold of
    ``numpy.linalg.matrix_rank``) cannot be told apart from zero by round-off,
    negative round-off included, so they are left out: the result is the
    condition number on the kernel's numerical range, and :func:`numerical_rank`
    says how many eigenvalues that kept (fewer than the size means the kernel is
    singular). ``rtol=0`` keeps every positive eigenvalue. NaN if none is positive.
    """
    kept = _kept(eigenvalues, rtol)
    if len(kept) == 0:
        return float("nan")
    return float(kept.max() / kept.min())


def _target_gram(y: torch.Tensor, size: int) -> torch.Tensor:
    """The target kernel matched to a kernel of ``size`` rows.

    Integer labels become one-hot rows ``Y``; a float ``y`` is used as ``Y``
    (``(n,)`` as one column). For an ``(n, n)`` kernel the target is ``YYᵀ``;
    for a full ``(n·C, n·C)`` kernel it is ``vec(Y) vec(Y)ᵀ`` (sample-major, as
    :func:`kernel_matrix` orders rows).
    """
    n = len(y)
    if y.is_floating_point():
        targets = y.reshape(n, -1).to(torch.float64)
    elif size == n:
        # YYᵀ of one-hot rows is [y_i == y_j], whatever the number of classes
        return (y[:, None] == y[None, :]).to(torch.float64)
    else:
        targets = nn.functional.one_hot(y.long(), size // n).to(torch.float64)
    if size == n:
        return targets @ targets.T
    if size != targets.numel():
        raise ValueError(f"alignment: a {size}-row kernel does not match targets of shape {tuple(targets.shape)}")
    flat = targets.reshape(-1)
    return torch.outer(flat, flat)


def _centre(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11ᵀ/n``: subtract row and column means, add back the grand mean."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def kernel_target_alignment(kernel: torch.Tensor, y: torch.Tensor, *, centered: bool = False) -> float:
    """Kernel-target alignment ``⟨K, T⟩_F / (‖K‖_F ‖T‖_F)`` (Cristianini et al. 2001).

    ``kernel`` is a square Gram matrix (``(n, n)`` or full ``(n·C, n·C)``, as from
    :func:`ntk_gram`) or a 4-d full kernel; ``y`` holds integer labels (one-hot
    targets ``Y``) or float targets. ``T`` is ``YYᵀ`` for an ``(n, n)`` kernel and
    ``vec(Y) vec(Y)ᵀ`` (sample-major) for a full one.
    ``centered=True`` centres both kernels first (Cortes et al. 2012), which
    removes the credit a kernel gets for a large constant component. Computed in
    float64; invariant to scaling ``K``.
    """
    k = kernel_matrix(kernel).detach().to(torch.float64)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"alignment needs a square kernel, got shape {tuple(k.shape)}")
    t = _target_gram(torch.as_tensor(y).to(k.device), k.shape[0])
    if centered:
        k, t = _centre(k), _centre(t)
    return float((k * t).sum() / (torch.linalg.norm(k) * torch.linalg.norm(t)))


def ntk_analysis(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "jacobian",
    mode: str = "trace",
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
    rtol: float | None = None,
    keep_gram: bool = False,
    sample: np.ndarray | None = None,
) -> xr.Dataset:
    """Spectrum, condition number and target alignment of the NTK Gram matrix of ``x``.

    Variables: ``eigenvalues`` (dim ``eig``, descending), ``condition_number`` and
    ``rank`` (see :func:`condition_number` for the ``rtol`` threshold),
    ``alignment`` and ``alignment_centered`` against the labels ``y``; with
    ``keep_gram``, the kernel ``gram`` on dims ``(sample_a, sample_b)`` (``mode="trace"``)
    or ``(sample_a, output_a, sample_b, output_b)`` (``mode="full"``). ``sample``
    (default ``0..n-1``) labels the examples. Other arguments: :func:`empirical_ntk`.
    """
    gram = ntk_gram(model, x, method=method, mode=mode, batch_size=batch_size, dtype=dtype)
    eigenvalues = ntk_eigenvalues(gram)
    n = len(x)
    sample = np.arange(n) if sample is None else np.asarray(sample)
    variables: dict[str, xr.Variable] = {
        "eigenvalues": xr.Variable("eig", eigenvalues.cpu().double().numpy()),
        "condition_number": xr.Variable((), condition_number(eigenvalues, rtol)),
        "rank": xr.Variable((), numerical_rank(eigenvalues, rtol)),
        "alignment": xr.Variable((), kernel_target_alignment(gram, y)),
        "alignment_centered": xr.Variable((), kernel_target_alignment(gram, y, centered=True)),
    }
    coords = {"eig": np.arange(len(eigenvalues)), "sample_a": sample, "sample_b": sample}
    if keep_gram:
        values = gram.cpu().double().numpy()
        if mode == "trace":
            variables["gram"] = xr.Variable(("sample_a", "sample_b"), values)
        else:
            c = values.shape[0] // n
            dims = ("sample_a", "output_a", "sample_b", "output_b")
            variables["gram"] = xr.Variable(dims, values.reshape(n, c, n, c))
            coords.update(output_a=np.arange(c), output_b=np.arange(c))
    attrs = {
        "method": method,
        "mode": mode,
        "dtype": str(dtype).removeprefix("torch."),
        "rtol": effective_rtol(eigenvalues, rtol),
        "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)
