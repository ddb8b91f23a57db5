"""Network pruning: masks for iterative magnitude pruning (IMP) with rewinding, and
the baselines it is compared with.

A mask is a bool tensor with its weight's shape (True = kept), keyed by the
parameter's name in ``model.named_parameters()``. The training loop calls
:func:`apply_masks` after every optimiser step so pruned weights stay exactly zero.

The methods (registered in :mod:`workflow.stages.network_pruning`), each at IMP level n of one rewind step k:

* ``imp``: prune the smallest ``fraction`` of the remaining weights of level n-1's
  trained model, rewind the survivors to their values at step k of the dense run
  (k = 0: the original lottery ticket), retrain;
* ``reinit``: the IMP mask of level n on freshly initialised weights (the lottery
  ticket paper's control; "Rethinking the value of network pruning"'s Scratch-E);
* ``random``: a random mask with IMP level n's per-layer densities, on the rewound weights;
* ``oneshot``: magnitude pruning of the trained dense model straight to IMP level
  n's density, rewound to step k and retrained;
* ``scratch``: the IMP mask on fresh weights, trained for as many more epochs as
  keep its training FLOPs equal to the dense run's (Scratch-B);
* ``erk``: a random mask at Erdős–Rényi-Kernel layer densities (each layer's density
  proportional to the sum of its dims over their product, capped at 1) with IMP level
  n's global density, on the rewound weights (the random baseline of RigL).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

PRUNING_SCOPES: tuple[str, ...] = ("global", "layer")
_PRUNABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv1d / Conv2d / Linear module, by the parameter name of its weight."""
    return {
        f"{prefix}.weight" if prefix else "weight": module
        for prefix, module in model.named_modules()
        if isinstance(module, _PRUNABLE_MODULES)
    }


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of every Conv1d / Conv2d / Linear module, by parameter name.

    Biases and BatchNorm parameters are not pruned (as in the Lottery Ticket papers).
    """
    names = _prunable_modules(model)
    return {name: p for name, p in model.named_parameters() if name in names}


def _check_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The masks as CPU bool tensors, all ones where ``masks`` is None."""
    if masks is None:
        return {name: torch.ones(w.shape, dtype=torch.bool) for name, w in weights.items()}
    if set(masks) != set(weights):
        raise ValueError(
            f"masks and weights must name the same tensors; masks lack "
            f"{sorted(set(weights) - set(masks))}, have extra {sorted(set(masks) - set(weights))}"
        )
    for name, w in weights.items():
        if masks[name].shape != w.shape:
            raise ValueError(f"mask {name!r} has shape {tuple(masks[name].shape)}, weight {tuple(w.shape)}")
    return {name: masks[name].detach().to("cpu", torch.bool) for name in weights}


def _prune_smallest(magnitude: torch.Tensor, kept: torch.Tensor, fraction: float) -> torch.Tensor:
    """Drop the smallest ``round(fraction * remaining)`` kept entries of flat tensors.

    A stable sort over the remaining entries breaks magnitude ties by flat position.
    """
    remaining = kept.nonzero().squeeze(1)
    count = round(fraction * len(remaining))
    order = torch.argsort(magnitude[remaining], stable=True)
    new = kept.clone()
    new[remaining[order[:count]]] = False
    return new


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None,
    fraction: float,
    scope: str = "global",
) -> dict[str, torch.Tensor]:
    """One IMP level: remove the smallest-magnitude ``fraction`` of remaining weights.

    ``scope="global"`` ranks all layers' weights together, ``"layer"`` each layer on
    its own; exactly ``round(fraction * remaining)`` weights go (in all, or per
    layer). Already-pruned weights stay pruned. Returns new CPU bool masks in the
    order of ``weights``.
    """
    if scope not in PRUNING_SCOPES:
        raise ValueError(f"scope must be one of {PRUNING_SCOPES}, got {scope!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must satisfy 0 <= fraction < 1, got {fraction!r}")
    masks = _check_masks(weights, masks)
    # float64 on CPU: exact for any float weight dtype, and layers may sit on different devices.
    magnitude = {name: w.detach().to("cpu", torch.float64).abs().flatten() for name, w in weights.items()}

    if scope == "layer":
        return {
            name: _prune_smallest(magnitude[name], masks[name].flatten(), fraction).view(w.shape)
            for name, w in weights.items()
        }
    kept = _prune_smallest(
        torch.cat(list(magnitude.values())), torch.cat([m.flatten() for m in masks.values()]), fraction
    )
    pieces = kept.split([w.numel() for w in weights.values()])
    return {name: piece.view(w.shape) for (name, w), piece in zip(weights.items(), pieces)}


