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


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an identity shortcut (He et al. 2016, option A).

    Where the block changes resolution or width, the shortcut subsamples by the
    stride and pads the new channels with zeros, so it has no parameters (the CIFAR
    ResNets of the paper use this option).
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.pad = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        if self.pad:
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (section 4.2): depth = 6n + 2.

    A 3x3 conv stem with ``width`` channels, three stages of n basic blocks with
    ``width``, 2x``width`` and 4x``width`` channels (the 2nd and 3rd halve the
    resolution), global average pooling and a linear ``head``. ``depth=20, width=16``
    is ResNet-20 (0.27M parameters). Global pooling makes it size-agnostic: 28x28
    one-channel images (MNIST) work with ``channels_in=1``.

    Input is ``(batch, channels_in, H, W)``; flat ``(batch, in_length)`` input is
    reshaped to square ``image_size`` x ``image_size`` images (by default the side
    that ``in_length / channels_in`` implies).
    """

    def __init__(self, in_length: int, num_classes: int, width: int = 16, depth: int = 20,
                 channels_in: int = 3, image_size: int | None = None) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110 ...), not {depth}")
        if in_length % channels_in:
            raise ValueError(
                f"resnet: inputs of {in_length} values cannot have channels_in={channels_in} channels"
                " (set `channels_in` to the images' channels: 3 for CIFAR, 1 for MNIST)"
            )
        side = round((in_length // channels_in) ** 0.5)
        if image_size is None:
            image_size = side if channels_in * side * side == in_length else None
        elif channels_in * image_size * image_size != in_length:
            raise ValueError(
                f"resnet: image_size={image_size} with channels_in={channels_in} makes "
                f"{channels_in * image_size**2} values per input, not {in_length}"
            )
        self.channels_in, self.image_size = channels_in, image_size
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(channels_in, width, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        c = width
        for i, (c_out, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)]):
            blocks = [_BasicBlock(c, c_out, stride)] + [_BasicBlock(c_out, c_out, 1) for _ in range(n - 1)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            c = c_out
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes)
        self.layers = ["stem", "stage1", "stage2", "stage3", "head"]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat (batch, in_length)
            if self.image_size is None:
                raise ValueError("resnet: flat input but no square image_size; pass (batch, C, H, W) or set image_size")
            x = x.view(len(x), self.channels_in, self.image_size, self.image_size)
        elif x.dim() == 3:  # (batch, H, W): one channel
            x = x.unsqueeze(1)
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.pool(x))


@MODELS.register("cnn1d")
def _cnn1d(in_length: int, num_classes: int, channels: int = 32) -> nn.Module:
    return CNN1d(in_length, num_classes, channels=channels)


@MODELS.register("mlp")
def _mlp(in_length: int, num_classes: int, width: int = 128, depth: int = 2) -> nn.Module:
    return MLP(in_length, num_classes, width=width, depth=depth)


@MODELS.register("resnet20")
def _resnet20(in_length: int, num_classes: int, width: int = 16, depth: int = 20, channels_in: int = 3,
              image_size: int | None = None) -> nn.Module:
    return CifarResNet(in_length, num_classes, width=width, depth=depth, channels_in=channels_in,
                       image_size=image_size)


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
