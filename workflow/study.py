"""The plan of a study: which runs it has, where they live, and what defines each.

A *run* is one model produced by one stage with one resolved configuration. Its id
is its readable folder under the results root, e.g. ``pretrain/mnist1d/s0``,
``finetune/synthetic/lora/s1`` or ``prune_data/el2n-hard/f0.25/s1``. :meth:`Study.spec` gives everything that
determines a run (data, model, training settings, seed, method settings, parent):
the workflow passes it to the job, so changing any of it reruns that run and what
depends on it, and nothing else.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import numpy as np

from workflow.config import STAGES, load_config

# The folders of a run id after its stage, in order; a stage may have several
# layouts of different lengths (network pruning: the dense run, and the pruned ones).
RUN_LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pretrain": (("source", "seed"),),
    "finetune": (("method", "seed"), ("source", "method", "seed")),  # scratch has no source
    "prune_data": (("method", "fraction", "seed"),),
    "distill": (("teacher", "method", "fraction", "kd", "seed"),),
    "prune_network": (("method", "seed"), ("method", "rewind", "seed", "level")),
    "ensemble": (("source", "kind", "seed", "member"),),
}
# Ensembles from one pretrained checkpoint: independent fine-tuning runs; snapshot
# cycles in sequence (SSE); snapshot cycles each from the fine-tuned model (StarSSE).
ENSEMBLE_KINDS = ("seeds", "sse", "starsse")
_FIELD_PATTERNS = {
    "seed": re.compile(r"s(?P<seed>\d+)"),
    "source": re.compile(r"(?P<source>[a-z][a-z0-9_]*)"),
    "method": re.compile(r"(?P<method>[a-z0-9_]+(-[a-z0-9_]+)?)"),
    "teacher": re.compile(r"(?P<teacher>trained|untrained)"),
    "fraction": re.compile(r"f(?P<fraction>[0-9.]+)"),
    "kd": re.compile(r"T(?P<temperature>[0-9.]+)-a(?P<alpha>[0-9.]+)"),
    "rewind": re.compile(r"k(?P<rewind>\d+)"),
    "level": re.compile(r"level(?P<level>\d+)"),
    "kind": re.compile(rf"(?P<kind>{'|'.join(ENSEMBLE_KINDS)})"),
    "member": re.compile(r"m(?P<member>\d+)"),
}
_FIELD_TYPES = {"seed": int, "level": int, "rewind": int, "member": int, "fraction": float, "temperature": float, "alpha": float}
# Data-pruning methods with no keep rule: random subsets, and RS2's fresh random
# subset every epoch.
UNORDERED_METHODS = ("random", "rs2")
# Untrained teachers are initialised from this seed plus the student's seed, so a
# student never starts at its teacher.
UNTRAINED_TEACHER_SEED = 10_000
# Network-pruning controls on fresh weights (reinit, scratch) are initialised from
# this seed plus the run's seed: not the dense run's initialisation.
REINIT_SEED = 20_000
# Network-pruning methods that keep the IMP run's mask (and so depend on it).
IMP_MASK_METHODS = ("reinit", "random", "scratch")
# Fine-tuning methods that take the study's finetune.lora settings (kept here, not
# imported from workflow.finetune, so that planning a study needs no torch).
LORA_METHODS = ("lora", "eva")
# Fine-tuning methods that change the pretrained body: WiSE-FT interpolates from the
# linear probe (the pretrained body with a trained head) to each of them.
WISEFT_METHODS = ("full", "bn_only", "lora", "eva")
# The source coordinate, in summaries, of runs with no pretraining (scratch).
NO_SOURCE = "none"
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
# Ensemble members beyond the first train from this seed (+ 1000 x member + seed).
MEMBER_SEED = 30_000


def number_label(f: float) -> str:
    """``0.25 -> "0.25"``, ``1.0 -> "1"``, ``1e-5 -> "0.00001"``: a number in run ids.

    Positional and exact (shortest round-trip digits), so distinct numbers never
    share a run id and the id parses back to the same number.
    """
    return np.format_float_positional(float(f), trim="-")


def data_pruning_method(score: str, keep: str) -> str:
    """The label of a data-pruning method: ``el2n-hard``; random and rs2 have no keep rule."""
    return score if score in UNORDERED_METHODS else f"{score}-{keep}"


class Study:
    """All runs of one configuration, with their specs, parents and input files."""

    def __init__(self, config: Mapping[str, Any], *, checked: bool = False) -> None:
        self.config = dict(config) if checked else load_config(config)
        self.root = self.config["results"].rstrip("/")

    # --- paths ---------------------------------------------------------------
    def path(self, run: str, name: str = "") -> str:
        """A file of a run, or the run's folder when ``name`` is empty."""
        return f"{self.root}/{run}/{name}".rstrip("/")

    def data_path(self, task: str) -> str:
        """The data file of a task: ``target``, or ``sources/<name>`` for a pretraining task."""
        return f"{self.root}/data/{task}.npz"

    def task_dataset(self, task: str) -> dict[str, Any]:
        """The dataset settings of a task (see :meth:`data_path`)."""
        if task == "target":
            return self.config["data"]["target"]
        kind, _, name = task.partition("/")
        if kind != "sources" or name not in self.sources():
            raise ValueError(f"unknown task {task!r}; allowed: target, " + ", ".join(f"sources/{n}" for n in self.sources()))
        return self.config["data"]["sources"][name]

    def summary_path(self, name: str) -> str:
        return f"{self.root}/summary/{name}.zarr"

    def plot_path(self, figure: str, ext: str) -> str:
        return f"{self.root}/plots/{figure}.{ext}"

    # --- runs ------------------------------------------------------------------
    def has(self, stage: str) -> bool:
        """Whether the study has the stage: a study leaves out the stages it does not ask about."""
        return stage in self.config

    def sources(self) -> list[str]:
        """The names of the pretraining tasks, in config order (none without a pretrain stage)."""
        return list(self.config["data"].get("sources", {})) if self.has("pretrain") else []

    def pretrain_runs(self) -> list[str]:
        return [f"pretrain/{src}/s{s}" for src in self.sources() for s in self.config["pretrain"]["seeds"]]

    def finetune_runs(self) -> list[str]:
        """Every fine-tuning method from every source, and scratch once per seed."""
        if not self.has("finetune"):
            return []
        ft = self.config["finetune"]
        return [
            f"finetune/{m}/s{s}" if m == "scratch" else f"finetune/{src}/{m}/s{s}"
            for m in ft["methods"] for src in ([NO_SOURCE] if m == "scratch" else self.sources()) for s in ft["seeds"]
        ]

    def data_pruning_methods(self) -> list[str]:
        if not self.has("prune_data"):
            return []
        pd = self.config["prune_data"]
        return list(dict.fromkeys(data_pruning_method(s, k) for s in pd["scores"] for k in pd["keep"]))

    def score_stores(self) -> list[str]:
        """Score stores of the study (rs2 needs none: it draws a new subset every epoch)."""
        if not self.has("prune_data"):
            return []
        return [f"prune_data/scores/{s}" for s in self.config["prune_data"]["scores"] if s != "rs2"]

    def score_path(self, method: str) -> str | None:
        """The score store a data-pruning method selects with (``el2n-hard`` -> el2n)."""
        score = method.split("-")[0]
        return None if score == "rs2" else self.path(f"prune_data/scores/{score}", "scores.zarr")

    def subset_runs(self, stage: str) -> list[str]:
        """Runs of ``prune_data`` (method x fraction x seed) or ``distill`` (also x
        teacher x temperature x alpha)."""
        if not self.has("prune_data") or not self.has(stage):
            return []
        pd, d = self.config["prune_data"], self.config.get("distill", {})
        kd = [(f"{stage}/{t}/", f"T{number_label(T)}-a{number_label(a)}/")
              for t in d.get("teachers", []) for T in d.get("temperature", []) for a in d.get("alpha", [])]
        return [
            f"{head}{m}/f{number_label(f)}/{tail}s{s}"
            for head, tail in (kd if stage == "distill" else [(f"{stage}/", "")])
            for m in self.data_pruning_methods()
            for f in pd["fractions"]
            for s in pd["seeds"]
        ]

    def dense_runs(self) -> list[str]:
        """The dense model of each network-pruning seed: level 0 of every method and rewind step."""
        if not self.has("prune_network"):
            return []
        return [f"prune_network/dense/s{s}" for s in self.config["prune_network"]["seeds"]]

    def network_pruning_runs(self) -> list[str]:
        """Pruned runs: method x rewind step x seed x level (1 to ``levels``)."""
        if not self.has("prune_network"):
            return []
        pn = self.config["prune_network"]
        return [
            f"prune_network/{m}/k{k}/s{s}/level{n}"
            for m in pn["methods"]
            for k in pn["rewind_steps"]
            for s in pn["seeds"]
            for n in range(1, pn["levels"] + 1)
        ]

    def training_runs(self) -> list[str]:
        """Every run that trains a model, in DAG order."""
        return (
            self.pretrain_runs()
            + self.finetune_runs()
            + self.subset_runs("prune_data")
            + self.subset_runs("distill")
            + self.dense_runs()
            + self.network_pruning_runs()
            + self.ensemble_runs()
        )

    def ensemble_runs(self) -> list[str]:
        """Extra members of each ensemble (member 0 is the study's ``finetune/<source>/full`` run)."""
        return [run for members in self.ensembles().values() for run in members[1:]]

    def ensembles(self) -> dict[str, list[str]]:
        """Each ensemble's store path -> its members' runs, member 0 first: per source, kind and seed."""
        ens = self.config.get("finetune", {}).get("ensemble")
        if not ens:
            return {}
        return {
            self.ensemble_path(src, kind, s): [f"finetune/{src}/full/s{s}"]
            + [f"ensemble/{src}/{kind}/s{s}/m{k}" for k in range(1, ens["members"])]
            for src in self.sources() for kind in ens["kinds"] for s in self.config["finetune"]["seeds"]
        }

    def ensemble_path(self, source: str, kind: str, seed: int) -> str:
        return f"{self.root}/analyze/ensemble/{source}/{kind}/s{seed}/ensemble.zarr"

    def wiseft_pairs(self) -> dict[str, tuple[str, str]]:
        """Each WiSE-FT store path -> (the linear probe, the fine-tuned run) it interpolates."""
        ft = self.config.get("finetune", {})
        if "wiseft" not in ft:
            return {}
        return {
            self.wiseft_path(src, m, s): (f"finetune/{src}/linear_probe/s{s}", f"finetune/{src}/{m}/s{s}")
            for src in self.sources() for m in ft["methods"] if m in WISEFT_METHODS for s in ft["seeds"]
        }

    def wiseft_path(self, source: str, method: str, seed: int) -> str:
        return f"{self.root}/analyze/wiseft/{source}/{method}/s{seed}/wiseft.zarr"

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
            out += [("prune", (f"prune_network/dense/s{self.parse(run)['seed']}", run),
                     self._coords(run, ("method", "rewind", "level", "seed")))
                    for run in self.network_pruning_runs()]
        if "distill" in edges:
            out += [("distill", (self.config["distill"]["teacher"], run),
                     self._coords(run, ("method", "fraction", "temperature", "alpha", "seed")))
                    for run in self.subset_runs("distill") if self.parse(run)["teacher"] == "trained"]
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
            seeds = self.config[self.parse(run)["stage"]]["seeds"]
            if len(seeds) > 1 and self.parse(run)["seed"] == seeds[0]:
                twins.append((run, run.rsplit("/", 1)[0] + f"/s{seeds[1]}"))
        return twins

    def relative_pairs(self) -> dict[str, tuple[str, str]]:
        """Each relative-representation store -> two runs that differ only in their seed.

        With ``analyze.relative``: the :meth:`seed_twins`.
        """
        if "relative" not in self.config["analyze"]:
            return {}
        return {self.relative_path(a, self.parse(b)["seed"]): (a, b) for a, b in self.seed_twins()}

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
                full = f"finetune/{src}/full/s{s}"
                if {"full", "linear_probe"} <= set(ft["methods"]):
                    out.append((("probe_full", src, s), (f"finetune/{src}/linear_probe/s{s}", full)))
                if "seeds" in kinds:
                    out.append((("siblings", src, s), (full, f"ensemble/{src}/seeds/s{s}/m1")))
        if self.has("prune_network") and "imp" in self.config["prune_network"]["methods"]:
            pn = self.config["prune_network"]
            for k in pn["rewind_steps"]:
                for s in pn["seeds"]:
                    ticket = f"prune_network/imp/k{k}/s{s}/level{pn['levels']}"
                    out.append(((f"ticket_k{k}", NO_SOURCE, s), (f"prune_network/dense/s{s}", ticket)))
        return out

    def connectivity_path(self, pair: str, source: str, seed: int) -> str:
        return f"{self.root}/analyze/connectivity/{pair}/{source}/s{seed}/analysis.zarr"

    # --- identity ----------------------------------------------------------------
    @staticmethod
    def parse(run: str) -> dict[str, Any]:
        """The parts of a run id, by the layout of its stage (see :data:`RUN_LAYOUTS`).

        E.g. ``distill/trained/el2n-hard/f0.25/T4-a0.5/s1`` -> stage, teacher,
        method, fraction, temperature, alpha, seed.
        """
        stage, *parts = run.split("/")
        layouts = RUN_LAYOUTS.get(stage, ())
        layout = next((lay for lay in layouts if len(lay) == len(parts)), None)
        if layout is None:
            shapes = " or ".join(f"{stage}/{'/'.join(lay)}" for lay in layouts) or "<stage>/..."
            raise ValueError(f"run id {run!r} does not match {shapes}")
        out: dict[str, Any] = {"stage": stage}
        for field, part in zip(layout, parts):
            match = _FIELD_PATTERNS[field].fullmatch(part)
            if match is None:
                raise ValueError(f"run id {run!r}: {part!r} is not a {field}")
            for key, value in match.groupdict().items():
                out[key] = _FIELD_TYPES.get(key, str)(value)
        return out

    def parent(self, run: str) -> str | None:
        """The run whose weights this run starts from, if any."""
        r = self.parse(run)
        if r["stage"] == "finetune" and "source" in r:
            return f"pretrain/{r['source']}/s{r['seed']}"
        if r["stage"] == "ensemble":
            src, seed, kind, member = r["source"], r["seed"], r["kind"], r["member"]
            if kind == "seeds":  # another fine-tuning run from the pretrained model
                return f"pretrain/{src}/s{seed}"
            if kind == "sse" and member > 1:  # the next cycle of the snapshot sequence
                return f"ensemble/{src}/sse/s{seed}/m{member - 1}"
            return f"finetune/{src}/full/s{seed}"  # a cycle from the fine-tuned model
        if r["stage"] == "prune_network" and r["method"] != "dense":
            # IMP prunes the previous level; controls take the IMP mask of their level;
            # one-shot pruning starts from the trained dense model.
            dense = f"prune_network/dense/s{r['seed']}"
            imp = f"prune_network/imp/k{r['rewind']}/s{r['seed']}/level{{}}"
            if r["method"] == "imp":
                return dense if r["level"] == 1 else imp.format(r["level"] - 1)
            return imp.format(r["level"]) if r["method"] in IMP_MASK_METHODS else dense
        return None

    def task(self, run: str) -> str:
        """``sources/<name>`` for pretraining, ``target`` for everything after it."""
        r = self.parse(run)
        return f"sources/{r['source']}" if r["stage"] == "pretrain" else "target"

    def train_config(self, stage: str) -> dict[str, Any]:
        """The global ``train`` settings with the stage's overrides on top."""
        return {**self.config["train"], **self.config.get(stage, {}).get("train", {})}

    def score_spec(self, score: str) -> dict[str, Any]:
        """What determines a score store: the method, its settings, data and model."""
        pd = self.config["prune_data"]
        spec: dict[str, Any] = {
            "stage": "scores",
            "score": score,
            "data": self.config["data"]["target"],
        }
        if score in ("el2n", "grand", "forgetting"):
            # scored by models of the study's architecture, trained as prune_data trains
            spec.update(model=self.config["model"], train=self.train_config("prune_data"), **pd[score])
        elif score == "prototypes":
            spec.update(pd["prototypes"], embedding_spec=self.spec(pd["prototypes"]["embedding"]))
        elif score == "random":
            spec["seeds"] = pd["seeds"]  # one independent draw per training seed
        return spec

    def spec(self, run: str) -> dict[str, Any]:
        """Everything that determines a training run."""
        r = self.parse(run)
        stage = r["stage"]
        spec: dict[str, Any] = {
            "run": run,
            "stage": stage,
            "seed": r["seed"],
            "data": self.task_dataset(self.task(run)),
            "model": self.config["model"],
            "train": self.train_config(stage),
            "parent": self.parent(run),
        }
        if stage == "ensemble":
            ens = self.config["finetune"]["ensemble"]
            spec.update(kind=r["kind"], member=r["member"], train_seed=MEMBER_SEED + 1000 * r["member"] + r["seed"],
                        train=self.train_config("finetune"))
            if r["kind"] != "seeds":  # one cycle: from its parent's weights, a fresh optimiser and schedule
                spec["train"] = {**spec["train"], **ens["cycle"]}
        if stage == "finetune":
            spec["method"] = r["method"]
            if r["method"] in LORA_METHODS:
                spec["lora"] = self.config["finetune"]["lora"]
        elif stage in ("prune_data", "distill"):
            pd = self.config["prune_data"]
            score, _, keep = r["method"].partition("-")
            spec.update(
                method=r["method"],
                score=self.score_spec(score),
                keep=keep or "hard",
                fraction=r["fraction"],
                class_balanced=pd["class_balanced"],
            )
            if stage == "distill":
                spec.update(teacher=r["teacher"], temperature=r["temperature"], alpha=r["alpha"])
                if r["teacher"] == "trained":
                    spec.update(teacher_run=self.config["distill"]["teacher"],
                                teacher_spec=self.spec(self.config["distill"]["teacher"]))
                else:  # a frozen random network of the study's architecture, not the student's init
                    spec["teacher_seed"] = UNTRAINED_TEACHER_SEED + r["seed"]
        elif stage == "prune_network":
            pn = self.config["prune_network"]
            spec["method"] = r["method"]
            if r["method"] == "dense":
                spec["rewind_steps"] = pn["rewind_steps"]  # the snapshots every pruned run rewinds to
            else:
                spec.update(level=r["level"], fraction=pn["fraction"], scope=pn["scope"], rewind=r["rewind"])
                if r["method"] in ("reinit", "scratch"):
                    spec["init_seed"] = REINIT_SEED + r["seed"]
        return spec

    def summaries(self) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """Per summary: the stores it gathers, each with its coordinates on the sweep axes.

        A summary the study has no runs for (e.g. CKA when nothing is fine-tuned from
        a pretrained model) is left out.
        """
        return {name: entries for name, entries in self._summaries().items() if entries}

    def _coords(self, run: str, dims: tuple[str, ...]) -> dict[str, Any]:
        """A run's coordinates on the sweep axes ``dims`` (source ``none`` when it has no source)."""
        r = self.parse(run)
        return {d: r.get(d, NO_SOURCE) if d == "source" else r[d] for d in dims}

    def _summaries(self) -> dict[str, list[tuple[dict[str, Any], str]]]:
        coords = self._coords

        def metrics(runs: list[str], dims: tuple[str, ...]) -> list[tuple[dict[str, Any], str]]:
            return [(coords(r, dims), self.path(r, "metrics.zarr")) for r in runs]

        similarity: dict[str, list[tuple[dict[str, Any], str]]] = {n: [] for n in SIMILARITY_SUMMARIES.values()}
        for edge, (_, run), where in self._similarity():
            similarity[SIMILARITY_SUMMARIES[edge]].append((where, self.similarity_path(edge, run)))

        return {
            "pretrain": metrics(self.pretrain_runs(), ("source", "seed")),
            "finetune": metrics(self.finetune_runs(), ("source", "method", "seed")),
            "data_pruning": metrics(self.subset_runs("prune_data"), ("method", "fraction", "seed")),
            "distill": metrics(
                self.subset_runs("distill"), ("method", "fraction", "teacher", "temperature", "alpha", "seed")
            ),
            "scores": [
                ({"method": store.rsplit("/", 1)[1]}, self.path(store, "scores.zarr")) for store in self.score_stores()
            ],
            "network_pruning": self._network_pruning_entries(),
            "wiseft": [
                (coords(ft, ("source", "method", "seed")), path) for path, (_, ft) in self.wiseft_pairs().items()
            ],
            "ensemble": [
                (coords(members[1], ("source", "kind", "seed")), path) for path, members in self.ensembles().items()
            ],
            **similarity,
            "spectra": [(self._model_coords(run), self.spectra_path(run)) for run in self.spectra_runs()],
            "relative": [(self._model_coords(a, seed=False), path) for path, (a, _) in self.relative_pairs().items()],
            "connectivity": [
                ({"pair": pair, "source": src, "seed": seed}, self.connectivity_path(pair, src, seed))
                for (pair, src, seed), _ in self._connectivity()
            ],
        }

    def _network_pruning_entries(self) -> list[tuple[dict[str, Any], str]]:
        """Every pruned run, and the dense run as level 0 of each method and rewind step."""
        entries = []
        for run in self.network_pruning_runs():
            r = self.parse(run)
            coords = {"method": r["method"], "rewind": r["rewind"], "level": r["level"], "seed": r["seed"]}
            if r["level"] == 1:
                entries.append(({**coords, "level": 0}, self.path(f"prune_network/dense/s{r['seed']}", "metrics.zarr")))
            entries.append((coords, self.path(run, "metrics.zarr")))
        return entries

    def _model_coords(self, run: str, *, seed: bool = True) -> dict[str, Any]:
        """(source, model, seed) of a pretrained ("pretrained") or fine-tuned (its method) run;
        without the seed for a comparison of two seeds."""
        r = self.parse(run)
        model = "pretrained" if r["stage"] == "pretrain" else r["method"]
        return {"source": r.get("source", NO_SOURCE), "model": model, **({"seed": r["seed"]} if seed else {})}

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

    @staticmethod
    def dumps(spec: Mapping[str, Any]) -> str:
        """Canonical JSON of a spec (stable key order, so unchanged specs compare equal)."""
        return json.dumps(spec, sort_keys=True, separators=(",", ":"))
