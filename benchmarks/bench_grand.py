"""GraNd scores: batched per-sample gradients (torch.func) against a per-example loop.

Both compute ||grad_theta loss(f(x), y)||_2 over all parameters for the same
examples of MNIST-1D with the same CNN, in the same process; the table gives the
time per 1000 examples, the ratio, and the largest relative difference.

    python benchmarks/bench_grand.py [--examples 1000] [--device auto]
"""

from __future__ import annotations

import torch
from common import setup, timed
from torch.nn import functional as F

from workflow.grand import grand
from workflow.models import seeded_model


def loop_grand(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The baseline: one backward pass per example."""
    model.eval()
    norms = []
    for xi, yi in zip(x, y):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xi.unsqueeze(0)), yi.unsqueeze(0)).backward()
        norms.append(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
    return torch.stack(norms)


def main() -> None:
    args, device, data = setup(__doc__, examples=1000)
    x, y = data.x_train[: args.examples], data.y_train[: args.examples]
    model = seeded_model({"name": "cnn1d", "channels": 32}, data.in_length, data.num_classes, 0, device)

    grand(model, x[:8], y[:8])  # warm-up: the first vmap call traces
    batched, t_batched = timed(lambda: grand(model, x, y), device)
    looped, t_loop = timed(lambda: loop_grand(model, x, y), device)
    diff = ((batched.cpu() - looped.cpu()).abs() / looped.cpu()).max().item()
    per = 1000 / len(y)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(y)} examples, CNN1d(32)")
    print(f"{'method':<34}{'s / 1000 ex.':>14}{'ratio':>8}")
    print(f"{'per-example autograd loop (base)':<34}{t_loop * per:>14.3f}{1.0:>8.2f}")
    print(f"{'workflow.grand (vmap of grad)':<34}{t_batched * per:>14.3f}{t_batched / t_loop:>8.3f}")
    print(f"largest relative difference: {diff:.2e}")


if __name__ == "__main__":
    main()
