"""Tests for fine-tuning methods and the name registries they are looked up in."""

from __future__ import annotations

import pytest
import torch

from workflow.finetune import FINETUNE, FinetuneSetup, calibrate_batchnorm
from workflow.models import MLP
from workflow.registry import Registry
from workflow.train import TrainConfig, train

RANDOM_FEATURES = ("bn_only", "bn_head", "linear_probe")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def parent(make_cnn) -> dict[str, torch.Tensor]:
    """A parent trained on a 3-class source task: its head does not fit a 10-class model."""
    model = make_cnn(seed=1, num_classes=3)
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if "running_mean" in buffer_name:
                buffer.add_(1.0)  # statistics the fresh model does not have
    return _state(model)


@pytest.mark.parametrize("method", ["full", "linear_probe"])
def test_methods_with_a_parent_load_its_body_and_keep_a_fresh_head(make_cnn, parent, method: str) -> None:
    model = make_cnn(seed=0)
    fresh = _state(model)
    FINETUNE[method](model, parent)
    for name, value in model.state_dict().items():
        expected = fresh[name] if name.startswith("head.") else parent[name]
        assert torch.equal(value, expected), name


def test_full_trains_every_parameter(make_cnn, parent) -> None:
    model = make_cnn(seed=0)
    FINETUNE["full"](model, parent)
    assert all(p.requires_grad for p in model.parameters())


def test_linear_probe_trains_only_the_head(make_cnn, parent) -> None:
    model = make_cnn(seed=0)
    FINETUNE["linear_probe"](model, parent)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["head.bias", "head.weight"]


@pytest.mark.parametrize("method", ["full", "stats"])
def test_methods_with_a_parent_refuse_to_start_without_one(make_cnn, method: str) -> None:
    with pytest.raises(ValueError, match="needs a parent"):
        FINETUNE[method](make_cnn(seed=0), None)


# --- random features ("Training BatchNorm and Only BatchNorm") ----------------------------


@pytest.mark.parametrize("method", RANDOM_FEATURES)
def test_random_feature_methods_need_the_training_inputs(make_cnn, method: str) -> None:
    with pytest.raises(ValueError, match="needs the target training inputs"):
        FINETUNE[method](make_cnn(seed=0), None)


def test_calibration_sets_batchnorm_statistics_to_those_of_the_inputs(make_cnn, task) -> None:
    model = make_cnn(seed=0).double()
    x = task.x_train.double()
    seen = []
    hook = model.conv1[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(x[:1])
    hook.remove()
    calibrate_batchnorm(model, x, 50)
    inputs = model.conv1[0](x[:, None, :])  # what the first BatchNorm normalises: (N, C, L)
    per_batch = inputs.split(50)
    torch.testing.assert_close(model.conv1[1].running_mean, torch.stack([b.mean((0, 2)) for b in per_batch]).mean(0))
    torch.testing.assert_close(model.conv1[1].running_var,
                               torch.stack([b.var((0, 2), unbiased=True) for b in per_batch]).mean(0))
    assert model.conv1[1].momentum == 0.1 and model.training  # as they were


@pytest.mark.parametrize("method,trains", [("bn_only", "bn"), ("bn_head", "bn+head"), ("linear_probe", "head")])
def test_random_features_train_only_their_part_from_the_random_start(make_cnn, task, method: str, trains: str) -> None:
    model = make_cnn(seed=0, channels=8)
    fresh = {k: v.clone() for k, v in make_cnn(seed=0, channels=8).named_parameters()}
    FINETUNE[method](model, None, FinetuneSetup(x_train=task.x_train, batch_size=50))
    for name, p in model.named_parameters():  # the start is the seed's own random initialisation
        assert torch.equal(p, fresh[name]), name
    statistics = {k: v.clone() for k, v in model.named_buffers()}
    train(model, task, TrainConfig(epochs=2, batch_size=50, lr=0.05), seed=0, progress=False)
    affine = {f"{n}.{p}" for n, m in model.named_modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in ("weight", "bias")}
    head = {"head.weight", "head.bias"}
    expected = {"bn": affine, "bn+head": affine | head, "head": head}[trains]
    assert {k for k, v in model.named_parameters() if not torch.equal(v, fresh[k])} == expected
    moved = {k for k, v in model.named_buffers() if not torch.equal(v, statistics[k])}
    # a probe's BatchNorm is frozen at the calibrated statistics; trained BatchNorm updates its own
    assert (moved == set()) if trains == "head" else bool(moved)


def test_a_parent_of_another_architecture_is_refused(make_cnn) -> None:
    torch.manual_seed(0)
    other = MLP(in_length=40, num_classes=10, width=8).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        FINETUNE["full"](make_cnn(seed=0), other)


def test_scratch_refuses_a_parent(make_cnn, parent) -> None:
    with pytest.raises(ValueError, match="scratch takes no parent"):
        FINETUNE["scratch"](make_cnn(seed=0), parent)


def test_scratch_leaves_the_fresh_model_as_it_is(make_cnn) -> None:
    model = make_cnn(seed=0)
    fresh = _state(model)
    FINETUNE["scratch"](model, None)
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


# --- registries -------------------------------------------------------------------------


def test_finetune_registry_lists_the_methods() -> None:
    from workflow.stages.finetune import LORA_METHODS

    assert FINETUNE.names() == ["bn_head", "bn_only", "eva", "full", "linear_probe", "lora", "scratch", "stats"]
    assert "full" in FINETUNE and "dora" not in FINETUNE
    assert set(LORA_METHODS) <= set(FINETUNE)  # the methods that take finetune.lora settings


def test_unknown_finetune_method_raises_key_error_listing_the_allowed() -> None:
    with pytest.raises(KeyError, match="unknown finetune method 'dora'; allowed: bn_head, bn_only, eva, full, linear_probe, lora, scratch, stats"):
        FINETUNE["dora"]


def test_registry_refuses_a_name_registered_twice() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("b")(1)
    registry.register("a")(2)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registry.register("a")(3)
    assert registry["a"] == 2
    assert registry.names() == ["a", "b"]
    assert list(registry) == ["b", "a"]  # iteration keeps registration order


def test_stats_transfers_each_tensors_mean_and_std_and_nothing_else(make_cnn, parent) -> None:
    from workflow.finetune import FinetuneSetup

    model = make_cnn(seed=0)
    fresh = _state(model)
    FINETUNE["stats"](model, parent, FinetuneSetup(seed=3))
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert torch.equal(p, fresh[name]), name
            continue
        source, new = parent[name].double(), p.detach().double()
        if source.numel() > 1:
            assert float(new.mean()) == pytest.approx(float(source.mean()), abs=1e-6), name
            assert float(new.std()) == pytest.approx(float(source.std()), rel=1e-5, abs=1e-7), name
            if float(source.std()) > 0:
                assert not torch.equal(p.detach(), parent[name]), name  # the statistics, not the weights
    for name, buffer in model.named_buffers():  # BatchNorm statistics start afresh
        assert torch.equal(buffer, fresh[name]), name
    assert all(p.requires_grad for p in model.parameters())
