"""GraNd score (Paul et al., "Deep Learning on a Data Diet").

GraNd of an example is ``||grad_theta loss(f(x), y)||_2`` over all parameters
``theta``. Per-example gradients are batched with ``torch.func`` (``vmap`` over
``grad`` of a ``functional_call``), so no Python loop runs over examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

# "all" is GraNd; "head" is the last-layer approximation some libraries use.
GRAND_PARAMS: tuple[str, ...] = ("all", "head")


def _scored_params(model: nn.Module, params: str) -> dict[str, torch.Tensor]:
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if params == "head":
        trainable = {name: p for name, p in trainable.items() if name.startswith("head.")}
    if not trainable:
        raise ValueError(f"model has no trainable parameters for params={params!r}")
    return {name: p.detach() for name, p in trainable.items()}


def grand(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    params: str = "all",
) -> torch.Tensor:
    """GraNd per example: the L2 norm of the cross-entropy gradient, shape ``(n,)``, float64.

    ``params="all"`` differentiates with respect to every parameter with
    ``requires_grad`` (GraNd as defined). ``params="head"`` uses only the
    parameters named ``head.*``: that is the last-layer *approximation* some
    libraries use, not GraNd, and it is never larger than the full norm.

    The model is evaluated in eval mode (BatchNorm uses its running statistics:
    with batch statistics examples are coupled and per-example gradients are not
    defined); every module's mode is restored afterwards and no parameter or
    buffer changes. Batches are moved to the device of the model's parameters.
    """
    if params not in GRAND_PARAMS:
        raise ValueError(f"params must be one of {GRAND_PARAMS}, got {params!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on the number of examples: {x.shape[0]} vs {y.shape[0]}")

    scored = _scored_params(model, params)
    # Frozen parameters and buffers enter as constants: the gradient is not taken
    # with respect to them, and eval mode means BatchNorm never writes its buffers.
    fixed = {name: p.detach() for name, p in model.named_parameters() if name not in scored}
    fixed.update({name: b.detach() for name, b in model.named_buffers()})
    first = next(iter(scored.values()))
    device, dtype = first.device, first.dtype

    def loss(theta: dict[str, torch.Tensor], x_i: torch.Tensor, y_i: torch.Tensor) -> torch.Tensor:
        # vmap hands over single examples; the models expect a batch dimension.
        logits = functional_call(model, {**theta, **fixed}, (x_i.unsqueeze(0),)).squeeze(0)
        return F.cross_entropy(logits, y_i)

    per_example_grad = vmap(grad(loss), in_dims=(None, 0, 0))

    # Restore each module's own flag: a model may mix modes (frozen BatchNorm in eval).
    modes = {m: m.training for m in model.modules()}
    model.eval()
    squared = torch.zeros(x.shape[0], dtype=torch.float64, device=device)
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device=device, dtype=dtype)
            yb = y[start : start + batch_size].to(device=device, dtype=torch.long)
            grads = per_example_grad(scored, xb, yb)
            for g in grads.values():
                # Per-parameter sums in float32, accumulated across parameters in float64.
                squared[start : start + len(xb)] += g.flatten(1).pow(2).sum(1).to(torch.float64)
    finally:
        for m, training in modes.items():
            m.training = training
    return squared.sqrt()
