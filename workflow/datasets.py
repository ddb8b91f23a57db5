"""Datasets: made (or later, downloaded) once into an ``.npz`` file of four arrays,
``x_train``, ``y_train``, ``x_test``, ``y_test``.

This module needs no torch, so that checking a configuration stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from workflow.registry import Registry
from workflow.storage import atomic_path

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class DatasetSource:
    """How to make one kind of dataset, and the settings (``args``) it accepts."""

    make: Callable[[dict[str, Any]], Arrays]
    settings: Callable[[], dict[str, Any]]


DATASETS: Registry[DatasetSource] = Registry("dataset")


def _mnist1d_settings() -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    settings = get_dataset_args(as_dict=True)
    del settings["url"]  # only used to download the authors' copy; we generate
    return settings


def _mnist1d(args: dict[str, Any]) -> Arrays:
    """MNIST-1D generated locally; ``args`` override the package's generator defaults."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    settings = _mnist1d_settings()
    unknown = set(args) - set(settings)
    if unknown:
        raise ValueError(
            f"unknown mnist1d generator setting(s) {sorted(unknown)}; allowed: {sorted(settings)}"
        )
    settings.update(args)
    d = make_dataset(ObjectView(settings))
    return {
        "x_train": d["x"].astype(np.float32),
        "y_train": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }


DATASETS.register("mnist1d")(DatasetSource(_mnist1d, _mnist1d_settings))


def dataset_settings(name: str) -> dict[str, Any]:
    """The settings a dataset accepts in ``args``, with their defaults."""
    return DATASETS[name].settings()


def make_data(spec: dict[str, Any], out: str | Path) -> Path:
    """Build the dataset described by ``spec`` and write it to ``out`` (an ``.npz``).

    ``spec``: ``name`` (a registered dataset), ``args`` (its settings) and
    ``train_size`` (keep only the first N training examples; ``None`` keeps all).
    """
    arrays = DATASETS[spec["name"]].make(dict(spec.get("args") or {}))
    n = spec.get("train_size")
    if n is not None:
        if n > len(arrays["y_train"]):
            raise ValueError(f"train_size={n} exceeds the {len(arrays['y_train'])} training examples")
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:n], arrays["y_train"][:n]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz"
            np.savez(f, **arrays)
    return Path(out)
