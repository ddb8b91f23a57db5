"""Model architectures, built by name from the ``model`` section of a config.

Every model exposes the same two things the stages rely on:

* ``model.layers``: the names (keys of ``named_modules``) whose outputs are the
  model's representations, in forward order; activations are recorded there;
* ``model.head``: the final classifier, the only part a linear probe trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from workflow import storage
from workflow.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
    )


class CNN1d(nn.Module):
    """A small 1-D CNN for sequence classification (MNIST-1D sized).

    Three conv blocks (conv, BatchNorm, ReLU), the last two with stride 2, then a
    linear head on the flattened map: position matters in MNIST-1D, so no global
    pooling.
    """

    def __init__(self, in_length: int, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv_block(1, channels, 5, 1)
        self.conv2 = _conv_block(channels, channels, 3, 2)
        self.conv3 = _conv_block(channels, channels, 3, 2)
        length = in_length
        for _ in range(2):
            length = (length + 2 * 1 - 3) // 2 + 1
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels * length, num_classes)
        self.layers = ["conv1", "conv2", "conv3", "head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (batch, length) -> (batch, 1, length)
            x = x.unsqueeze(1)
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.head(self.flatten(x))


class MLP(nn.Module):
    """A fully connected ReLU network with BatchNorm, on flattened inputs."""

    def __init__(self, in_length: int, num_classes: int, width: int = 128, depth: int = 2) -> None:
        super().__init__()
        dims = [in_length] + [width] * depth
        for i in range(depth):
            block = nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.BatchNorm1d(dims[i + 1]), nn.ReLU())
            self.add_module(f"fc{i + 1}", block)
        self.head = nn.Linear(width, num_classes)
        self.layers = [f"fc{i + 1}" for i in range(depth)] + ["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for name in self.layers[:-1]:
            x = getattr(self, name)(x)
        return self.head(x)


@MODELS.register("cnn1d")
def _cnn1d(in_length: int, num_classes: int, channels: int = 32) -> nn.Module:
    return CNN1d(in_length, num_classes, channels=channels)


@MODELS.register("mlp")
def _mlp(in_length: int, num_classes: int, width: int = 128, depth: int = 2) -> nn.Module:
    return MLP(in_length, num_classes, width=width, depth=depth)


def build_model(spec: dict[str, Any], in_length: int, num_classes: int) -> nn.Module:
    """Build the model named by ``spec["name"]``; the other keys are its settings."""
    settings = {k: v for k, v in spec.items() if k != "name"}
    return MODELS[spec["name"]](in_length, num_classes, **settings)


def seeded_model(spec: dict[str, Any], in_length: int, num_classes: int, seed: int,
                 device: torch.device | str = "cpu") -> nn.Module:
    """:func:`build_model` with its initialisation drawn from ``seed``."""
    torch.manual_seed(seed)
    return build_model(dict(spec), in_length, num_classes).to(device)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained model (in eval mode) and everything saved with it (spec, masks, ...)."""
    saved = storage.load_torch(path)
    model = build_model(dict(saved["spec"]["model"]), saved["in_length"], saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved
