"""Tests for workflow.plots: every figure renders to PNG and PDF from synthetic summaries."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
from matplotlib import colors
import numpy as np
import pytest
import xarray as xr

from workflow import plots, storage
from workflow.summaries import best_runs

# String coordinates (method, layer names) are stored as a Zarr dtype without a v3
# spec yet; zarr warns about that on every write, which is noise here.
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

PREVIEW_DIR = Path("/tmp/dlsci_plot_previews")


def _curves(
    rng: np.random.Generator, shape: tuple[int, ...], n_epochs: int
) -> dict[str, np.ndarray]:
    """Decreasing losses and rising accuracies with noise, last axis = epoch."""
    epoch = np.arange(n_epochs)
    progress = 1.0 - np.exp(-epoch / 3.0)
    noise = lambda: 0.03 * rng.standard_normal(shape + (n_epochs,))  # noqa: E731
    acc = np.clip(0.1 + 0.8 * progress + noise(), 0.0, 1.0)
    return {
        "train_loss": 2.3 * (1 - progress) + 0.1 + np.abs(noise()),
        "train_acc": acc,
        "test_loss": 2.3 * (1 - 0.9 * progress) + 0.2 + np.abs(noise()),
        "test_acc": np.clip(acc - 0.05, 0.0, 1.0),
    }


def _metrics_dataset(coords: dict[str, object], n_epochs: int, seed: int = 0) -> xr.Dataset:
    """A tidy summary over ``coords`` + epoch; the second seed stops early (NaN tail)."""
    rng = np.random.default_rng(seed)
    dims = (*coords, "epoch")
    shape = tuple(len(v) for v in coords.values())  # type: ignore[arg-type]
    data = _curves(rng, shape, n_epochs)
    seed_axis = list(coords).index("seed")
    for values in data.values():
        if shape[seed_axis] > 1:
            idx = [slice(None)] * len(dims)
            idx[seed_axis], idx[-1] = 1, slice(n_epochs - 2, None)
            values[tuple(idx)] = np.nan
    return xr.Dataset(
        {name: (dims, values) for name, values in data.items()},
        coords={**coords, "epoch": np.arange(n_epochs)},
    )


SOURCES = ["mnist1d", "synthetic"]


def _pretrain(n_seeds: int) -> xr.Dataset:
    return _metrics_dataset({"source": SOURCES, "seed": np.arange(n_seeds)}, n_epochs=8)


def _only_real_combinations(ds: xr.Dataset) -> xr.Dataset:
    """NaN where no run exists, as in a collected summary: scratch only under "none", the rest only under sources."""
    return ds.where((ds["source"] == "none") == (ds["finetuning"] == "scratch"))


def _finetune(n_seeds: int) -> xr.Dataset:
    ds = _metrics_dataset(
        {"source": ["mnist1d", "none", "synthetic"], "finetuning": ["full", "linear_probe", "scratch"],
         "seed": np.arange(n_seeds)},
        n_epochs=6,
        seed=1,
    )
    # Methods that differ visibly, so the colours can be checked by eye.
    offset = xr.DataArray([0.08, -0.12, 0.0], dims="finetuning", coords={"finetuning": ds["finetuning"]})
    ds["train_acc"] = (ds["train_acc"] + offset).clip(0.0, 1.0)
    ds["test_acc"] = (ds["test_acc"] + offset).clip(0.0, 1.0)
    ds["train_loss"] = ds["train_loss"] * (1 - offset)
    ds["test_loss"] = ds["test_loss"] * (1 - offset)
    ds["test_acc"] = ds["test_acc"] - 0.05 * (ds["source"] == "synthetic")  # a weaker source
    # A hole in the middle of one run (a missing evaluation).
    ds["test_acc"][0, 0, 0, 2] = np.nan
    # The weights travel ~ log(epoch) ("Train longer, generalize better"); the linear
    # probe moves only its head. Epoch 0 is the start: distance 0.
    speed = xr.DataArray([3.0, 0.4, 6.0], dims="finetuning", coords={"finetuning": ds["finetuning"]})
    further = xr.DataArray([1.0, 1.0, 1.3], dims="source", coords={"source": ds["source"]})
    distance = speed * further * np.log1p(ds["epoch"]) * (1 + 0.1 * ds["seed"])
    ds["weight_distance"] = distance.where(ds["train_loss"].notnull()).transpose(*ds["train_loss"].dims)
    ds["relative_weight_distance"] = ds["weight_distance"] / 30.0
    return _only_real_combinations(ds)


PRUNING_METHODS = [
    "el2n-hard", "el2n-easy", "grand-hard", "forgetting-easy", "prototypes-hard", "random", "rs2",
]
FRACTIONS = np.array([0.1, 0.25, 0.5, 0.75])


def _less_data(fractions: np.ndarray) -> xr.DataArray:
    """Less data -> more error: gives the log-log plot a slope."""
    return xr.DataArray(0.3 * (1 - fractions), coords={"fraction": fractions})


def _data_pruning(n_seeds: int) -> xr.Dataset:
    ds = _metrics_dataset(
        {"selection": PRUNING_METHODS, "fraction": FRACTIONS, "seed": np.arange(n_seeds)},
        n_epochs=12,
        seed=2,
    )
    method_offset = xr.DataArray(
        np.linspace(-0.04, 0.04, len(PRUNING_METHODS)), coords={"selection": PRUNING_METHODS}
    )
    ds["test_acc"] = (ds["test_acc"] - _less_data(FRACTIONS) + method_offset).clip(0.0, 1.0)
    # A combination that was not run.
    ds["test_acc"].loc[{"selection": "rs2", "fraction": 0.1}] = np.nan
    return ds


def _optimal_alpha(fractions: np.ndarray) -> xr.DataArray:
    """As "Distilling the Knowledge in Data Pruning" finds: less data, larger best alpha."""
    return xr.DataArray(np.interp(fractions, [0.1, 0.5, 0.75], [0.9, 0.5, 0.25]),
                        coords={"fraction": fractions})


def _distill(n_seeds: int) -> xr.Dataset:
    alphas = np.array([0.25, 0.5, 0.9])
    ds = _metrics_dataset(
        {
            "selection": PRUNING_METHODS[:5] + ["random"],
            "fraction": FRACTIONS,
            "teacher": ["trained", "untrained"],
            "temperature": np.array([2.0, 4.0]),
            "alpha": alphas,
            "seed": np.arange(n_seeds),
        },
        n_epochs=12,
        seed=5,
    )
    alpha = xr.DataArray(alphas, coords={"alpha": alphas})
    # KD helps, most at the best alpha; the untrained teacher helps less; T=4 a bit better.
    gain = (
        0.04 - 0.6 * (alpha - _optimal_alpha(FRACTIONS)) ** 2
        + xr.DataArray([0.0, -0.02], coords={"teacher": ds["teacher"]})
        + xr.DataArray([0.0, 0.005], coords={"temperature": ds["temperature"]})
    )
    ds["test_acc"] = (ds["test_acc"] - _less_data(FRACTIONS) + gain).clip(0.0, 1.0)
    # Combinations not run: the untrained teacher only at T=4, and not at all for one method.
    ds["test_acc"].loc[{"teacher": "untrained", "temperature": 2.0}] = np.nan
    ds["test_acc"].loc[{"teacher": "untrained", "selection": "prototypes-hard"}] = np.nan
    # One (method, fraction) with no KD run at all.
    ds["test_acc"].loc[{"selection": "grand-hard", "fraction": 0.75}] = np.nan
    return ds


SCORE_METHODS = ["el2n", "grand", "forgetting", "prototypes", "random"]
N_EXAMPLES = 400


def _scores(n_seeds: int) -> xr.Dataset:
    """Scores of 400 examples, correlated through a hidden difficulty; 4, 4, 2, 1, 1 repetitions.

    ``n_seeds`` is ignored: repetitions are the ``init`` dim.
    """
    rng = np.random.default_rng(6)
    n_init = 4
    difficulty = rng.standard_normal(N_EXAMPLES)

    def noise() -> np.ndarray:
        return rng.standard_normal((n_init, N_EXAMPLES))

    el2n = np.sqrt(2) / (1 + np.exp(-(difficulty + 0.5 * noise() - 1)))
    grand = np.exp(0.6 * difficulty + 0.3 * noise())
    forgetting = rng.poisson(np.exp(difficulty + 0.3 * noise())).astype(float)
    forgetting[0, difficulty > 1.6] = np.inf  # hardest examples never learned in one run
    forgetting[1, difficulty > 2.0] = np.inf
    forgetting[2:] = np.nan  # two repetitions only
    prototypes = np.full((n_init, N_EXAMPLES), np.nan)
    prototypes[0] = np.abs(0.4 * difficulty + rng.standard_normal(N_EXAMPLES)) + 0.1
    random = np.full((n_init, N_EXAMPLES), np.nan)
    random[0] = rng.uniform(size=N_EXAMPLES)
    score = np.stack([el2n, grand, forgetting, prototypes, random])
    labels = rng.integers(0, 10, N_EXAMPLES)
    return xr.Dataset(
        {
            "score": (("scoring", "init", "sample"), score),
            "label": (("scoring", "sample"), np.tile(labels, (len(SCORE_METHODS), 1))),
        },
        coords={"scoring": SCORE_METHODS, "init": np.arange(n_init),
                "sample": np.arange(N_EXAMPLES)},
    )


NETWORK_METHODS = ["imp", "random", "reinit"]


def _network_pruning(n_seeds: int) -> xr.Dataset:
    """As collected: level 0 is the dense run; density is a variable over the run dims."""
    levels = np.arange(8)
    coords = {"pruning": NETWORK_METHODS, "rewind": [0, 20], "level": levels, "seed": np.arange(n_seeds)}
    ds = _metrics_dataset(coords, n_epochs=5, seed=3)
    drop = np.where(levels > 5, 0.1 * (levels - 5), 0.0)[None, None, :, None, None]
    ds["test_acc"] = ds["test_acc"] - drop
    density = xr.DataArray(0.8**levels, dims="level", coords={"level": levels})
    return ds.assign(density=density.broadcast_like(ds["test_acc"].isel(epoch=0, drop=True)).copy())


def _with_trainable_params(ds: xr.Dataset) -> xr.Dataset:
    counts = {"full": 20_000, "linear_probe": 1_300, "scratch": 20_000}
    values = xr.DataArray([counts[m] for m in ds["finetuning"].values], dims="finetuning", coords={"finetuning": ds["finetuning"]})
    counts = values.broadcast_like(ds["test_acc"].isel(epoch=0, drop=True)).astype(float)
    return ds.assign(trainable_params=counts.where((ds["source"] == "none") == (ds["finetuning"] == "scratch")))


def _wiseft(n_seeds: int) -> xr.Dataset:
    alphas = np.linspace(0, 1, 6)
    rng = np.random.default_rng(5)
    bump = 0.8 + 0.1 * np.sin(np.pi * alphas)  # the usual shape: best in between
    acc = bump + 0.01 * rng.standard_normal((len(SOURCES), 2, n_seeds, len(alphas)))
    acc[0, 1, 0, 2] = np.nan  # a hole
    return xr.Dataset({"test_acc": (("source", "finetuning", "seed", "alpha"), acc)},
                      coords={"source": SOURCES, "finetuning": ["full", "lora"], "seed": np.arange(n_seeds), "alpha": alphas})


def _ensemble(n_seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(6)
    members = 0.9 + 0.01 * rng.standard_normal((len(SOURCES), 2, n_seeds, 3))
    return xr.Dataset(
        {
            "member_acc": (("source", "kind", "seed", "member"), members),
            "ensemble_acc": (("source", "kind", "seed"), members.max(-1) + 0.01),
            "soup_acc": (("source", "kind", "seed"), members.mean(-1) - 0.02),
            "member_val_acc": (("source", "kind", "seed", "member"), members + 0.005),
            "greedy_soup_acc": (("source", "kind", "seed"), members.max(-1) + 0.005),
            "greedy_soup_val_acc": (("source", "kind", "seed"), members.max(-1) + 0.01),
            "greedy_soup_member": (("source", "kind", "seed", "member"), members > 0.9),
        },
        coords={"source": SOURCES, "kind": ["seeds", "starsse"], "seed": np.arange(n_seeds), "member": np.arange(3)},
    )


FINETUNE_SOURCES = ["mnist1d", "none", "synthetic"]
LAYERS = ["conv1", "conv2", "conv3", "head"]
# How much each method changes each layer (scratch: no parent to compare with).
LAYER_CHANGE = {"full": [0.05, 0.15, 0.3, 0.6], "linear_probe": [0.0, 0.0, 0.0, 0.5], "scratch": [np.nan] * 4}


def _similarity(n_seeds: int) -> xr.Dataset:
    """Layer x layer similarities of parent and child; no rbf_cka; scratch all NaN (no parent)."""
    rng = np.random.default_rng(7)
    n, methods = len(LAYERS), list(LAYER_CHANGE)
    near = np.exp(-np.abs(np.subtract.outer(np.arange(n), np.arange(n))))  # (layer_a, layer_b)
    change = np.array([LAYER_CHANGE[m] for m in methods])[None, :, None, None, :]
    noise = 0.02 * rng.standard_normal((len(FINETUNE_SOURCES), len(methods), n_seeds, n, n))
    sim = np.clip(near * (1 - change) - np.abs(noise), 0.0, 1.0)
    sim[2] = np.clip(sim[2] - 0.05, 0.0, 1.0)  # the other source moves a bit more
    measures = {"linear_cka": sim, "debiased_cka": sim**1.4, "svcca": sim**0.8, "pwcca": sim**0.9,
                "procrustes": 1.6 * (1 - sim)}
    dims = ("source", "finetuning", "seed", "layer_a", "layer_b")
    ds = xr.Dataset({name: (dims, values.copy()) for name, values in measures.items()},
                    coords={"source": FINETUNE_SOURCES, "finetuning": methods, "seed": np.arange(n_seeds),
                            "layer_a": LAYERS, "layer_b": LAYERS})
    ds["svcca"][2, 1, 0, 1, 1] = np.nan  # a hole on the diagonal
    return _only_real_combinations(ds)


def _layer_cka(coords: dict[str, object], change: xr.DataArray, seed: int) -> xr.Dataset:
    """Linear and debiased CKA over ``coords`` x (layer_a, layer_b) between two models:
    ``change`` (dims: some of ``coords``, and ``layer_a``) lowers each layer's similarity."""
    rng = np.random.default_rng(seed)
    n = len(LAYERS)
    near = xr.DataArray(np.exp(-np.abs(np.subtract.outer(np.arange(n), np.arange(n)))),
                        dims=("layer_a", "layer_b"), coords={"layer_a": LAYERS, "layer_b": LAYERS})
    grid = xr.DataArray(np.zeros([len(v) for v in coords.values()]), dims=list(coords), coords=coords)
    cka = (grid + near * (1 - change)).transpose(*coords, "layer_a", "layer_b")
    cka = (cka - np.abs(0.02 * rng.standard_normal(cka.shape))).clip(0.0, 1.0)
    return xr.Dataset({"linear_cka": cka, "debiased_cka": cka**1.4})


