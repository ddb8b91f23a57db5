"""Network pruning: the dense run, and at each IMP level n of each rewind step k one run
of every method of :data:`PRUNING`.

The dense run of each seed trains once and keeps its weights at every rewind step.
A pruned run takes its masks from its parent's model file (the previous IMP level,
the IMP run of its level, or the dense run), starts from the dense run's weights at
step k or from a fresh initialisation, and retrains with its masks held after every
optimiser step. The mask arithmetic is in :mod:`workflow.prune_network`.

Adding a method: write its masks (a function of the parent's trained weights, the
parent's masks and the run's spec) and register it below with ``@method(name,
parent=...)``; then add the name to ``prune_network.methods`` in
``config/schema.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from workflow import axes
from workflow.registry import Registry
from workflow.runs import NO_SOURCE, run_id
from workflow.stages import TrainingSetup, TrainingStage

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from workflow.study import Study

    Masks = dict[str, torch.Tensor]

# Controls on fresh weights are initialised from this seed plus the run's seed: not the
# dense run's initialisation.
REINIT_SEED = 20_000
# Where a method takes its parent from, at IMP level n.
PARENTS = ("previous", "imp", "dense")  # IMP level n-1 (the dense run at n = 1); IMP level n; the dense run


@dataclass(frozen=True)
class PruningMethod:
    """How one network-pruning method starts a run at IMP level n of rewind step k.

    ``masks(trained, masks, spec)``: the run's masks, from the parent's trained prunable
    weights and the parent's masks (None for the dense run).
    """

    masks: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor] | None, Mapping[str, Any]], Masks]
    parent: str = "imp"  # one of PARENTS
    fresh_weights: bool = False  # a fresh initialisation, not the rewind point of the dense run
    flops_matched: bool = False  # as many more epochs as the mask saves multiply-adds (Scratch-B)

    def __post_init__(self) -> None:
        if self.parent not in PARENTS:
            raise ValueError(f"parent {self.parent!r} unknown; allowed: {', '.join(PARENTS)}")


PRUNING: Registry[PruningMethod] = Registry("network-pruning method")


def method(name: str, *, parent: str = "imp", fresh_weights: bool = False, flops_matched: bool = False):
    """Decorator: register a masks function as the network-pruning method ``name``."""

    def add(masks: Callable[..., Masks]) -> Callable[..., Masks]:
        PRUNING.register(name)(PruningMethod(masks, parent, fresh_weights, flops_matched))
        return masks

    return add


@method("imp", parent="previous")
def _imp(trained: Mapping[str, torch.Tensor], masks: Masks | None, spec: Mapping[str, Any]) -> Masks:
    """Iterative magnitude pruning: the smallest ``fraction`` of the weights level n-1 kept."""
    from workflow.prune_network import magnitude_masks

    return magnitude_masks(trained, masks, spec["fraction"], spec["scope"])


@method("oneshot", parent="dense")
def _oneshot(trained: Mapping[str, torch.Tensor], masks: Masks | None, spec: Mapping[str, Any]) -> Masks:
    """The trained dense model pruned at once to IMP level n's weight counts."""
    from workflow.prune_network import magnitude_masks

    # Levels of pruning with no training between them rank the same magnitudes.
    for _ in range(spec["level"]):
        masks = magnitude_masks(trained, masks, spec["fraction"], spec["scope"])
    assert masks is not None
    return masks


@method("random")
def _random(trained: Mapping[str, torch.Tensor], masks: Masks | None, spec: Mapping[str, Any]) -> Masks:
    """A random mask with IMP level n's per-layer densities, on the rewound weights."""
    import torch

    from workflow.prune_network import random_masks

    assert masks is not None
    return random_masks(masks, torch.Generator().manual_seed(spec["seed"]))


@method("erk")
def _erk(trained: Mapping[str, torch.Tensor], masks: Masks | None, spec: Mapping[str, Any]) -> Masks:
    """A random mask at Erdős–Rényi-Kernel layer densities with IMP level n's global density."""
    import torch

    from workflow.prune_network import erk_masks

    assert masks is not None
    return erk_masks(masks, torch.Generator().manual_seed(spec["seed"]))


def _imp_mask(trained: Mapping[str, torch.Tensor], masks: Masks | None, spec: Mapping[str, Any]) -> Masks:
    """IMP level n's mask itself."""
    assert masks is not None
    return dict(masks)


method("reinit", fresh_weights=True)(_imp_mask)  # the lottery ticket paper's control (Scratch-E)
method("scratch", fresh_weights=True, flops_matched=True)(_imp_mask)  # Scratch-B

PRUNING_METHODS: tuple[str, ...] = tuple(PRUNING)


