"""Linear mode connectivity: exact ends, a zero barrier of a model with itself,
BatchNorm statistics re-estimated by hand, and a linear model against the formula."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from workflow.analysis.connectivity import DEFAULT_ALPHAS, linear_connectivity, recompute_batchnorm
from workflow.averaging import interpolate
from workflow.runtime import evaluate

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FEW_ALPHAS = [0.0, 0.25, 0.5, 1.0]


def _bn_model(seed: int) -> nn.Module:
    """A linear layer then BatchNorm1d, with running statistics away from their defaults."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    return model.eval()


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_parameters()}


def test_default_alphas_are_30_evenly_spaced_with_both_ends() -> None:
    assert len(DEFAULT_ALPHAS) == 30 and DEFAULT_ALPHAS[0] == 0 and DEFAULT_ALPHAS[-1] == 1
    np.testing.assert_allclose(np.diff(DEFAULT_ALPHAS), 1 / 29)


def test_recompute_matches_the_batch_statistics_by_hand() -> None:
    a, b = _bn_model(0), _bn_model(1)
    model = copy.deepcopy(a)
    model.load_state_dict(interpolate(a.state_dict(), b.state_dict(), 0.5))
    interpolated_mean = model[1].running_mean.clone()
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(2))
    params = _params(model)

    recompute_batchnorm(model, x, batch_size=8, num_batches=2)

    with torch.no_grad():
        h = model[0](x)
    first, second = h[:8], h[8:16]  # the third batch is left out
    torch.testing.assert_close(model[1].running_mean, (first.mean(0) + second.mean(0)) / 2)
    torch.testing.assert_close(model[1].running_var, (first.var(0) + second.var(0)) / 2)  # unbiased, as torch
    assert not torch.allclose(model[1].running_mean, interpolated_mean)
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    assert not model.training and model[1].momentum == 0.1  # modes and momentum restored


def test_recompute_over_one_whole_batch_is_the_data_mean_and_variance() -> None:
    model = _bn_model(0)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
    recompute_batchnorm(model, x, batch_size=64)
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0))
    torch.testing.assert_close(model[1].running_var, h.var(0, unbiased=True))


def test_a_model_with_itself_has_zero_barrier(make_cnn, task) -> None:
    model = make_cnn(seed=0)
    ds = linear_connectivity(model, copy.deepcopy(model), task.x_test, task.y_test,
                             x_train=task.x_train, y_train=task.y_train, alphas=np.linspace(0, 1, 6))
    assert float(ds.test_error_barrier) == 0 and float(ds.train_error_barrier) == 0
    # (1 - a) w + a w rounds in float32, so the loss is the same only to rounding
    assert abs(float(ds.test_loss_barrier)) < 1e-5 and abs(float(ds.train_loss_barrier)) < 1e-5
    assert bool(ds.stable)


def test_the_ends_reproduce_each_model_with_its_statistics_recomputed(make_cnn, task) -> None:
    models = [make_cnn(seed=0), make_cnn(seed=1)]
    ds = linear_connectivity(*models, task.x_test, task.y_test, x_train=task.x_train, alphas=FEW_ALPHAS,
                             bn_batches=2, batch_size=64, names=("seed0", "seed1"))
    for model, alpha in zip(models, (0.0, 1.0)):
        own = copy.deepcopy(model)
        recompute_batchnorm(own, task.x_train, batch_size=64, num_batches=2)
        loss, accuracy = evaluate(own, task.x_test, task.y_test, batch_size=64)
        point = ds.sel(alpha=alpha)
        assert float(point.test_loss) == loss and float(point.test_error) == 1 - accuracy
    assert "train_loss" not in ds  # no y_train: the train set only served BatchNorm
    assert ds.attrs["model_a"] == "seed0" and ds.attrs["model_b"] == "seed1"


def test_the_ends_without_recompute_are_the_models_as_they_are(make_cnn, task) -> None:
    models = [make_cnn(seed=0), make_cnn(seed=1)]
    ds = linear_connectivity(*models, task.x_test, task.y_test, alphas=FEW_ALPHAS, recompute_bn=False)
    for model, alpha in zip(models, (0.0, 1.0)):
        loss, accuracy = evaluate(model, task.x_test, task.y_test, batch_size=256)
        assert float(ds.test_loss.sel(alpha=alpha)) == loss and float(ds.test_error.sel(alpha=alpha)) == 1 - accuracy


def test_the_models_are_left_untouched(make_cnn, task) -> None:
    models = [make_cnn(seed=0).train(), make_cnn(seed=1).eval()]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    linear_connectivity(*models, task.x_test, task.y_test, x_train=task.x_train, alphas=FEW_ALPHAS)
    for model, state in zip(models, before):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert models[0].training and not models[1].training


def _linear_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(5, 3).double()


