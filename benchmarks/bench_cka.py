"""All-pairs layer CKA between two models' activation stores: ours against torch-cka.

Two synthetic "models" (ReLU read-outs of a shared latent, so layers are related)
give ``--samples`` x ``--widths`` float32 activations, written as Zarr stores with
:func:`workflow.analysis.activations.activations_dataset`. The baseline is
``torch_cka.CKA.compare`` (PyPI ``torch-cka``, AntixK; ``pip install -e .[bench]``),
which hooks two models and iterates a DataLoader: here each model replays the
stored activations (held in memory, not timed) through identity layers, for
DataLoader batches of ``--batch`` consecutive samples. It computes the minibatch
CKA of Nguyen et al. 2021 (unbiased HSIC averaged over batches) in float32, so ours
runs the same form, ``debiased_cka`` with the same batches, streamed from the
stores in float64, Zarr reads included. Both run on the CPU, in one process.
``--float64`` also runs torch-cka with float64 as torch's default dtype, so the
values can be compared without float32 rounding. Each is timed ``--repeat`` times and
the best time is reported.

The default widths are those of ResNet-20 with every conv-BN-ReLU output recorded
and pooled over positions (``analyze.conv: pool``), plus the head: 7 x 16, 6 x 32,
6 x 64 and 10 units. ``--widths 256,512,1024,2048,1024,512`` gives a few wide layers
instead (flattened conv maps), where both implementations are bound by forming the
minibatch Gram matrices.

    python benchmarks/bench_cka.py [--samples 10000] [--widths 16,16,...] [--batch 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka's progress bar would interleave with the table

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workflow import storage
from workflow.analysis.activations import activations_dataset
from workflow.analysis.similarity import similarity_matrices

try:
    from torch_cka import CKA
except ImportError as err:  # an optional dependency: say how to get it
    raise SystemExit("bench_cka needs torch-cka: pip install -e '.[bench]'") from err


# ResNet-20's conv-BN-ReLU outputs pooled over positions (stem, 3 stages of 3 blocks of
# 2 convs), and its head.
RESNET20_WIDTHS = [16] * 7 + [32] * 6 + [64] * 6 + [10]


def synthetic_activations(samples: int, widths: list[int], seed: int, latent: np.ndarray) -> dict[str, np.ndarray]:
    """One model's layers: noisy ReLU read-outs of the shared latent, float32."""
    rng = np.random.default_rng(seed)
    acts = {}
    for i, width in enumerate(widths):
        pre = latent @ rng.normal(size=(latent.shape[1], width)) + rng.normal(size=(samples, width))
        acts[f"layer{i + 1}"] = np.maximum(pre, 0.0).astype(np.float32)
    return acts


class Replay(nn.Module):
    """A "model" whose named layers output stored activations for a batch of sample indices."""

    def __init__(self, acts: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.acts = {name: torch.from_numpy(x).to(torch.get_default_dtype()) for name, x in acts.items()}
        self.layers = nn.ModuleDict({name: nn.Identity() for name in acts})

    def forward(self, index: torch.Tensor) -> None:
        for name, layer in self.layers.items():
            layer(self.acts[name][index])


def torch_cka(acts_a: dict[str, np.ndarray], acts_b: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """torch-cka's layer x layer minibatch CKA, fed by a DataLoader of consecutive batches."""
    model_a, model_b = Replay(acts_a), Replay(acts_b)
    names = ([f"layers.{name}" for name in acts] for acts in (acts_a, acts_b))
    cka = CKA(model_a, model_b, "model_a", "model_b", *names, device="cpu")
    loader = DataLoader(TensorDataset(torch.arange(len(next(iter(acts_a.values()))))), batch_size=batch)
    cka.compare(loader, loader)
    return cka.export()["CKA"].numpy().astype(np.float64)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """``fn()`` and the best of ``repeat`` wall-clock timings of it."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--widths", default=",".join(map(str, RESNET20_WIDTHS)), help="units per layer, comma-separated")
    p.add_argument("--batch", type=int, default=256, help="minibatch (DataLoader batch) size")
    p.add_argument("--chunk", type=int, default=2048, help="samples per streamed block (ours)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (numpy's BLAS follows its own env)")
    p.add_argument("--repeat", type=int, default=3, help="timings per method; the best is reported")
    p.add_argument("--float64", action="store_true", help="also run torch-cka in float64 to compare values")
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    latent = np.random.default_rng(0).normal(size=(args.samples, 64))
    acts_a, acts_b = (synthetic_activations(args.samples, widths, seed, latent) for seed in (1, 2))
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{name}.zarr" for name in ("a", "b")]
        for acts, path in zip((acts_a, acts_b), paths):
            storage.write_dataset(activations_dataset(acts, np.arange(args.samples)), path)

        def ours(*measures: str) -> Any:
            return similarity_matrices(*paths, measures=measures, chunk=args.chunk, batch=args.batch)

        baseline, t_base = timed(lambda: torch_cka(acts_a, acts_b, args.batch), args.repeat)
        rows.append(("torch-cka 0.21 CKA.compare, float32, in memory", t_base))
        mine, t_mine = timed(lambda: ours("debiased_cka"), args.repeat)
        rows.append(("ours: debiased_cka, float64, from Zarr", t_mine))
        both, t_both = timed(lambda: ours("debiased_cka", "linear_cka"), args.repeat)
        rows.append(("ours: + full-sample linear_cka, same pass (more work)", t_both))
        if args.float64:
            with default_dtype(torch.float64):
                baseline64, t_base64 = timed(lambda: torch_cka(acts_a, acts_b, args.batch), args.repeat)
            rows.append(("torch-cka 0.21 with float64 default dtype", t_base64))

    print(f"{args.samples} samples x {len(widths)} layers of {widths} units, both models; minibatches of "
          f"{args.batch}; CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores")
    print(f"{'method':<54}{'seconds':>10}{'speed-up':>10}")
    for name, seconds in rows:
        print(f"{name:<54}{seconds:>10.2f}{t_base / seconds:>10.2f}")
    ours_values = mine["debiased_cka"].values
    print(f"largest |ours - torch-cka float32| over {ours_values.size} layer pairs: "
          f"{np.abs(ours_values - baseline).max():.2e}")
    if args.float64:
        print(f"largest |ours - torch-cka float64|: {np.abs(ours_values - baseline64).max():.2e}")
    print(f"largest |debiased_cka in the two-measure pass - alone|: "
          f"{np.abs(both['debiased_cka'].values - ours_values).max():.2e}")
    print("minibatch CKA (ours), rows model_a layers, columns model_b layers:")
    print(np.array2string(ours_values, precision=3, suppress_small=True))


if __name__ == "__main__":
    main()
