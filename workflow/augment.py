"""Data augmentation of training batches, on the device, as whole-batch tensor ops.

The data live on the device whole (:mod:`workflow.data`), so augmentation happens
there too, in the manner of airbench: no data loader, no per-image Python. The
random draws come from the training loop's CPU generator, so an augmented run is
as reproducible as a plain one.

Augmentations take image batches ``(batch, channels, height, width)``:

* ``crop``: pad each side with ``CROP_PAD`` zeros (the mean pixel, after the
  normalisation of :mod:`workflow.datasets`) and cut a random window of the
  original size, as torchvision's ``RandomCrop(32, padding=4)`` on CIFAR;
* ``flip``: mirror left-right with probability 1/2.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from workflow.registry import Registry

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``augment(x_batch, generator) -> x_batch`` (a new tensor; the input is not changed)."""

AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")

CROP_PAD = 4


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"augmentation {name!r} needs image batches (batch, channels, height, width); "
            f"got shape {tuple(x.shape)}"
        )


@AUGMENTATIONS.register("crop")
def random_crop(x: torch.Tensor, generator: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """A random window of each zero-padded image, the size of the original."""
    _check_images(x, "crop")
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


@AUGMENTATIONS.register("flip")
def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    _check_images(x, "flip")
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def compose(names: Sequence[str]) -> Augmentation | None:
    """The named augmentations applied in order, or None for none."""
    steps = [AUGMENTATIONS[name] for name in names]
    if not steps:
        return None

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x

    return augment
