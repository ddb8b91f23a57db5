"""Tests for batch augmentation: each output is a lawful transform of its input,
draws are reproducible, and a wrong use is refused before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workflow.augment import AUGMENTATIONS, CROP_PAD, compose, random_crop, random_flip
from workflow.data import TaskData
from workflow.registry import UnknownNameError
from workflow.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _images(n: int = 64, c: int = 3, h: int = 8, w: int = 6) -> torch.Tensor:
    # every pixel distinct, so a window or a mirror is identified by its values
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w) + 1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_each_crop_is_a_window_of_the_zero_padded_image_and_every_offset_occurs() -> None:
    x = _images(n=400)
    out = random_crop(x, _gen())
    h, w = x.shape[-2:]
    padded = nn.functional.pad(x, (CROP_PAD,) * 4)
    offsets = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * CROP_PAD + 1)
            for dx in range(2 * CROP_PAD + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(found) == 1, i
        offsets |= set(found)
    assert len(offsets) == (2 * CROP_PAD + 1) ** 2  # 400 draws cover all 81 offsets


def test_flip_mirrors_about_half_the_images_left_right() -> None:
    x = _images(n=1000)
    out = random_flip(x, _gen())
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())
    assert 430 < int(mirrored.sum()) < 570  # Binomial(1000, 1/2): 4.4 standard deviations


def test_augmentation_is_reproducible_and_leaves_its_input_alone() -> None:
    x = _images()
    before = x.clone()
    augment = compose(["crop", "flip"])
    a, b = augment(x, _gen(3)), augment(x, _gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, _gen(4)))
    assert torch.equal(x, before)


def test_compose_applies_in_order_and_none_for_no_augmentation() -> None:
    x = _images()
    assert compose([]) is None
    g1, g2 = _gen(1), _gen(1)
    assert torch.equal(compose(["crop", "flip"])(x, g1), random_flip(random_crop(x, g2), g2))


def test_unknown_names_and_non_image_batches_are_refused() -> None:
    with pytest.raises(UnknownNameError, match="allowed: crop, flip"):
        compose(["rotate"])
    with pytest.raises(ValueError, match="allowed: crop, flip"):
        TrainConfig(epochs=1, batch_size=10, lr=0.1, augment=("rotate",))
    for name in AUGMENTATIONS:
        with pytest.raises(ValueError, match=r"needs image batches .* got shape \(4, 40\)"):
            AUGMENTATIONS[name](torch.zeros(4, 40), _gen())


def test_training_on_non_images_with_augmentation_fails_before_the_first_step(task, make_cnn) -> None:
    model = make_cnn(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=50, lr=0.01, augment=("flip",))
    with pytest.raises(ValueError, match="needs image batches"):
        train(model, task, cfg, seed=0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _image_task(n: int = 64) -> TaskData:
    g = _gen(0)
    x = torch.randn(n + 32, 3, 8, 8, generator=g)
    y = (x[:, 0, :, :4].mean((1, 2)) > x[:, 0, :, 4:].mean((1, 2))).long()  # left brighter than right
    return TaskData(x[:n], y[:n], x[n:], y[n:])


def _small_convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 2))


def test_augmented_training_is_seeded_and_differs_from_plain_training() -> None:
    data = _image_task()
    plain = TrainConfig(epochs=2, batch_size=16, lr=0.01)
    augmented = TrainConfig(epochs=2, batch_size=16, lr=0.01, augment=("crop", "flip"))
    runs = []
    for cfg in (augmented, augmented, plain):
        model = _small_convnet(0)
        train(model, data, cfg, seed=0, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
