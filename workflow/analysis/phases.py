"""The phases of a model zoo's loss landscapes ("Taxonomizing local versus global structure
in neural network loss landscapes", Yang et al.; "A Model Zoo on Phase Transitions in
Neural Networks"): each cell of the load x temperature plane is classified by its global
structure (is the linear path between two seeds' solutions free of a barrier?), its local
structure (is the Hessian's trace small?) and, where both are benign, by whether
independently trained models represent alike (CKA between seeds).

========  =================  ==============  ==============
phase     barrier between    Hessian trace   CKA between
          seeds                              seeds
========  =================  ==============  ==============
I         above threshold    above           any
II        above              at most         any
III       at most            above           any
IV-A      at most            at most         at most
IV-B      at most            at most         above
========  =================  ==============  ==============

The thresholds are the caller's (a study's config); a cell with a missing metric it needs
is unclassified ("").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

PHASES: dict[str, str] = {
    "I": "poorly connected globally (a barrier between seeds), sharp locally (large Hessian trace)",
    "II": "poorly connected globally, flat locally",
    "III": "well connected globally (no barrier), sharp locally",
    "IV-A": "well connected, flat, and seeds represent differently (low CKA)",
    "IV-B": "well connected, flat, and seeds represent alike (high CKA): the best-generalising phase",
}


@dataclass(frozen=True)
class Thresholds:
    """Where each metric turns: above ``barrier`` a path has a barrier, above
    ``hessian_trace`` a minimum is sharp, above ``cka`` seeds represent alike."""

    barrier: float
    hessian_trace: float
    cka: float


def classify(barrier: xr.DataArray, hessian_trace: xr.DataArray, cka: xr.DataArray,
             thresholds: Thresholds) -> xr.DataArray:
    """The phase of each cell (labels of :data:`PHASES`), from its metrics (e.g. each the
    mean over the cell's seeds), broadcast against each other."""
    barrier, hessian_trace, cka = xr.broadcast(barrier, hessian_trace, cka)
    connected = (barrier <= thresholds.barrier).values
    sharp = (hessian_trace > thresholds.hessian_trace).values
    similar = (cka > thresholds.cka).values
    known = (barrier.notnull() & hessian_trace.notnull()).values
    known_iv = known & cka.notnull().values
    labels = np.select(
        [known & ~connected & sharp, known & ~connected & ~sharp, known & connected & sharp,
         known_iv & connected & ~sharp & ~similar, known_iv & connected & ~sharp & similar],
        ["I", "II", "III", "IV-A", "IV-B"], default="")
    return xr.DataArray(labels.astype(object), dims=barrier.dims, coords=barrier.coords, name="phase",
                        attrs={"long_name": "loss-landscape phase", "thresholds": str(thresholds)})
