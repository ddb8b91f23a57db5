"""The analysis plan: which stores each analysis writes, and which runs each compares.

Mixed into :class:`workflow.study.Study`, whose runs, paths and coordinates it uses.
Every analysis here compares trained runs along the lineage (similarity), analyses
one model (spectra), or joins two models (relative representations, mode
connectivity); the analysis jobs themselves are in :mod:`workflow.analysis.stages`.
"""

from __future__ import annotations

from typing import Any

from workflow import axes
from workflow.runs import parse
from workflow.stages.registry import TRAINING_STAGES

# The kinds of edge of the lineage whose two models are compared layer by layer
# (``analyze.similarity.edges``), and the summary that gathers each kind's stores.
SIMILARITY_SUMMARIES = {
    "finetune": "similarity",  # pretrained -> fine-tuned
    "prune": "similarity_prune",  # dense -> pruned
    "distill": "similarity_distill",  # trained teacher -> student
    "seeds": "similarity_seeds",  # first seed <-> second seed
    "within": "similarity_within",  # a model's layers against each other
    "seed_pairs": "similarity_seed_pairs",  # every two seeds a stage pairs (a zoo's cells), with the seeds edge
}
# The models whose hidden units the connectivity analysis can align (analyze.connectivity.align;
# workflow.analysis.alignment), named here so that checking a config loads no torch.
ALIGNABLE_MODELS = ("cnn1d", "mlp")
# The edges a study names (the seed pairs a stage declares come with ``seeds``).
SIMILARITY_EDGES = tuple(edge for edge in SIMILARITY_SUMMARIES if edge != "seed_pairs")


