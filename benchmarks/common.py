"""What every benchmark script shares: its command line, the device, MNIST-1D data."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from workflow.data import TaskData, load_data
from workflow.datasets import make_data
from workflow.runtime import resolve_device


def setup(doc: str, **options: Any) -> tuple[argparse.Namespace, torch.device, TaskData]:
    """Parse ``--device``, ``--threads`` and the script's own ``options`` (name -> default);
    set the threads; make MNIST-1D (the package's default generator) on the device."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in options.items():
        p.add_argument(f"--{name}", type=type(default), default=default)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_data(make_data({"name": "mnist1d", "args": {}}, Path(tmp) / "source.npz"), device)
    return args, device, data


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds, waiting for the GPU where there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start