class NetworkPruning(TrainingStage):
    """The dense run of each seed (level 0), then every method x rewind step x seed x level."""

    name = "prune_network"
    stackable = ("method", "level", "rewind", "init_seed")  # masks and start weights
    summary = "network_pruning"
    method_axis = "pruning"

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A pruned run at its level; the dense run at level 0 of every method and rewind step."""
        if r["method"] != "dense":
            return [{self.method_axis: r["method"], "rewind": r["rewind"], "level": r["level"], "seed": r["seed"]}]
        pn = study.config["prune_network"]
        return [{self.method_axis: m, "rewind": k, "level": 0, "seed": r["seed"]}
                for m in pn["methods"] for k in pn["rewind_steps"]]

    def lineage(self, study: Study, r: Mapping[str, Any]) -> tuple[str, str] | None:
        """The dense model -> every pruned run of its seed."""
        return ("prune", run_id("prune_network", method="dense", seed=r["seed"])) if r["method"] != "dense" else None

    def connections(self, study: Study) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        """The dense model and the last IMP level of each rewind step: a ticket and its parent."""
        pn = study.config.get("prune_network")
        if pn is None or "imp" not in pn["methods"]:
            return []
        return [({**axes.pair_coords(f"ticket_k{k}", NO_SOURCE), "seed": s},
                 (run_id("prune_network", method="dense", seed=s),
                  run_id("prune_network", method="imp", rewind=k, seed=s, level=pn["levels"])))
                for k in pn["rewind_steps"] for s in pn["seeds"]]

    def decided_by_job(self, spec: Mapping[str, Any]) -> tuple[str, ...]:
        # FLOPs-matched epochs follow the masks, which follow the parent's trained weights
        # (with global pruning they differ between seeds and rewind steps).
        flops_matched = spec["method"] != "dense" and PRUNING[spec["method"]].flops_matched
        return ("epochs",) if flops_matched else ()

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        if "prune_network" not in config:
            return []
        pn = config["prune_network"]
        dense = [run_id("prune_network", method="dense", seed=s) for s in pn["seeds"]]
        return dense + [
            run_id("prune_network", method=m, rewind=k, seed=s, level=n)
            for m in pn["methods"] for k in pn["rewind_steps"] for s in pn["seeds"] for n in range(1, pn["levels"] + 1)
        ]

    def parent(self, study: Study, r: Mapping[str, Any]) -> str | None:
        if r["method"] == "dense":
            return None
        dense = run_id("prune_network", method="dense", seed=r["seed"])
        parent = PRUNING[r["method"]].parent
        if parent == "dense" or (parent == "previous" and r["level"] == 1):
            return dense
        level = r["level"] - 1 if parent == "previous" else r["level"]
        return run_id("prune_network", method="imp", rewind=r["rewind"], seed=r["seed"], level=level)

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        pn = study.config["prune_network"]
        if r["method"] == "dense":
            return {"method": "dense", "rewind_steps": pn["rewind_steps"]}  # the snapshots every pruned run rewinds to
        spec = {"method": r["method"], "level": r["level"], "fraction": pn["fraction"], "scope": pn["scope"],
                "rewind": r["rewind"]}
        if PRUNING[r["method"]].fresh_weights:
            spec["init_seed"] = REINIT_SEED + r["seed"]
        return spec

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        from dataclasses import replace

        import torch
        import xarray as xr

        from workflow import storage
        from workflow.models import seeded_model
        from workflow.prune_network import density, layer_densities, multiply_adds, prunable_parameters
        from workflow.runtime import seed_everything

        model = setup.model
        if spec["method"] == "dense":
            setup.snapshot_steps = tuple(spec["rewind_steps"])
            kept = {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable_parameters(model).items()}
        else:
            how = PRUNING[spec["method"]]
            parent = storage.load_torch(inputs["parent"])
            trained = {name: parent["state_dict"][name] for name in prunable_parameters(model)}
            setup.masks = kept = how.masks(trained, parent["masks"], spec)
            if how.fresh_weights:
                seed_everything(spec["init_seed"])
                fresh = seeded_model(spec["model"], setup.data.in_length, setup.data.num_classes, spec["init_seed"],
                                     setup.device)
                model.load_state_dict(fresh.state_dict())
            else:  # rewind: surviving weights restart from their values at the rewind step
                model.load_state_dict(parent["rewind"][spec["rewind"]])
            if how.flops_matched:
                example = setup.data.x_train[0]
                ratio = multiply_adds(model, example) / multiply_adds(model, example, kept)
                setup.cfg = replace(setup.cfg, epochs=round(setup.cfg.epochs * ratio))
            setup.rewind = {spec["rewind"]: parent["rewind"][spec["rewind"]]}
        per_layer = layer_densities(kept)
        setup.metrics["density"] = xr.DataArray(density(kept), attrs={"description": "fraction of prunable weights kept"})
        setup.metrics["layer_density"] = xr.DataArray(
            list(per_layer.values()), dims="param", coords={"param": list(per_layer)},
            attrs={"description": "fraction of each prunable tensor kept"},
        )
