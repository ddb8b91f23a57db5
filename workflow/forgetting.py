"""Forgetting events (Toneva et al., "An Empirical Study of Example Forgetting").

An example is *forgotten* when a presentation classifies it correctly and its next
presentation does not. :class:`ForgettingTracker` counts these 1 -> 0 transitions
while a model trains (it is an ``on_batch`` hook of :func:`workflow.train.train`);
:func:`forgetting_scores` sums the counts of several runs. Examples never
classified correctly score ``+inf``: the paper ranks them as the hardest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


_STATE = ("prev_correct", "ever_correct", "events", "presentations")


class ForgettingTracker:
    """Counts forgetting events of ``n`` training examples over one training run.

    Call it with ``(indices, logits, labels)`` after each forward pass; the state
    lives on the CPU, so it follows CUDA training without holding GPU memory.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        # Before its first presentation an example counts as not learned, so the
        # first presentation can never be a forgetting event.
        self.prev_correct = torch.zeros(n, dtype=torch.bool)
        self.ever_correct = torch.zeros(n, dtype=torch.bool)
        self.events = torch.zeros(n, dtype=torch.int64)
        self.presentations = torch.zeros(n, dtype=torch.int64)

    def __call__(self, indices: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Record one batch: ``indices`` (B,) into the dataset, ``logits`` (B, C), ``labels`` (B,)."""
        idx = indices.detach().to("cpu", torch.long).reshape(-1)
        if logits.dim() != 2 or logits.shape[0] != len(idx) or labels.shape != idx.shape:
            raise ValueError(
                f"need indices (B,), logits (B, C), labels (B,); got {tuple(indices.shape)}, "
                f"{tuple(logits.shape)}, {tuple(labels.shape)}"
            )
        if len(idx) == 0:
            return
        if idx.min() < 0 or idx.max() >= self.n:
            raise ValueError(f"indices must lie in [0, {self.n}), got range [{idx.min()}, {idx.max()}]")
        # Scattered updates below assume one presentation per example per call;
        # with repeats their order within the batch would be undefined.
        if len(torch.unique(idx)) != len(idx):
            raise ValueError("indices repeat within one batch; present each example at most once per call")
        correct = (logits.detach().argmax(1) == labels.detach()).to("cpu")
        self.events[idx] += (self.prev_correct[idx] & ~correct).long()
        self.prev_correct[idx] = correct
        self.ever_correct[idx] |= correct
        self.presentations[idx] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counts so far (a copy), for a checkpoint of the training run being tracked."""
        return {name: getattr(self, name).clone() for name in _STATE}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Go on from :meth:`state_dict` of a tracker of as many examples."""
        if state["events"].shape != (self.n,):
            raise ValueError(f"a state of {state['events'].shape[0]} examples, this tracker has {self.n}")
        for name in _STATE:
            setattr(self, name, state[name].clone())

    def counts(self) -> np.ndarray:
        """Forgetting events per example (float64, (n,)); ``inf`` where never classified correctly."""
        out = self.events.numpy().astype(np.float64)
        out[~self.ever_correct.numpy()] = np.inf
        return out


def forgetting_scores(trackers: Sequence[ForgettingTracker]) -> np.ndarray:
    """Forgetting counts summed over runs (e.g. seeds); an example unlearned in any run stays ``inf``."""
    if not trackers:
        raise ValueError("need at least one tracker")
    sizes = {t.n for t in trackers}
    if len(sizes) != 1:
        raise ValueError(f"trackers cover different numbers of examples: {sorted(sizes)}")
    return np.sum([t.counts() for t in trackers], axis=0)
