"""Low-rank adaptation (LoRA) of linear and convolutional layers, and its EVA initialisation.

A LoRA layer keeps its base layer frozen and adds a low-rank update,
``W + scale * up @ down`` with ``scale = alpha / rank``: ``down`` (rank x fan-in) maps
the layer's input into a rank-dimensional space, ``up`` (fan-out x rank) maps it back
and starts at zero, so an adapted model computes exactly what its base did until it
trains. For a convolution, ``down`` is a convolution with the base's kernel, stride,
padding and dilation into ``rank`` channels and ``up`` a 1x1 convolution; the update
to the flattened kernel is again ``up @ down``.

Initialisations of ``down``:

* ``random``: Kaiming-uniform, as the LoRA authors' reference code;
* ``eva`` ("One Initialization to Rule them All", EVA): the top right-singular vectors
  of the layer's input activations on a few minibatches of the target data (for a
  convolution, of its input patches). We take the SVD of the stacked minibatches at
  once, without centring, as the method's definition; the authors' code reaches the
  same vectors incrementally. Ranks are then redistributed across layers, as the
  paper does: each layer offers its top ``round(rho * rank)`` components, each with its
  explained-variance ratio (its squared singular value over the sum of all of the
  layer's), and the ``rank * layers`` components of highest ratio across all layers are
  kept, so a layer's rank is how many of its components were kept (0 leaves it
  unadapted; ``rho = 1`` gives every layer ``rank``). Every update keeps the scale
  ``alpha / rank`` of the configured rank, as peft's ``adjust_scaling_factors``.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


class LoRA(nn.Module):
    """A frozen linear or convolutional layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        if not isinstance(base, _ADAPTABLE):
            raise TypeError(f"LoRA adapts Linear, Conv1d and Conv2d layers, not {type(base).__name__}")
        if isinstance(base, (nn.Conv1d, nn.Conv2d)) and base.groups != 1:
            raise ValueError("LoRA on grouped convolutions is not supported")
        fan_in = base.weight[0].numel()
        if not 1 <= rank <= min(fan_in, base.weight.shape[0]):
            raise ValueError(f"rank {rank} must lie in 1..min(fan-in {fan_in}, fan-out {base.weight.shape[0]})")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        # down: (rank, *weight.shape[1:]), so that a convolution can use it as its kernel
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.down = nn.Parameter(torch.empty(rank, *base.weight.shape[1:], **like))
        self.up = nn.Parameter(torch.zeros(base.weight.shape[0], rank, **like))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if isinstance(self.base, nn.Linear):
            return out + self.scale * F.linear(F.linear(x, self.down), self.up)
        conv = F.conv1d if isinstance(self.base, nn.Conv1d) else F.conv2d
        b = self.base
        low = conv(x, self.down, None, b.stride, b.padding, b.dilation)
        up = self.up.view(*self.up.shape, *([1] * (self.down.dim() - 2)))
        return out + self.scale * conv(low, up)

    def delta_weight(self) -> torch.Tensor:
        """The update to the base weight: ``scale * up @ down``, in the weight's shape."""
        return self.scale * (self.up @ self.down.flatten(1)).view_as(self.base.weight)

    def merged(self) -> nn.Module:
        """A plain copy of the base layer with the update added to its weight."""
        layer = copy.deepcopy(self.base)
        with torch.no_grad():
            layer.weight.add_(self.delta_weight())
        return layer.requires_grad_(True)


def _modules_to_adapt(model: nn.Module, skip: Iterable[str]) -> list[str]:
    skip = tuple(skip)
    return [name for name, m in model.named_modules()
            if isinstance(m, _ADAPTABLE) and name and not name.startswith(skip)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, rank: int, alpha: float, skip: Iterable[str] = ("head",),
             ranks: Mapping[str, int] | None = None) -> dict[str, LoRA]:
    """Replace every linear and convolutional layer (except those under ``skip``) by a
    :class:`LoRA` of it, in place; freeze every other parameter outside ``skip``.

    ``ranks`` gives some layers a rank of their own (0: the layer stays as it is,
    frozen); their updates keep the scale ``alpha / rank``. Returns the adapters by
    module name. Parameters under ``skip`` (the new head) keep their ``requires_grad``.
    """
    skip = tuple(skip)
    names = _modules_to_adapt(model, skip)
    if not names:
        raise ValueError("the model has no linear or convolutional layer to adapt")
    for name, p in model.named_parameters():
        if not name.startswith(skip):
            p.requires_grad_(False)
    adapters = {}
    for name in names:
        own = rank if ranks is None else ranks.get(name, rank)
        if own == 0:
            continue
        # alpha scaled with the rank, so that the update's scale alpha / rank stays the configured one
        adapters[name] = LoRA(model.get_submodule(name), own, alpha * own / rank)
        _set(model, name, adapters[name])
    return adapters


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base layer, in place: the model is plain again."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRA):
            _set(model, name, m.merged())