# How much of each layer's representation changes along an edge, deepest the most.
DEPTH = xr.DataArray([0.2, 0.4, 0.7, 1.0], dims="layer_a", coords={"layer_a": LAYERS})


def _similarity_prune(n_seeds: int) -> xr.Dataset:
    """Dense vs pruned: IMP keeps the representation longest, a re-initialised mask loses it at once."""
    levels = np.arange(1, 9)
    coords = {"pruning": NETWORK_METHODS, "rewind": [0, 20], "level": levels, "seed": np.arange(n_seeds)}
    rate = xr.DataArray([0.04, 0.09, 0.5], dims="pruning", coords={"pruning": NETWORK_METHODS})
    level = xr.DataArray(levels, dims="level", coords={"level": levels})
    return _layer_cka(coords, (rate * level).clip(0.0, 0.9) * DEPTH, seed=10)


def _similarity_distill(n_seeds: int) -> xr.Dataset:
    """Teacher vs student: less data and a smaller alpha, a student less like its teacher."""
    methods = PRUNING_METHODS[:3]
    coords = {"selection": methods, "fraction": FRACTIONS, "teacher": ["trained"], "temperature": [4.0],
              "alpha": [0.5, 0.9], "seed": np.arange(n_seeds)}  # as collected: the trained teacher only
    fraction = xr.DataArray(FRACTIONS, dims="fraction", coords={"fraction": FRACTIONS})
    alpha = xr.DataArray([0.5, 0.9], dims="alpha", coords={"alpha": [0.5, 0.9]})
    return _layer_cka(coords, (0.6 - 0.3 * fraction - 0.2 * alpha) * DEPTH, seed=11)


def _model_coords_only(ds: xr.Dataset) -> xr.Dataset:
    """NaN where no model exists: scratch only under "none", every other model only under a source."""
    return ds.where((ds["source"] == "none") == (ds["finetuning"] == "scratch"))


def _similarity_seeds(n_seeds: int) -> xr.Dataset:
    """Seed 0 vs seed 1 of each model (no seed dim): fine-tuned twins share their pretrained body."""
    models = ["none", "full", "linear_probe", "scratch"]
    coords = {"source": FINETUNE_SOURCES, "finetuning": models}
    apart = xr.DataArray([0.5, 0.4, 0.5, 0.6], dims="finetuning", coords={"finetuning": models})
    return _model_coords_only(_layer_cka(coords, apart * DEPTH, seed=12))


