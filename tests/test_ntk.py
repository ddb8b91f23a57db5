"""Empirical NTK: both methods, both modes, batching, closed forms, spectrum and alignment."""

from __future__ import annotations

import copy

import pytest
import torch
import xarray as xr
from torch import nn

from workflow.analysis.ntk import (
    condition_number,
    empirical_ntk,
    kernel_matrix,
    kernel_target_alignment,
    ntk_analysis,
    ntk_eigenvalues,
    ntk_gram,
    numerical_rank,
)
from workflow.models import CNN1d

pytestmark = pytest.mark.usefixtures("torch_one_thread")

N, LENGTH, CLASSES = 7, 40, 10
F64 = torch.float64


@pytest.fixture
def model(make_cnn) -> CNN1d:
    """A tiny CNN whose BatchNorm running statistics are not the defaults, so a
    kernel computed in train mode (batch statistics) would differ from eval mode."""
    model = make_cnn(seed=0, num_classes=CLASSES, channels=2)
    with torch.no_grad():  # one train-mode pass moves the running statistics off (0, 1)
        model(torch.randn(32, LENGTH) * 2 + 1)
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(N, LENGTH, generator=torch.Generator().manual_seed(1))


def reference_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Θ by definition, without torch.func: one autograd gradient per example and output.

    Evaluated one example at a time in eval mode, in float64; shape (n, n, C, C).
    """
    model = copy.deepcopy(model).to(F64).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x_i in x.to(F64):
        out = model(x_i.unsqueeze(0)).squeeze(0)
        rows.append(torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)]) for o in out
        ]))
    jac = torch.stack(rows)  # (n, C, P)
    return torch.einsum("acp,bdp->abcd", jac, jac)


@pytest.mark.parametrize("method", ["jacobian", "ntk_vp"])
def test_matches_the_definition(model: CNN1d, x: torch.Tensor, method: str) -> None:
    kernel = empirical_ntk(model, x, method=method, dtype=F64)
    assert kernel.shape == (N, N, CLASSES, CLASSES)
    torch.testing.assert_close(kernel, reference_ntk(model, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["full", "trace"])
def test_methods_agree(model: CNN1d, x: torch.Tensor, mode: str) -> None:
    x2 = x[:4] * 0.5 + 1  # a rectangular kernel as well as the square one
    for other in (None, x2):
        jacobian = empirical_ntk(model, x, other, method="jacobian", mode=mode, dtype=F64)
        ntk_vp = empirical_ntk(model, x, other, method="ntk_vp", mode=mode, dtype=F64)
        assert (jacobian - ntk_vp).abs().max() <= 1e-6 * jacobian.abs().max()


def test_symmetric_psd(model: CNN1d, x: torch.Tensor) -> None:
    for mode in ("full", "trace"):
        gram = ntk_gram(model, x, mode=mode, dtype=F64)
        torch.testing.assert_close(gram, gram.T, rtol=1e-12, atol=1e-12)
        eigenvalues = ntk_eigenvalues(gram)
        assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


def test_swapping_arguments_transposes(model: CNN1d, x: torch.Tensor) -> None:
    x2 = x[:3] + 1
    forward = empirical_ntk(model, x, x2, dtype=F64)
    backward = empirical_ntk(model, x2, x, dtype=F64)
    torch.testing.assert_close(backward, forward.permute(1, 0, 3, 2), rtol=1e-12, atol=1e-12)


def test_linear_model_closed_form() -> None:
    """f(x) = Wx + b: ∂f_c/∂W_{c'k} = δ_{cc'} x_k and ∂f_c/∂b_{c'} = δ_{cc'}, so Θ = (x₁ᵀx₂ + 1) I_C."""
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    x = torch.randn(6, 5)
    expected = torch.einsum("ab,cd->abcd", x.double() @ x.double().T + 1, torch.eye(3, dtype=F64))
    for method in ("jacobian", "ntk_vp"):
        torch.testing.assert_close(empirical_ntk(linear, x, method=method, dtype=F64), expected)


@pytest.mark.parametrize("method", ["jacobian", "ntk_vp"])
def test_trace_mode_is_the_trace_over_outputs(model: CNN1d, x: torch.Tensor, method: str) -> None:
    full = empirical_ntk(model, x, method=method, mode="full", dtype=F64)
    trace = empirical_ntk(model, x, method=method, mode="trace", dtype=F64)
    torch.testing.assert_close(trace, torch.diagonal(full, dim1=2, dim2=3).sum(-1))


@pytest.mark.parametrize("method", ["jacobian", "ntk_vp"])
def test_batching_does_not_change_the_kernel(model: CNN1d, x: torch.Tensor, method: str) -> None:
    whole = empirical_ntk(model, x, method=method, dtype=F64, batch_size=100)
    for batch_size in (1, 3):  # 3 leaves a ragged last block
        torch.testing.assert_close(empirical_ntk(model, x, method=method, dtype=F64, batch_size=batch_size), whole)
        torch.testing.assert_close(
            empirical_ntk(model, x, x[:5], method=method, dtype=F64, batch_size=batch_size), whole[:, :5]
        )


def test_modes_and_buffers_restored(model: CNN1d, x: torch.Tensor) -> None:
    model.train()
    model.conv2.eval()  # a mix of modes must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("jacobian", "ntk_vp"):
        empirical_ntk(model, x, method=method)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_float32_default_and_float64_option(model: CNN1d, x: torch.Tensor) -> None:
    assert empirical_ntk(model, x).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the model is not cast


def test_kernel_matrix_is_sample_major(model: CNN1d, x: torch.Tensor) -> None:
    kernel = empirical_ntk(model, x, dtype=F64)
    matrix = kernel_matrix(kernel)
    assert matrix.shape == (N * CLASSES, N * CLASSES)
    assert matrix[2 * CLASSES + 3, 4 * CLASSES + 7] == kernel[2, 4, 3, 7]


def test_alignment_of_the_target_kernel_is_one() -> None:
    y = torch.tensor([0, 2, 1, 2, 0, 1, 1])
    onehot = nn.functional.one_hot(y, 3).double()
    target = onehot @ onehot.T
    for centered in (False, True):
        assert kernel_target_alignment(target, y, centered=centered) == pytest.approx(1.0)
        # full (n·C × n·C) form: the target is vec(Y) vec(Y)ᵀ
        flat = onehot.reshape(-1)
        assert kernel_target_alignment(torch.outer(flat, flat), y, centered=centered) == pytest.approx(1.0)


def test_alignment_by_its_formula_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(9, 4, generator=g, dtype=F64)
    kernel = a @ a.T
    y = torch.randint(0, 3, (9,), generator=g)
    t = (y[:, None] == y[None, :]).double()
    expected = float((kernel * t).sum() / (kernel.norm() * t.norm()))
    assert kernel_target_alignment(kernel, y) == pytest.approx(expected, rel=1e-12)
    for scale in (1e-6, 3.0, 1e6):
        assert kernel_target_alignment(scale * kernel, y) == pytest.approx(expected, rel=1e-12)
        assert kernel_target_alignment(scale * kernel, y, centered=True) == pytest.approx(
            kernel_target_alignment(kernel, y, centered=True), rel=1e-12
        )
    # why the centred form exists: uncentred, a constant kernel aligns with any labels,
    # sqrt(Σ n_k²) / n >= 1/sqrt(classes)
    counts = torch.bincount(y).double()
    assert kernel_target_alignment(torch.ones(9, 9, dtype=F64), y) == pytest.approx(float(counts.norm() / 9))


def test_condition_number_over_the_numerical_range() -> None:
    eigenvalues = torch.tensor([10.0, 2.0, 0.5, 1e-18, -1e-17], dtype=F64)
    assert condition_number(eigenvalues) == pytest.approx(20.0)
    assert numerical_rank(eigenvalues) == 3
    assert condition_number(eigenvalues, rtol=0.1) == pytest.approx(5.0)
    assert condition_number(eigenvalues, rtol=0) == pytest.approx(1e19)
    assert condition_number(torch.zeros(3, dtype=F64)) != condition_number(torch.zeros(3, dtype=F64))  # NaN


def test_condition_number_matches_numpy_on_a_full_rank_gram(model: CNN1d, x: torch.Tensor) -> None:
    gram = ntk_gram(model, x, mode="trace", dtype=F64)
    assert condition_number(ntk_eigenvalues(gram)) == pytest.approx(float(torch.linalg.cond(gram)), rel=1e-8)


def test_analysis_dataset(model: CNN1d, x: torch.Tensor) -> None:
    y = torch.arange(N) % 3
    ds = ntk_analysis(model, x, y, keep_gram=True)
    assert isinstance(ds, xr.Dataset)
    assert ds["eigenvalues"].dims == ("eig",) and ds.sizes["eig"] == N
    assert (ds["eigenvalues"].diff("eig") <= 0).all()
    assert ds["gram"].dims == ("sample_a", "sample_b")
    assert ds["condition_number"].item() == pytest.approx(float(ds["eigenvalues"][0] / ds["eigenvalues"][-1]))
    assert int(ds["rank"]) == N
    assert -1 <= float(ds["alignment_centered"]) <= 1 and 0 <= float(ds["alignment"]) <= 1

    full = ntk_analysis(model, x, y, mode="full", method="ntk_vp", keep_gram=True)
    assert full["gram"].dims == ("sample_a", "output_a", "sample_b", "output_b")
    assert full.sizes["eig"] == N * CLASSES
    torch.testing.assert_close(
        torch.from_numpy(full["gram"].values).diagonal(dim1=1, dim2=3).sum(-1), torch.from_numpy(ds["gram"].values)
    )


def test_rejects_unknown_choices(model: CNN1d, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(model, x, method="exact")
    with pytest.raises(ValueError, match="mode"):
        empirical_ntk(model, x, mode="diagonal")
