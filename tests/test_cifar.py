"""Image datasets read by torchvision from a local folder, and the CIFAR ResNet.

Nothing is downloaded: each test writes a tiny dataset in torchvision's real on-disk
format (the pickled batches of ``cifar-10-batches-py``, the raw IDX files of MNIST,
SVHN's MATLAB files, PNG and JPEG files in class folders) and lets torchvision's own
loading code read it.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from workflow.config import SCHEMA, ConfigError, load_config
from workflow.data import load_data
from workflow.datasets import DATASETS, dataset_settings, make_data, torchvision_files
from workflow.models import MODELS, build_model

IMAGE_DATASETS = ["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn"]


# --- tiny datasets in torchvision's on-disk formats -----------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(obj: dict[str, Any], path: Path) -> None:
    # The real batches are Python 2 pickles; torchvision reads them with
    # pickle.load(f, encoding="latin1"), under which their byte-string keys become
    # str keys ("data", "labels"). So the keys here are str: bytes keys (b"data")
    # would not be found by torchvision's ``entry["data"]``.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, kind: str = "cifar10", per_batch: int = 4,
                n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 (5 training batches) or CIFAR-100 (one ``train`` file) under
    ``root``, in torchvision's layout; returns the raw uint8 rows and labels.

    torchvision checks every file against the md5 sum of the real dataset, kept as
    class attributes (``train_list``, ``test_list``, ``meta``). The tiny files cannot
    have those sums, so the test sets the attributes to the sums of the files it
    wrote (monkeypatch restores them afterwards): torchvision's real integrity check
    still runs, on these files, and its real loader reads the pickles.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    rng = np.random.default_rng(seed)
    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"

    def rows(n: int) -> np.ndarray:
        # channel-major rows (1024 red, 1024 green, 1024 blue), as in the real files,
        # with different brightness per channel so normalisation has work to do
        x = rng.integers(0, 256, size=(n, 3, 1024))
        x = x * np.array([0.3, 0.6, 1.0])[None, :, None] + np.array([100, 50, 0])[None, :, None]
        return x.astype(np.uint8).reshape(n, 3072)

    train_names = [f for f, _ in cls.train_list]
    per_file = per_batch if kind == "cifar10" else 5 * per_batch
    train = [(rows(per_file), rng.integers(0, classes, per_file).tolist()) for _ in train_names]
    test = (rows(n_test), rng.integers(0, classes, n_test).tolist())
    for name, (x, y) in zip(train_names, train):
        _pickle({"batch_label": name, "data": x, label_key: y, "filenames": [f"{i}.png" for i in range(len(y))]},
                folder / name)
    _pickle({"batch_label": "testing batch", "data": test[0], label_key: test[1]}, folder / cls.test_list[0][0])
    names = [f"class_{i}" for i in range(classes)]
    _pickle({cls.meta["key"]: names, "num_cases_per_batch": per_file}, folder / cls.meta["filename"])

    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f in train_names])
    monkeypatch.setattr(cls, "test_list", [[cls.test_list[0][0], _md5(folder / cls.test_list[0][0])]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": test[0],
        "y_test": np.array(test[1]),
    }


def _idx(array: np.ndarray, path: Path) -> None:
    """An IDX file: magic (0, 0, type 0x08 = uint8, number of dims), big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, kind: str = "mnist", n_train: int = 12, n_test: int = 5,
                seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny MNIST or Fashion-MNIST as the unzipped IDX files torchvision reads from
    ``root/<Class>/raw`` (it checks only that they exist)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    files = dict(zip(["x_train", "y_train", "x_test", "y_test"], torchvision_files(kind, root)))
    files["x_train"].parent.mkdir(parents=True)
    for key, path in files.items():
        _idx(arrays[key], path)
    return arrays


