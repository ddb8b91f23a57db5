"""Loss Hessian from Hessian-vector products: closed forms, dense references, estimators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.func import functional_call, hessian

from workflow.analysis.hessian import (
    LossHessian,
    hessian_analysis,
    hutchinson_trace,
    lanczos_eigenvalues,
    power_iteration_eigenvalues,
)
from workflow.models import MLP

pytestmark = pytest.mark.usefixtures("torch_one_thread")

F64 = torch.float64


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out.squeeze(-1) - target) ** 2).mean()


@pytest.fixture
def regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear regression without bias and its exact Hessian ``2XᵀX/n`` (column scales separate the spectrum)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g) * torch.tensor([4.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.4, 0.2])
    y = torch.randn(60, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(8, 1, bias=False)
    exact = 2 * x.double().T @ x.double() / len(x)
    return model, x, y, exact


@pytest.fixture
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The project's MLP at 227 parameters (BatchNorm with non-default running statistics)."""
    torch.manual_seed(0)
    model = MLP(in_length=8, num_classes=3, width=16, depth=1)
    with torch.no_grad():  # one train-mode pass moves the running statistics off (0, 1)
        model(torch.randn(64, 8) * 2 + 1)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: the cross-entropy Hessian built explicitly by torch.func.hessian, eval mode, float64."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    buffers = {k: v.double() if v.is_floating_point() else v for k, v in model.named_buffers()}
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        pieces = theta.split([s.numel() for s in shapes])
        unflat = {n: piece.view(s) for n, piece, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(model, {**unflat, **buffers}, (x.double(),)), y)

    training = model.training
    model.eval()
    try:
        return hessian(loss)(flat)
    finally:
        model.train(training)


def top_by_magnitude(eigenvalues: torch.Tensor, k: int) -> torch.Tensor:
    return eigenvalues[eigenvalues.abs().argsort(descending=True)[:k]]


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_linear_regression_top_eigenvalues(regression, method: str) -> None:
    model, x, y, exact = regression
    expected = torch.linalg.eigvalsh(exact).flip(0)[:4]
    found = LossHessian(model, x, y, loss_fn=mse, dtype=F64).eigenvalues(4, method=method)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=0)


def test_linear_regression_hvp_is_2xtx_over_n(regression) -> None:
    model, x, y, exact = regression
    v = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(3))
    hv = LossHessian(model, x, y, loss_fn=mse, dtype=F64).matvec(v)
    torch.testing.assert_close(hv, exact @ v)


def test_hutchinson_trace_converges(regression) -> None:
    model, x, y, exact = regression
    hess = LossHessian(model, x, y, loss_fn=mse, dtype=F64)
    estimate, stderr = hess.trace(num_probes=400)
    assert stderr > 0
    assert abs(estimate - float(exact.trace())) < 4 * stderr
    # the standard error shrinks as 1/sqrt(probes)
    _, stderr_small = hess.trace(num_probes=25)
    assert stderr_small / stderr == pytest.approx(4.0, rel=0.5)


