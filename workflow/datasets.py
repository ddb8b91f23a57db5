"""Datasets: made (or later, downloaded) once into an ``.npz`` file of four arrays,
``x_train``, ``y_train``, ``x_test``, ``y_test``.

This module needs no torch, so that checking a configuration stays fast.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workflow.registry import Registry
from workflow.storage import atomic_path

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class DatasetSource:
    """How to make one kind of dataset, and the settings (``args``) it accepts."""

    make: Callable[[dict[str, Any]], Arrays]
    settings: Callable[[], dict[str, Any]]
    images: bool = False  # examples are (channels, height, width): image augmentations apply
    # The number of training examples the settings make, when it is known before making them.
    train_count: Callable[[dict[str, Any]], int] | None = None
    test_count: Callable[[dict[str, Any]], int] | None = None  # likewise, of test examples
    # What is wrong with the settings, as messages naming the setting (checked before any job).
    problems: Callable[[dict[str, Any]], list[str]] = lambda settings: []
    # The numbers in one example (its input's dimension), when the settings tell it.
    input_size: Callable[[dict[str, Any]], int | None] | None = None


DATASETS: Registry[DatasetSource] = Registry("dataset")


def _mnist1d_settings() -> dict[str, Any]:
    """The generator's settings and their defaults: those of ``mnist1d.data.get_dataset_args``."""
    settings = _mnist1d_defaults_from_source()
    if settings is None:
        from mnist1d.data import get_dataset_args

        settings = get_dataset_args(as_dict=True)
    settings = dict(settings)
    del settings["url"]  # only used to download the authors' copy; we generate
    return settings


@lru_cache(maxsize=1)
def _mnist1d_defaults_from_source() -> dict[str, Any] | None:
    """The literal dict ``get_dataset_args`` returns, read from mnist1d's source without
    importing it: importing mnist1d imports scipy and matplotlib (a second or more), and
    every Snakemake start checks a study's dataset settings. None when the source has
    another shape; then the caller imports the package."""
    spec = importlib.util.find_spec("mnist1d")  # a top-level package: found, not run
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data.py"
    try:
        tree = ast.parse(path.read_text())
        (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_dataset_args"]
        (assign,) = [n for n in function.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)]
        value = ast.literal_eval(assign.value)
    except (OSError, SyntaxError, ValueError):
        return None
    return value if isinstance(value, dict) and "url" in value else None


def _mnist1d(args: dict[str, Any]) -> Arrays:
    """MNIST-1D generated locally; ``args`` override the package's generator defaults."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    settings = _mnist1d_settings()
    unknown = set(args) - set(settings)
    if unknown:
        raise ValueError(
            f"unknown mnist1d generator setting(s) {sorted(unknown)}; allowed: {sorted(settings)}"
        )
    settings.update(args)
    d = make_dataset(ObjectView(settings))
    return {
        "x_train": d["x"].astype(np.float32),
        "y_train": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }


def _mnist1d_train_count(settings: dict[str, Any]) -> int:
    """As mnist1d's make_dataset splits: whole examples per class for its 10 templates."""
    return int(settings["num_samples"] // 10 * 10 * settings["train_split"])


def _mnist1d_test_count(settings: dict[str, Any]) -> int:
    """The examples make_dataset makes that its split leaves out of training."""
    return settings["num_samples"] // 10 * 10 - _mnist1d_train_count(settings)


DATASETS.register("mnist1d")(
    DatasetSource(_mnist1d, _mnist1d_settings, train_count=_mnist1d_train_count, test_count=_mnist1d_test_count,
                  input_size=lambda settings: settings["final_seq_length"])
)


def _synthetic_settings() -> dict[str, Any]:
    return {"num_classes": 10, "num_train": 4000, "num_test": 1000, "shape": [40], "smoothness": 3,
            "shift": 4, "noise": 0.5, "seed": 0}


def _synthetic(args: dict[str, Any]) -> Arrays:
    """A generic task with no natural data, for synthetic pretraining.

    Each class is a random smooth template of ``shape`` (white noise averaged over
    ``2 * smoothness + 1`` neighbours along the last axis, unit variance); an example
    is its class's template, shifted circularly along the last axis by up to
    ``shift`` places and scaled by a factor in [0.5, 1.5], plus Gaussian ``noise``.
    ``shape`` is that of the target task's examples ([40] for MNIST-1D, [3, 32, 32]
    for CIFAR), so a model pretrained on it fits the target.
    """
    settings = _synthetic_settings()
    unknown = set(args) - set(settings)
    if unknown:
        raise ValueError(f"unknown synthetic setting(s) {sorted(unknown)}; allowed: {sorted(settings)}")
    settings.update(args)
    rng = np.random.default_rng(settings["seed"])
    shape, k, width = tuple(settings["shape"]), settings["num_classes"], 2 * settings["smoothness"] + 1
    noise = rng.standard_normal((k, *shape))
    templates = sum(np.roll(noise, d, axis=-1) for d in range(-settings["smoothness"], settings["smoothness"] + 1)) / width
    templates /= templates.reshape(k, -1).std(axis=1).reshape(k, *[1] * len(shape))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, k, n)
        shifts = rng.integers(-settings["shift"], settings["shift"] + 1, n)
        positions = (np.arange(shape[-1])[None, :] - shifts[:, None]) % shape[-1]
        positions = positions.reshape(n, *[1] * (len(shape) - 1), shape[-1])
        x = np.take_along_axis(templates[labels], np.broadcast_to(positions, (n, *shape)), axis=-1)
        x = x * rng.uniform(0.5, 1.5, n).reshape(n, *[1] * len(shape))
        x = x + settings["noise"] * rng.standard_normal((n, *shape))
        return x.astype(np.float32), labels.astype(np.int64)

    x_train, y_train = draw(settings["num_train"])
    x_test, y_test = draw(settings["num_test"])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


