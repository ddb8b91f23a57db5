"""Tests for LoRA and EVA: an untrained adapter changes nothing, merging changes
nothing, EVA's factor is the activations' top right-singular vectors, its ranks are
the budget's components of highest explained variance and sum to the budget, and only
the adapters and the head train; and for BatchNorm-only fine-tuning. EVA against peft's
implementation: ``test_eva_peft.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workflow.finetune import FINETUNE, FinetuneSetup
from workflow.lora import LoRA, add_eva, add_lora, explained_variance, layer_inputs, merge_lora, redistribute_ranks
from workflow.models import CNN1d, CifarResNet
from workflow.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CNN1d(in_length=40, num_classes=10, channels=8).eval()


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CifarResNet(3 * 8 * 8, num_classes=10, width=4, depth=8, channels_in=3).eval()


MODELS = {"cnn1d": (_cnn, (6, 40)), "resnet": (_resnet, (6, 3, 8, 8))}


def _perturb_adapters(model: nn.Module) -> None:
    torch.manual_seed(5)
    for m in model.modules():
        if isinstance(m, LoRA):
            with torch.no_grad():
                m.up.normal_(0, 0.3)


@pytest.mark.parametrize("name", MODELS)
def test_an_untrained_adapter_leaves_the_outputs_unchanged(name: str) -> None:
    build, shape = MODELS[name]
    model = build()
    x = torch.randn(shape)
    before = model(x)
    adapters = add_lora(model, rank=2, alpha=4)
    assert adapters and all(isinstance(m, LoRA) for m in adapters.values())
    assert torch.equal(model(x), before)  # up starts at zero: exactly, not nearly


@pytest.mark.parametrize("name", MODELS)
def test_merging_gives_the_outputs_of_the_adapted_model(name: str) -> None:
    build, shape = MODELS[name]
    model = build()
    x = torch.randn(shape, dtype=torch.float64)
    model = model.double()
    add_lora(model, rank=2, alpha=4)
    _perturb_adapters(model)
    adapted = model(x)
    assert not torch.allclose(adapted, build().double()(x))  # the adapters do something
    merge_lora(model)
    assert not any(isinstance(m, LoRA) for m in model.modules())
    torch.testing.assert_close(model(x), adapted, rtol=1e-10, atol=1e-10)
    assert set(model.state_dict()) == set(build().state_dict())  # a plain model again


def test_only_the_adapters_and_the_head_train_and_their_count_is_rank_times_fan_in_plus_out() -> None:
    model = _cnn()
    adapters = add_lora(model, rank=3, alpha=6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{f}" for m in adapters for f in ("down", "up")} | {"head.weight", "head.bias"}
    expected = sum(3 * (a.base.weight[0].numel() + a.base.weight.shape[0]) for a in adapters.values())
    expected += model.head.weight.numel() + model.head.bias.numel()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert "head" not in adapters


def test_the_update_is_scaled_by_alpha_over_rank() -> None:
    layer = nn.Linear(5, 4).double()
    lora = LoRA(layer, rank=2, alpha=6.0)
    with torch.no_grad():
        lora.up.normal_()
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(lora(x) - layer(x), 3.0 * x @ lora.down.T @ lora.up.T)


def test_a_rank_beyond_the_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 6 must lie in 1..min"):
        LoRA(nn.Linear(5, 4), rank=6, alpha=1)


def _patches_by_hand(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Input windows of a 1-D convolution, one row per (example, position): a loop, not unfold."""
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = F.pad(x, (p, p))
    rows = []
    for example in padded:
        for start in range(0, padded.shape[-1] - d * (k - 1), s):
            rows.append(example[:, start : start + d * (k - 1) + 1 : d].flatten())
    return torch.stack(rows)


def test_conv_inputs_as_rows_match_a_loop_over_windows_and_the_convolution() -> None:
    conv = nn.Conv1d(3, 5, kernel_size=3, padding=2, stride=2, dilation=2).double()
    x = torch.randn(4, 3, 11, dtype=torch.float64)
    rows = layer_inputs(conv, x)
    torch.testing.assert_close(rows, _patches_by_hand(x, conv))
    # the rows times the flattened kernel is the convolution
    out = (rows @ conv.weight.flatten(1).T + conv.bias).view(4, -1, 5).transpose(1, 2)
    torch.testing.assert_close(out, conv(x))


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_eva_sets_down_to_the_top_right_singular_vectors_of_the_layer_inputs(rho: float) -> None:
    model = _cnn().double()
    x = torch.randn(3 * 16, 40, dtype=torch.float64)
    # the inputs of each layer, recorded on the plain model before adapting it
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.setdefault(n, []).append(a[0]))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Linear)) and n != "head"]
    with torch.no_grad():
        for xb in x.split(16):
            model(xb)
    for h in hooks:
        h.remove()
    adapters, found = add_eva(model, rank=3, alpha=6, batches=x.split(16), rho=rho)
    if rho == 1:
        assert set(found.ranks.values()) == {3}  # no redistribution: every layer takes the rank
    for name, lora in adapters.items():
        rows = torch.cat([_patches_by_hand(a, lora.base) for a in inputs[name]])
        _, _, vh = torch.linalg.svd(rows)
        down = lora.down.flatten(1)
        r = found.ranks[name]
        # singular vectors are defined up to sign
        cosines = (down * vh[:r]).sum(1).abs()
        torch.testing.assert_close(cosines, torch.ones(r, dtype=torch.float64), rtol=0, atol=1e-8)
        torch.testing.assert_close(down @ down.T, torch.eye(r, dtype=torch.float64), rtol=0, atol=1e-10)
        assert lora.scale == 6 / 3  # alpha / the configured rank, whatever the layer's own
    y = torch.randn(2, 40, dtype=torch.float64)
    assert torch.equal(model(y), _cnn().double()(y))  # still the base model's outputs: up is zero


