"""Tests for the one training loop: determinism, divergence, masks, frozen parts,
snapshots, early stops and the training settings."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from workflow.prune_network import prunable_parameters
from workflow.runtime import evaluate, resolve_device
from workflow.train import OPTIMIZERS, SCHEDULES, DivergenceError, TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CFG = TrainConfig(epochs=2, batch_size=50, lr=0.01)  # 240 examples: 5 steps per epoch
STEPS_PER_EPOCH = 5


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fit(make_cnn, task, cfg=CFG, seed=0, **kwargs):
    model = make_cnn(seed)
    result = train(model, task, cfg, seed=seed, progress=False, **kwargs)
    return model, result


# --- determinism -------------------------------------------------------------------


def test_same_seed_gives_bit_identical_weights_and_metrics(make_cnn, task) -> None:
    model_a, result_a = _fit(make_cnn, task)
    model_b, result_b = _fit(make_cnn, task)
    assert _equal_states(model_a.state_dict(), model_b.state_dict())
    xr.testing.assert_identical(result_a.history, result_b.history)


def test_different_training_seeds_give_different_weights(make_cnn, task) -> None:
    # Same initialisation, different batch order.
    model_a = make_cnn(0)
    model_b = make_cnn(0)
    train(model_a, task, CFG, seed=0, progress=False)
    train(model_b, task, CFG, seed=1, progress=False)
    assert not _equal_states(model_a.state_dict(), model_b.state_dict())


# --- history -------------------------------------------------------------------------


def test_history_has_its_metrics_over_epochs_zero_to_e(make_cnn, task) -> None:
    _, result = _fit(make_cnn, task)
    history = result.history
    assert set(history.data_vars) == {"train_loss", "train_acc", "test_loss", "test_acc",
                                      "weight_distance", "relative_weight_distance"}
    assert history["epoch"].values.tolist() == [0, 1, 2]
    for name in history.data_vars:
        assert history[name].dims == ("epoch",)
    assert ((history.train_acc >= 0) & (history.train_acc <= 1)).all()
    assert result.steps == CFG.epochs * STEPS_PER_EPOCH


def test_weight_distance_is_the_norm_of_the_change_since_the_start(make_cnn, task) -> None:
    model = make_cnn(0)
    start = {name: p.detach().clone().double() for name, p in model.named_parameters()}
    history = train(model, task, CFG, seed=0, progress=False).history
    change = torch.cat([(p.detach().double() - start[name]).flatten() for name, p in model.named_parameters()])
    norm = torch.cat([p.flatten() for p in start.values()]).norm()
    assert float(history.weight_distance[0]) == 0.0
    assert float(history.weight_distance[-1]) == pytest.approx(float(change.norm()), rel=1e-12)
    assert float(history.relative_weight_distance[-1]) == pytest.approx(float(change.norm() / norm), rel=1e-12)


def test_frozen_parameters_add_no_weight_distance(make_cnn, task) -> None:
    model = make_cnn(0)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    head = [p.detach().clone().double() for p in model.head.parameters()]
    history = train(model, task, CFG, seed=0, progress=False).history
    moved = torch.cat([(p.detach().double() - h).flatten() for p, h in zip(model.head.parameters(), head)])
    assert float(history.weight_distance[-1]) == pytest.approx(float(moved.norm()), rel=1e-12)


def test_epoch_zero_is_the_untrained_model(make_cnn, task) -> None:
    model = make_cnn(0)
    loss, acc = evaluate(model, task.x_test, task.y_test)
    result = train(model, task, CFG, seed=0, progress=False)
    assert result.history.test_loss[0] == loss
    assert result.history.test_acc[0] == acc


def test_every_epoch_visits_every_example_in_batches_larger_than_one(make_cnn, task) -> None:
    data = task.subset(torch.arange(101))  # 50 + 50 + 1: the batch of one is folded in
    seen: list[torch.Tensor] = []
    train(make_cnn(0), data, TrainConfig(epochs=1, batch_size=50, lr=0.01), seed=0, progress=False,
          on_batch=lambda idx, logits, yb: seen.append(idx))
    assert [len(idx) for idx in seen] == [50, 51]
    assert sorted(torch.cat(seen).tolist()) == list(range(101))


# --- divergence ----------------------------------------------------------------------


def test_nan_loss_raises_divergence_error_naming_epoch_and_step(make_cnn, task) -> None:
    def nan_loss(logits, xb, yb):
        return logits.sum() * float("nan")

    with pytest.raises(DivergenceError, match=r"epoch 1, step 1\b"):
        _fit(make_cnn, task, loss_fn=nan_loss)


def test_a_loss_that_breaks_mid_epoch_is_named_by_its_own_step(make_cnn, task) -> None:
    # Checked on the device and read at the epoch's end: the error still names step 8
    # (epoch 2's third), its loss and its learning rate, not the epoch's last step.
    calls = []

    def breaks_at_step_8(logits, xb, yb):
        calls.append(None)
        loss = F.cross_entropy(logits, yb)
        return loss * float("inf") if len(calls) == 8 else loss

    with pytest.raises(DivergenceError, match=r"loss is inf at epoch 2, step 8 \(lr="):
        _fit(make_cnn, task, loss_fn=breaks_at_step_8)


def test_huge_learning_rate_raises_divergence_error(make_cnn, task) -> None:
    with pytest.raises(DivergenceError, match=r"epoch \d+, step \d+"):
        _fit(make_cnn, task, cfg=TrainConfig(epochs=2, batch_size=50, lr=1e30))


def test_divergence_on_the_last_step_is_not_saved_as_a_finished_run(make_cnn, task) -> None:
    # One step: its own loss is finite, but it leaves weights whose loss is not.
    one_step = TrainConfig(epochs=1, batch_size=len(task.y_train), lr=1e30)
    with pytest.raises(DivergenceError, match=r"epoch 1, step 1\b"):
        _fit(make_cnn, task, cfg=one_step)


# --- masks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(epochs=2, batch_size=50, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-2),
        TrainConfig(epochs=2, batch_size=50, lr=0.01, optimizer="adam", weight_decay=1e-2),
        TrainConfig(epochs=2, batch_size=50, lr=0.01, optimizer="adamw", weight_decay=1e-2),
    ],
    ids=["sgd-momentum-wd", "adam-wd", "adamw"],
)
def test_masked_weights_stay_exactly_zero(make_cnn, task, cfg: TrainConfig) -> None:
    model = make_cnn(0)
    generator = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(p.shape, generator=generator) < 0.5 for name, p in prunable_parameters(model).items()}
    before = _state(model)
    train(model, task, cfg, seed=0, masks=masks, progress=False)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert not torch.equal(params[name][mask], before[name][mask]), f"{name} was not trained"


# --- frozen parameters and BatchNorm -------------------------------------------------


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_parameters_and_their_batchnorm_statistics_do_not_change(make_cnn, task) -> None:
    model = make_cnn(0)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))  # a linear probe
    before = _state(model)
    train(model, task, CFG, seed=0, progress=False)
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith("head."):
            assert not torch.equal(after[name], value), f"{name} was not trained"
        else:
            assert torch.equal(after[name], value), f"frozen {name} changed"


def test_trainable_model_updates_its_batchnorm_statistics(make_cnn, task) -> None:
    model = make_cnn(0)
    before = _bn_buffers(model)
    train(model, task, CFG, seed=0, progress=False)
    after = _bn_buffers(model)
    assert all(not torch.equal(after[k], before[k]) for k in before if "running_mean" in k)


def test_a_trainable_model_is_left_in_train_mode(make_cnn, task) -> None:
    model = make_cnn(0)
    train(model, task, CFG, seed=0, progress=False)
    assert all(m.training for m in model.modules())


def test_batchnorm_without_affine_parameters_follows_a_trainable_model(task) -> None:
    # Only BatchNorms whose affine parameters are all frozen keep their statistics.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 8), nn.BatchNorm1d(8, affine=False), nn.ReLU(), nn.Linear(8, 10))
    train(model, task, CFG, seed=0, progress=False)
    assert int(model[1].num_batches_tracked) == CFG.epochs * STEPS_PER_EPOCH


def test_a_model_with_nothing_to_train_is_refused(make_cnn, task) -> None:
    model = make_cnn(0).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, task, CFG, seed=0, progress=False)


# --- snapshots -----------------------------------------------------------------------


def test_snapshot_at_step_zero_is_the_initial_weights(make_cnn, task) -> None:
    model = make_cnn(0)
    initial = _state(model)
    result = train(model, task, CFG, seed=0, snapshot_steps=(0, 3, 10), progress=False)
    assert sorted(result.snapshots) == [0, 3, 10]
    assert _equal_states(result.snapshots[0], initial)
    assert _equal_states(result.snapshots[10], model.state_dict())  # the last step
    assert not _equal_states(result.snapshots[3], initial)


def test_snapshot_beyond_training_is_refused_before_training(make_cnn, task) -> None:
    model = make_cnn(0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"snapshot steps \[11\] lie beyond the 10 steps"):
        train(model, task, CFG, seed=0, progress=False, snapshot_steps=(11,))
    assert _equal_states(model.state_dict(), initial)


# --- stop_after ------------------------------------------------------------------------


def test_stop_after_is_an_early_checkpoint_of_the_full_run(make_cnn, task) -> None:
    cfg = TrainConfig(epochs=3, batch_size=50, lr=0.01, schedule="cosine")
    _, full = _fit(make_cnn, task, cfg=cfg, snapshot_steps=(STEPS_PER_EPOCH,))
    stopped_model, stopped = _fit(make_cnn, task, cfg=cfg, stop_after=1)
    assert stopped.history["epoch"].values.tolist() == [0, 1]
    assert stopped.steps == STEPS_PER_EPOCH
    assert _equal_states(stopped_model.state_dict(), full.snapshots[STEPS_PER_EPOCH])
    xr.testing.assert_identical(stopped.history, full.history.isel(epoch=slice(0, 2)))


def test_stop_after_keeps_the_schedule_of_the_full_run(make_cnn, task) -> None:
    # One epoch of a 3-epoch cosine run is not a 1-epoch cosine run (whose LR decays to 0).
    stopped_model, _ = _fit(make_cnn, task, cfg=TrainConfig(epochs=3, batch_size=50, lr=0.01), stop_after=1)
    short_model, _ = _fit(make_cnn, task, cfg=TrainConfig(epochs=1, batch_size=50, lr=0.01))
    assert not _equal_states(stopped_model.state_dict(), short_model.state_dict())


# --- settings and device ---------------------------------------------------------------


def test_train_config_from_dict_builds_the_config() -> None:
    cfg = TrainConfig.from_dict({"epochs": 3, "batch_size": 8, "lr": 0.1, "optimizer": "sgd"})
    assert cfg == TrainConfig(epochs=3, batch_size=8, lr=0.1, optimizer="sgd")


def test_train_config_from_dict_refuses_unknown_keys_listing_the_allowed() -> None:
    with pytest.raises(ValueError, match=r"\['lrate'\].*allowed: .*'batch_size'.*'lr'"):
        TrainConfig.from_dict({"epochs": 1, "batch_size": 8, "lrate": 0.1})


@pytest.mark.parametrize(
    ("key", "allowed"), [("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)]
)
def test_train_config_refuses_unknown_names_listing_the_allowed(key: str, allowed: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="allowed: " + ", ".join(allowed)):
        TrainConfig.from_dict({"epochs": 1, "batch_size": 8, "lr": 0.1, key: "rmsprop"})


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"batch_size": 0}, {"lr": 0.0}])
def test_train_config_refuses_impossible_numbers(bad: dict) -> None:
    with pytest.raises(ValueError, match="need epochs >= 0"):
        TrainConfig.from_dict({"epochs": 1, "batch_size": 8, "lr": 0.1, **bad})


def test_auto_device_is_cuda_when_present_else_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_auto_device_is_cpu_here() -> None:
    assert resolve_device("auto") == torch.device("cpu")