DATASETS.register("synthetic")(
    DatasetSource(_synthetic, _synthetic_settings, train_count=lambda settings: settings["num_train"],
                  test_count=lambda settings: settings["num_test"],
                  input_size=lambda settings: math.prod(settings["shape"]))
)


# --- scikit-learn's handwritten digits: a real image dataset shipped inside the package -----

DIGITS_EXAMPLES = 1797  # sklearn.datasets.load_digits: 8x8 images, 10 classes, no download


def _digits_settings() -> dict[str, Any]:
    # test_fraction: the examples, drawn by seed, held out as the test split
    return {"test_fraction": 0.25, "seed": 0, "normalize": True}


def _digits_test_count(settings: dict[str, Any]) -> int:
    return round(DIGITS_EXAMPLES * settings["test_fraction"])


def _digits_problems(settings: dict[str, Any]) -> list[str]:
    fraction = settings["test_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        return [f"digits setting 'test_fraction' must lie strictly between 0 and 1, not {fraction!r}"]
    return []


def _digits(args: dict[str, Any]) -> Arrays:
    """scikit-learn's 8x8 handwritten digits (``load_digits``: 1797 images of 16 grey
    levels, read from the package itself), as (1, 8, 8) images scaled to [0, 1], split at
    random (``seed``) into training and ``test_fraction`` test examples, normalised with
    the training split's statistics."""
    settings = _settings("digits", _digits_settings(), args, ("normalize",))
    if problems := _digits_problems(settings):
        raise ValueError("; ".join(problems))
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:, None] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(settings["seed"]).permutation(len(y))
    test, train = np.split(order, [_digits_test_count(settings)])
    splits: Arrays = {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}
    return _normalised(splits) if settings["normalize"] else splits


DATASETS.register("digits")(
    DatasetSource(_digits, _digits_settings, images=True, problems=_digits_problems,
                  train_count=lambda settings: DIGITS_EXAMPLES - _digits_test_count(settings),
                  test_count=_digits_test_count, input_size=lambda settings: 64)  # 1 x 8 x 8
)


# --- image datasets read by torchvision's own loaders from a local folder -----------------

# The numbers in one example of each (channels x height x width).
TORCHVISION_INPUT_SIZES = {"cifar10": 3 * 32 * 32, "cifar100": 3 * 32 * 32, "mnist": 28 * 28,
                           "fashion_mnist": 28 * 28, "svhn": 3 * 32 * 32}

TORCHVISION_CLASSES: dict[str, str] = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "svhn": "SVHN",
}
"""Registered name -> class of ``torchvision.datasets`` that reads its on-disk layout."""


