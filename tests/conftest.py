"""Shared fixtures: a tiny MNIST-1D task, a tiny CNN, and the study configurations."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

TINY_TASK = {"name": "mnist1d", "args": {"num_samples": 300}}
"""300 examples: 240 train, 60 test, 40-long signals, 10 classes."""


@pytest.fixture
def torch_one_thread():
    """Tiny models train faster on one thread; restores the thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def task_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST-1D task file, made once per session (read-only for tests)."""
    from workflow.datasets import make_data

    return make_data(copy.deepcopy(TINY_TASK), tmp_path_factory.mktemp("data") / "task.npz")


@pytest.fixture
def task_spec() -> dict[str, Any]:
    """The spec of the tiny task file (a fresh copy per test)."""
    return copy.deepcopy(TINY_TASK)


@pytest.fixture
def task(task_path: Path):
    """The tiny task as CPU tensors (a fresh copy per test)."""
    from workflow.data import load_data

    return load_data(task_path, "cpu")


@pytest.fixture
def make_cnn() -> Callable[..., torch.nn.Module]:
    """``make_cnn(seed=0, num_classes=10)``: a seeded CNN1d with 4 channels for 40-long inputs."""
    from workflow.models import CNN1d

    def make(seed: int = 0, num_classes: int = 10, channels: int = 4) -> torch.nn.Module:
        torch.manual_seed(seed)
        return CNN1d(in_length=40, num_classes=num_classes, channels=channels)

    return make


def _read_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / "config.yaml" if name == "default" else CONFIG_DIR / "studies" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def read_config() -> Callable[[str], dict[str, Any]]:
    """``read_config("default" | "tiny" | ...)``: a fresh, unvalidated copy of a shipped
    study (a study of ``config/studies/`` is complete: it replaces the default)."""
    return _read_config


@pytest.fixture
def default_config() -> dict[str, Any]:
    """``config/config.yaml`` as written (not yet validated)."""
    return _read_config("default")


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """``config/studies/tiny.yaml`` merged over the default (not yet validated)."""
    return _read_config("tiny")