def test_a_linear_models_curve_matches_the_formula() -> None:
    a, b = _linear_model(0), _linear_model(1)
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(50, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (50,), generator=gen)
    alphas = np.linspace(0, 1, 7)
    ds = linear_connectivity(a, b, x, y, alphas=alphas)  # no BatchNorm: no training data needed

    losses, errors = [], []
    for alpha in alphas:
        w = (1 - alpha) * a.weight.detach() + alpha * b.weight.detach()
        bias = (1 - alpha) * a.bias.detach() + alpha * b.bias.detach()
        z = x @ w.T + bias
        losses.append(float((torch.logsumexp(z, 1) - z[torch.arange(50), y]).mean()))
        errors.append(float((z.argmax(1) != y).double().mean()))
    np.testing.assert_allclose(ds.test_loss.values, losses, rtol=1e-12)
    np.testing.assert_allclose(ds.test_error.values, errors, rtol=0, atol=1e-15)
    line = lambda v: [(1 - a) * v[0] + a * v[-1] for a in alphas]  # noqa: E731
    assert float(ds.test_loss_barrier) == pytest.approx(max(np.subtract(losses, line(losses))), rel=1e-9, abs=1e-12)
    assert float(ds.test_error_barrier) == pytest.approx(max(np.subtract(errors, line(errors))), abs=1e-15)
    assert float(ds.test_loss_max_minus_mean_of_ends) == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2,
                                                                       rel=1e-12)
    assert float(ds.test_error_max_minus_mean_of_ends) == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2,
                                                                        abs=1e-15)
    assert bool(ds.stable) == (float(ds.test_error_barrier) < 0.02)


def test_the_stable_flag_follows_the_threshold(make_cnn, task) -> None:
    models = [make_cnn(seed=0), make_cnn(seed=1)]
    kwargs = dict(x_train=task.x_train, alphas=FEW_ALPHAS, bn_batches=1)
    barrier = float(linear_connectivity(*models, task.x_test, task.y_test, **kwargs).test_error_barrier)
    for threshold in (barrier - 0.01, barrier + 0.01):
        ds = linear_connectivity(*models, task.x_test, task.y_test, stable_below=threshold, **kwargs)
        assert bool(ds.stable) == (barrier < threshold)


def test_connectivity_is_deterministic(make_cnn, task) -> None:
    def run() -> xr.Dataset:
        return linear_connectivity(make_cnn(seed=0), make_cnn(seed=1), task.x_test, task.y_test,
                                   x_train=task.x_train, y_train=task.y_train, alphas=FEW_ALPHAS)

    first = run()
    assert set(first.data_vars) >= {"test_loss", "test_error", "train_loss", "train_error", "test_error_barrier",
                                    "train_loss_barrier", "stable"}
    assert first.test_loss.dims == ("alpha",)
    xr.testing.assert_identical(first, run())


def test_alphas_must_contain_both_ends(make_cnn, task) -> None:
    with pytest.raises(ValueError, match="containing 0 and 1"):
        linear_connectivity(make_cnn(), make_cnn(), task.x_test, task.y_test, x_train=task.x_train, alphas=[0, 0.5])


def test_batchnorm_recompute_needs_training_data(make_cnn, task) -> None:
    with pytest.raises(ValueError, match="x_train"):
        linear_connectivity(make_cnn(), make_cnn(), task.x_test, task.y_test)


def test_the_barrier_is_the_rise_above_the_line_between_the_ends() -> None:
    from workflow.analysis.connectivity import barrier, max_minus_mean_of_ends

    alphas = np.linspace(0, 1, 5)
    falling = np.array([0.4, 0.3, 0.2, 0.1, 0.0])  # monotone: no bump
    assert barrier(falling, alphas) == pytest.approx(0.0, abs=1e-15)
    assert max_minus_mean_of_ends(falling, alphas) == pytest.approx(0.2)  # half the ends' gap
    convex = np.array([0.4, 0.1, 0.05, 0.02, 0.0])  # falls faster than the line: below it everywhere
    assert barrier(convex, alphas) == pytest.approx(0.0, abs=1e-15)
    bump = np.array([0.1, 0.2, 0.5, 0.2, 0.1])  # equal ends: the two agree
    assert barrier(bump, alphas) == pytest.approx(max_minus_mean_of_ends(bump, alphas)) == pytest.approx(0.4)
    tilted = np.array([0.0, 0.3, 0.4, 0.35, 0.2])  # the line at 0.5 is 0.1; the rise there is 0.3
    assert barrier(tilted, alphas) == pytest.approx(0.3)


def test_a_falling_pair_is_stable_whatever_the_gap_of_its_ends() -> None:
    from workflow.analysis.connectivity import _connectivity_dataset

    alphas = np.linspace(0, 1, 5)
    rows = [{"test": (loss, loss)} for loss in (0.4, 0.3, 0.2, 0.1, 0.0)]
    ds = _connectivity_dataset(rows, alphas, 0.02, ("a", "b"))
    assert float(ds.test_error_barrier) == 0 and bool(ds.stable)
    assert float(ds.test_error_max_minus_mean_of_ends) == pytest.approx(0.2)
