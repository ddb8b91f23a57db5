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
    """A classification task held as tensors on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()).item()) + 1

    @property
    def in_length(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    def subset(self, indices: np.ndarray) -> TaskData:
        """The same task with only the training examples at ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x_train.device)
        return TaskData(self.x_train[idx], self.y_train[idx], self.x_test, self.y_test)


def load_data(path: str | Path, device: torch.device | str = "cpu") -> TaskData:
    """Load a file written by :func:`make_data` onto ``device``."""
    with np.load(path) as f:
        return TaskData(*(torch.as_tensor(f[k]).to(device) for k in ("x_train", "y_train", "x_test", "y_test")))
