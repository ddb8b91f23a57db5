"""A task's data on the training device.

The datasets of this project are small enough to live on the device whole, which
keeps the training loop free of data-loader overhead. The files are made by
:mod:`workflow.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class TaskData:
    """A classification task held as tensors on one device.

    A subset (:meth:`subset`) remembers the task it was cut from (``base``) and which
    of its training examples it holds (``rows``), so that a pack can gather the batches
    of all its members from that one task in one indexing operation.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    base: TaskData | None = None
    rows: torch.Tensor | None = None  # (len(y_train),) indices into base's training examples
    x_val: torch.Tensor | None = None  # set aside from the training split; never trained on
    y_val: torch.Tensor | None = None

    def splits(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The splits every run is measured on each epoch: train, validation (when the task
        has one) and test."""
        val = [] if self.y_val is None else [("val", self.x_val, self.y_val)]
        return [("train", self.x_train, self.y_train), *val, ("test", self.x_test, self.y_test)]

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()).item()) + 1

    @property
    def in_length(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    def subset(self, indices: np.ndarray) -> TaskData:
        """The same task with only the training examples at ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x_train.device)
        base, rows = (self, idx) if self.base is None else (self.base, self.rows[idx])
        return TaskData(self.x_train[idx], self.y_train[idx], self.x_test, self.y_test, base, rows,
                        self.x_val, self.y_val)

    def source(self) -> tuple[TaskData, torch.Tensor]:
        """The task this one's training examples are drawn from, and their rows in it."""
        if self.base is None:
            return self, torch.arange(len(self.y_train), device=self.y_train.device)
        return self.base, self.rows


def load_data(path: str | Path, device: torch.device | str = "cpu") -> TaskData:
    """Load a file written by :func:`make_data` onto ``device``."""
    with np.load(path) as f:
        tensors = {k: torch.as_tensor(f[k]).to(device) for k in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")
                   if k in f.files}
    return TaskData(**tensors)