def _similarity_within(n_seeds: int) -> xr.Dataset:
    """Each model's layers against each other: 1 on the diagonal, symmetric, seeds a little apart."""
    models = ["full", "linear_probe", "none", "scratch"]  # as collected: sorted
    coords = {"source": FINETUNE_SOURCES, "finetuning": models, "seed": np.arange(n_seeds)}
    gap = np.abs(np.subtract.outer(np.arange(len(LAYERS)), np.arange(len(LAYERS))))
    decay = xr.DataArray([0.5, 0.4, 0.4, 0.8], dims="finetuning", coords={"finetuning": models}) * (1 + 0.1 * xr.DataArray(
        np.arange(n_seeds), dims="seed", coords={"seed": np.arange(n_seeds)}))
    cka = np.exp(-decay * xr.DataArray(gap, dims=("layer_a", "layer_b"),
                                       coords={"layer_a": LAYERS, "layer_b": LAYERS}))
    grid = xr.DataArray(np.zeros((len(FINETUNE_SOURCES), 1)), dims=("source", "one"),
                        coords={"source": FINETUNE_SOURCES}).isel(one=0, drop=True)
    cka = (cka + grid).transpose("source", "finetuning", "seed", "layer_a", "layer_b")
    return _model_coords_only(xr.Dataset({"linear_cka": cka, "debiased_cka": cka**1.2}))


SPECTRA_MODELS = ["none", "full", "linear_probe", "scratch"]


def _spectra(n_seeds: int) -> xr.Dataset:
    """Power-law NTK spectra ending in rounding noise (0 and below); a few negative Hessian eigenvalues."""
    rng = np.random.default_rng(8)
    shape = (len(FINETUNE_SOURCES), len(SPECTRA_MODELS), n_seeds)
    # The other source gives larger kernels and sharper minima.
    jitter = lambda: (1 + 0.1 * rng.uniform(size=shape) + 0.4 * np.arange(3)[:, None, None])[..., None]  # noqa: E731
    ntk_scale = np.array([50.0, 80.0, 5.0, 30.0])[None, :, None, None]
    decay = np.array([1.6, 1.8, 1.4, 2.0])[None, :, None, None]
    ntk = ntk_scale * jitter() * np.arange(1, 41) ** -decay
    ntk[..., -3:] = [1e-14, 0.0, -2e-15]
    hessian_scale = np.array([20.0, 10.0, 15.0, 40.0])[None, :, None, None]
    hessian = hessian_scale * jitter() * np.arange(1, 9) ** -0.8
    hessian[:, [1, 3], :, -2:] *= -0.05  # small negative curvature
    trace = 3 * hessian.sum(-1)
    dims = ("source", "finetuning", "seed")
    ds = xr.Dataset(
        {
            "ntk_eigenvalues": (dims + ("eig",), ntk),
            "ntk_condition_number": (dims, ntk[..., 0] / ntk[..., -4]),
            "ntk_alignment": (dims, 0.3 + 0.3 * rng.uniform(size=shape)),
            "hessian_eigenvalues": (dims + ("hessian_eig",), hessian),
            "hessian_trace": (dims, trace),
            "hessian_trace_stderr": (dims, 0.05 * np.abs(trace)),
        },
        coords={"source": FINETUNE_SOURCES, "finetuning": SPECTRA_MODELS, "seed": np.arange(n_seeds),
                "eig": np.arange(40), "hessian_eig": np.arange(8)},
    )
    # Scratch only under "none", everything else only under the real sources.
    ds = ds.where((ds["source"] == "none") == (ds["finetuning"] == "scratch"))
    hessian_vars = ["hessian_eigenvalues", "hessian_trace", "hessian_trace_stderr"]
    for var in hessian_vars:  # one Hessian analysis not run
        ds[var].loc[{"source": "synthetic", "finetuning": "linear_probe"}] = np.nan
    return ds


CONNECTIVITY_PAIRS = ["probe_full", "siblings", "ticket_k0"]
# Error at alpha = 0, at alpha = 1, and the bump in the middle, per pair.
CONNECTIVITY_SHAPES = {"probe_full": (0.20, 0.12, 0.01), "siblings": (0.12, 0.12, 0.03),
                       "ticket_k0": (0.15, 0.17, 0.30)}


def _connectivity(n_seeds: int) -> xr.Dataset:
    """Curves along alpha; the tickets (from scratch, source "none") have a large barrier."""
    rng = np.random.default_rng(9)
    alphas = np.linspace(0, 1, 11)
    start, end, bump = (np.array(v)[:, None, None, None] for v in zip(*CONNECTIVITY_SHAPES.values()))
    shape = (len(CONNECTIVITY_PAIRS), len(FINETUNE_SOURCES), n_seeds, len(alphas))
    error = ((1 - alphas) * start + alphas * end + 4 * bump * alphas * (1 - alphas)
             + 0.005 * rng.standard_normal(shape))
    error[:, 2] += 0.02  # the other source: a little worse everywhere
    loss = 2 * error + 0.1
    dims = ("ends", "source", "seed")
    ds = xr.Dataset(
        {
            "test_error": (dims + ("alpha",), error),
            "test_loss": (dims + ("alpha",), loss),
            "test_error_barrier": (dims, (error - ((1 - alphas) * error[..., :1] + alphas * error[..., -1:])).max(-1)),
            "test_error_max_minus_mean_of_ends": (dims, error.max(-1) - (error[..., 0] + error[..., -1]) / 2),
            "test_loss_barrier": (dims, (loss - ((1 - alphas) * loss[..., :1] + alphas * loss[..., -1:])).max(-1)),
        },
        coords={"ends": CONNECTIVITY_PAIRS, "source": FINETUNE_SOURCES, "seed": np.arange(n_seeds),
                "alpha": alphas},
    )
    ds = ds.where((ds["source"] == "none") == ds["ends"].str.startswith("ticket"))
    ds["test_error"][0, 0, 0, 3] = np.nan  # a hole
    return ds


ZOO_COORDS = {"width": [4, 8], "size": [100, 200], "lr": [0.01, 0.1, 0.3]}