def test_redistribution_keeps_the_budget_of_highest_explained_variance_across_layers() -> None:
    ratios = {"a": torch.tensor([0.5, 0.3, 0.1]), "b": torch.tensor([0.6, 0.05, 0.01]), "c": torch.tensor([0.2, 0.2])}
    assert redistribute_ranks(ratios, 3) == {"a": 2, "b": 1, "c": 0}
    assert redistribute_ranks(ratios, 4) == {"a": 2, "b": 1, "c": 1}  # a tie goes to the earlier component
    assert redistribute_ranks(ratios, 8) == {"a": 3, "b": 3, "c": 2}  # every candidate


def test_explained_variance_ratios_are_the_squared_singular_values_share() -> None:
    rows = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    vh, ratio = explained_variance(rows)
    torch.testing.assert_close(ratio, torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64) / 14)
    torch.testing.assert_close(vh.abs(), torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rank,rho", [(2, 2.0), (3, 1.5), (2, 4.0)])
def test_eva_ranks_sum_to_the_budget_and_take_the_components_of_highest_explained_variance(
        name: str, rank: int, rho: float) -> None:
    build, shape = MODELS[name]
    model = build().double()
    x = torch.randn(4 * shape[0] * 4, *shape[1:], dtype=torch.float64)
    adapters, found = add_eva(model, rank=rank, alpha=4, batches=x.split(shape[0] * 4), rho=rho)
    layers = [n for n, m in model.named_modules() if isinstance(m, LoRA)] + [n for n, r in found.ranks.items() if r == 0]
    assert sum(found.ranks.values()) == rank * len(found.ranks) == rank * len(layers)
    assert all(r <= round(rho * rank) for r in found.ranks.values())
    kept = torch.cat([found.ratios[n][:r] for n, r in found.ranks.items()])
    dropped = torch.cat([found.ratios[n][r:] for n, r in found.ranks.items()])
    assert dropped.numel() == 0 or kept.min() >= dropped.max()
    assert {n: a.rank for n, a in adapters.items()} == {n: r for n, r in found.ranks.items() if r > 0}
    # the ratios are each layer's squared singular values over their sum
    for n, ratio in found.ratios.items():
        s = torch.linalg.svdvals(found.rows[n])
        torch.testing.assert_close(ratio, (s.square() / s.square().sum())[: len(ratio)])


def test_a_layer_eva_gives_no_rank_stays_frozen_and_unadapted() -> None:
    model = _cnn().double()
    x = torch.randn(64, 40, dtype=torch.float64)
    ranks = {name: 0 for name in ("conv1.0",)}
    adapters = add_lora(model, rank=2, alpha=4, ranks=ranks)
    assert "conv1.0" not in adapters and isinstance(model.get_submodule("conv1.0"), nn.Conv1d)
    assert not any(p.requires_grad for p in model.get_submodule("conv1.0").parameters())
    assert model(x).shape == (64, 10)


def test_bn_only_trains_nothing_but_the_batchnorm_affine_parameters(task, make_cnn) -> None:
    parent = make_cnn(seed=1).state_dict()
    model = make_cnn(seed=0)
    FINETUNE["bn_only"](model, parent, FinetuneSetup())
    before = {k: v.clone() for k, v in model.named_parameters()}
    train(model, task, TrainConfig(epochs=2, batch_size=50, lr=0.05), seed=0, progress=False)
    affine = {f"{n}.{p}" for n, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in ("weight", "bias")}
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == affine
    assert torch.equal(model.head.weight, before["head.weight"])  # the head stays random, as in the paper


@pytest.mark.parametrize("method", ["lora", "eva"])
def test_lora_methods_load_the_parent_and_need_their_settings(make_cnn, task, method: str) -> None:
    parent = make_cnn(seed=1).state_dict()
    with pytest.raises(ValueError, match="finetune.lora"):
        FINETUNE[method](make_cnn(seed=0), parent, FinetuneSetup())
    model = make_cnn(seed=0)
    setup = FinetuneSetup({"lora": {"rank": 2, "alpha": 4, "eva_batches": 2, "eva_rho": 2}}, task.x_train, 50, 0)
    FINETUNE[method](model, parent, setup)
    merged = model
    merge_lora(merged)
    for name, value in merged.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, parent[name]), name  # nothing trained yet: the parent's body