# The folder every study shares for downloaded datasets, unless a dataset's ``args.root``
# names another: ``$DLSCI_DATA/torchvision``, with ``data`` (ignored by git) by default.
DATA_FOLDER_VARIABLE = "DLSCI_DATA"


def shared_data_folder() -> Path:
    """Where downloaded datasets live, for every study: ``$DLSCI_DATA``, else ``./data``."""
    return Path(os.environ.get(DATA_FOLDER_VARIABLE) or "data")


def _torchvision_settings() -> dict[str, Any]:
    # root None: the shared data folder, read when the data are made (it is not part of
    # the data's identity: the same files anywhere make the same task)
    return {"root": None, "download": False, "normalize": True}


def torchvision_files(name: str, root: str | Path) -> list[Path]:
    """The files torchvision reads for dataset ``name`` under ``root`` (both splits).

    CIFAR: ``root/cifar-10-batches-py/data_batch_1`` ... (the extracted archive);
    MNIST family: ``root/<Class>/raw/train-images-idx3-ubyte`` ... (the extracted IDX files);
    SVHN: ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (the cropped digits).
    """
    from torchvision import datasets as tvd

    cls = getattr(tvd, TORCHVISION_CLASSES[name])
    root = Path(root)
    if issubclass(cls, tvd.SVHN):
        return [root / cls.split_list[split][1] for split in ("train", "test")]
    if issubclass(cls, tvd.CIFAR10):
        folder = root / cls.base_folder
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    else:  # MNIST and its subclasses: the IDX files, unzipped, in <root>/<Class>/raw
        folder = root / cls.__name__ / "raw"
        names = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    return [folder / n for n in names]


def _images(data: Any) -> np.ndarray:
    """torchvision's image array (N, H, W, C) or (N, H, W), uint8 -> float32 (N, C, H, W) in [0, 1]."""
    x = np.asarray(data)
    x = np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= np.float32(255)
    return x


def _settings(name: str, defaults: dict[str, Any], args: dict[str, Any], flags: tuple[str, ...]) -> dict[str, Any]:
    """``defaults`` updated with ``args``, refusing unknown settings and flags that are not booleans."""
    unknown = set(args) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
    settings = {**defaults, **args}
    for key in flags:
        if not isinstance(settings[key], bool):
            raise ValueError(f"{name} setting {key!r} must be true or false, not {settings[key]!r}")
    return settings