def _zoo(n_seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(9)
    shape = (2, 2, 3, n_seeds)
    dims = ("width", "size", "lr", "seed")
    acc = 0.5 + 0.3 * rng.random((*shape, 3))
    acc[0, 0, 0, 0, -1] = np.nan  # a run that stopped early: its final value is its last
    return xr.Dataset(
        {"test_acc": ((*dims, "epoch"), acc), "hessian_trace": (dims, 10 + 90 * rng.random(shape)),
         "hessian_top_eigenvalue": (dims, 1 + 9 * rng.random(shape)),
         "init_hidden_covariance": ((*dims, "layer"), -rng.random((*shape, 2))),
         "init_ntk_condition_number": (dims, rng.random(shape)), "init_ntk_alignment": (dims, rng.random(shape))},
        coords={**ZOO_COORDS, "seed": np.arange(n_seeds), "epoch": [0, 1, 2], "layer": ["conv1", "conv2"]},
        attrs={"phases": {"barrier": 0.02, "hessian_trace": None, "cka": 0.5}})


def _zoo_pairs(n_seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(10)
    seeds = max(n_seeds, 2)
    barrier = 0.05 * rng.random((2, 2, 3, seeds - 1, seeds - 1))
    return xr.Dataset({"test_error_barrier": (("width", "size", "lr", "seed", "other_seed"), barrier)},
                      coords={**ZOO_COORDS, "seed": np.arange(seeds - 1), "other_seed": np.arange(1, seeds)})


def _zoo_similarity(n_seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(11)
    seeds = max(n_seeds, 2)
    cka = rng.random((2, 2, 3, seeds - 1, seeds - 1, 2, 2))
    return xr.Dataset({"linear_cka": (("width", "size", "lr", "seed", "other_seed", "layer_a", "layer_b"), cka)},
                      coords={**ZOO_COORDS, "seed": np.arange(seeds - 1), "other_seed": np.arange(1, seeds),
                              "layer_a": ["conv1", "conv2"], "layer_b": ["conv1", "conv2"]})


def _zoo_manifold(n_seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(12)
    dims = ("width", "size", "lr", "seed", "class_label")
    return xr.Dataset({"class_manifold_dimension": (dims, rng.integers(20, 40, (2, 2, 1, n_seeds, 3)).astype(float)),
                       "input_dim": (dims[:-1], np.full((2, 2, 1, n_seeds), 40))},
                      coords={**ZOO_COORDS, "lr": [0.1], "seed": np.arange(n_seeds), "class_label": [0, 1, 2]})


def _random_teacher(n_seeds: int) -> xr.Dataset:
    rng = np.random.default_rng(13)
    dims, shape = ("noise", "seed"), (3, n_seeds)
    return xr.Dataset({f"{who}probe_{split}_acc": (dims, 0.5 + 0.1 * rng.random(shape))
                       for who in ("", "teacher_") for split in ("val", "test")},
                      coords={"noise": [0.0, 0.1, 1.0], "seed": np.arange(n_seeds)})


BUILDERS = {
    "pretrain": _pretrain,
    "finetune": lambda n: _with_trainable_params(_finetune(n)),
    "data_pruning": _data_pruning,
    "distill": _distill,
    "network_pruning": _network_pruning,
    "scores": _scores,
    "wiseft": _wiseft,
    "ensemble": _ensemble,
    "similarity": _similarity,
    "similarity_prune": _similarity_prune,
    "similarity_distill": _similarity_distill,
    "similarity_seeds": _similarity_seeds,
    "similarity_within": _similarity_within,
    "spectra": _spectra,
    "connectivity": _connectivity,
    "zoo": _zoo,
    "connectivity_seed_pairs": _zoo_pairs,
    "similarity_seed_pairs": _zoo_similarity,
    "manifold": _zoo_manifold,
    "random_teacher": _random_teacher,
}


@pytest.fixture(scope="module", params=[2, 1], ids=["two_seeds", "single_seed"])
def n_seeds(request: pytest.FixtureRequest) -> int:
    """Seeds per synthetic summary: the usual case and the single-seed one."""
    return request.param


@pytest.fixture(scope="module")
def summary_paths(n_seeds: int, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind of summary written as a Zarr store, with ``n_seeds`` seeds.

    Module-scoped: the stores are only read, and writing them dominates test time.
    """
    root = tmp_path_factory.mktemp("summary")
    return {
        name: storage.write_dataset(build(n_seeds), root / f"{name}.zarr")
        for name, build in BUILDERS.items()
    }


def test_final_value_takes_last_non_nan_epoch() -> None:
    da = xr.DataArray(
        [
            [1.0, 2.0, 3.0, np.nan],  # stopped early
            [4.0, np.nan, 6.0, 7.0],  # hole in the middle
            [np.nan] * 4,  # never run
            [8.0, np.nan, np.nan, np.nan],  # only the evaluation before training
        ],
        dims=("seed", "epoch"),
        coords={"seed": [0, 1, 2, 3], "epoch": [0, 1, 2, 3]},
    )
    out = plots.final_value(da)
    assert out.dims == ("seed",)
    np.testing.assert_array_equal(out.values, [3.0, 7.0, np.nan, 8.0])
    assert "epoch" not in out.coords


def test_final_value_keeps_other_dims() -> None:
    ds = _data_pruning(2)
    out = plots.final_value(ds["test_acc"])
    assert out.dims == ("selection", "fraction", "seed")
    # Seed 1 stops two epochs early, so its final value is epoch n-3.
    expected = ds["test_acc"].isel(seed=1, epoch=-3).sel({"selection": "el2n-hard"})
    np.testing.assert_allclose(out.isel(seed=1).sel({"selection": "el2n-hard"}), expected)


@pytest.mark.parametrize("figure", sorted(plots.FIGURES))
def test_render_writes_png_and_pdf(
    figure: str, n_seeds: int, summary_paths: dict[str, Path], tmp_path: Path
) -> None:
    if n_seeds == 1 and all("seed" not in BUILDERS[n](1).dims for n in plots.figure_summaries(figure, BUILDERS)):
        pytest.skip("its summaries have no seed dim: the same figure as for two seeds")
    png, pdf = tmp_path / "fig" / f"{figure}.png", tmp_path / "fig" / f"{figure}.pdf"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN holes must not leak RuntimeWarnings
        plots.render(figure, summary_paths, [png, pdf])
    for path in (png, pdf):
        assert path.is_file() and path.stat().st_size > 0
    image = mpimg.imread(png)
    height, width = image.shape[:2]
    assert 300 < height < 4000 and 300 < width < 4000
    assert image.std() > 0  # not a blank canvas
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert not list((tmp_path / "fig").glob(".*"))  # no leftover temporaries
    # Keep a copy for a human look at how the figure reads.
    PREVIEW_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, PREVIEW_DIR / f"{figure}_{n_seeds}seed.png")


def test_figures_table_matches_signatures() -> None:
    assert set(plots.FIGURES) == {
        "training_curves", "data_pruning", "best_alpha", "network_pruning", "cka",
        "score_distributions", "score_agreement", "finetune_methods", "wiseft", "ensembles",
        "similarity", "spectra", "connectivity", "weight_distance", "lineage", "similarity_within", "zoo",
        "zoo_scores", "random_teacher",
    }
    assert plots.FIGURES["data_pruning"][1] == ("data_pruning", "distill")
    for figure, (func, needs) in plots.FIGURES.items():
        optional = plots.OPTIONAL_SUMMARIES.get(figure, ())
        fig = func(*(BUILDERS[name](2) for name in needs), **{name: BUILDERS[name](2) for name in optional})
        assert fig.axes


def _labelled_line(ax, label: str):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_network_pruning_plots_final_means_per_rewind_step_and_skips_missing_level() -> None:
    ds = _network_pruning(2)
    ds["test_acc"].loc[{"pruning": "imp", "rewind": 20, "level": 7}] = np.nan  # never finished
    fig = plots.network_pruning(ds)
    assert [ax.get_title() for ax in fig.axes] == ["rewind to step 0 (original lottery ticket)", "rewind to step 20"]
    line = _labelled_line(fig.axes[1], plots.PRUNING_LABELS["imp"])
    np.testing.assert_allclose(line.get_xdata(), 100 * 0.8 ** np.arange(7))
    expected = 100 * plots.final_value(ds["test_acc"]).sel({"pruning": "imp", "rewind": 20}).mean("seed")[:7]
    np.testing.assert_allclose(line.get_ydata(), expected)
    for method in NETWORK_METHODS:  # every method, in every panel
        for ax in fig.axes:
            _labelled_line(ax, plots.PRUNING_LABELS[method])


def test_network_pruning_density_with_a_missing_run() -> None:
    ds = _network_pruning(2)
    ds["density"].loc[{"pruning": "imp", "rewind": 0, "level": 7, "seed": 1}] = np.nan  # one run missing
    line = _labelled_line(plots.network_pruning(ds).axes[0], plots.PRUNING_LABELS["imp"])
    np.testing.assert_allclose(line.get_xdata(), 100 * 0.8 ** np.arange(8))


def _lines(ax) -> dict[str, object]:
    """Error-bar lines of a figure by label ("method, style")."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


def _figure_lines(fig) -> dict[str, object]:
    """:func:`_lines` of every panel of a figure."""
    return {label: line for ax in fig.axes for label, line in _lines(ax).items()}


def _texts(fig) -> str:
    """All text drawn in a figure (titles, notes, legends), for checking what it says."""
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_best_over_picks_best_seed_mean_over_temperature_and_alpha() -> None:
    acc = xr.DataArray(
        np.full((2, 2, 3, 2), np.nan),
        dims=("selection", "temperature", "alpha", "seed"),
        coords={"selection": ["a", "b"], "temperature": [2.0, 4.0], "alpha": [0.25, 0.5, 0.9],
                "seed": [0, 1]},
    )
    # Method a: alpha 0.9 has the best single seed (0.95) but alpha 0.5 at T=4 the best mean.
    acc.loc[{"selection": "a", "temperature": 2.0}] = [[0.6, 0.6], [0.7, 0.72], [0.95, 0.4]]
    acc.loc[{"selection": "a", "temperature": 4.0}] = [[0.6, 0.62], [0.8, 0.78], [np.nan, 0.5]]
    # Method b was never run.
    best, where = plots.best_over(acc, ("temperature", "alpha"))
    assert best.dims == ("selection",) and set(where) == {"temperature", "alpha"}
    np.testing.assert_allclose(best.values, [0.79, np.nan])
    np.testing.assert_allclose(where["alpha"].values, [0.5, np.nan])
    np.testing.assert_allclose(where["temperature"].values, [4.0, np.nan])
    # With an epoch dim, the final (last non-NaN) value of each run is what counts.
    curves = xr.concat([acc * 0, acc], dim="epoch").transpose(..., "epoch")
    curves[{"epoch": 1, "seed": 1}] = np.nan  # seed 1 stopped early: its final value is 0
    best, where = plots.best_over(curves, ("temperature", "alpha"))
    np.testing.assert_allclose(where["alpha"].values, [0.9, np.nan])  # 0.95 / 2 wins now
    np.testing.assert_allclose(best.values, [0.475, np.nan])


def test_best_over_chooses_by_one_metric_and_reports_another() -> None:
    acc = xr.DataArray([[0.9, 0.5], [0.6, 0.7]], dims=("alpha", "seed"), coords={"alpha": [0.5, 0.9], "seed": [0, 1]})
    val = xr.DataArray([[0.1, 0.1], [0.8, 0.8]], dims=("alpha", "seed"), coords={"alpha": [0.5, 0.9], "seed": [0, 1]})
    best, where = plots.best_over(acc, ("alpha",), by=val)
    assert float(where["alpha"]) == 0.9 and float(best) == pytest.approx(0.65)  # not test's own best, 0.7
    np.testing.assert_allclose(best_runs(acc, ("alpha",), by=val).values, [0.6, 0.7])


def test_data_pruning_kd_points_are_at_best_temperature_and_alpha() -> None:
    pruned, distill = _data_pruning(2), _distill(2)
    fig = plots.data_pruning(pruned, distill)
    lines = _figure_lines(fig)
    final = plots.final_value(distill["test_acc"]).sel({"selection": "el2n-hard"})
    for teacher, style in (("trained", "KD, trained teacher"),
                           ("untrained", "KD, untrained (random) teacher")):
        mean = final.sel({"teacher": teacher}).mean("seed")
        expected = 100 * (1 - mean.max(("temperature", "alpha")))
        line = lines[f"el2n-hard, {style}"]
        np.testing.assert_allclose(line.get_xdata(), 100 * FRACTIONS, rtol=0.1)  # dodged
        np.testing.assert_allclose(line.get_ydata(), expected)
    no_kd = 100 * (1 - plots.final_value(pruned["test_acc"]).mean("seed"))
    np.testing.assert_allclose(lines["el2n-hard, no KD"].get_ydata(),
                               no_kd.sel({"selection": "el2n-hard"}))
    # Styles: solid, dashed, dotted; prototypes-hard has no untrained-teacher line;
    # grand-hard's KD line skips the fraction not run; rs2 (no KD at all) is still drawn.
    assert lines["el2n-hard, no KD"].get_linestyle() == "-"
    assert lines["el2n-hard, KD, trained teacher"].get_linestyle() == "--"
    assert lines["el2n-hard, KD, untrained (random) teacher"].get_linestyle() == ":"
    assert "prototypes-hard, KD, untrained (random) teacher" not in lines
    assert len(lines["grand-hard, KD, trained teacher"].get_xdata()) == 3
    assert len(lines["rs2, no KD"].get_xdata()) == 3
    method_key, style_key = fig.legends
    assert [t.get_text() for t in method_key.get_texts()] == PRUNING_METHODS
    assert [t.get_text() for t in style_key.get_texts()] == [
        "no KD", "KD, trained teacher", "KD, untrained (random) teacher"]
    assert "chosen on test: the task has no validation set" in _texts(fig)  # this summary has no val_acc
    # a panel per score, each with its selections, on one error scale; random as a grey reference
    panels = {ax.get_title(): ax for ax in fig.axes if ax.axison and ax.get_title()}
    assert list(panels) == ["el2n", "grand", "forgetting", "prototypes", "random", "rs2"]
    assert set(_lines(panels["el2n"])) == {f"el2n-{keep}, {style}" for keep in ("hard", "easy")
                                          for style in ("no KD", "KD, trained teacher",
                                                        "KD, untrained (random) teacher")}
    assert len({ax.get_ylim() for ax in panels.values()}) == 1
    random = 100 * (1 - plots.final_value(pruned["test_acc"]).sel({"selection": "random"}).mean("seed"))
    grey = [line for line in panels["el2n"].get_lines() if line.get_label() == "_random, no KD"]
    np.testing.assert_allclose(grey[0].get_ydata(), random.values[np.isfinite(random.values)])
    assert not [line for line in panels["random"].get_lines() if line.get_label() == "_random, no KD"]


def test_kd_points_are_chosen_on_validation_and_show_their_test_error() -> None:
    pruned, distill = _data_pruning(2), _distill(2)
    # validation prefers the opposite of test: the lowest-test combination has the best validation
    distill["val_acc"] = 1.0 - distill["test_acc"]
    fig = plots.data_pruning(pruned, distill)
    line = _figure_lines(fig)["el2n-hard, KD, trained teacher"]
    final = plots.final_value(distill["test_acc"]).sel({"selection": "el2n-hard", "teacher": "trained"})
    val = plots.final_value(distill["val_acc"]).sel({"selection": "el2n-hard", "teacher": "trained"})
    chosen = val.mean("seed").stack(kd=("temperature", "alpha")).fillna(-np.inf).argmax("kd")
    expected = 100 * (1 - final.mean("seed").stack(kd=("temperature", "alpha")).isel(kd=chosen))
    np.testing.assert_allclose(line.get_ydata(), expected.values)
    assert not np.allclose(line.get_ydata(), 100 * (1 - final.mean("seed").max(("temperature", "alpha"))))
    assert "chosen on validation" in _texts(fig)
    assert "chosen on validation" in _texts(plots.best_alpha(distill))


def test_data_pruning_without_untrained_teacher_has_no_dotted_style() -> None:
    distill = _distill(2).sel({"teacher": ["trained"]})
    fig = plots.data_pruning(_data_pruning(2), distill)
    assert [t.get_text() for t in fig.legends[1].get_texts()] == ["no KD", "KD, trained teacher"]


def test_all_nan_summary_says_no_data() -> None:
    pruned, distill = _data_pruning(2), _distill(2)
    pruned["test_acc"][:] = np.nan
    distill["test_acc"][:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.data_pruning(pruned, distill)
        fig.canvas.draw()
    assert any(t.get_text() == "no data" for t in fig.axes[0].texts)


def test_best_alpha_follows_the_optimum() -> None:
    ds = _distill(2)
    # Noise-free accuracy peaked at the optimal alpha of each fraction, T irrelevant.
    peak = 0.8 - (ds["alpha"] - _optimal_alpha(FRACTIONS)) ** 2
    ds["test_acc"] = ds["test_acc"].notnull() * peak.broadcast_like(ds["test_acc"])
    ds["test_acc"].loc[{"selection": "grand-hard", "fraction": 0.75}] = np.nan
    ax = plots.best_alpha(ds).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_marker() == "o"}
    assert list(lines) == PRUNING_METHODS[:5] + ["random"]
    # Optimum 0.9, 0.75, 0.5, 0.25: the nearest swept alpha is 0.9, 0.9, 0.5, 0.25.
    np.testing.assert_allclose(lines["el2n-hard"].get_ydata(), [0.9, 0.9, 0.5, 0.25])
    np.testing.assert_allclose(lines["el2n-hard"].get_xdata(), 100 * FRACTIONS, rtol=0.1)
    assert len(lines["grand-hard"].get_xdata()) == 3  # fraction 0.75 not run
    assert ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1


def test_best_alpha_single_alpha_says_so() -> None:
    fig = plots.best_alpha(_distill(1).sel({"alpha": [0.5]}))
    assert "only α = 0.5 was swept" in fig.get_suptitle()


def test_score_correlations_equal_scipy_and_the_heatmap() -> None:
    from scipy import stats

    ds = _scores(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(ds["score"].values, axis=1)  # (method, sample)
    assert np.isinf(means[SCORE_METHODS.index("forgetting")]).any()
    expected = stats.spearmanr(means.T).statistic
    rho = plots.score_correlations(ds)
    assert rho.dims == ("scoring_a", "scoring_b")
    assert rho["scoring_a"].values.tolist() == SCORE_METHODS
    np.testing.assert_allclose(rho.values, expected, atol=1e-12)
    np.testing.assert_array_equal(np.diag(rho.values), 1.0)
    image = plots.score_agreement(ds).axes[0].images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), expected, atol=1e-12)
    assert image.get_clim() == (-1.0, 1.0)


def test_score_correlations_constant_method_is_nan_without_warnings() -> None:
    ds = _scores(1)
    ds["score"].loc[{"scoring": "random"}] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = plots.score_correlations(ds)
    assert np.isnan(rho.sel({"scoring_a": "random"})).all()
    assert np.isfinite(rho.sel({"scoring_a": "el2n", "scoring_b": "grand"}))


def test_score_distributions_counts_never_learned() -> None:
    ds = _scores(1)
    fig = plots.score_distributions(ds)
    forgetting = fig.axes[SCORE_METHODS.index("forgetting")]
    mean = ds["score"].sel({"scoring": "forgetting"}).isel(init=[0, 1]).mean("init").values
    n_inf = int(np.isinf(mean).sum())
    assert 0 < n_inf < N_EXAMPLES
    assert any(f"{n_inf} of {N_EXAMPLES} never learned" in t.get_text() for t in forgetting.texts)
    assert sum(p.get_height() for p in forgetting.patches) == N_EXAMPLES - n_inf
    assert "2 runs" in forgetting.get_title()
    assert "EL2N" in fig.axes[0].get_xlabel()


def test_unknown_figure_names_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        plots.render("nope", {}, [tmp_path / "x.png"])
    for name in plots.FIGURES:
        assert name in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_missing_summary_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finetune"):
        plots.render(
            "training_curves", {"pretrain": tmp_path / "p.zarr"}, [tmp_path / "x.png"]
        )


def _axis_titled(fig, start: str):
    return next(ax for ax in fig.axes if ax.get_title().startswith(start))


def test_similarity_draws_the_matched_layers_of_each_measure_present() -> None:
    ds = _similarity(2)
    fig = plots.similarity(ds)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes if ax.axison] == [
        "linear CKA", "debiased linear CKA", "SVCCA", "PWCCA", "Procrustes distance"]
    fig.canvas.draw()  # five panels in a grid of three columns, not one tall column
    assert len({round(ax.get_position().x0, 2) for ax in fig.axes if ax.axison}) == 3
    line = _labelled_line(fig.axes[0], "mnist1d → full")
    diagonal = [ds["linear_cka"].sel({"source": "mnist1d", "finetuning": "full", "layer_a": layer, "layer_b": layer})
                .mean("seed") for layer in LAYERS]
    np.testing.assert_allclose(line.get_ydata(), diagonal)
    assert line.get_linestyle() == "-"
    assert _labelled_line(fig.axes[0], "synthetic → full").get_linestyle() == "--"
    # The hole on the diagonal: that point is the other seed's value.
    svcca = _labelled_line(fig.axes[2], "synthetic → linear_probe").get_ydata()
    assert svcca[1] == ds["svcca"].sel({"source": "synthetic", "finetuning": "linear_probe", "seed": 1,
                                        "layer_a": "conv2", "layer_b": "conv2"})
    # Scratch has no parent, so no line and no key entry.
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "mnist1d → full", "mnist1d → linear_probe", "synthetic → full", "synthetic → linear_probe"]


def test_similarity_with_one_measure() -> None:
    fig = plots.similarity(_similarity(1)[["procrustes"]])
    assert [ax.get_title() for ax in fig.axes] == ["Procrustes distance (distance, 0 = unchanged)"]


def test_spectra_hides_rounding_noise_and_shows_negative_curvature() -> None:
    ds = _spectra(2)
    fig = plots.spectra(ds)
    ntk = _labelled_line(_axis_titled(fig, "NTK spectrum"), "pretrained: mnist1d")
    expected = ds["ntk_eigenvalues"].sel({"source": "mnist1d", "finetuning": "none"}).mean("seed")[:-3]
    np.testing.assert_array_equal(ntk.get_xdata(), np.arange(1, 38))
    np.testing.assert_allclose(ntk.get_ydata(), expected)
    assert _axis_titled(fig, "Top Hessian").get_yscale() == "symlog"
    assert _axis_titled(fig, "NTK condition").get_yscale() == "log"
    trace = _axis_titled(fig, "Hessian trace")
    heights = [bar.get_height() for bar in trace.patches]
    mean = ds["hessian_trace"].sel({"source": "synthetic", "finetuning": "full"}).mean("seed")
    np.testing.assert_allclose(heights[-2], mean)
    assert np.isnan(heights[-1]) and "not run" in [t.get_text() for t in trace.texts]
    assert "from scratch (baseline)" in [t.get_text() for t in fig.legends[0].get_texts()]
    # every seed's Hessian eigenvalues are drawn as they are: signs that differ are never averaged
    hessian = _axis_titled(fig, "Top Hessian")
    drawn = [line.get_ydata() for line in hessian.get_lines() if len(line.get_ydata()) == 8]
    values = ds["hessian_eigenvalues"].stack(run=("source", "finetuning", "seed")).transpose("run", ...)
    expected = [v for v in values.values if np.isfinite(v).any()]
    assert len(drawn) == len(expected)
    for v in expected:
        assert any(np.allclose(d, v) for d in drawn)
    # the trace's error bars, like the condition number's, run from the seeds' min to max
    where = {"source": "synthetic", "finetuning": "full"}
    low, high = (float(getattr(ds["hessian_trace"].sel(where), f)("seed")) for f in ("min", "max"))
    bars = [c for c in trace.collections if c.get_segments()]
    assert any(np.allclose(seg[:, 1], [low, high]) for c in bars for seg in c.get_segments())


def test_spectra_without_hessian_says_no_data() -> None:
    ds = _spectra(1).drop_vars(["hessian_eigenvalues", "hessian_trace", "hessian_trace_stderr"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.spectra(ds)
        fig.canvas.draw()
    for title in ("Top Hessian", "Hessian trace"):
        assert "no data" in [t.get_text() for t in _axis_titled(fig, title).texts]
    assert _axis_titled(fig, "NTK spectrum").get_lines()


def test_connectivity_writes_the_barrier_and_draws_the_line_between_the_ends() -> None:
    ds = _connectivity(2)
    fig = plots.connectivity(ds)
    assert [ax.get_title() for ax in fig.axes] == [
        "linear probe ↔ full fine-tuning", "full fine-tuning ↔ a sibling (other seed)",
        "dense ↔ IMP ticket (rewind 0)"]
    where = {"ends": "siblings", "source": "synthetic"}
    barrier = 100 * float(ds["test_error_barrier"].sel(where).mean("seed"))
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    frankle = 100 * float(ds["test_error_max_minus_mean_of_ends"].sel(where).mean("seed"))
    assert f"synthetic: barrier {barrier:.1f} pp (max − mean of ends {frankle:.1f})" in labels and len(labels) == 2
    mean = 100 * ds["test_error"].sel(where).mean("seed")
    dashed = [line for line in fig.axes[1].get_lines() if line.get_linestyle() == "--"]
    assert any(np.allclose(line.get_ydata(), [mean[0], mean[-1]]) and list(line.get_xdata()) == [0, 1]
               for line in dashed)
    ticket = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert len(ticket) == 1 and ticket[0].startswith("no pretraining: barrier")


def test_ensembles_show_the_greedy_soup_chosen_on_validation() -> None:
    ds = _ensemble(2)
    fig = plots.ensembles(ds)
    ax = fig.axes[0]
    assert "greedy soup" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "greedy soup: members chosen on validation" in ax.get_title()
    assert "greedy soup" not in [t.get_text() for t in plots.ensembles(ds.drop_vars(
        ["member_val_acc", "greedy_soup_acc", "greedy_soup_val_acc", "greedy_soup_member"])).axes[0]
        .get_legend().get_texts()]


def test_weight_distance_from_epoch_one_on_a_log_axis() -> None:
    finetune = BUILDERS["finetune"](2)
    ax = plots.weight_distance(finetune).axes[0]
    assert ax.get_xscale() == "log"
    line = _labelled_line(ax, "synthetic → full")
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 6))
    expected = finetune["relative_weight_distance"].sel({"source": "synthetic", "finetuning": "full"})
    np.testing.assert_allclose(line.get_ydata(), expected.mean("seed")[1:])
    assert line.get_linestyle() == "--"
    _labelled_line(ax, "from scratch (baseline)")


def _diagonal(da: xr.DataArray) -> xr.DataArray:
    """``da`` at layer_a == layer_b, along ``layer`` in LAYERS order."""
    index = xr.DataArray(LAYERS, dims="layer")
    return da.sel({"layer_a": index, "layer_b": index})


def test_lineage_draws_the_panels_of_every_edge_kind_in_a_grid_each_with_its_legend() -> None:
    summaries = {name: BUILDERS[name](2) for name in plots.OPTIONAL_SUMMARIES["lineage"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN combinations must not leak RuntimeWarnings
        fig = plots.lineage(**summaries)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == [
        "pretrained → fine-tuned",
        "dense → pruned, rewound to step 0", "dense → pruned, rewound to step 20",
        "trained teacher → student (T = 4, α = 0.5)", "trained teacher → student (T = 4, α = 0.9)",
        "first seed ↔ second seed of the same run",
    ]
    # Fine-tuning: each layer with itself, mean over seeds, as in the similarity figure.
    finetune = summaries["similarity"]["linear_cka"].sel({"source": "mnist1d", "finetuning": "full"})
    line = _labelled_line(_axis_titled(fig, "pretrained →"), "mnist1d → full")
    np.testing.assert_allclose(line.get_ydata(), _diagonal(finetune).mean("seed"))
    # Pruning: the mean over layers of the diagonal, against the level, a line per method.
    imp = summaries["similarity_prune"]["linear_cka"].sel({"pruning": "imp", "rewind": 20})
    line = _labelled_line(_axis_titled(fig, "dense → pruned, rewound to step 20"), "IMP")
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 9))
    np.testing.assert_allclose(line.get_ydata(), _diagonal(imp).mean("layer").mean("seed"))
    # Distillation: against the kept fraction, per (temperature, alpha).
    ax = _axis_titled(fig, "trained teacher → student (T = 4, α = 0.9)")
    student = summaries["similarity_distill"]["linear_cka"].sel({"selection": "el2n-easy", "alpha": 0.9})
    line = _labelled_line(ax, "el2n-easy")
    np.testing.assert_allclose(line.get_xdata(), FRACTIONS)
    np.testing.assert_allclose(line.get_ydata(), _diagonal(student).mean("layer").mean("seed").squeeze())
    # Seeds: one value per layer (no seed dim), scratch under "none" only.
    seeds = _axis_titled(fig, "first seed")
    labels = [t.get_text() for t in seeds.get_legend().get_texts()]
    assert "from scratch (baseline)" in labels and "pretrained: mnist1d" in labels
    for ax in fig.axes:
        if ax.axison:
            assert ax.get_ylim() == (0.0, 1.05)
            assert ax.get_legend() is not None  # beneath its own panel
    # six panels: two rows of three, not one tall column
    drawn = [ax for ax in fig.axes if ax.axison]
    fig.canvas.draw()
    assert len({round(ax.get_position().x0, 2) for ax in drawn}) == 3
    assert len({round(ax.get_position().y0, 2) for ax in drawn}) == 2


def test_lineage_draws_the_edges_a_study_has() -> None:
    # The lottery study: network pruning alone.
    assert plots.drawable("lineage", {"network_pruning", "similarity_prune"})
    assert plots.figure_summaries("lineage", {"network_pruning", "similarity_prune"}) == ["similarity_prune"]
    assert not plots.drawable("lineage", {"network_pruning"})
    assert not plots.drawable("cka", {"similarity_prune"})
    fig = plots.lineage(similarity_prune=_similarity_prune(1))
    assert [ax.get_title() for ax in fig.axes if ax.axison] == [
        "dense → pruned, rewound to step 0", "dense → pruned, rewound to step 20"]
    assert "single seed" in fig.get_suptitle()
    # Without linear CKA among the measures, the row says so.
    fig = plots.lineage(similarity_seeds=_similarity_seeds(1)[["debiased_cka"]])
    assert "similarity_seeds: no linear CKA" in _texts(fig)


def test_render_refuses_a_figure_without_any_of_its_summaries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lineage.*one of the summaries.*similarity_prune"):
        plots.render("lineage", {"finetune": tmp_path / "f.zarr"}, [tmp_path / "x.png"])


def test_similarity_within_is_a_heatmap_per_model_of_its_first_seed() -> None:
    ds = _similarity_within(2)
    fig = plots.similarity_within(ds)
    heatmaps = {ax.get_title(): ax for ax in fig.axes if ax.images}
    assert sorted(heatmaps) == sorted([
        "pretrained: mnist1d (seed 0)", "mnist1d → full (seed 0)", "mnist1d → linear_probe (seed 0)",
        "pretrained: synthetic (seed 0)", "synthetic → full (seed 0)", "synthetic → linear_probe (seed 0)",
        "from scratch (baseline) (seed 0)"])
    image = heatmaps["synthetic → full (seed 0)"].images[0].get_array()
    np.testing.assert_allclose(image, ds["linear_cka"].sel({"source": "synthetic", "finetuning": "full", "seed": 0}))
    np.testing.assert_allclose(np.diag(image), 1.0)
    # Pretrained first in each row; scratch alone in the last row, of no pretraining.
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert grid[0].get_title() == "pretrained: mnist1d (seed 0)"
    assert grid[4].get_title() == "pretrained: synthetic (seed 0)"
    scratch = grid[8 + 3]
    assert scratch.get_title() == "from scratch (baseline) (seed 0)"
    assert scratch.get_ylabel() == "layer (no pretraining)"  # the first panel drawn in its row
    # A model whose first seed did not run shows its second.
    ds["linear_cka"].loc[{"source": "mnist1d", "finetuning": "full", "seed": 0}] = np.nan
    titles = [ax.get_title() for ax in plots.similarity_within(ds).axes]
    assert "mnist1d → full (seed 1)" in titles


def test_wiseft_marks_the_alpha_chosen_on_validation_with_its_test_accuracy() -> None:
    ds = _wiseft(2)
    # validation prefers alpha 0 wherever test prefers the middle
    ds["val_acc"] = 1.0 - ds["test_acc"]
    fig = plots.wiseft(ds)
    assert "α chosen on validation" in _texts(fig)
    ax = fig.axes[0]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*" and len(line.get_xdata())]
    assert len(stars) == 2  # one per method of the first source
    val = ds["val_acc"].sel(source=SOURCES[0]).mean("seed")
    for star, method in zip(stars, ["full", "lora"]):
        alpha = float(val.sel(finetuning=method).idxmax("alpha"))
        assert star.get_xdata()[0] == alpha
        expected = 100 * float(ds["test_acc"].sel(source=SOURCES[0], finetuning=method, alpha=alpha).mean("seed"))
        assert star.get_ydata()[0] == pytest.approx(expected)
    assert "chosen on test: the task has no validation set" in _texts(plots.wiseft(_wiseft(2)))


def test_the_zoo_figure_draws_each_metric_per_width_and_each_cells_phase() -> None:
    zoo, pairs, similarity = _zoo(2), _zoo_pairs(2), _zoo_similarity(2)
    fig = plots.zoo(zoo, connectivity_seed_pairs=pairs, similarity_seed_pairs=similarity)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * 5  # 2 widths x (accuracy, trace, barrier, CKA, phase)
    titles = [ax.get_title() for ax in panels if ax.get_title()]
    assert titles == ["test accuracy (%)", "Hessian trace (log colour)", "test-error barrier to other seeds (points)",
                      "linear CKA to other seeds (matched layers)", "phase"]
    assert isinstance(panels[1].get_images()[0].norm, matplotlib.colors.LogNorm)  # traces span decades
    assert "phases: straight-line barrier above 0.02" in fig._suptitle.get_text()
    # the phase panel of width 4 names each cell's phase, as the report classifies it
    cells = plots.zoo_metrics(zoo, pairs, similarity)
    phase, _ = plots.zoo_phases(cells, zoo.attrs["phases"])
    texts = [t.get_text() for t in panels[4].texts]
    assert texts == [p or "-" for p in phase.sel(width=4).transpose("size", "lr").values.ravel()]
    # without the seed pairs: the metrics of the models alone, no phase
    alone = plots.zoo(zoo)
    assert len([ax for ax in alone.axes if ax.get_images()]) == 2 * 2


def test_the_zoo_figure_classifies_by_the_aligned_barrier_when_asked() -> None:
    zoo, pairs, similarity = _zoo(2), _zoo_pairs(2), _zoo_similarity(2)
    pairs["aligned_test_error_barrier"] = 0.0 * pairs["test_error_barrier"]  # aligned: every cell connected
    zoo.attrs["phases"] = {**zoo.attrs["phases"], "path": "aligned"}
    fig = plots.zoo(zoo, connectivity_seed_pairs=pairs, similarity_seed_pairs=similarity)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert "the barrier, units aligned (points)" in [ax.get_title() for ax in panels]
    assert "phases: aligned barrier above 0.02" in fig._suptitle.get_text()
    assert {t.get_text() for t in panels[5].texts} <= {"III", "IV-A", "IV-B"}


def test_the_zoo_scores_figure_puts_each_score_against_accuracy_with_its_rank_agreement() -> None:
    zoo, manifold = _zoo(2), _zoo_manifold(2)
    fig = plots.zoo_scores(zoo, manifold=manifold)
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 2 + 2 + 1  # hidden covariance of 2 layers, NTK condition and alignment, the manifold
    assert panels[2].get_xscale() == "log"  # the NTK condition number spans decades
    accuracy = 100 * plots.final_value(zoo["test_acc"])
    ranks = plots.zoo_rank_agreement(zoo["init_ntk_alignment"], accuracy)
    assert panels[3].get_title() == (f"NTK alignment (centred)\nτ {ranks['kendall_tau']:.2f}, "
                                     f"ρ {ranks['spearman_rho']:.2f}; τ within size, lr "
                                     f"{ranks['kendall_tau_within']:.2f}")
    # a point per model: all 24 for a score, the 8 measured for the manifold
    assert sum(len(c.get_offsets()) for c in panels[3].collections) == 24
    assert sum(len(c.get_offsets()) for c in panels[4].collections) == 8
    assert len([ax for ax in plots.zoo_scores(zoo).axes if ax.collections]) == 4


def test_every_figure_has_a_report_category_and_a_caption() -> None:
    captions = Path(__file__).resolve().parents[1] / "rules" / "report"
    assert set(plots.REPORT_CATEGORY) == set(plots.FIGURES)
    assert sum(len(figures) for figures in plots.REPORT_CATEGORIES.values()) == len(plots.FIGURES)
    for figure in plots.FIGURES:
        assert len((captions / f"{figure}.rst").read_text().strip()) > 100, figure


def test_the_same_summaries_draw_the_same_bytes(tmp_path: Path) -> None:
    """Figures are byte-stable for unchanged inputs (a PDF carries no creation date), so a
    redraw leaves them as they were."""
    import hashlib
    import time

    paths = {}
    for name in ("data_pruning", "distill"):
        paths[name] = tmp_path / f"{name}.zarr"
        storage.write_dataset(BUILDERS[name](2), paths[name])
    digests = []
    for attempt in range(2):
        outs = [tmp_path / f"{attempt}.png", tmp_path / f"{attempt}.pdf"]
        plots.render("data_pruning", paths, outs)
        digests.append([hashlib.sha256(out.read_bytes()).hexdigest() for out in outs])
        time.sleep(1.1)  # a creation date would now differ
    assert digests[0] == digests[1]


def test_the_random_teacher_figure_puts_each_student_beside_its_teacher() -> None:
    ds = _random_teacher(2)
    fig = plots.random_teacher(ds)
    panels = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title() for ax in panels] == ["validation", "test"]
    heights = [bar.get_height() for bar in panels[1].patches]
    np.testing.assert_allclose(heights[:3], 100 * ds["teacher_probe_test_acc"].mean("seed"))
    np.testing.assert_allclose(heights[3:], 100 * ds["probe_test_acc"].mean("seed"))


def _overlaps(boxes: list[tuple[str, object]]) -> list[str]:
    """The pairs of named display boxes that overlap by more than a pixel each way."""
    clashes = []
    for i, (name_a, a) in enumerate(boxes):
        for name_b, b in boxes[i + 1:]:
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                clashes.append(f"{name_a} / {name_b}")
    return clashes


def _tick_labels(axis) -> list:
    """The tick labels an axis draws: visible, not empty, at a tick inside its view."""
    low, high = sorted(axis.get_view_interval())
    ticks = [*zip(axis.get_majorticklocs(), axis.get_majorticklabels()),
             *zip(axis.get_minorticklocs(), axis.get_minorticklabels())]
    return [label for loc, label in ticks
            if label.get_visible() and label.get_text() and low <= loc <= high]


def _text_boxes(fig) -> list[tuple[str, object]]:
    """The display boxes of a drawn figure's texts that must not run into each other: the
    suptitle, legends, panel titles, axis labels and horizontal tick labels."""
    renderer = fig.canvas.get_renderer()
    boxes = [("suptitle", t.get_window_extent(renderer)) for t in fig.findobj(matplotlib.text.Text)
             if t.get_text() and t.get_text() == fig.get_suptitle()]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    boxes += [(f"legend {i}", legend.get_window_extent(renderer)) for i, legend in enumerate(legends)]
    for n, ax in enumerate(fig.axes):
        if not ax.axison:
            continue
        panel = f"panel {n} {ax.get_title()!r}"
        texts = [("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)]
        texts += [(f"tick {t.get_text()!r}", t) for axis in (ax.xaxis, ax.yaxis) for t in _tick_labels(axis)
                  if t.get_rotation() % 90 == 0]  # slanted ones: their boxes overlap by design
        boxes += [(f"{panel} {what}", t.get_window_extent(renderer)) for what, t in texts if t.get_text()]
    return boxes


@pytest.mark.parametrize("figure", sorted(plots.FIGURES))
def test_no_legend_title_or_tick_label_runs_into_another(figure: str) -> None:
    func, needs = plots.FIGURES[figure]
    optional = plots.OPTIONAL_SUMMARIES.get(figure, ())
    fig = func(*(BUILDERS[name](2) for name in needs), **{name: BUILDERS[name](2) for name in optional})
    fig.canvas.draw()
    assert not _overlaps(_text_boxes(fig))
    for ax in fig.axes:
        labels = _tick_labels(ax.xaxis) if ax.axison else []
        slant = {t.get_rotation() % 180 for t in labels} - {0.0, 90.0}
        if slant:  # parallel slanted labels: apart by more than a line's height
            (angle,) = slant
            spacing = np.diff(sorted(t.get_window_extent().x1 for t in labels))
            line = max(t.get_size() for t in labels) * fig.dpi / 72
            assert (spacing * np.sin(np.radians(angle)) > line).all(), figure


def test_a_finetuning_method_keeps_its_colour_in_every_figure_and_panel() -> None:
    from workflow.finetune import FINETUNE
    from workflow.plots.drawing import FINETUNE_ORDER, finetune_colours

    # Every registered method has its fixed place, so a new one cannot take another's colour.
    assert set(FINETUNE_ORDER) == set(FINETUNE.names())
    fixed = finetune_colours(FINETUNE_ORDER)
    assert len(set(map(str, fixed.values()))) == len(FINETUNE_ORDER)
    # Unlisted methods take new colours and leave the listed ones theirs.
    assert finetune_colours([*FINETUNE_ORDER, "new_a", "new_b"])["stats"] == fixed["stats"]
    # Summaries that hold different methods in different orders (the fine-tuning similarity
    # without full, the curves with all): linear_probe in its one colour in every panel.
    similarity = _similarity(2).sel({"finetuning": ["scratch", "linear_probe"]})
    lineage = plots.lineage(similarity=similarity, similarity_seeds=_similarity_seeds(2))
    curves = plots.training_curves(_pretrain(2), _finetune(2))
    label = "mnist1d → linear_probe"
    colours = {colors.to_hex(_labelled_line(ax, label).get_color()) for ax in lineage.axes if ax.axison}
    colours.add(colors.to_hex(_labelled_line(curves.axes[0], label).get_color()))
    assert colours == {colors.to_hex(fixed["linear_probe"])}


def test_a_palette_that_grows_keeps_its_first_colours() -> None:
    from workflow.plots.drawing import distinct_colours, selection_colours

    ten, twenty = distinct_colours(range(10)), distinct_colours(range(20))
    assert [ten[i] for i in range(10)] == [twenty[i] for i in range(10)]
    assert len({colors.to_hex(c) for c in twenty.values()}) == 20
    # without grey (tab10's and its light shade), for figures that draw a reference in grey
    no_grey = distinct_colours(range(18), grey=False)
    assert len({colors.to_hex(c) for c in no_grey.values()}) == 18
    assert not {"#7f7f7f", "#c7c7c7"} & {colors.to_hex(c) for c in no_grey.values()}
    # a selection has its colour whatever order or subset a figure's summary lists
    assert selection_colours(["random", "el2n-hard"]) == selection_colours(["el2n-hard", "random", "random"])


def test_finetune_methods_offsets_methods_that_train_the_same_parameters() -> None:
    finetune = BUILDERS["finetune"](2)
    ax = plots.finetune_methods(finetune).axes[0]
    # each point's x by its method (colour); a method's sources share its x
    xs: dict[str, set[float]] = {}
    for container in ax.containers:
        point = container.lines[0]
        xs.setdefault(colors.to_hex(point.get_color()), set()).add(float(point.get_xdata()[0]))
    assert all(len(x) == 1 for x in xs.values())
    shifted = [x for (x,) in xs.values()]
    assert len(set(shifted)) == len(shifted)  # no two methods on one x, though full and scratch share a count
    counts = set(finetune["trainable_params"].values[np.isfinite(finetune["trainable_params"].values)].tolist())
    assert all(min(abs(x / c - 1) for c in counts) < 0.1 for x in shifted)


@pytest.mark.parametrize(("scale", "values"), [("linear", (-1.0, -0.01)), ("symlog", (-1e5, -3.0))])
def test_zoo_scores_puts_hidden_covariance_on_symlog_only_when_it_spans_decades(
        scale: str, values: tuple[float, float]) -> None:
    zoo = _zoo(2)
    low, high = values
    covariance = zoo["init_hidden_covariance"]
    zoo["init_hidden_covariance"] = covariance.copy(data=np.geomspace(low, high, covariance.size).reshape(covariance.shape))
    fig = plots.zoo_scores(zoo)
    covariance = [ax for ax in fig.axes if ax.get_xlabel().startswith("hidden covariance")]
    assert covariance and all(ax.get_xscale() == scale for ax in covariance)


def test_a_model_trained_from_no_source_is_labelled_random_init() -> None:
    from workflow.plots.drawing import finetune_label

    assert finetune_label("none", "bn_only", 1) == "random init → bn_only"
    assert finetune_label("none", "scratch", 1) == "from scratch (baseline)"
    assert finetune_label("mnist1d", "full", 1) == "fine-tune: full"
    assert finetune_label("mnist1d", "full", 2) == "mnist1d → full"


@pytest.mark.parametrize(("width", "low", "high", "expected"), [
    (8.0, 200, 900, ["200", "300", "400", "500", "600", "700", "800", "900"]),  # room for every tick
    (3.0, 200, 20000, ["300", "1000", "3000", "10000"]),  # a narrow panel over two decades: 1-3
    (6.0, 200, 20000, ["200", "300", "500", "1000", "2000", "3000", "5000", "10000", "20000"]),
    (1.0, 1, 1e6, ["1", "10⁶"]),  # no room for every decade: LogFormatter thins them
    (4.0, 158.866, 23456.7, ["200", "500", "1000", "2000", "5000", "10000", "20000"]),  # autoscaled ends
])
def test_a_log_axis_labels_as_many_ticks_as_it_has_room_for(width: float, low: float, high: float,
                                                             expected: list[str]) -> None:
    from matplotlib.figure import Figure

    from workflow.plots.drawing import log_axis

    fig = Figure(figsize=(width / 0.775, 3.0))  # the axes take 77.5 % of the figure's width
    ax = fig.add_subplot()
    ax.set_xlim(low, high)
    log_axis(ax, "x")
    fig.canvas.draw()
    ticks = [*zip(ax.xaxis.get_majorticklocs(), ax.xaxis.get_majorticklabels()),
             *zip(ax.xaxis.get_minorticklocs(), ax.xaxis.get_minorticklabels())]
    labels = [t.get_text() for loc, t in sorted(ticks, key=lambda tick: tick[0])
              if low <= loc <= high and t.get_text()]
    assert labels == expected


def test_a_legend_beneath_a_panel_takes_only_as_many_columns_as_fit() -> None:
    from workflow.plots.drawing import legend, panel_grid

    fig, axes = panel_grid(2, (4.6, 4.6))
    for ax, names in zip(axes, (["IMP mask from scratch, FLOPs-matched", "IMP"], ["a", "b", "c", "d"])):
        for name in names:
            ax.plot([0, 1], [0, 1], label=name)
        legend(ax, below=True, fontsize="small")
    fig.canvas.draw()
    assert axes[0].get_legend()._ncols == 1
    assert axes[1].get_legend()._ncols == 3
    assert not _overlaps([(str(i), ax.get_legend().get_window_extent()) for i, ax in enumerate(axes)])


def test_numbers_on_figures_read_plainly() -> None:
    from workflow.plots.drawing import plain_number

    assert [plain_number(v) for v in (300.0, 0.05, 3e6, 1e6, 2e-5)] == ["300", "0.05", "3×10⁶", "10⁶", "2×10⁻⁵"]
    assert [plain_number(v, 3) for v in (1637.2, 68.94, -2.5e7)] == ["1640", "68.9", "-2.5×10⁷"]
