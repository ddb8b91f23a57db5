"""Forgetting events: scripted predictions, several runs, and the training-loop hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow.forgetting import ForgettingTracker, forgetting_scores
from workflow.train import TrainConfig, train

NUM_CLASSES = 3


def batch(tracker: ForgettingTracker, indices: list[int], correct: list[bool], labels: list[int] | None = None) -> None:
    """Present ``indices`` with logits whose argmax is the label exactly where ``correct``."""
    y = torch.tensor(labels if labels is not None else [i % NUM_CLASSES for i in indices])
    pred = torch.where(torch.tensor(correct), y, (y + 1) % NUM_CLASSES)
    logits = torch.nn.functional.one_hot(pred, NUM_CLASSES).float() * 5 - 1
    tracker(torch.tensor(indices), logits, y)


# Presentation histories (1 = correct) and their forgetting counts by hand.
HISTORIES = {
    0: ([1, 0, 1, 0], 2),
    1: ([0, 1, 1], 0),
    2: ([0, 0, 0, 0], np.inf),  # never learned
    3: ([1, 1, 0, 0, 1], 1),
    4: ([1, 0, 0, 1, 1, 0], 2),
    5: ([1], 0),
    6: ([], np.inf),  # never presented
}


def test_scripted_histories_give_hand_counts() -> None:
    tracker = ForgettingTracker(len(HISTORIES))
    rng = np.random.default_rng(0)
    # Split the presentations into batches of shuffled, varying membership, as
    # epochs with random order do; only each example's own sequence matters.
    for step in range(max(len(h) for h, _ in HISTORIES.values())):
        present = [i for i, (h, _) in HISTORIES.items() if step < len(h)]
        rng.shuffle(present)
        for part in np.array_split(np.array(present), 2):
            if len(part):
                batch(tracker, part.tolist(), [bool(HISTORIES[i][0][step]) for i in part])
    expected = np.array([c for _, c in HISTORIES.values()], dtype=np.float64)
    counts = tracker.counts()
    assert counts.dtype == np.float64 and counts.shape == (len(HISTORIES),)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(tracker.presentations.numpy(), [len(h) for h, _ in HISTORIES.values()])


def test_other_examples_in_a_batch_do_not_interfere() -> None:
    tracker = ForgettingTracker(4)
    batch(tracker, [3, 0], [True, True])
    batch(tracker, [1, 0], [True, False])  # 0 forgotten; 3 absent keeps its state
    batch(tracker, [2, 3], [False, False])  # 3 forgotten
    np.testing.assert_array_equal(tracker.counts(), [1, 0, np.inf, 1])


def test_forgetting_scores_sum_runs_and_keep_inf() -> None:
    a, b = ForgettingTracker(3), ForgettingTracker(3)
    for correct in ([True, True, False], [False, True, False], [True, False, False]):
        batch(a, [0, 1, 2], correct)  # counts 1, 1, inf
    for correct in ([True, False, True], [False, False, False]):
        batch(b, [0, 1, 2], correct)  # counts 1, inf, 1
    np.testing.assert_array_equal(forgetting_scores([a, b]), [2, np.inf, np.inf])
    np.testing.assert_array_equal(forgetting_scores([a]), a.counts())


def test_invalid_input_is_refused() -> None:
    tracker = ForgettingTracker(3)
    with pytest.raises(ValueError, match="lie in"):
        batch(tracker, [3], [True])
    with pytest.raises(ValueError, match="repeat"):
        batch(tracker, [1, 1], [True, False])
    with pytest.raises(ValueError, match="different numbers"):
        forgetting_scores([ForgettingTracker(3), ForgettingTracker(4)])
    with pytest.raises(ValueError, match="at least one"):
        forgetting_scores([])


def test_tracks_a_real_training_run(task, make_cnn, torch_one_thread) -> None:
    epochs = 3
    n = len(task.y_train)
    tracker = ForgettingTracker(n)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-2)
    train(make_cnn(seed=0), task, cfg, seed=0, on_batch=tracker, progress=False)
    counts = tracker.counts()
    assert counts.shape == (n,) and (counts >= 0).all()
    # Every example is presented once per epoch.
    assert (tracker.presentations.numpy() == epochs).all()
    # Each event needs a correct presentation before it and is itself incorrect, so
    # E presentations hold at most floor(E / 2) events.
    finite = counts[np.isfinite(counts)]
    assert len(finite) > 0 and (finite <= epochs // 2).all()
    # The model learns something, and what it never gets right is unlearned (inf).
    assert 0 < np.isinf(counts).sum() < n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_give_the_same_counts() -> None:
    cpu, gpu = ForgettingTracker(4), ForgettingTracker(4)
    for correct in ([True, True, False, True], [False, True, False, True], [True, False, False, False]):
        y = torch.tensor([0, 1, 2, 0])
        logits = torch.nn.functional.one_hot(torch.where(torch.tensor(correct), y, (y + 1) % 3), 3).float()
        cpu(torch.arange(4), logits, y)
        gpu(torch.arange(4).cuda(), logits.cuda(), y.cuda())
    np.testing.assert_array_equal(gpu.counts(), cpu.counts())
    np.testing.assert_array_equal(cpu.counts(), [1, 1, np.inf, 1])
