"""Overhead of the project's training loop against a bare PyTorch loop.

Both train the same CNN on the same MNIST-1D data with the same optimiser and
batch size, in the same process, one after the other; the table gives the time
per epoch and the ratio. The project's loop also evaluates the whole train and
test sets after every epoch (the per-epoch metrics), which the bare loop does not:
the ratio is what that bookkeeping costs.

    python benchmarks/bench_train_loop.py [--epochs 10] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import torch
from common import setup, timed
from torch.nn import functional as F

from workflow.models import build_model
from workflow.runtime import seed_everything
from workflow.train import TrainConfig, train


def bare_loop(model, data, cfg: TrainConfig, seed: int) -> None:
    """The minimal loop: shuffle, forward, loss, backward, step; nothing else."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(data.y_train), generator=g).split(cfg.batch_size):
            idx = idx.to(data.x_train.device)
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def main() -> None:
    args, device, data = setup(__doc__, epochs=10, repeats=3)
    cfg = TrainConfig(epochs=args.epochs, batch_size=100, lr=0.01)

    def best_per_epoch(fn) -> float:
        best = float("inf")
        for r in range(args.repeats):
            seed_everything(r)
            model = build_model({"name": "cnn1d", "channels": 32}, data.in_length, data.num_classes).to(device)
            best = min(best, timed(lambda: fn(model, r), device)[1])
        return best / args.epochs

    # warm-up (first kernels, allocator), so that neither side pays it
    warm = build_model({"name": "cnn1d", "channels": 32}, data.in_length, data.num_classes).to(device)
    bare_loop(warm, data, TrainConfig(epochs=1, batch_size=100, lr=0.01), 0)
    bare = best_per_epoch(lambda m, r: bare_loop(m, data, cfg, r))
    ours = best_per_epoch(lambda m, r: train(m, data, cfg, seed=r, progress=False))
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.epochs} epochs of "
          f"{len(data.y_train)} examples, best of {args.repeats}")
    print(f"{'loop':<28}{'s / epoch':>12}{'ratio':>8}")
    print(f"{'bare PyTorch (baseline)':<28}{bare:>12.4f}{1.0:>8.2f}")
    print(f"{'workflow.train.train':<28}{ours:>12.4f}{ours / bare:>8.2f}")


if __name__ == "__main__":
    main()