def layer_inputs(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as rows, one per place the weight is applied: (rows, fan-in).

    A linear layer's inputs as they are; a convolution's input patches, flattened in
    the order of its flattened kernel (channel, then kernel positions).
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, nn.Conv1d):  # as a 2-D convolution of height 1
        patches = F.unfold(x[:, :, None, :], (1, layer.kernel_size[0]), dilation=(1, layer.dilation[0]),
                           padding=(0, layer.padding[0]), stride=(1, layer.stride[0]))
    else:
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@torch.no_grad()
def layer_input_rows(model: nn.Module, names: Iterable[str], batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each named layer's inputs as rows (:func:`layer_inputs`), over all ``batches``, in
    float64; the model runs in eval mode (BatchNorm uses its stored statistics)."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda mod, args, name=name: seen[name].append(layer_inputs(mod, args[0]).double()))
        for name in seen
    ]
    was_training = model.training
    model.eval()
    try:
        for xb in batches:
            model(xb)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if any(not rows for rows in seen.values()):
        raise ValueError("EVA needs at least one minibatch")
    return {name: torch.cat(rows) for name, rows in seen.items()}


def explained_variance(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The right-singular vectors of ``rows`` (uncentred), and each one's explained-variance
    ratio: its squared singular value over the sum of them all (descending)."""
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    power = s.square()
    return vh, power / power.sum()


def redistribute_ranks(ratios: Mapping[str, torch.Tensor], budget: int) -> dict[str, int]:
    """EVA's rank allocation: the ``budget`` components of highest explained-variance ratio
    among every layer's candidates (``ratios``: each layer's, descending), counted per layer.
    Ties go to the earlier layer, then the earlier component."""
    candidates = [(-float(r), i, j, name) for i, (name, layer) in enumerate(ratios.items()) for j, r in enumerate(layer)]
    kept = Counter(name for *_, name in sorted(candidates)[:budget])
    return {name: kept[name] for name in ratios}


@dataclass
class EVA:
    """What EVA found: each layer's rank, its explained-variance ratios and the rows decomposed."""

    ranks: dict[str, int]
    ratios: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]


@torch.no_grad()
def add_eva(model: nn.Module, rank: int, alpha: float, batches: Iterable[torch.Tensor], rho: float = 2.0,
            skip: Iterable[str] = ("head",)) -> tuple[dict[str, LoRA], EVA]:
    """:func:`add_lora` with EVA's initialisation and rank redistribution (see the module
    docstring): each adapter's ``down`` is its layer's top right-singular vectors.

    ``batches``: minibatches of the target task's inputs. ``rho`` (at least 1): a layer may
    take up to ``round(rho * rank)`` components, within the total budget ``rank * layers``.
    """
    if rho < 1:
        raise ValueError(f"EVA's rho must be at least 1, not {rho}")
    names = _modules_to_adapt(model, tuple(skip))
    rows = layer_input_rows(model, names, batches)
    ratios, components = {}, {}
    for name in names:
        if rows[name].shape[0] < rank:
            raise ValueError(f"EVA for {name!r}: {rows[name].shape[0]} activation rows < rank {rank}")
        weight = model.get_submodule(name).weight
        cap = min(round(rho * rank), weight[0].numel(), weight.shape[0], rows[name].shape[0])
        components[name], ratio = explained_variance(rows[name])
        ratios[name] = ratio[:cap]
    ranks = redistribute_ranks(ratios, rank * len(names))
    adapters = add_lora(model, rank, alpha, skip, ranks)
    for name, lora in adapters.items():
        lora.down.copy_(components[name][: lora.rank].to(lora.down.dtype).view_as(lora.down))
    return adapters, EVA(ranks, ratios, rows)