class AnalysisPlan:
    """The analyses of a study (its ``analyze`` section), for :class:`workflow.study.Study`."""

    config: dict[str, Any]
    root: str

    def similarity_pairs(self) -> dict[str, tuple[str, str]]:
        """Each similarity store -> (run a, run b) whose layers it compares, all layers x all layers.

        One store per edge of the lineage that ``analyze.similarity.edges`` names (see
        :meth:`_similarity`); for ``within`` both runs are the same model.
        """
        return {self._similarity_store(edge, a, b): (a, b) for edge, (a, b), _ in self._similarity()}

    def similarity_path(self, edge: str, run: str) -> str:
        """The similarity store of an edge of kind ``edge`` that ends at ``run`` (the child,
        the student, the second seed, or the model itself for ``within``)."""
        return f"{self.root}/analyze/similarity/{edge}/{run}/analysis.zarr"

    def seed_pair_path(self, kind: str, a: str, b: str) -> str:
        """The ``similarity`` or ``connectivity`` store of a seed pair (:meth:`~workflow.stages.TrainingStage.seed_pairs`)."""
        return f"{self.root}/analyze/{kind}/seed_pairs/{a}/vs_s{parse(b)['seed']}/analysis.zarr"

    def _similarity_store(self, edge: str, a: str, b: str) -> str:
        return self.seed_pair_path("similarity", a, b) if edge == "seed_pairs" else self.similarity_path(edge, b)

    def _seed_pairs(self) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        return [pair for stage in TRAINING_STAGES.values() for pair in stage.seed_pairs(self)]

    def activation_runs(self) -> list[str]:
        """Runs whose activations on the probe set are recorded: both ends of every similarity edge."""
        return list(dict.fromkeys(run for _, pair, _ in self._similarity() for run in pair))

    def _similarity(self) -> list[tuple[str, tuple[str, str], dict[str, Any]]]:
        """(edge kind, (run a, run b), coordinates in its summary) of every similarity store,
        by kind in the order of :data:`SIMILARITY_EDGES`.

        Each kind only when ``analyze.similarity.edges`` names it: the edges of the lineage
        each stage declares (:meth:`~workflow.stages.TrainingStage.lineage`; the run at its
        end is placed as in its stage's summary), and, over the models analysed one by one
        (:meth:`analysed_runs`): ``seeds``, each run of the first seed <-> the same run of
        the second (none with a single seed); ``within``, each run against itself.
        """
        similarity = self.config["analyze"].get("similarity")
        edges = similarity["edges"] if similarity else []
        out: list[tuple[str, tuple[str, str], dict[str, Any]]] = []
        for stage in TRAINING_STAGES.values():
            for run in stage.runs(self.config):
                r = parse(run)
                if (edge := stage.lineage(self, r)) is not None and edge[0] in edges:
                    out.append((edge[0], (edge[1], run), stage.summary_entries(self, r)[0]))
        if "seeds" in edges:
            out += [("seeds", (a, b), axes.model_coords(a, seed=False)) for a, b in self.seed_twins()]
            out += [("seed_pairs", pair, coords) for coords, pair in self._seed_pairs()]
        if "within" in edges:
            out += [("within", (run, run), axes.model_coords(run)) for run in self.analysed_runs()]
        return sorted(out, key=lambda item: list(SIMILARITY_SUMMARIES).index(item[0]))

    def analysed_runs(self) -> list[str]:
        """The runs analysed as models one by one: those of the stages that ask for it
        (:attr:`~workflow.stages.TrainingStage.analysed`; pretrained and fine-tuned models)."""
        return [run for stage in TRAINING_STAGES.values() if stage.analysed for run in stage.runs(self.config)]

    def spectra_runs(self) -> list[str]:
        """Runs whose NTK, Hessian and weight ranks are analysed (with ``analyze.spectra``)."""
        return self.analysed_runs() if "spectra" in self.config["analyze"] else []

    def spectra_path(self, run: str) -> str:
        return f"{self.root}/analyze/spectra/{run}/analysis.zarr"

    def seed_twins(self) -> list[tuple[str, str]]:
        """Every pretrained and fine-tuned run of its stage's first seed, with the same run of
        the second seed: two runs that differ only in their seed (none with a single seed)."""
        twins = []
        for run in self.analysed_runs():
            seeds = self.config[parse(run)["stage"]]["seeds"]
            if len(seeds) > 1 and parse(run)["seed"] == seeds[0]:
                twins.append((run, run.rsplit("/", 1)[0] + f"/s{seeds[1]}"))
        return twins

    def manifold_runs(self) -> list[str]:
        """The zoo's runs whose class-manifold dimension is measured (with ``analyze.manifold``):
        those on the widths, sizes, learning rates and seeds it selects (None: all)."""
        manifold = self.config["analyze"].get("manifold")
        if manifold is None:
            return []
        chosen = {axis: manifold[key] for axis, key in (("width", "widths"), ("size", "sizes"), ("lr", "lrs"),
                                                        ("seed", "seeds")) if manifold[key] is not None}
        return [run for run in TRAINING_STAGES["zoo"].runs(self.config)
                if all(parse(run)[axis] in values for axis, values in chosen.items())]

    def manifold_path(self, run: str) -> str:
        return f"{self.root}/analyze/manifold/{run}/analysis.zarr"

    def relative_pairs(self) -> dict[str, tuple[str, str]]:
        """Each relative-representation store -> two runs that differ only in their seed.

        With ``analyze.relative``: the :meth:`seed_twins`.
        """
        if "relative" not in self.config["analyze"]:
            return {}
        return {self.relative_path(a, parse(b)["seed"]): (a, b) for a, b in self.seed_twins()}

    def relative_path(self, run: str, other_seed: int) -> str:
        return f"{self.root}/analyze/relative/{run}/vs_s{other_seed}/analysis.zarr"

    def connectivity_pairs(self) -> dict[str, tuple[str, str]]:
        """Each connectivity store -> the two runs joined by a line in weight space: the pairs
        each stage declares (:meth:`~workflow.stages.TrainingStage.connections`), with
        ``analyze.connectivity``."""
        pairs = {self.connectivity_path(coords): pair for coords, pair in self._connectivity()}
        pairs.update({path: pair for _, path, pair in self._seed_pair_connectivity()})
        return pairs

    def _seed_pair_connectivity(self) -> list[tuple[dict[str, Any], str, tuple[str, str]]]:
        """(coordinates, store, (run a, run b)) of every seed pair's connectivity, with ``analyze.connectivity``."""
        if "connectivity" not in self.config["analyze"]:
            return []
        return [(coords, self.seed_pair_path("connectivity", a, b), (a, b)) for coords, (a, b) in self._seed_pairs()]

    def _connectivity(self) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        """(coordinates in the summary, (run a, run b)) of every connectivity store."""
        if "connectivity" not in self.config["analyze"]:
            return []
        return [connection for stage in TRAINING_STAGES.values() for connection in stage.connections(self)]

    def connectivity_path(self, coords: dict[str, Any]) -> str:
        """The store of a connectivity pair, from its coordinates (:func:`workflow.axes.pair_coords`, seed)."""
        return f"{self.root}/analyze/connectivity/{coords['ends']}/{coords['source']}/s{coords['seed']}/analysis.zarr"

    def analysis_summaries(self) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """Per analysis summary: its stores, each with its coordinates."""
        out: dict[str, list[tuple[dict[str, Any], str]]] = {name: [] for name in SIMILARITY_SUMMARIES.values()}
        for edge, (a, b), where in self._similarity():
            out[SIMILARITY_SUMMARIES[edge]].append((where, self._similarity_store(edge, a, b)))
        out["spectra"] = [(axes.model_coords(run), self.spectra_path(run)) for run in self.spectra_runs()]
        zoo = TRAINING_STAGES["zoo"]
        out["manifold"] = [(zoo.summary_entries(self, parse(run))[0], self.manifold_path(run))
                           for run in self.manifold_runs()]
        out["relative"] = [(axes.model_coords(a, seed=False), path) for path, (a, _) in self.relative_pairs().items()]
        out["connectivity"] = [(coords, self.connectivity_path(coords)) for coords, _ in self._connectivity()]
        out["connectivity_seed_pairs"] = [(coords, path) for coords, path, _ in self._seed_pair_connectivity()]
        return out

    def analysis_spec(self) -> dict[str, Any]:
        """What determines the probe set and the analyses on it."""
        analyze = self.config["analyze"]
        return {"data": self.config["data"]["target"], **{k: analyze[k] for k in ("probe_size", "layers", "conv")}}

    def analysis_settings(self, analysis: str) -> dict[str, Any]:
        """The settings of one analysis (``similarity``, ``spectra``, ``connectivity``, ``manifold``)
        with the probe set's.

        Without ``similarity.edges``, nor the models ``manifold`` selects: which edges or
        models are analysed decides which stores exist, not what is in one, so changing it
        must not rerun the others. ``manifold`` searches random inputs, not the probe set:
        only the task's spec joins its own settings.
        """
        own = dict(self.config["analyze"][analysis])
        if analysis == "manifold":  # on random inputs, of the models it selects: no probe set
            return {"data": self.config["data"]["target"],
                    **{k: v for k, v in own.items() if k not in ("widths", "sizes", "lrs", "seeds")}}
        own.pop("edges", None)
        if not own.get("align", True):  # align: false is the plain line alone, as without the key
            own.pop("align")
        return {**self.analysis_spec(), **own}