def _read_split(cls: Any, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images ((N, H, W) or (N, H, W, C), uint8) and labels of one split, read by torchvision."""
    from torchvision import datasets as tvd

    if issubclass(cls, tvd.SVHN):  # named splits; images stored channels first; labels 0-9 (torchvision maps 10 to 0)
        ds = cls(str(root), split="train" if train else "test", download=download)
        return np.asarray(ds.data).transpose(0, 2, 3, 1), np.asarray(ds.labels)
    ds = cls(str(root), train=train, download=download)
    return np.asarray(ds.data), np.asarray(ds.targets)


def _normalised(splits: Arrays) -> Arrays:
    """Both splits normalised per channel with the training split's mean and standard deviation."""
    x_train = splits["x_train"]
    mean = np.array([x_train[:, c].mean(dtype=np.float64) for c in range(x_train.shape[1])])
    std = np.array([x_train[:, c].std(dtype=np.float64) for c in range(x_train.shape[1])])
    std[std == 0] = 1.0  # a constant channel is only centred
    shape = (1, -1, 1, 1)
    for split in ("x_train", "x_test"):
        splits[split] -= mean.astype(np.float32).reshape(shape)
        splits[split] /= std.astype(np.float32).reshape(shape)
    return splits


def _torchvision(name: str, args: dict[str, Any]) -> Arrays:
    """Train and official test split of a torchvision dataset, channels first, normalised
    per channel with the training set's mean and standard deviation."""
    settings = _settings(name, _torchvision_settings(), args, ("download", "normalize"))
    root = Path(settings["root"]) if settings["root"] is not None else shared_data_folder() / "torchvision"

    from torchvision import datasets as tvd

    cls = getattr(tvd, TORCHVISION_CLASSES[name])
    if not settings["download"]:
        missing = [str(p) for p in torchvision_files(name, root) if not p.is_file()]
        legacy = root / cls.__name__ / "processed"  # old torchvision MNIST caches, still read
        if missing and not (issubclass(cls, tvd.MNIST) and (legacy / "training.pt").is_file()
                            and (legacy / "test.pt").is_file()):
            raise FileNotFoundError(
                f"{name}: dataset files not found under {root.resolve()} (torchvision's layout); "
                f"missing: {', '.join(missing)}. Put the dataset there (the shared data folder is "
                f"${DATA_FOLDER_VARIABLE}/torchvision, ./data/torchvision by default), point `args.root` at it, "
                f"or set `download: true` in its `args` to fetch it"
            )
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            images, labels = _read_split(cls, root, train, settings["download"])
        except RuntimeError as e:  # torchvision: files present but not matching their checksums
            raise RuntimeError(f"{name}: could not read the dataset under {root.resolve()}: {e}") from e
        splits[f"x_{split}"] = _images(images)
        splits[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    return _normalised(splits) if settings["normalize"] else splits


for _name in TORCHVISION_CLASSES:
    DATASETS.register(_name)(DatasetSource(partial(_torchvision, _name), _torchvision_settings, images=True,
                                           input_size=lambda settings, n=TORCHVISION_INPUT_SIZES[_name]: n))
del _name


# --- any folder of class folders of images -------------------------------------------------

def _image_folder_settings() -> dict[str, Any]:
    # root: a folder with train/ and test/, each with one folder of images per class
    # size: [height, width] every image is resized to (bilinear); null: they must share one
    return {"root": None, "size": None, "grayscale": False, "normalize": True}


def _load_image(path: str, size: list[int] | None, grayscale: bool) -> np.ndarray:
    """One image file as uint8 (H, W) or (H, W, 3), resized to ``size`` ([height, width]) if given."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L" if grayscale else "RGB")
        if size is not None:
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image)


def _image_folder_problems(settings: dict[str, Any]) -> list[str]:
    """What an image folder's settings lack or get wrong."""
    problems = []
    if settings["root"] is None:
        problems.append("image_folder needs args.root: a folder with train/ and test/, each holding one "
                        "folder of images per class")
    size = settings["size"]
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        problems.append(f"image_folder setting 'size' must be [height, width] in pixels, not {size!r}")
    return problems


def _image_folder(args: dict[str, Any]) -> Arrays:
    """Images in ``root/train/<class>/`` and ``root/test/<class>/``, read by torchvision's
    ``ImageFolder`` (classes: the train folder's subfolders, sorted), channels first,
    scaled to [0, 1] and normalised per channel with the training split's statistics."""
    settings = _settings("image_folder", _image_folder_settings(), args, ("grayscale", "normalize"))
    if problems := _image_folder_problems(settings):
        raise ValueError("; ".join(problems))
    size = settings["size"]
    from torchvision.datasets import ImageFolder

    root = Path(settings["root"])
    loader = partial(_load_image, size=size, grayscale=settings["grayscale"])
    splits: Arrays = {}
    classes: list[str] = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"image_folder: no folder {root.resolve() / split} (the layout is "
                                    "root/train/<class>/<image>, root/test/<class>/<image>)")
        folder = ImageFolder(str(root / split), loader=loader)
        if split == "train":
            classes = folder.classes
        elif folder.classes != classes:
            raise ValueError(f"image_folder: the test classes {folder.classes} are not the training classes {classes}")
        images = [loader(path) for path, _ in folder.samples]
        shapes = sorted({image.shape for image in images})
        if len(shapes) > 1:
            raise ValueError(f"image_folder: the {split} images have different sizes {shapes[:3]}...; set "
                             "args.size: [height, width] to resize them")
        splits[f"x_{split}"] = _images(np.stack(images))
        splits[f"y_{split}"] = np.asarray([label for _, label in folder.samples], dtype=np.int64)
    return _normalised(splits) if settings["normalize"] else splits


DATASETS.register("image_folder")(
    DatasetSource(_image_folder, _image_folder_settings, images=True, problems=_image_folder_problems,
                  input_size=lambda settings: (math.prod(settings["size"]) * (1 if settings["grayscale"] else 3)
                                               if settings["size"] is not None else None))
)


def train_examples(spec: dict[str, Any]) -> int | None:
    """How many training examples a dataset spec makes, or None when only making it tells
    (the files of a torchvision dataset) and it sets no ``train_size``."""
    source = DATASETS[spec["name"]]
    count = source.train_count({**source.settings(), **(spec.get("args") or {})}) if source.train_count else None
    if count is not None:
        count -= validation_count(spec.get("val_size"), count)
    sizes = [n for n in (count, spec.get("train_size")) if n is not None]
    return min(sizes) if sizes else None


def split_problems(spec: dict[str, Any]) -> list[str]:
    """What is wrong with a dataset spec's train and validation sizes, where the config
    determines the training split's size."""
    source = DATASETS[spec["name"]]
    if source.train_count is None or not spec.get("val_size"):
        return []
    total = source.train_count({**source.settings(), **(spec.get("args") or {})})
    val = validation_count(spec["val_size"], total)
    train = spec.get("train_size") or 1
    if val + train > total:
        return [f"val_size = {spec['val_size']} ({val} examples) and train_size = {spec.get('train_size')} exceed the "
                f"{total} examples of the training split; allowed: at most {total} together"]
    return []


def test_examples(spec: dict[str, Any]) -> int | None:
    """How many test examples a dataset spec makes, or None when only making it tells."""
    source = DATASETS[spec["name"]]
    return source.test_count({**source.settings(), **(spec.get("args") or {})}) if source.test_count else None


def input_size(spec: dict[str, Any]) -> int | None:
    """The numbers in one example of a dataset spec (its input's dimension), or None when
    only making the data tells (an image folder of mixed sizes)."""
    source = DATASETS[spec["name"]]
    settings = {**source.settings(), **(spec.get("args") or {})}
    return source.input_size(settings) if source.input_size and not source.problems(settings) else None


def dataset_problems(spec: dict[str, Any]) -> list[str]:
    """What is wrong with a dataset spec's settings, as far as they can be checked without the data."""
    source = DATASETS[spec["name"]]
    return source.problems({**source.settings(), **(spec.get("args") or {})})


def dataset_settings(name: str) -> dict[str, Any]:
    """The settings a dataset accepts in ``args``, with their defaults."""
    return DATASETS[name].settings()


def validation_count(val_size: int | float | None, n: int) -> int:
    """Validation examples of a training split of ``n``: a count, or a fraction of ``n``."""
    if not val_size:
        return 0
    return int(val_size) if isinstance(val_size, int) else round(val_size * n)


def validation_rows(n: int, train_size: int | None, val_size: int | float | None, seed: int) -> np.ndarray:
    """Which of a training split's ``n`` examples are set aside for validation (ascending).

    Drawn at random by ``seed`` from the examples training does not keep: with
    ``train_size``, from those after the first ``train_size`` (so a validation set changes
    no training example); without, from the whole split, training keeping the rest.
    """
    count = validation_count(val_size, n)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    pool = np.arange(n) if train_size is None else np.arange(train_size, n)
    if count > len(pool) or count >= n:
        raise ValueError(f"train_size={train_size} and val_size={val_size} exceed the {n} training examples")
    return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False)).astype(np.int64)


