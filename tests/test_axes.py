"""The summaries' vocabulary (workflow.axes): names safe for xarray's keyword selection,
a long name and unit for every variable, stacked axes and their grid view."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import xarray as xr

from workflow import axes
from workflow.analysis.similarity import MEASURES
from workflow.jobs import described
from workflow.summaries import crossed


def test_no_axis_is_named_like_an_argument_of_xarrays_selection() -> None:
    arguments = {name for f in (xr.Dataset.sel, xr.Dataset.isel, xr.Dataset.interp, xr.Dataset.reindex,
                                xr.DataArray.sel, xr.DataArray.isel, xr.DataArray.interp)
                 for name, p in inspect.signature(f).parameters.items() if p.kind is not p.VAR_KEYWORD} - {"self"}
    assert arguments <= axes.SELECTION_ARGUMENTS
    names = set(axes.DIMENSIONS) | {name for names in axes.STACKED.values() for name in names}
    assert not names & axes.SELECTION_ARGUMENTS
    assert "method" not in names


@pytest.mark.parametrize("name", [*MEASURES, "train_loss", "test_acc", "test_error_barrier",
                                  "train_loss_max_minus_mean_of_ends", "weight_entropy",
                                  "representation_participation_ratio", "kept_size", "stable"])
def test_every_variable_a_summary_can_hold_has_a_long_name_and_a_unit(name: str) -> None:
    long_name, units, kind = axes.variable_info(name)
    assert long_name and units and kind in ("float", "int", "bool")


def test_accuracies_and_errors_have_one_unit() -> None:
    units = {axes.variable_info(name)[1] for name in ("train_acc", "test_acc", "test_error", "test_error_barrier",
                                                      "stitched_acc", "member_acc", "density")}
    assert units == {axes.FRACTION}


def test_a_variable_outside_the_vocabulary_is_an_error() -> None:
    with pytest.raises(KeyError, match="not in the vocabulary"):
        axes.variable_info("test_accuracy")


def test_model_labels_are_run_ids_without_the_seed() -> None:
    assert axes.model_coords("finetune/mnist1d/full/s3") == {
        "model": "finetune/mnist1d/full", "stage": "finetune", "source": "mnist1d", "finetuning": "full", "seed": 3}
    assert axes.model_coords("finetune/scratch/s0", seed=False) == {
        "model": "finetune/scratch", "stage": "finetune", "source": "none", "finetuning": "scratch"}
    assert axes.model_coords({"stage": "pretrain", "source": "synthetic", "seed": 1})["model"] == "pretrain/synthetic"
    assert axes.pair_coords("ticket_k20", "none") == {"pair": "ticket_k20/none", "ends": "ticket_k20", "source": "none"}


def _stored_finetune() -> xr.Dataset:
    """A finetune summary as collect writes it: a stacked model axis, every cell filled."""
    labels = [("finetune/mnist1d/full", "mnist1d", "full"), ("finetune/scratch", "none", "scratch"),
              ("finetune/synthetic/full", "synthetic", "full")]
    acc = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, 0.4]])
    return xr.Dataset(
        {"test_acc": (("model", "seed"), acc), "trainable_params": (("model", "seed"), np.full((3, 2), 10.0)),
         "stable": (("model", "seed"), np.ones((3, 2)))},
        coords={"model": [m for m, _, _ in labels], "stage": ("model", ["finetune"] * 3),
                "source": ("model", [s for _, s, _ in labels]), "finetuning": ("model", [f for _, _, f in labels]),
                "seed": [0, 1]})


def test_the_grid_view_unstacks_the_model_axis_into_source_and_finetuning() -> None:
    grid = crossed(_stored_finetune())
    assert grid["test_acc"].dims == ("source", "finetuning", "seed")
    assert grid["test_acc"].sel(source="mnist1d", finetuning="full").values.tolist() == [0.9, 0.8]
    assert grid["test_acc"].sel(source="none", finetuning="scratch").values.tolist() == [0.7, 0.6]
    assert grid["test_acc"].sel(source="none", finetuning="full").isnull().all()  # no such run
    assert crossed(grid).identical(grid)  # nothing stacked: unchanged


def test_described_gives_the_vocabulary_attributes_and_integer_counts_and_boolean_flags() -> None:
    ds = described(_stored_finetune())
    assert ds["test_acc"].attrs == {"long_name": "test accuracy", "units": axes.FRACTION}
    assert ds["trainable_params"].dtype == np.int64 and ds["stable"].dtype == bool
    assert ds["model"].attrs["long_name"] == axes.DIMENSIONS["model"]
    holes = _stored_finetune()
    holes["trainable_params"][0, 0] = np.nan  # a missing cell stays NaN: no integer can say so
    assert described(holes)["trainable_params"].dtype == np.float64
