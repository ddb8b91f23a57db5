"""Relative representations: invariance to rotation and isotropic scaling (and not to
anisotropic scaling), zero-shot stitching, similarity, anchors, all against
independent reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow.analysis.relative import (
    choose_anchors,
    compare_spaces,
    fit_ridge_head,
    head_inputs,
    relative_representation,
    row_cosine,
    zero_shot_stitching,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

D = 8


def _rotation(seed: int, d: int = D) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))  # a uniformly random orthogonal matrix


def _blobs(n: int, seed: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random centres: a latent space with class structure."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((classes, D)) * 3
    y = rng.integers(0, classes, n)
    return centres[y] + rng.standard_normal((n, D)), y


def _reference_relative(e: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Cosine by its definition, one pair at a time."""
    return np.array([[np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v)) for v in a] for u in e])


def test_relative_representation_is_the_cosine_to_each_anchor() -> None:
    e, _ = _blobs(30, 0)
    r = relative_representation(e, e[:5])
    np.testing.assert_allclose(r, _reference_relative(e, e[:5]), rtol=0, atol=1e-14)
    assert r.shape == (30, 5) and r.dtype == np.float64


@pytest.mark.parametrize("transform", ["rotation", "rescaling", "both"])
def test_relative_representation_is_invariant_to_rotation_and_isotropic_scaling(transform: str) -> None:
    e, _ = _blobs(40, 1)
    q = _rotation(2) if transform != "rescaling" else np.eye(D)
    scale = 3.7 if transform != "rotation" else 1.0
    moved = scale * e @ q
    np.testing.assert_allclose(relative_representation(moved, moved[:6]), relative_representation(e, e[:6]),
                               rtol=0, atol=1e-10)


def test_relative_representation_is_not_invariant_to_anisotropic_scaling() -> None:
    e, _ = _blobs(40, 1)
    stretched = e * np.linspace(0.2, 5, D)
    diff = np.abs(relative_representation(stretched, stretched[:6]) - relative_representation(e, e[:6])).max()
    assert diff > 0.1


def test_zero_embeddings_are_refused() -> None:
    e = np.ones((4, D))
    e[2] = 0
    with pytest.raises(ValueError, match="zero embedding"):
        relative_representation(e, e[:2])


def test_the_ridge_head_matches_an_augmented_least_squares_solve() -> None:
    x, y = _blobs(60, 3)
    ridge = 0.5
    weight, bias = fit_ridge_head(x, y, num_classes=3, ridge=ridge)
    # min ||[X 1][W; b] - Y||^2 + ridge ||W||^2 as ordinary least squares on stacked rows
    design = np.vstack([np.hstack([x, np.ones((60, 1))]), np.hstack([np.sqrt(ridge) * np.eye(D), np.zeros((D, 1))])])
    target = np.vstack([np.eye(3)[y], np.zeros((D, 3))])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(weight, solution[:-1], atol=1e-10)
    np.testing.assert_allclose(bias, solution[-1], atol=1e-10)


def _stitch(latent_b) -> tuple[float, float]:
    """Stitching from A (the blobs) to B = latent_b(A's latents), anchors from the training set."""
    train, y_train = _blobs(200, 4)
    test, y_test = _blobs(100, 5)
    anchors = train[choose_anchors(y_train, 12, seed=0)]
    rel_a = relative_representation(test, anchors)
    rel_b = relative_representation(latent_b(test), latent_b(anchors))
    ds = zero_shot_stitching(relative_representation(train, anchors), y_train, rel_a, rel_b, y_test, num_classes=3)
    return float(ds.accuracy_a), float(ds.accuracy_stitched)


def test_stitching_to_a_rotated_rescaled_copy_gives_the_models_own_accuracy() -> None:
    q = _rotation(6)
    own, stitched = _stitch(lambda z: 0.3 * z @ q)
    assert stitched == own and own > 0.8


def test_stitching_to_an_anisotropically_stretched_copy_loses_accuracy() -> None:
    scales = np.geomspace(0.01, 10, D)
    own, stitched = _stitch(lambda z: z * scales)
    assert stitched < own


def test_absolute_stitching_to_a_rotated_copy_fails_where_relative_succeeds() -> None:
    train, y_train = _blobs(200, 4)
    test, y_test = _blobs(100, 5)
    ds = zero_shot_stitching(train, y_train, test, test @ _rotation(6), y_test, num_classes=3)
    assert float(ds.accuracy_stitched) < float(ds.accuracy_a) - 0.2


def test_a_rotation_leaves_relative_similarity_at_1_but_not_absolute_cosine() -> None:
    e, _ = _blobs(50, 7)
    rotated = 2.0 * e @ _rotation(8)
    sim = compare_spaces(e, e[:10], rotated, rotated[:10])
    assert sim.dims == ("space", "measure")
    assert sim.sel(space="relative", measure="row_cosine") == pytest.approx(1, abs=1e-12)
    assert sim.sel(space="relative", measure="linear_cka") == pytest.approx(1, abs=1e-12)
    assert sim.sel(space="absolute", measure="row_cosine") < 0.9
    # linear CKA is itself invariant to rotations, so it agrees in both spaces
    assert sim.sel(space="absolute", measure="linear_cka") == pytest.approx(1, abs=1e-12)


def test_row_cosine_is_the_mean_of_the_rows_cosines() -> None:
    x, _ = _blobs(20, 9)
    y, _ = _blobs(20, 10)
    expected = np.mean([np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)) for u, v in zip(x, y)])
    assert row_cosine(x, y) == pytest.approx(expected, abs=1e-14)


def test_absolute_cosine_of_different_widths_is_nan() -> None:
    x, _ = _blobs(30, 11)
    wide = np.hstack([x, x])
    sim = compare_spaces(x, x[:5], wide, wide[:5])
    assert np.isnan(sim.sel(space="absolute", measure="row_cosine"))
    assert sim.sel(space="relative", measure="row_cosine") == pytest.approx(1, abs=1e-12)


def test_anchors_are_reproducible_by_seed() -> None:
    labels = np.arange(100) % 7
    first = choose_anchors(labels, 20, seed=3)
    assert np.array_equal(first, choose_anchors(torch.as_tensor(labels), 20, seed=3))
    assert not np.array_equal(first, choose_anchors(labels, 20, seed=4))
    assert len(np.unique(first)) == 20 and np.all(np.diff(first) > 0) and first.max() < 100


def test_class_balanced_anchors_spread_over_the_classes() -> None:
    labels = np.r_[np.zeros(80, int), np.ones(15, int), np.full(5, 2)]
    counts = np.bincount(labels[choose_anchors(labels, 12, seed=0, class_balanced=True)], minlength=3)
    assert counts.tolist() == [4, 4, 4]
    # a class too small for its share gives its examples, the rest go to the others
    counts = np.bincount(labels[choose_anchors(labels, 21, seed=0, class_balanced=True)], minlength=3)
    assert counts.tolist() == [8, 8, 5]


def test_too_many_anchors_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot choose"):
        choose_anchors(np.zeros(5), 6, seed=0)


def test_head_inputs_are_what_the_head_decodes(make_cnn, task) -> None:
    model = make_cnn(seed=0).train()
    latent = head_inputs(model, task.x_test, batch_size=16)
    assert model.training  # its mode restored
    model.eval()
    with torch.no_grad():
        logits = model.head(torch.as_tensor(latent, dtype=torch.float32))
        torch.testing.assert_close(logits, model(task.x_test))
    assert latent.shape == (len(task.x_test), model.head.in_features)
