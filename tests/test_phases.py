"""Tests for the phase classification on synthetic metric grids."""

from __future__ import annotations

import numpy as np
import xarray as xr

from workflow.analysis.phases import PHASES, Thresholds, classify

T = Thresholds(barrier=0.02, hessian_trace=100.0, cka=0.8)


def _grid(values: list[list[float]]) -> xr.DataArray:
    return xr.DataArray(np.array(values, dtype=float), dims=("load", "temperature"),
                        coords={"load": [1, 2], "temperature": [0.1, 0.2, 0.3]})


def test_each_cell_takes_the_phase_of_its_metrics() -> None:
    barrier = _grid([[0.10, 0.10, 0.00], [0.00, 0.01, 0.00]])
    trace = _grid([[500, 50, 500], [50, 50, 50]])
    cka = _grid([[0.9, 0.9, 0.9], [0.5, 0.95, np.nan]])
    phase = classify(barrier, trace, cka, T)
    assert phase.dims == ("load", "temperature")
    assert phase.values.tolist() == [["I", "II", "III"], ["IV-A", "IV-B", ""]]
    assert set(phase.values.ravel()) - {""} <= set(PHASES)


def test_thresholds_are_inclusive_below_and_decide_the_boundary() -> None:
    at = classify(_grid([[0.02] * 3] * 2), _grid([[100] * 3] * 2), _grid([[0.8] * 3] * 2), T)
    assert set(at.values.ravel()) == {"IV-A"}  # at every threshold: no barrier, flat, not alike
    looser = Thresholds(barrier=0.2, hessian_trace=1000.0, cka=0.5)
    barrier = _grid([[0.10, 0.10, 0.00], [0.00, 0.01, 0.00]])
    trace = _grid([[500, 50, 500], [50, 50, 50]])
    cka = _grid([[0.9, 0.9, 0.9], [0.6, 0.95, 0.7]])
    assert set(classify(barrier, trace, cka, looser).values.ravel()) == {"IV-B"}


def test_a_missing_barrier_or_trace_leaves_the_cell_unclassified() -> None:
    barrier = _grid([[np.nan, 0.1, 0.0], [0.0, 0.0, 0.0]])
    trace = _grid([[50, 50, np.nan], [50, 50, 50]])
    cka = _grid([[0.9] * 3] * 2)
    phase = classify(barrier, trace, cka, T)
    assert phase.values[0].tolist() == ["", "II", ""]
