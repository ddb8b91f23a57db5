"""Aligning two networks' hidden units before joining them by a line (Entezari et al. 2022,
"The role of permutation invariance in linear mode connectivity"; Ainsworth et al. 2023,
"Git Re-Basin", activation matching).

Permuting a hidden layer's units (the rows of its weights, its BatchNorm's parameters and
statistics) and, to match, the columns of the next layer leaves the function unchanged.
Two independently trained networks may solve a task with the same units in different
orders; a barrier on the straight line between them can be that order alone. Activation
matching orders network b's units of each layer to maximise the total correlation of
their outputs with network a's (the Hungarian algorithm on the correlation matrix), on
the same inputs; the line from a to the permuted b then measures what the order hid.

Supported: networks whose hidden layers are a chain of blocks (conv or linear, BatchNorm,
ReLU), each feeding the next, then a linear head on the flattened last block (``cnn1d``,
``mlp``). A residual network shares its units across blocks and needs tied
permutations; it is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from workflow.models import CNN1d, MLP
from workflow.runtime import model_device

ALIGNABLE = {"cnn1d": CNN1d, "mlp": MLP}
"""Models whose units :func:`match_units` can align, by their name in a config."""


def unit_blocks(model: nn.Module) -> list[str]:
    """The blocks whose units are permuted, in forward order: each ``Sequential(conv or
    linear, BatchNorm, ReLU)``, its units the channels (or features) it outputs."""
    if not isinstance(model, tuple(ALIGNABLE.values())):
        raise ValueError(f"aligning units: {type(model).__name__} is not a chain of blocks; "
                         f"supported models: {', '.join(ALIGNABLE)}")
    return list(model.layers[:-1])


@torch.no_grad()
def _block_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each block's output on ``x`` in eval mode, as (examples x positions, units)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name in unit_blocks(model)]
    was_training = model.training
    try:
        model.eval()
        model(x.to(model_device(model)))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    # conv maps (N, C, L) -> (N * L, C): every position is an observation of each channel
    return {name: (out.transpose(1, 2).reshape(-1, out.shape[1]) if out.dim() == 3 else out).double().cpu()
            for name, out in outputs.items()}


def unit_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson correlation of every unit (column) of ``a`` with every unit of ``b`` over the
    rows; a unit that never varies correlates 0 with everything."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    norms = torch.outer(a.norm(dim=0), b.norm(dim=0))
    corr = (a.T @ b) / torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, corr, torch.zeros_like(corr)).numpy()


@dataclass(frozen=True)
class Matching:
    """Per block, b's units in the order that matches a's (``perms``: unit ``perm[i]`` of b
    pairs with unit ``i`` of a), and the mean correlation of the pairs (``correlation``)."""

    perms: dict[str, np.ndarray]
    correlation: dict[str, float]


def match_units(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor) -> Matching:
    """The order of ``model_b``'s units in each block that best matches ``model_a``'s,
    maximising the summed correlation of their outputs on ``x`` (activation matching).

    A unit's output does not depend on how the units before it are ordered, so every block
    is matched on the unpermuted b's outputs.
    """
    outs_a, outs_b = _block_outputs(model_a, x), _block_outputs(model_b, x)
    perms, correlation = {}, {}
    for name in unit_blocks(model_a):
        if outs_a[name].shape[1] != outs_b[name].shape[1]:
            raise ValueError(f"aligning units: block {name} has {outs_a[name].shape[1]} units in a "
                             f"and {outs_b[name].shape[1]} in b")
        corr = unit_correlation(outs_a[name], outs_b[name])
        rows, cols = linear_sum_assignment(corr, maximize=True)
        perms[name] = cols[np.argsort(rows)]
        correlation[name] = float(np.mean(corr[np.arange(len(perms[name])), perms[name]]))
    return Matching(perms, correlation)


@torch.no_grad()
def permute_units(model: nn.Module, perms: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` whose unit ``i`` of each block is the original's unit ``perm[i]``:
    the same function, its units reordered (the next block's or the head's inputs with them)."""
    blocks = unit_blocks(model)
    out = copy.deepcopy(model)
    consumers = [getattr(out, name)[0] for name in blocks[1:]] + [out.head]
    for name, consumer in zip(blocks, consumers):
        perm = torch.as_tensor(np.asarray(perms[name]), dtype=torch.long, device=model_device(model))
        layer, norm = getattr(out, name)[0], getattr(out, name)[1]
        for tensor in (layer.weight, layer.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var):
            if tensor is not None:
                tensor.copy_(tensor[perm])
        units = len(perm)
        if consumer is out.head:
            # the head reads the flattened map: units x positions, units outermost
            weight = consumer.weight.view(consumer.out_features, units, consumer.in_features // units)
            consumer.weight.copy_(weight[:, perm].reshape(consumer.weight.shape))
        else:
            consumer.weight.copy_(consumer.weight[:, perm])
    return out
