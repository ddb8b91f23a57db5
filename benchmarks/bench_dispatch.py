"""What one epoch of a pack dispatches: operations and host reads, as K grows.

On a GPU every dispatched operation is at least one kernel launch and every host
read of a device tensor a synchronisation, so a pack that scales must dispatch about
as many of each at K = 256 as at K = 1. This counts them with ``torch.profiler`` on
whatever device it runs on, for one epoch of the training loop (``train_pack``) of K
MNIST-1D CNNs (the default study's, 4000 examples, batches of 100: 40 steps) and its
evaluation (train and test sets, weight distance), sequential and stacked: the counts
of a call of two epochs less those of a call of one, so that what a pack does once
(building its engine, its first evaluation) is left out.

* ``ops``: every ``aten::`` operation the profiler records (nested ones included);
* ``host reads``: every ``.item()``, ``.tolist()``, ``float()``, ``int()`` and ``bool()``
  of a tensor on the training device, and every copy of a GPU tensor to the host
  (``.cpu()``, ``.numpy()``, ``.to("cpu")``), counted with a ``TorchFunctionMode``:
  on a GPU each waits for the device. (On a CPU the count also takes in the loop's
  own bookkeeping on the CPU, e.g. reading a data order, which costs nothing there.)

The ratio is against K = 1 of the same engine.

    python benchmarks/bench_dispatch.py [--ks 1,16,64,256] [--device auto] [--stacks sequential,stacked]
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from torch.overrides import TorchFunctionMode

from common import setup
from workflow.models import seeded_model
from workflow.train import Member, TrainConfig, train_pack

CFG = TrainConfig(epochs=1, batch_size=100, lr=0.01, optimizer="adam")


READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__"}
COPIES = {"cpu", "numpy", "to"}


class HostReads(TorchFunctionMode):
    """Counts the reads by the host of tensors on ``device`` (see the module's docstring)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.count = device, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if tensor is not None and tensor.device.type == self.device.type:
            if name in READS:
                self.count += 1
            elif name in COPIES and tensor.device.type != "cpu" and (
                    name != "to" or "cpu" in map(str, [*args[1:], *kwargs.values()])):
                self.count += 1
        return func(*args, **kwargs)


def call(k: int, stack: str, data, device: torch.device, epochs: int) -> tuple[int, int]:
    """(ops, host reads) of a call of ``train_pack`` of ``epochs`` epochs of ``k`` CNNs."""
    members = [Member(seeded_model({"name": "cnn1d", "channels": 32}, data.in_length, data.num_classes, s, device),
                      data, seed=s) for s in range(k)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, HostReads(device) as reads:
        # measured as on a GPU, all members at once, whatever the device (on a CPU a loop is faster)
        train_pack(members, replace(CFG, epochs=epochs), stack=stack, progress=False, measure_together=True)
    return sum(event.name.startswith("aten::") for event in prof.events()), reads.count


def counts(k: int, stack: str, data, device: torch.device) -> tuple[int, int]:
    """(ops, host reads) of one epoch of a pack of ``k`` CNNs."""
    (ops2, reads2), (ops1, reads1) = (call(k, stack, data, device, e) for e in (2, 1))
    return ops2 - ops1, reads2 - reads1


def main() -> None:
    args, device, data = setup(__doc__, ks="1,16,64,256", stacks="sequential,stacked")
    ks = [int(k) for k in args.ks.split(",")]
    print(f"one epoch (40 steps of 100) and its evaluation, K MNIST-1D CNNs, on {device}")
    print(f"{'engine':<12}{'K':>5}{'ops':>12}{'ratio':>8}{'host reads':>12}{'ratio':>8}")
    for stack in args.stacks.split(","):
        base = None
        for k in ks:
            ops, reads = counts(k, stack, data, device)
            base = base or (ops, reads)
            print(f"{stack:<12}{k:>5}{ops:>12,}{ops / base[0]:>8.2f}{reads:>12,}{reads / base[1]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
