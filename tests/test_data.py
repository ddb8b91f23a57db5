"""Tests for making dataset files (workflow.datasets) and loading them (workflow.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workflow.data import TaskData, load_data
from workflow.datasets import DATASETS, dataset_settings, make_data


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# --- making files -------------------------------------------------------------------


def test_make_data_writes_train_and_test_arrays_of_the_right_shapes_and_dtypes(task_path: Path) -> None:
    arrays = _arrays(task_path)
    assert set(arrays) == {"x_train", "y_train", "x_test", "y_test"}
    assert arrays["x_train"].shape == (240, 40) and arrays["x_train"].dtype == np.float32
    assert arrays["x_test"].shape == (60, 40) and arrays["x_test"].dtype == np.float32
    assert arrays["y_train"].shape == (240,) and arrays["y_train"].dtype == np.int64
    assert arrays["y_test"].shape == (60,) and arrays["y_test"].dtype == np.int64
    assert set(np.unique(arrays["y_train"])) <= set(range(10))


def test_make_data_writes_exactly_the_path_it_is_given(task_spec: dict, tmp_path: Path) -> None:
    out = make_data(task_spec, tmp_path / "task")  # no .npz appended
    assert out == tmp_path / "task"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]


def test_the_same_spec_makes_identical_files(task_spec: dict, task_path: Path, tmp_path: Path) -> None:
    again = make_data(task_spec, tmp_path / "again.npz")
    assert again.read_bytes() == task_path.read_bytes()


def test_another_generator_seed_makes_other_data(task_path: Path, tmp_path: Path) -> None:
    other = make_data({"name": "mnist1d", "args": {"num_samples": 300, "seed": 1}}, tmp_path / "other.npz")
    assert not np.array_equal(_arrays(other)["x_train"], _arrays(task_path)["x_train"])


def test_train_size_keeps_the_first_n_training_examples_and_all_test_examples(
    task_spec: dict, task_path: Path, tmp_path: Path
) -> None:
    small = _arrays(make_data({**task_spec, "train_size": 50}, tmp_path / "small.npz"))
    full = _arrays(task_path)
    np.testing.assert_array_equal(small["x_train"], full["x_train"][:50])
    np.testing.assert_array_equal(small["y_train"], full["y_train"][:50])
    np.testing.assert_array_equal(small["x_test"], full["x_test"])
    np.testing.assert_array_equal(small["y_test"], full["y_test"])


@pytest.mark.parametrize("val_size", [40, 0.25])
def test_a_validation_set_is_carved_from_the_training_split_disjoint_and_fixed(
    task_spec: dict, task_path: Path, tmp_path: Path, val_size: int | float
) -> None:
    full = _arrays(task_path)  # 240 training examples
    arrays = _arrays(make_data({**task_spec, "val_size": val_size}, tmp_path / "val.npz"))
    rows = arrays["val_rows"]
    assert len(rows) == 60 if val_size == 0.25 else len(rows) == 40
    assert np.all(np.diff(rows) > 0)  # stored, sorted, unique
    np.testing.assert_array_equal(arrays["x_val"], full["x_train"][rows])
    np.testing.assert_array_equal(arrays["y_val"], full["y_train"][rows])
    rest = np.setdiff1d(np.arange(240), rows)
    np.testing.assert_array_equal(arrays["x_train"], full["x_train"][rest])  # disjoint: the others, in order
    np.testing.assert_array_equal(arrays["x_test"], full["x_test"])
    again = make_data({**task_spec, "val_size": val_size}, tmp_path / "again.npz")
    assert again.read_bytes() == (tmp_path / "val.npz").read_bytes()  # fixed across runs
    other = _arrays(make_data({**task_spec, "val_size": val_size, "val_seed": 1}, tmp_path / "other.npz"))
    assert not np.array_equal(other["val_rows"], rows)


def test_a_validation_set_beside_train_size_changes_no_training_example(
    task_spec: dict, task_path: Path, tmp_path: Path
) -> None:
    plain = _arrays(make_data({**task_spec, "train_size": 100}, tmp_path / "plain.npz"))
    split = _arrays(make_data({**task_spec, "train_size": 100, "val_size": 50}, tmp_path / "split.npz"))
    np.testing.assert_array_equal(split["x_train"], plain["x_train"])  # drawn from the 140 unused examples
    assert split["val_rows"].min() >= 100
    with pytest.raises(ValueError, match="exceed the 240 training examples"):
        make_data({**task_spec, "train_size": 200, "val_size": 41}, tmp_path / "over.npz")
    with pytest.raises(ValueError, match="exceed the 240 training examples"):
        make_data({**task_spec, "val_size": 240}, tmp_path / "all.npz")


def test_load_data_holds_the_validation_set_and_a_subset_keeps_it(task_spec: dict, tmp_path: Path) -> None:
    data = load_data(make_data({**task_spec, "val_size": 30}, tmp_path / "val.npz"))
    assert data.x_val.shape == (30, 40) and [name for name, _, _ in data.splits()] == ["train", "val", "test"]
    subset = data.subset(np.arange(10))
    assert subset.x_val is data.x_val and len(subset.y_train) == 10
    plain = load_data(make_data(task_spec, tmp_path / "plain.npz"))
    assert plain.x_val is None and [name for name, _, _ in plain.splits()] == ["train", "test"]


def test_too_large_train_size_raises_and_writes_nothing(task_spec: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_size=241 exceeds the 240 training examples"):
        make_data({**task_spec, "train_size": 241}, tmp_path / "task.npz")
    assert list(tmp_path.iterdir()) == []


def test_unknown_generator_setting_raises_naming_the_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['num_sample'\].*allowed: .*'num_samples'.*'train_split'"):
        make_data({"name": "mnist1d", "args": {"num_sample": 300}}, tmp_path / "task.npz")
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_raises_key_error_listing_the_registered(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown dataset .cifar11.; allowed: cifar10, cifar100, digits, fashion_mnist, image_folder, mnist, mnist1d, svhn"):
        make_data({"name": "cifar11"}, tmp_path / "task.npz")


def test_dataset_settings_are_the_generator_defaults_without_the_download_url() -> None:
    settings = dataset_settings("mnist1d")
    assert "url" not in settings
    assert settings["num_samples"] == 5000 and settings["final_seq_length"] == 40
    assert "mnist1d" in DATASETS.names()


# --- loading ---------------------------------------------------------------------------


def test_load_data_gives_tensors_of_the_file(task_path: Path) -> None:
    data = load_data(task_path)
    arrays = _arrays(task_path)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.device == torch.device("cpu")
    for name, array in arrays.items():
        np.testing.assert_array_equal(getattr(data, name).numpy(), array)
    assert data.num_classes == 10
    assert data.in_length == 40


def test_subset_keeps_the_chosen_training_examples_and_the_whole_test_set(task: TaskData) -> None:
    indices = np.array([5, 0, 17])
    sub = task.subset(indices)
    assert torch.equal(sub.x_train, task.x_train[[5, 0, 17]])
    assert torch.equal(sub.y_train, task.y_train[[5, 0, 17]])
    assert sub.x_test is task.x_test and sub.y_test is task.y_test
    assert sub.num_classes == task.num_classes  # the test set still has every class


# --- the synthetic pretraining task ------------------------------------------------------


def test_synthetic_data_has_the_asked_shape_and_repeats_by_seed(tmp_path: Path) -> None:
    spec = {"name": "synthetic", "args": {"num_train": 50, "num_test": 20, "shape": [3, 8, 8], "num_classes": 4}}
    a = np.load(make_data(spec, tmp_path / "a.npz"))
    b = np.load(make_data(spec, tmp_path / "b.npz"))
    assert a["x_train"].shape == (50, 3, 8, 8) and a["x_test"].shape == (20, 3, 8, 8)
    assert a["x_train"].dtype == np.float32 and a["y_train"].dtype == np.int64
    assert set(np.unique(a["y_train"])) <= set(range(4))
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    other = np.load(make_data({**spec, "args": {**spec["args"], "seed": 1}}, tmp_path / "c.npz"))
    assert not np.array_equal(a["x_train"], other["x_train"])


def test_synthetic_classes_are_their_templates_shifted_and_scaled() -> None:
    """Without noise, each example is its class template, rolled and scaled: the best
    match over shifts and classes (by correlation) recovers every label."""
    from workflow.datasets import DATASETS

    arrays = DATASETS["synthetic"].make({"num_train": 200, "num_test": 10, "noise": 0.0, "shift": 3})
    x, y = arrays["x_train"].astype(np.float64), arrays["y_train"]
    # the templates, recovered from one unshifted-or-not example each, cover every roll
    found = []
    for xi in x:
        scores = []
        for c in range(10):
            template = x[y == c][0]
            rolls = [np.roll(template, d) for d in range(-6, 7)]
            scores.append(max(abs(np.corrcoef(xi, r)[0, 1]) for r in rolls))
        found.append(int(np.argmax(scores)))
    assert np.array_equal(found, y)


def test_synthetic_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic setting.*allowed: .*num_classes"):
        make_data({"name": "synthetic", "args": {"classes": 3}}, tmp_path / "x.npz")


def test_mnist1d_settings_read_from_its_source_are_those_the_package_returns() -> None:
    """Planning reads mnist1d's defaults from its source (importing it costs a second); they
    must be exactly what ``get_dataset_args`` returns, less the download url."""
    from mnist1d.data import get_dataset_args

    from workflow.datasets import _mnist1d_defaults_from_source

    assert _mnist1d_defaults_from_source() == get_dataset_args(as_dict=True)
    expected = get_dataset_args(as_dict=True)
    del expected["url"]
    assert dataset_settings("mnist1d") == expected


# --- scikit-learn's digits: a real image dataset with no download ---------------------------


def test_digits_are_the_real_8x8_images_split_by_seed_with_nothing_shared(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    path = make_data({"name": "digits", "args": {"normalize": False}}, tmp_path / "digits.npz")
    with np.load(path) as f:
        x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    assert x_train.shape == (1348, 1, 8, 8) and x_test.shape == (449, 1, 8, 8) and x_train.dtype == np.float32
    digits = load_digits()
    # every image is one of the package's, scaled to [0, 1], with its own label; none in both splits
    originals = {img.tobytes(): int(label) for img, label in zip((digits.images / 16.0).astype(np.float32),
                                                                   digits.target)}
    train_keys = [img[0].tobytes() for img in x_train]
    assert all(originals[k] == y for k, y in zip(train_keys, y_train))
    assert all(originals[img[0].tobytes()] == y for img, y in zip(x_test, y_test))
    assert not set(train_keys) & {img[0].tobytes() for img in x_test}
    assert sorted(np.unique(y_test)) == list(range(10))
    other = make_data({"name": "digits", "args": {"normalize": False, "seed": 1}}, tmp_path / "other.npz")
    with np.load(other) as f:
        assert not np.array_equal(f["y_test"], y_test)


def test_digits_are_normalised_with_the_training_statistics(tmp_path: Path) -> None:
    data = load_data(make_data({"name": "digits", "args": {}}, tmp_path / "digits.npz"), "cpu")
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-3
    assert data.num_classes == 10 and data.in_length == 64


def test_digits_settings_are_checked_and_counted_before_any_job() -> None:
    source = DATASETS["digits"]
    assert source.train_count({**source.settings(), "test_fraction": 0.2}) == 1797 - 359
    assert source.problems({**source.settings(), "test_fraction": 1.5}) == [
        "digits setting 'test_fraction' must lie strictly between 0 and 1, not 1.5"]


@pytest.mark.parametrize(("name", "args"), [
    ("mnist1d", {"num_samples": 200}),
    ("mnist1d", {"num_samples": 200, "final_seq_length": 30}),
    ("synthetic", {"num_train": 20, "num_test": 10, "shape": [3, 8, 8]}),
    ("digits", {}),
])
def test_the_input_size_the_config_reads_is_that_of_the_examples_made(name: str, args: dict) -> None:
    from workflow.datasets import input_size

    made = DATASETS[name].make(args)
    assert input_size({"name": name, "args": args}) == made["x_train"][0].size == made["x_test"][0].size