def make_data(spec: dict[str, Any], out: str | Path) -> Path:
    """Build the dataset described by ``spec`` and write it to ``out`` (an ``.npz``).

    ``spec``: ``name`` (a registered dataset), ``args`` (its settings), ``train_size``
    (keep only the first N training examples; ``None`` keeps all) and ``val_size`` (a
    count or a fraction of the training split set aside for validation, drawn by
    ``val_seed``; :func:`validation_rows`). The validation examples are stored as
    ``x_val``, ``y_val`` and their rows in the training split, ``val_rows``; no training
    example is one of them.
    """
    arrays = DATASETS[spec["name"]].make(dict(spec.get("args") or {}))
    n = spec.get("train_size")
    total = len(arrays["y_train"])
    if n is not None and n > total:
        raise ValueError(f"train_size={n} exceeds the {total} training examples")
    val = validation_rows(total, n, spec.get("val_size"), spec.get("val_seed", 0))
    if val.size:
        arrays["x_val"], arrays["y_val"], arrays["val_rows"] = arrays["x_train"][val], arrays["y_train"][val], val
        rest = np.setdiff1d(np.arange(total), val)
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][rest], arrays["y_train"][rest]
    if n is not None:
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:n], arrays["y_train"][:n]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz"
            np.savez(f, **arrays)
    return Path(out)
