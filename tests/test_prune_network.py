"""Tests for network pruning: IMP masks, their application, and densities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workflow.models import CNN1d, MLP
from workflow.prune_network import (
    PRUNING_SCOPES,
    apply_masks,
    density,
    erk_counts,
    erk_masks,
    erk_scores,
    layer_densities,
    level_density,
    magnitude_masks,
    multiply_adds,
    prunable_parameters,
    random_masks,
)


def _cnn() -> CNN1d:
    torch.manual_seed(0)
    return CNN1d(in_length=40, num_classes=10, channels=8)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in prunable_parameters(model).items()}


def test_prunable_parameters_are_conv_and_linear_weights_only() -> None:
    assert list(prunable_parameters(_cnn())) == ["conv1.0.weight", "conv2.0.weight", "conv3.0.weight", "head.weight"]
    mlp_names = list(prunable_parameters(MLP(in_length=40, num_classes=10, width=16)))
    assert mlp_names == ["fc1.0.weight", "fc2.0.weight", "head.weight"]  # no biases, no BatchNorm


def _after_levels(count: int, levels: int) -> int:
    """Weights left of ``count`` after ``levels`` levels each removing round(20%) of the rest."""
    for _ in range(levels):
        count -= round(0.2 * count)
    return count


@pytest.mark.parametrize("scope", PRUNING_SCOPES)
def test_density_follows_0_8_to_the_n_with_exact_counts(scope: str) -> None:
    weights = _weights(_cnn())
    sizes = {name: w.numel() for name, w in weights.items()}
    total = sum(sizes.values())
    masks = None
    for level in range(1, 6):
        masks = magnitude_masks(weights, masks, 0.2, scope=scope)
        if scope == "global":
            kept = _after_levels(total, level)
        else:  # the rounding is per layer
            kept_per_layer = {name: _after_levels(n, level) for name, n in sizes.items()}
            assert {name: int(m.sum()) for name, m in masks.items()} == kept_per_layer
            kept = sum(kept_per_layer.values())
        assert density(masks) == kept / total
        assert density(masks) == pytest.approx(0.8**level, abs=1e-3)


def test_global_and_layer_scope_differ_per_layer_but_not_in_total() -> None:
    torch.manual_seed(1)
    weights = {"small": torch.randn(100) * 0.01, "large": torch.randn(100) * 10.0}
    by_layer = magnitude_masks(weights, None, 0.5, scope="layer")
    by_global = magnitude_masks(weights, None, 0.5, scope="global")
    assert layer_densities(by_layer) == {"small": 0.5, "large": 0.5}
    assert layer_densities(by_global) == {"small": 0.0, "large": 1.0}
    assert density(by_layer) == density(by_global) == 0.5


def test_smallest_magnitudes_are_removed_with_ties_by_index() -> None:
    weights = {"a": torch.tensor([[3.0, -0.5], [1.0, -2.0]]), "b": torch.tensor([0.5, -4.0, 0.1])}
    masks = magnitude_masks(weights, None, 3 / 7, scope="global")  # removes 3 of 7
    assert masks["a"].tolist() == [[True, False], [True, True]]
    assert masks["b"].tolist() == [False, True, False]
    # |-0.5| == |0.5|: one of two tied weights goes, the first in flat order
    masks = magnitude_masks(weights, None, 2 / 7, scope="global")
    assert masks["a"].tolist() == [[True, False], [True, True]]
    assert masks["b"].tolist() == [True, True, False]


def test_pruned_weights_stay_pruned_even_if_large() -> None:
    weights = {"w": torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0])}
    previous = {"w": torch.tensor([False, True, True, True, True])}  # the largest is already pruned
    masks = magnitude_masks(weights, previous, 0.5, scope="layer")  # removes round(0.5 * 4) = 2
    assert masks["w"].tolist() == [False, False, False, True, True]


def test_fraction_zero_keeps_the_mask() -> None:
    weights = _weights(_cnn())
    masks = magnitude_masks(weights, None, 0.3)
    again = magnitude_masks(weights, masks, 0.0)
    assert all(torch.equal(masks[n], again[n]) for n in masks)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"fraction": 1.0}, "fraction"), ({"fraction": -0.1}, "fraction"), ({"fraction": 0.2, "scope": "row"}, "scope")],
)
def test_magnitude_masks_validates(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        magnitude_masks({"w": torch.ones(3)}, None, **kwargs)


def test_masks_must_match_weights() -> None:
    with pytest.raises(ValueError, match="masks"):
        magnitude_masks({"w": torch.ones(3)}, {"v": torch.ones(3, dtype=torch.bool)}, 0.2)


@pytest.mark.parametrize(
    "make_optimiser",
    [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=5e-4),
    ],
    ids=["sgd-momentum-wd", "adam"],
)
def test_pruned_weights_stay_exactly_zero_during_training(make_optimiser, torch_one_thread: None) -> None:
    model = _cnn()
    masks = magnitude_masks(_weights(model), None, 0.6)
    apply_masks(model, masks)
    before = {name: p.detach().clone() for name, p in prunable_parameters(model).items()}
    optimiser = make_optimiser(model.parameters())
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    for _step in range(50):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        apply_masks(model, masks)
    for name, p in prunable_parameters(model).items():
        assert torch.all(p[~masks[name]] == 0), name
        assert not torch.equal(p[masks[name]], before[name][masks[name]]), name  # survivors trained


def test_apply_masks_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="nope"):
        apply_masks(_cnn(), {"nope": torch.ones(1, dtype=torch.bool)})


def test_apply_masks_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="head.weight"):
        apply_masks(_cnn(), {"head.weight": torch.ones(1, dtype=torch.bool)})


# --- baselines -------------------------------------------------------------------------


def test_random_masks_keep_each_layers_count_at_uniformly_random_places() -> None:
    weights = _weights(_cnn())
    like = magnitude_masks(weights, None, 0.5, "global")  # uneven layer densities
    draws = [random_masks(like, torch.Generator().manual_seed(s)) for s in range(200)]
    for name, mask in like.items():
        assert all(int(d[name].count_nonzero()) == int(mask.count_nonzero()) for d in draws), name
    # each position is kept with probability = the layer's density (4.5 sd bounds)
    name = "conv2.0.weight"
    p = float(like[name].float().mean())
    freq = torch.stack([d[name].float() for d in draws]).mean(0)
    sd = (p * (1 - p) / len(draws)) ** 0.5
    assert float((freq - p).abs().max()) < 4.5 * sd
    assert torch.equal(random_masks(like, torch.Generator().manual_seed(0))[name], draws[0][name])


def test_levels_without_training_between_them_keep_the_largest_weights() -> None:
    """One-shot pruning to IMP's count is n levels of magnitude pruning on fixed weights."""
    weights = _weights(_cnn())
    masks = None
    for _ in range(3):
        masks = magnitude_masks(weights, masks, 0.2, "global")
    kept = torch.cat([m.flatten() for m in masks.values()])
    magnitudes = torch.cat([w.abs().flatten() for w in weights.values()])
    assert magnitudes[kept].min() >= magnitudes[~kept].max()
    assert density(masks) == pytest.approx(level_density(0.2, 3), abs=3 / kept.numel())