def _normalised(raw: np.ndarray, like_train: np.ndarray) -> np.ndarray:
    """``raw`` (N, C, H, W) uint8 scaled to [0, 1] and normalised with the statistics of ``like_train``."""
    x, t = raw.astype(np.float64) / 255, like_train.astype(np.float64) / 255
    mean, std = t.mean(axis=(0, 2, 3), keepdims=True), t.std(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / std


# --- datasets ---------------------------------------------------------------------------


def test_the_image_datasets_are_registered_with_their_settings() -> None:
    for name in IMAGE_DATASETS:
        assert name in DATASETS
        assert dataset_settings(name) == {"root": None, "download": False, "normalize": True}


def test_cifar10_is_read_by_torchvision_channels_first_and_normalised_with_the_training_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_cifar(tmp_path / "tv", monkeypatch)
    out = make_data({"name": "cifar10", "args": {"root": str(tmp_path / "tv")}}, tmp_path / "task.npz")
    with np.load(out) as f:
        arrays = {k: f[k] for k in f.files}
    assert sorted(arrays) == ["x_test", "x_train", "y_test", "y_train"]
    assert arrays["x_train"].shape == (20, 3, 32, 32) and arrays["x_test"].shape == (6, 3, 32, 32)
    assert arrays["x_train"].dtype == np.float32 and arrays["x_test"].dtype == np.float32
    assert arrays["y_train"].dtype == np.int64 and arrays["y_test"].dtype == np.int64
    np.testing.assert_array_equal(arrays["y_train"], raw["y_train"])
    np.testing.assert_array_equal(arrays["y_test"], raw["y_test"])
    # training set: zero mean, unit std per channel
    np.testing.assert_allclose(arrays["x_train"].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(arrays["x_train"].std(axis=(0, 2, 3)), 1, atol=1e-5)
    # pixel for pixel: rows are channel-major, so (N, 3072) -> (N, 3, 32, 32); the test
    # split is normalised with the statistics of the training split, not its own
    train, test = raw["x_train"].reshape(-1, 3, 32, 32), raw["x_test"].reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(arrays["x_train"], _normalised(train, train), atol=1e-5)
    np.testing.assert_allclose(arrays["x_test"], _normalised(test, train), atol=1e-5)
    assert np.abs(arrays["x_test"].mean(axis=(0, 2, 3))).max() > 1e-3  # not its own statistics


def test_without_a_root_every_study_reads_the_shared_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_cifar(tmp_path / "shared" / "torchvision", monkeypatch)
    monkeypatch.setenv("DLSCI_DATA", str(tmp_path / "shared"))
    with np.load(make_data({"name": "cifar10", "args": {}}, tmp_path / "task.npz")) as f:
        np.testing.assert_array_equal(f["y_train"], raw["y_train"])
    monkeypatch.delenv("DLSCI_DATA")
    monkeypatch.chdir(tmp_path)  # unset: ./data, which git ignores
    with pytest.raises(FileNotFoundError, match="DLSCI_DATA"):
        make_data({"name": "cifar10", "args": {}}, tmp_path / "task2.npz")
    assert "data/" in (Path(__file__).parent.parent / ".gitignore").read_text().split()


def test_cifar10_without_normalisation_is_scaled_to_the_unit_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_cifar(tmp_path, monkeypatch)
    out = make_data({"name": "cifar10", "args": {"root": str(tmp_path), "normalize": False}, "train_size": 7},
                    tmp_path / "task.npz")
    with np.load(out) as f:
        np.testing.assert_allclose(f["x_train"], raw["x_train"][:7].reshape(-1, 3, 32, 32) / 255, atol=1e-7)
        assert f["x_train"].min() >= 0 and f["x_train"].max() <= 1


def test_cifar100_uses_the_same_code_and_its_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_cifar(tmp_path, monkeypatch, kind="cifar100")
    data = load_data(make_data({"name": "cifar100", "args": {"root": str(tmp_path)}}, tmp_path / "task.npz"))
    assert data.x_train.shape == (20, 3, 32, 32) and data.in_length == 3 * 32 * 32
    np.testing.assert_array_equal(data.y_test.numpy(), raw["y_test"])


def test_corrupted_cifar_files_are_refused_by_torchvisions_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RuntimeError, match="corrupted"):
        make_data({"name": "cifar10", "args": {"root": str(tmp_path)}}, tmp_path / "task.npz")


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_missing_files_without_download_say_where_they_were_expected(tmp_path: Path, name: str) -> None:
    root = tmp_path / "nothing here"
    with pytest.raises(FileNotFoundError) as info:
        make_data({"name": name, "args": {"root": str(root)}}, tmp_path / "task.npz")
    message = str(info.value)
    assert str(root.resolve()) in message and "download: true" in message
    assert str(torchvision_files(name, root)[0]) in message
    assert not (tmp_path / "task.npz").exists() and not root.exists()  # nothing fetched, nothing made


def test_unknown_or_mistyped_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown cifar10 setting\(s\) \['rot'\]"):
        make_data({"name": "cifar10", "args": {"rot": "x"}}, tmp_path / "task.npz")
    with pytest.raises(ValueError, match="'download' must be true or false"):
        make_data({"name": "cifar10", "args": {"download": "no"}}, tmp_path / "task.npz")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_idx_files_are_read_by_torchvision_as_one_channel_images(tmp_path: Path, name: str) -> None:
    raw = write_mnist(tmp_path, kind=name)
    assert torchvision_files(name, tmp_path)[0].parent.parent.name == ("MNIST" if name == "mnist" else "FashionMNIST")
    data = load_data(make_data({"name": name, "args": {"root": str(tmp_path)}}, tmp_path / "task.npz"))
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.in_length == 28 * 28
    np.testing.assert_array_equal(data.y_train.numpy(), raw["y_train"])
    x_train = data.x_train.numpy()
    np.testing.assert_allclose(x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_allclose(
        data.x_test.numpy(), _normalised(raw["x_test"][:, None], raw["x_train"][:, None]), atol=1e-5
    )


def write_svhn(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 9, n_test: int = 4,
               seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny SVHN in its real format: ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB),
    ``X`` of shape (32, 32, 3, N) uint8 and ``y`` (N, 1) with the digit 0 labelled 10; the
    md5 sums torchvision checks are set to those of these files (as for CIFAR)."""
    import scipy.io
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    raw = {}
    split_list = copy.deepcopy(SVHN.split_list)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n)).astype(np.uint8)
        digits = rng.integers(0, 10, n)
        path = root / split_list[split][1]
        scipy.io.savemat(path, {"X": x, "y": np.where(digits == 0, 10, digits)[:, None].astype(np.uint8)})
        split_list[split][2] = _md5(path)
        raw[f"x_{split}"], raw[f"y_{split}"] = x.transpose(3, 2, 0, 1), digits  # (N, C, H, W)
    monkeypatch.setattr(SVHN, "split_list", split_list)
    return raw


def test_svhn_is_read_by_torchvision_with_the_digit_zero_as_class_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_svhn(tmp_path, monkeypatch)
    assert [p.name for p in torchvision_files("svhn", tmp_path)] == ["train_32x32.mat", "test_32x32.mat"]
    out = make_data({"name": "svhn", "args": {"root": str(tmp_path), "normalize": False}}, tmp_path / "task.npz")
    with np.load(out) as f:
        assert f["x_train"].shape == (9, 3, 32, 32) and f["x_test"].shape == (4, 3, 32, 32)
        np.testing.assert_array_equal(f["y_train"], raw["y_train"])  # 10 in the file is the digit 0
        np.testing.assert_allclose(f["x_train"], raw["x_train"] / 255, atol=1e-7)
    normalised = load_data(make_data({"name": "svhn", "args": {"root": str(tmp_path)}}, tmp_path / "n.npz"))
    np.testing.assert_allclose(normalised.x_train.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)


def write_image_folder(root: Path, classes: dict[str, int], *, size: tuple[int, int] = (6, 5), seed: int = 0,
                       split: str = "train", suffix: str = ".png") -> dict[str, np.ndarray]:
    """``root/<split>/<class>/<i><suffix>``: random RGB images in real PNG or JPEG files, written by PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(sorted(classes)):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(classes[name]):
            pixels = rng.integers(0, 256, size=(*size, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
            images.append(pixels)
            labels.append(label)
    return {"x": np.stack(images), "y": np.array(labels)}


def test_an_image_folder_is_read_class_by_class_from_its_train_and_test_folders(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path, {"cat": 3, "dog": 2, "emu": 4})
    test = write_image_folder(tmp_path, {"cat": 1, "dog": 2, "emu": 1}, split="test", seed=1)
    out = make_data({"name": "image_folder", "args": {"root": str(tmp_path), "normalize": False}}, tmp_path / "t.npz")
    with np.load(out) as f:
        assert f["x_train"].shape == (9, 3, 6, 5) and f["x_test"].shape == (4, 3, 6, 5)
        np.testing.assert_array_equal(f["y_train"], train["y"])  # classes: the folders, sorted
        np.testing.assert_array_equal(f["y_test"], test["y"])
        np.testing.assert_allclose(f["x_train"], train["x"].transpose(0, 3, 1, 2) / 255, atol=1e-7)  # lossless PNG
    data = load_data(make_data({"name": "image_folder", "args": {"root": str(tmp_path)}}, tmp_path / "n.npz"))
    assert data.num_classes == 3 and data.in_length == 3 * 6 * 5
    np.testing.assert_allclose(data.x_train.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_an_image_folder_resizes_and_converts_to_grayscale_when_asked(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"a": 2, "b": 2}, size=(8, 8), suffix=".jpg")
    write_image_folder(tmp_path, {"a": 1, "b": 1}, size=(12, 10), split="test", suffix=".jpg")
    write_image_folder(tmp_path, {"b": 1}, size=(9, 9), split="test", suffix=".jpg", seed=2)  # b/ now mixes sizes
    args = {"root": str(tmp_path)}
    with pytest.raises(ValueError, match=r"different sizes .* set args.size"):
        make_data({"name": "image_folder", "args": args}, tmp_path / "t.npz")
    out = make_data({"name": "image_folder", "args": {**args, "size": [4, 6], "grayscale": True}}, tmp_path / "t.npz")
    with np.load(out) as f:
        assert f["x_train"].shape == (4, 1, 4, 6) and f["x_test"].shape == (2, 1, 4, 6)


def test_an_image_folder_refuses_a_wrong_layout_with_what_it_expects(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_folder needs args.root"):
        make_data({"name": "image_folder", "args": {}}, tmp_path / "t.npz")
    write_image_folder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(FileNotFoundError, match="root/train/<class>/<image>, root/test/<class>/<image>"):
        make_data({"name": "image_folder", "args": {"root": str(tmp_path)}}, tmp_path / "t.npz")
    write_image_folder(tmp_path, {"a": 1, "c": 1}, split="test")
    with pytest.raises(ValueError, match=r"test classes \['a', 'c'\] are not the training classes \['a', 'b'\]"):
        make_data({"name": "image_folder", "args": {"root": str(tmp_path)}}, tmp_path / "t.npz")
    with pytest.raises(ValueError, match=r"'size' must be \[height, width\]"):
        make_data({"name": "image_folder", "args": {"root": str(tmp_path), "size": 32}}, tmp_path / "t.npz")


# --- the CIFAR ResNet ---------------------------------------------------------------------


def test_resnet20_maps_cifar_images_to_logits_and_names_its_layers() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, 3 * 32 * 32, 10)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert model.layers == ["stem", "stage1", "stage2", "stage3", "head"]
    modules = dict(model.named_modules())
    assert all(name in modules for name in model.layers)
    assert model.head is modules["head"] and isinstance(model.head, torch.nn.Linear)
    assert model.head.in_features == 64
    # 3 stages of 3 basic blocks (2 convs each) + stem + head = 20 weighted layers,
    # parameter-free shortcuts: the 0.27M parameters of the paper
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 20 and all(len(getattr(model, f"stage{i}")) == 3 for i in (1, 2, 3))
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6


def test_resnet20_stage_outputs_have_the_widths_and_resolutions_of_the_paper() -> None:
    from workflow.analysis.activations import record_activations

    model = build_model({"name": "resnet20", "width": 8}, 3 * 32 * 32, 10)
    acts = record_activations(model, torch.randn(3, 3, 32, 32))
    assert {k: v.shape for k, v in acts.items()} == {
        "stem": (3, 8, 32, 32), "stage1": (3, 8, 32, 32), "stage2": (3, 16, 16, 16),
        "stage3": (3, 32, 8, 8), "head": (3, 10),
    }


def test_resnet_depth_must_be_6n_plus_2() -> None:
    for depth in (21, 2, 0):
        with pytest.raises(ValueError, match="6n \\+ 2"):
            build_model({"name": "resnet20", "depth": depth}, 3072, 10)
    model = build_model({"name": "resnet20", "depth": 32}, 3072, 10)
    assert all(len(getattr(model, f"stage{i}")) == 5 for i in (1, 2, 3))


def test_resnet20_takes_one_channel_28x28_images_and_flat_input() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet20", "channels_in": 1}, 28 * 28, 10).eval()
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    torch.testing.assert_close(model(x.flatten(1)), model(x))  # flat input is reshaped, not misread
    cifar = build_model({"name": "resnet20"}, 3072, 100).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(cifar(x.flatten(1)), cifar(x))
    with pytest.raises(ValueError, match="channels_in"):
        build_model({"name": "resnet20"}, 28 * 28, 10)  # 784 values are not 3-channel images


def test_resnet20_trains_on_a_tiny_cifar_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, monkeypatch)
    data = load_data(make_data({"name": "cifar10", "args": {"root": str(tmp_path)}}, tmp_path / "task.npz"))
    torch.manual_seed(0)
    model = build_model({"name": "resnet20", "width": 4}, data.in_length, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # it can fit 20 images


# --- configuration ------------------------------------------------------------------------


def test_the_schema_names_the_new_datasets_and_model() -> None:
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert set(IMAGE_DATASETS) <= set(schema["$defs"]["dataset"]["properties"]["name"]["enum"])
    assert "resnet20" in schema["properties"]["model"]["properties"]["name"]["enum"]
    assert "resnet20" in MODELS


def test_a_cifar_study_with_resnet20_loads(default_config: dict[str, Any], tmp_path: Path) -> None:
    config = copy.deepcopy(default_config)
    config["data"]["sources"] = {"cifar10": {"name": "cifar10", "args": {"root": str(tmp_path)}}}
    config["model"] = {"name": "resnet20", "width": 16}
    loaded = load_config(config)
    assert loaded["model"] == {"name": "resnet20", "width": 16}
    assert loaded["data"]["sources"]["cifar10"]["args"] == {"root": str(tmp_path)}

    config["model"] = {"name": "resnet20", "channels": 8}
    with pytest.raises(ConfigError, match="'model.channels' is not a setting of model.name = 'resnet20'"):
        load_config(config)
    config["model"] = {"name": "resnet20"}
    config["data"]["sources"]["cifar10"]["args"] = {"root": str(tmp_path), "downlaod": True}
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['downlaod'\] under 'data.sources.cifar10.args'"):
        load_config(config)