def test_hutchinson_standard_error_by_its_formula() -> None:
    """An independent Hutchinson on an explicit matrix: same probes (same generator) give the same numbers."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=g, dtype=F64)
    a = a + a.T
    estimate, stderr = hutchinson_trace(lambda v: a @ v, 12, num_probes=50, seed=5)
    probes = torch.randint(0, 2, (50, 12), generator=torch.Generator().manual_seed(5)).to(F64) * 2 - 1
    samples = torch.einsum("pi,ij,pj->p", probes, a, probes)
    assert estimate == pytest.approx(float(samples.mean()), rel=1e-12)
    assert stderr == pytest.approx(float(samples.std() / 50**0.5), rel=1e-12)
    # a Rademacher probe's zᵀAz has no contribution from the diagonal to its variance: exact for diagonal A
    diagonal = torch.diag(torch.arange(1.0, 13.0, dtype=F64))
    assert hutchinson_trace(lambda v: diagonal @ v, 12, num_probes=3) == (78.0, 0.0)


def test_hvp_matches_the_explicit_hessian(mlp) -> None:
    model, x, y = mlp
    dense = dense_hessian(model, x, y)
    assert dense.shape == (227, 227)
    v = torch.randn(227, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(LossHessian(model, x, y, dtype=F64).matvec(v), dense @ v)
    # float32 evaluation, and a dataset in ragged batches: the same mean-loss Hessian
    torch.testing.assert_close(LossHessian(model, x, y, batch_size=7).matvec(v), dense @ v, rtol=1e-4, atol=1e-5)


def test_lanczos_matches_dense_eigenvalues(mlp) -> None:
    model, x, y = mlp
    # the 12 largest in magnitude include negative ones: "top" is by magnitude, signs kept
    expected = top_by_magnitude(torch.linalg.eigvalsh(dense_hessian(model, x, y)), 12)
    assert (expected < 0).any()
    found = LossHessian(model, x, y, dtype=F64).eigenvalues(12, method="lanczos", num_iter=100)
    torch.testing.assert_close(found, expected, rtol=1e-8, atol=1e-10)


def test_power_iteration_agrees_with_lanczos(mlp) -> None:
    model, x, y = mlp
    hess = LossHessian(model, x, y, dtype=F64)
    lanczos, power = hess.eigenvalues(3, method="lanczos"), hess.eigenvalues(3, method="power")
    torch.testing.assert_close(power, lanczos, rtol=1e-5, atol=0)


@pytest.mark.parametrize("solve", [lanczos_eigenvalues, power_iteration_eigenvalues])
def test_solvers_on_an_explicit_matrix_with_a_repeated_eigenvalue(solve) -> None:
    """Lanczos restarts when its Krylov space closes, so an eigenvalue of multiplicity 2 is found twice."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=F64))
    spectrum = torch.cat([torch.tensor([9.0, 9.0, -7.0, 5.0], dtype=F64), torch.linspace(-1, 1, 26, dtype=F64)])
    a = q @ torch.diag(spectrum) @ q.T
    found = solve(lambda v: a @ v, 30, 4, seed=1)
    torch.testing.assert_close(found, torch.tensor([9.0, 9.0, -7.0, 5.0], dtype=F64), rtol=1e-6, atol=0)


def test_deterministic_given_a_seed(mlp) -> None:
    model, x, y = mlp
    first = hessian_analysis(model, x, y, 2, num_probes=10, seed=3)
    again = hessian_analysis(model, x, y, 2, num_probes=10, seed=3)
    xr.testing.assert_identical(first, again)
    other = LossHessian(model, x, y).trace(num_probes=10, seed=4)
    assert other[0] != float(first["trace"])


def test_modes_and_buffers_restored(mlp) -> None:
    model, x, y = mlp
    model.train()
    model.fc1.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hessian_analysis(model, x, y, 2, num_probes=4)
    LossHessian(model, x, y).eigenvalues(1, method="power")
    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_analysis_dataset(mlp) -> None:
    model, x, y = mlp
    ds = hessian_analysis(model, x, y, 3, num_probes=20, batch_size=16)
    assert ds["eigenvalues"].dims == ("eig",) and ds.sizes["eig"] == 3
    assert set(ds.data_vars) == {"eigenvalues", "trace", "trace_stderr"}
    assert (abs(ds["eigenvalues"]).diff("eig") <= 0).all()
    assert ds.attrs["num_params"] == 227 and ds.attrs["loss"] == "cross_entropy"


def test_rejects_bad_arguments(mlp) -> None:
    model, x, y = mlp
    hess = LossHessian(model, x, y)
    with pytest.raises(ValueError, match="method"):
        hess.eigenvalues(2, method="arnoldi")
    with pytest.raises(ValueError, match="k must be"):
        hess.eigenvalues(0)
    with pytest.raises(ValueError, match="num_probes"):
        hess.trace(num_probes=1)
    with pytest.raises(ValueError, match="same"):
        LossHessian(model, x, y[:5])
