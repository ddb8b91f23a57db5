"""Tests for data pruning: EL2N scores and the kept-subset selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workflow.prune_data import RepeatedRandomSubsets, el2n, random_scores, select


# ---------------------------------------------------------------- EL2N


def test_el2n_uniform_prediction_matches_closed_form() -> None:
    # A linear model with zero weights outputs equal logits: softmax is exactly 1/C.
    n, c = 6, 10
    model = nn.Linear(4, c)
    nn.init.zeros_(model.weight)
    nn.init.constant_(model.bias, 0.3)
    logits = model(torch.randn(n, 4))
    labels = torch.arange(n) % c
    expected = math.sqrt((1 - 1 / c) ** 2 + (c - 1) / c**2)
    np.testing.assert_allclose(el2n(logits, labels).numpy(), expected, rtol=1e-12)


def test_el2n_matches_numpy_formula() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 5))
    labels = rng.integers(0, 5, size=20)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.linalg.norm(p - np.eye(5)[labels], axis=1)
    got = el2n(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_el2n_confident_right_is_zero_and_confident_wrong_is_sqrt2() -> None:
    logits = torch.tensor([[100.0, 0.0, 0.0], [100.0, 0.0, 0.0]])
    scores = el2n(logits, torch.tensor([0, 2]))
    assert scores[0].item() == pytest.approx(0.0, abs=1e-12)
    assert scores[1].item() == pytest.approx(math.sqrt(2), abs=1e-12)


def test_el2n_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        el2n(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


def test_random_scores_are_seeded_uniform() -> None:
    a = random_scores(1000, seed=3)
    assert a.dtype == np.float64 and a.shape == (1000,)
    assert ((a >= 0) & (a < 1)).all()
    np.testing.assert_array_equal(a, random_scores(1000, seed=3))
    assert not np.array_equal(a, random_scores(1000, seed=4))


# ---------------------------------------------------------------- select


def test_select_keeps_round_f_n_of_the_top_or_bottom() -> None:
    scores = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2])
    hard = select(scores, 3 / 7, keep="hard")
    easy = select(scores, 3 / 7, keep="easy")
    np.testing.assert_array_equal(hard, [1, 3, 5])
    np.testing.assert_array_equal(easy, [2, 4, 6])
    assert hard.dtype == np.int64


@pytest.mark.parametrize(("fraction", "n", "expected"), [(0.5, 5, 2), (0.5, 7, 4), (0.3, 10, 3), (0.01, 10, 1), (1.0, 9, 9)])
def test_select_count_is_python_round_at_least_one(fraction: float, n: int, expected: int) -> None:
    assert len(select(np.arange(n, dtype=float), fraction)) == expected


def test_hard_and_easy_halves_partition_distinct_scores() -> None:
    scores = np.random.default_rng(1).permutation(100).astype(float)
    hard, easy = select(scores, 0.5, "hard"), select(scores, 0.5, "easy")
    assert np.intersect1d(hard, easy).size == 0
    np.testing.assert_array_equal(np.union1d(hard, easy), np.arange(100))


def test_ties_go_to_the_lower_index() -> None:
    scores = np.zeros(10)
    np.testing.assert_array_equal(select(scores, 0.3, "hard"), [0, 1, 2])
    np.testing.assert_array_equal(select(scores, 0.3, "easy"), [0, 1, 2])
    ties = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
    np.testing.assert_array_equal(select(ties, 0.4, "hard"), [1, 2])


def test_class_balanced_keeps_per_class_counts() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    scores = rng.random(100)
    scores[labels == 0] += 10  # class 0 holds all the hardest examples
    kept = select(scores, 0.3, "hard", labels=labels, class_balanced=True)
    np.testing.assert_array_equal(np.bincount(labels[kept]), [15, 9, 6])
    for c in range(3):  # within a class, the hardest are kept
        members = np.flatnonzero(labels == c)
        kept_c = np.intersect1d(kept, members)
        dropped_c = np.setdiff1d(members, kept)
        assert scores[kept_c].min() > scores[dropped_c].max()
    # without balancing, the kept set would be class 0 only
    assert set(labels[select(scores, 0.3, "hard")]) == {0}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": 0.5, "keep": "middle"}, "keep"),
        ({"fraction": 0.5, "class_balanced": True}, "labels"),
    ],
)
def test_select_errors_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        select(np.arange(4.0), **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=60).map(np.array),
    fraction=st.floats(0.01, 1.0),
    keep=st.sampled_from(["hard", "easy"]),
    balanced=st.booleans(),
)
def test_an_offset_of_zero_is_plain_selection(scores: np.ndarray, fraction: float, keep: str, balanced: bool) -> None:
    labels = np.arange(len(scores)) % 3
    np.testing.assert_array_equal(select(scores, fraction, keep, labels, balanced, offset=0.0),
                                  select(scores, fraction, keep, labels, balanced))


def test_an_offset_skips_the_most_extreme_scores_and_keeps_the_next_window() -> None:
    scores = np.array([9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0, 0.0])  # ranks by position
    # hard: the 2 highest (9, 8) are skipped, the next 3 (7, 6, 5) kept
    assert select(scores, 0.3, "hard", offset=0.2).tolist() == [4, 6, 8]
    # easy: the 2 lowest (0, 1) are skipped, the next 3 (2, 3, 4) kept
    assert select(scores, 0.3, "easy", offset=0.2).tolist() == [3, 5, 7]
    # the kept set is the plain selection of the larger fraction minus that of the offset
    wider, skipped = set(select(scores, 0.5, "hard")), set(select(scores, 0.2, "hard"))
    assert set(select(scores, 0.3, "hard", offset=0.2)) == wider - skipped
    # per class: each class skips its own most extreme share
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    kept = select(scores, 0.4, "hard", labels, class_balanced=True, offset=0.2)
    assert kept.tolist() == [2, 4, 7, 8]  # class 0: 9 skipped, 8 and 7 kept; class 1: 6 skipped, 5 and 4 kept


@pytest.mark.parametrize("offset", [-0.1, 1.0, 0.8])
def test_an_offset_beyond_the_scores_is_refused(offset: float) -> None:
    with pytest.raises(ValueError, match="offset"):
        select(np.arange(10.0), 0.3, offset=offset)


def test_select_rejects_2d_scores() -> None:
    with pytest.raises(ValueError, match="scores"):
        select(np.zeros((2, 2)), 0.5)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(-5, 5), min_size=1, max_size=60).map(lambda v: np.array(v, dtype=float)),
    fraction=st.floats(0.01, 1.0),
    keep=st.sampled_from(["hard", "easy"]),
)
def test_select_properties(scores: np.ndarray, fraction: float, keep: str) -> None:
    kept = select(scores, fraction, keep)
    assert len(kept) == max(1, round(fraction * len(scores)))
    assert np.all(np.diff(kept) > 0)  # sorted, unique
    dropped = np.setdiff1d(np.arange(len(scores)), kept)
    if dropped.size:
        if keep == "hard":
            assert scores[kept].min() >= scores[dropped].max()
        else:
            assert scores[kept].max() <= scores[dropped].min()
        # ties at the boundary go to the lower index
        boundary = scores[kept].min() if keep == "hard" else scores[kept].max()
        kept_tied, dropped_tied = kept[scores[kept] == boundary], dropped[scores[dropped] == boundary]
        if dropped_tied.size:
            assert kept_tied.max() < dropped_tied.min()
    np.testing.assert_array_equal(kept, select(scores.copy(), fraction, keep))


# --- repeated random sampling (RS2) ------------------------------------------------


def _epochs(sampler: RepeatedRandomSubsets, count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [sampler(generator) for _ in range(count)]


@given(n=st.integers(1, 60), fraction=st.floats(0.01, 1.0))
@settings(max_examples=60, deadline=None)
def test_rs2_sees_every_example_once_within_ceil_one_over_r_epochs(n: int, fraction: float) -> None:
    sampler = RepeatedRandomSubsets(n, fraction)
    size = max(1, round(fraction * n))
    epochs = _epochs(sampler, math.ceil(n / size) + 5)
    for e in epochs:
        assert len(e) == size and len(set(e.tolist())) == size  # distinct within an epoch
    first = torch.cat(epochs[: math.ceil(n / size)])
    assert set(first.tolist()) == set(range(n))


@given(n=st.integers(2, 50), fraction=st.floats(0.05, 0.9), passes=st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_rs2_is_without_replacement_pass_by_pass(n: int, fraction: float, passes: int) -> None:
    sampler = RepeatedRandomSubsets(n, fraction)
    seen = torch.cat(_epochs(sampler, math.ceil(passes * n / sampler.size)))
    counts = torch.bincount(seen, minlength=n)
    # In any prefix of the stream, counts differ by at most one: no example is
    # drawn again before every other has been drawn as often.
    assert counts.max() - counts.min() <= 1


def test_rs2_is_deterministic_given_the_generator() -> None:
    a = _epochs(RepeatedRandomSubsets(37, 0.3), 9, seed=4)
    b = _epochs(RepeatedRandomSubsets(37, 0.3), 9, seed=4)
    c = _epochs(RepeatedRandomSubsets(37, 0.3), 9, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_rs2_refuses_a_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        RepeatedRandomSubsets(10, 0.0)


def test_rs2_drives_the_training_loop(tmp_path) -> None:
    from workflow.data import load_data
    from workflow.datasets import make_data
    from workflow.models import CNN1d
    from workflow.train import TrainConfig, train

    data = load_data(make_data({"name": "mnist1d", "args": {"num_samples": 200}}, tmp_path / "d.npz"))
    seen: list[torch.Tensor] = []
    torch.manual_seed(0)
    result = train(
        CNN1d(40, 10, channels=4), data, TrainConfig(epochs=4, batch_size=20, lr=0.01),
        seed=0, sampler=RepeatedRandomSubsets(len(data.y_train), 0.25), progress=False,
        on_batch=lambda idx, logits, y: seen.append(idx.cpu()),
    )
    assert result.steps == 4 * 2  # 40 examples an epoch, batches of 20
    assert sorted(torch.cat(seen).tolist()) == list(range(160))  # 4 epochs of 1/4: all once