def test_multiply_adds_count_each_weight_once_per_output_position() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv1d(3, 4, 3, stride=2),
                          nn.Flatten(), nn.Linear(4 * 4, 5))
    x = torch.randn(2, 10)
    # conv 1: 2*3*3 weights x 10 positions; conv 2: 3*4*3 x 4 positions; linear: 16*5 x 1
    assert multiply_adds(model, x) == 18 * 10 + 36 * 4 + 80
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable_parameters(model).items()}
    masks["4.weight"][:, :8] = False  # half the linear weights
    masks["0.weight"][0] = False  # one output channel of conv 1: 6 weights
    assert multiply_adds(model, x, masks) == 12 * 10 + 36 * 4 + 40
    assert model.training  # its mode is restored


# --- ERK ------------------------------------------------------------------------------------


def test_erk_scores_are_the_sum_of_the_dims_over_their_product() -> None:
    assert erk_scores({"fc": (10, 96), "conv": (32, 16, 5)}) == {"fc": 106 / 960, "conv": 53 / 2560}


def test_erk_densities_are_proportional_to_the_scores_in_closed_form() -> None:
    # scores 8/16 and 16/64: eps (0.5 * 16 + 0.25 * 64) = 24 gives eps = 1, densities 1/2 and 1/4
    assert erk_counts({"a": (4, 4), "b": (8, 8)}, 24) == {"a": 8, "b": 16}


def test_erk_keeps_a_layer_its_scale_would_overfill_whole_and_solves_again_over_the_rest() -> None:
    # eps (1 * 4 + 0.2 * 100) = 30 gives eps = 1.25: a's density 1.25 is capped at 1, so a keeps
    # all 4 and b the other 26 (not 0.2 * 1.25 * 100 = 25)
    assert erk_counts({"a": (2, 2), "b": (10, 10)}, 30) == {"a": 4, "b": 26}


@pytest.mark.parametrize("kept", [0, 1, 37, 300, 612, 1000, 1224])
def test_erk_counts_add_up_to_the_global_budget_and_fit_each_layer(kept: int) -> None:
    shapes = {name: tuple(w.shape) for name, w in _weights(_cnn()).items()}
    counts = erk_counts(shapes, kept)
    assert sum(counts.values()) == kept
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    assert all(0 <= counts[name] <= sizes[name] for name in shapes)
    # uncapped layers keep densities proportional to their scores, up to rounding by one weight
    scores = erk_scores(shapes)
    free = [name for name in shapes if counts[name] < sizes[name]]
    for a in free:
        for b in free:
            ratio = scores[a] / scores[b]
            assert counts[a] / sizes[a] <= ratio * (counts[b] + 1) / sizes[b] + 1 / sizes[a]


def test_erk_refuses_a_budget_beyond_the_weights() -> None:
    with pytest.raises(ValueError, match="cannot keep 17 of 16 weights"):
        erk_counts({"a": (4, 4)}, 17)


def test_erk_masks_keep_the_global_count_of_the_imp_mask_at_erk_layer_densities() -> None:
    weights = _weights(_cnn())
    imp = magnitude_masks(weights, None, 0.5)
    for _ in range(3):
        imp = magnitude_masks(weights, imp, 0.5)
    masks = erk_masks(imp, torch.Generator().manual_seed(0))
    assert density(masks) == density(imp)
    shapes = {name: tuple(m.shape) for name, m in imp.items()}
    kept = {name: int(m.count_nonzero()) for name, m in masks.items()}
    assert kept == erk_counts(shapes, sum(int(m.count_nonzero()) for m in imp.values()))
    again = erk_masks(imp, torch.Generator().manual_seed(0))
    assert all(torch.equal(masks[name], again[name]) for name in masks)  # seeded


def test_erk_is_registered_with_the_imp_run_of_its_level_as_parent(read_config) -> None:
    from workflow.stages.network_pruning import PRUNING
    from workflow.study import Study

    assert PRUNING["erk"].parent == "imp" and not PRUNING["erk"].fresh_weights
    config = read_config("tiny")
    config["prune_network"]["methods"] = ["imp", "erk"]
    study = Study(config)
    assert study.parent("prune_network/erk/k0/s0/level1") == "prune_network/imp/k0/s0/level1"
    assert "init_seed" not in study.spec("prune_network/erk/k0/s0/level1")
