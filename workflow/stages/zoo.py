"""A model zoo ("A Model Zoo on Phase Transitions in Neural Networks"): one architecture
trained over a grid of widths, training-set sizes (the load: data per parameter) and
learning rates (the temperature), several seeds per cell. Each model is measured by its
train, validation and test metrics; at initialisation, before it trains, by training-free
scores on its first training examples (each hidden layer's hidden-covariance score, the
NTK's condition number and kernel-target alignment); and after training by its loss
Hessian's top eigenvalue and trace on the examples it trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workflow.runs import parse, run_id
from workflow.stages import TrainingSetup, TrainingStage

if TYPE_CHECKING:
    from pathlib import Path

    from workflow.study import Study

# The model setting that is a zoo's width, per architecture.
WIDTH_SETTING = {"cnn1d": "channels", "mlp": "width", "resnet20": "width"}


class Zoo(TrainingStage):
    name = "zoo"
    stackable = ("lr",)  # the learning rate is elementwise: one pack trains every temperature of a cell
    summary = "zoo"

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"width": r["width"], "size": r["size"], "lr": r["lr"], "seed": r["seed"]}]

    def seed_pairs(self, study: Study) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        """Every two seeds of a cell (the first seed of the two as ``seed``)."""
        seeds = study.config.get("zoo", {}).get("seeds", [])
        out = []
        for run in self.runs(study.config):
            r = parse(run)
            for other in seeds[seeds.index(r["seed"]) + 1:]:
                coords = {**self.summary_entries(study, r)[0], "other_seed": other}
                out.append((coords, (run, run_id("zoo", width=r["width"], size=r["size"], lr=r["lr"], seed=other))))
        return out

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        if "zoo" not in config:
            return []
        zoo = config["zoo"]
        return [run_id("zoo", width=w, size=n, lr=float(lr), seed=s)
                for w in zoo["widths"] for n in zoo["sizes"] for lr in zoo["lrs"] for s in zoo["seeds"]]

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        model = dict(study.config["model"])
        model[WIDTH_SETTING[model["name"]]] = r["width"]
        zoo = study.config["zoo"]
        return {"model": model, "size": r["size"], "lr": r["lr"],
                "train": {**study.train_config("zoo"), "lr": r["lr"]}, "hessian": zoo["hessian"],
                "init_scores": zoo["init_scores"]}

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        import numpy as np
        import xarray as xr

        from workflow.analysis.ntk import ntk_analysis
        from workflow.analysis.training_free import layer_scores

        # The first `size` training examples: nested across sizes, the same for every seed.
        setup.data = setup.data.subset(np.arange(spec["size"]))
        n = min(spec["init_scores"]["examples"], spec["size"])
        x, y = setup.data.x_train[:n], setup.data.y_train[:n]
        hidden = [name for name in setup.model.layers if name != "head"]
        scores = layer_scores(setup.model, x, hidden)
        setup.metrics["init_hidden_covariance"] = xr.DataArray(list(scores.values()), dims="layer",
                                                               coords={"layer": hidden})
        ntk = ntk_analysis(setup.model, x, y, batch_size=n)
        setup.metrics["init_ntk_condition_number"] = xr.DataArray(float(ntk["condition_number"]))
        setup.metrics["init_ntk_alignment"] = xr.DataArray(float(ntk["alignment_centered"]))

    def finish(self, spec: Mapping[str, Any], setup: TrainingSetup) -> None:
        import xarray as xr

        from workflow.analysis.hessian import hessian_analysis

        settings = spec["hessian"]
        n = min(settings["examples"], len(setup.data.y_train))
        found = hessian_analysis(setup.model, setup.data.x_train[:n], setup.data.y_train[:n], k=1,
                                 num_probes=settings["probes"], seed=setup.seed, batch_size=settings["batch_size"])
        setup.metrics["hessian_top_eigenvalue"] = xr.DataArray(float(found["eigenvalues"][0]))
        setup.metrics["hessian_trace"] = xr.DataArray(float(found["trace"]))