def level_density(fraction: float, level: int) -> float:
    """The nominal density after ``level`` IMP levels of ``fraction`` each: (1 - fraction)**level."""
    return (1.0 - fraction) ** level


def random_masks(like: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Masks keeping, in each tensor, as many entries as ``like`` does, at uniformly random places."""
    return _random_places(like, {name: int(mask.count_nonzero()) for name, mask in like.items()}, generator)


def _random_places(
    like: Mapping[str, torch.Tensor], counts: Mapping[str, int], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Masks of the shapes of ``like`` keeping ``counts[name]`` entries each, uniformly at random."""
    out = {}
    for name, mask in like.items():
        new = torch.zeros(mask.numel(), dtype=torch.bool)
        new[torch.randperm(mask.numel(), generator=generator)[: counts[name]]] = True
        out[name] = new.view(mask.shape)
    return out


def erk_scores(shapes: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """The Erdős–Rényi-Kernel score of each tensor: the sum of its dims over their product.

    A linear layer's (n_in + n_out) / (n_in n_out), a convolution's
    (c_in + c_out + k...) / (c_in c_out k...): narrow and small layers score high.
    """
    return {name: sum(shape) / math.prod(shape) for name, shape in shapes.items()}


def erk_counts(shapes: Mapping[str, Sequence[int]], kept: int) -> dict[str, int]:
    """How many weights ERK keeps in each tensor so that ``kept`` remain in all.

    Each tensor's density is proportional to its :func:`erk_scores` (ε · score), capped at
    1: a tensor the scale would fill is kept whole, and ε is solved again over the rest.
    The real-valued counts are rounded by largest remainder, so they add up to ``kept``.
    """
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if not 0 <= kept <= sum(sizes.values()):
        raise ValueError(f"cannot keep {kept} of {sum(sizes.values())} weights")
    scores = erk_scores(shapes)
    full: set[str] = set()
    while True:
        rest = [name for name in shapes if name not in full]
        budget = kept - sum(sizes[name] for name in full)
        weight = sum(scores[name] * sizes[name] for name in rest)
        eps = budget / weight if weight > 0 else 0.0
        capped = {name for name in rest if eps * scores[name] > 1}
        if not capped:
            break
        full |= capped
    exact = {name: float(sizes[name]) if name in full else eps * scores[name] * sizes[name] for name in shapes}
    counts = {name: min(sizes[name], math.floor(c)) for name, c in exact.items()}
    # Largest remainder first; ties by order, so the rounding is deterministic.
    order = sorted(shapes, key=lambda name: counts[name] - exact[name])
    for name in order[: kept - sum(counts.values())]:
        counts[name] += 1
    return counts


def erk_masks(like: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random masks at ERK's layer densities, keeping as many weights in all as ``like`` does."""
    counts = erk_counts({name: tuple(m.shape) for name, m in like.items()},
                        sum(int(m.count_nonzero()) for m in like.values()))
    return _random_places(like, counts, generator)


def multiply_adds(model: nn.Module, example: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """Multiply-adds of the prunable layers of ``model`` on one example, counting only kept weights.

    Each weight of a convolution is used once per output position, of a linear layer
    once per input row; biases, BatchNorm and activations are left out (they are
    not pruned, and cost little next to the weights).
    """
    weights = prunable_parameters(model)
    masks = _check_masks({k: v.detach() for k, v in weights.items()}, dict(masks) if masks else None)
    modules = _prunable_modules(model)
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            spatial = output.shape[2:] if isinstance(module, (nn.Conv1d, nn.Conv2d)) else output.shape[1:-1]
            positions[name] = math.prod(spatial)
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in weights]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[None])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(int(masks[name].count_nonzero()) * positions[name] for name in weights)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries of the named parameters of ``model``, in place."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name parameters the model lacks: {unknown}")
    for name, mask in masks.items():
        # a broadcastable mask of the wrong shape would otherwise prune silently wrong
        if mask.shape != params[name].shape:
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, parameter {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, mask in masks.items():
            # masked_fill rather than multiply: a diverged (inf/NaN) weight still becomes 0.
            params[name].masked_fill_(~mask.to(params[name].device, torch.bool), 0.0)


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of weights kept over all masked tensors together."""
    if not masks:
        raise ValueError("density of no masks is undefined")
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of weights kept in each masked tensor."""
    return {name: int(m.count_nonzero()) / m.numel() for name, m in masks.items()}
