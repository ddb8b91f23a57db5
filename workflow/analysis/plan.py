"""The analysis plan: which stores each analysis writes, and which runs each compares.

Mixed into :class:`workflow.study.Study`, whose runs, paths and coordinates it uses.
Every analysis here compares trained runs along the lineage (similarity), analyses
one model (spectra), or joins two models (relative representations, mode
connectivity); the analysis jobs themselves are in :mod:`workflow.analysis.stages`.
"""

from __future__ import annotations

from typing import Any

from workflow.runs import NO_SOURCE, parse, run_id

# The kinds of edge of the lineage whose two models are compared layer by layer
# (``analyze.similarity.edges``), and the summary that gathers each kind's stores.
SIMILARITY_SUMMARIES = {
    "finetune": "similarity",  # pretrained -> fine-tuned
    "prune": "similarity_prune",  # dense -> pruned
    "distill": "similarity_distill",  # trained teacher -> student
    "seeds": "similarity_seeds",  # first seed <-> second seed
    "within": "similarity_within",  # a model's layers against each other
}
SIMILARITY_EDGES = tuple(SIMILARITY_SUMMARIES)


class AnalysisPlan:
    """The analyses of a study (its ``analyze`` section), for :class:`workflow.study.Study`."""

    config: dict[str, Any]
    root: str

    def similarity_pairs(self) -> dict[str, tuple[str, str]]:
        """Each similarity store -> (run a, run b) whose layers it compares, all layers x all layers.

        One store per edge of the lineage that ``analyze.similarity.edges`` names (see
        :meth:`_similarity`); for ``within`` both runs are the same model.
        """
        return {self.similarity_path(edge, b): (a, b) for edge, (a, b), _ in self._similarity()}

    def similarity_path(self, edge: str, run: str) -> str:
        """The similarity store of an edge of kind ``edge`` that ends at ``run`` (the child,
        the student, the second seed, or the model itself for ``within``)."""
        return f"{self.root}/analyze/similarity/{edge}/{run}/analysis.zarr"

    def activation_runs(self) -> list[str]:
        """Runs whose activations on the probe set are recorded: both ends of every similarity edge."""
        return list(dict.fromkeys(run for _, pair, _ in self._similarity() for run in pair))

    def _similarity(self) -> list[tuple[str, tuple[str, str], dict[str, Any]]]:
        """(edge kind, (run a, run b), coordinates in its summary) of every similarity store.

        Each kind only when its stages exist and ``analyze.similarity.edges`` names it:

        * ``finetune``: each pretrained model -> its fine-tuned children (source, method, seed);
        * ``prune``: the dense model -> every pruned run of its seed (method, rewind, level, seed);
        * ``distill``: the trained teacher -> every student it teaches (method, fraction,
          temperature, alpha, seed). Students of an untrained teacher are left out: an
          untrained teacher is drawn inside each student's job and never stored as a model;
        * ``seeds``: each pretrained and fine-tuned run of the first seed <-> the same run
          of the second (source, model; none with a single seed);
        * ``within``: each pretrained and fine-tuned run against itself (source, model, seed).
        """
        similarity = self.config["analyze"].get("similarity")
        edges = similarity["edges"] if similarity else []
        out: list[tuple[str, tuple[str, str], dict[str, Any]]] = []
        if "finetune" in edges:
            out += [("finetune", (parent, run), self._coords(run, ("source", "method", "seed")))
                    for run in self.finetune_runs() if (parent := self.parent(run)) is not None]
        if "prune" in edges:
            out += [("prune", (run_id("prune_network", method="dense", seed=parse(run)["seed"]), run),
                     self._coords(run, ("method", "rewind", "level", "seed")))
                    for run in self.network_pruning_runs()]
        if "distill" in edges:
            out += [("distill", (self.config["distill"]["teacher"], run),
                     self._coords(run, ("method", "fraction", "temperature", "alpha", "seed")))
                    for run in self.subset_runs("distill") if parse(run)["teacher"] == "trained"]
        if "seeds" in edges:
            out += [("seeds", (a, b), self._model_coords(a, seed=False)) for a, b in self.seed_twins()]
        if "within" in edges:
            out += [("within", (run, run), self._model_coords(run))
                    for run in self.pretrain_runs() + self.finetune_runs()]
        return out

    def spectra_runs(self) -> list[str]:
        """Runs whose NTK, Hessian and weight ranks are analysed (with ``analyze.spectra``)."""
        if "spectra" not in self.config["analyze"]:
            return []
        return self.pretrain_runs() + self.finetune_runs()

    def spectra_path(self, run: str) -> str:
        return f"{self.root}/analyze/spectra/{run}/analysis.zarr"

    def seed_twins(self) -> list[tuple[str, str]]:
        """Every pretrained and fine-tuned run of its stage's first seed, with the same run of
        the second seed: two runs that differ only in their seed (none with a single seed)."""
        twins = []
        for run in self.pretrain_runs() + self.finetune_runs():
            seeds = self.config[parse(run)["stage"]]["seeds"]
            if len(seeds) > 1 and parse(run)["seed"] == seeds[0]:
                twins.append((run, run.rsplit("/", 1)[0] + f"/s{seeds[1]}"))
        return twins

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
        """Each connectivity store -> the two runs joined by a line in weight space.

        With ``analyze.connectivity``: the linear probe and full fine-tuning from one
        pretrained model (the pretrained body, moved or not); full fine-tuning and an
        independent sibling run (with ``finetune.ensemble`` kind ``seeds``); the dense
        model and the last IMP level of each rewind step (a ticket and its parent).
        """
        return {self.connectivity_path(*coords): runs for coords, runs in self._connectivity()}

    def _connectivity(self) -> list[tuple[tuple[str, str, int], tuple[str, str]]]:
        """((pair, source, seed), (run a, run b)) of every connectivity store."""
        if "connectivity" not in self.config["analyze"]:
            return []
        ft = self.config.get("finetune", {"methods": [], "seeds": []})
        kinds = ft.get("ensemble", {}).get("kinds", [])
        out = []
        for src in self.sources():
            for s in ft["seeds"]:
                full = run_id("finetune", source=src, method="full", seed=s)
                if {"full", "linear_probe"} <= set(ft["methods"]):
                    out.append((("probe_full", src, s), (run_id("finetune", source=src, method="linear_probe", seed=s), full)))
                if "seeds" in kinds:
                    out.append((("siblings", src, s), (full, run_id("ensemble", source=src, kind="seeds", seed=s, member=1))))
        if self.has("prune_network") and "imp" in self.config["prune_network"]["methods"]:
            pn = self.config["prune_network"]
            for k in pn["rewind_steps"]:
                for s in pn["seeds"]:
                    ticket = run_id("prune_network", method="imp", rewind=k, seed=s, level=pn["levels"])
                    out.append(((f"ticket_k{k}", NO_SOURCE, s), (run_id("prune_network", method="dense", seed=s), ticket)))
        return out

    def connectivity_path(self, pair: str, source: str, seed: int) -> str:
        return f"{self.root}/analyze/connectivity/{pair}/{source}/s{seed}/analysis.zarr"

    def analysis_spec(self) -> dict[str, Any]:
        """What determines the probe set and the analyses on it."""
        analyze = self.config["analyze"]
        return {"data": self.config["data"]["target"], **{k: analyze[k] for k in ("probe_size", "layers", "conv")}}

    def analysis_settings(self, analysis: str) -> dict[str, Any]:
        """The settings of one analysis (``similarity``, ``spectra``, ``connectivity``) with the probe set's.

        Without ``similarity.edges``: which edges are compared decides which stores
        exist, not what is in one, so changing it must not rerun the others.
        """
        settings = {**self.analysis_spec(), **self.config["analyze"][analysis]}
        settings.pop("edges", None)
        return settings

