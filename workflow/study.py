"""The planner: every run of a study, its spec and parent, and the jobs that produce them.

A *run* is one model produced by one stage with one resolved configuration; its id
(:mod:`workflow.runs`) is its readable folder under the results root. What each
stage knows of its runs (ids, specs, parents, input files) lives in its home under
:mod:`workflow.stages`; the analyses' plan is in :mod:`workflow.analysis.plan`. A
:class:`Study` puts them together for one configuration and emits the
:class:`Job` of every output, which the workflow's rules read. :meth:`Study.spec`
gives everything that determines a run: the job is keyed on it, so changing any of
it reruns that run and what depends on it, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from workflow import packs, runs
from workflow.analysis import batches
from workflow.analysis.batches import Batch
from workflow.analysis.plan import SIMILARITY_EDGES, AnalysisPlan
from workflow.config import STAGES, load_config
from workflow.packs import Pack
from workflow.runs import ENSEMBLE_KINDS, NO_SOURCE, number_label
from workflow.stages import data_pruning, finetune, pretrain
from workflow.stages.registry import TRAINING_STAGES

__all__ = ["Batch", "ENSEMBLE_KINDS", "NO_SOURCE", "SIMILARITY_EDGES", "STAGES", "Job", "Pack", "Study", "number_label"]


@dataclass(frozen=True)
class Job:
    """One unit of execution: a command that produces some runs from some files.

    ``specs`` maps each output to the canonical spec (JSON) it is keyed on: a job
    reruns when one of them changes.
    """

    kind: str  # the command of ``python -m workflow`` that runs it
    runs: tuple[str, ...]  # the runs it trains (none for scores and analyses; a pack's, for a pack)
    inputs: Mapping[str, str]  # role -> file it reads
    outputs: Mapping[str, str]  # name -> file or folder it writes
    specs: Mapping[str, str]


class Study(AnalysisPlan):
    """All runs of one configuration, with their specs, parents and input files."""

    def __init__(self, config: Mapping[str, Any], *, checked: bool = False) -> None:
        self.config = dict(config) if checked else load_config(config)
        self.root = self.config["results"].rstrip("/")
        self._packs: list[Pack] | None = None
        self._pack_of: Mapping[str, Pack] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._descriptions: dict[str, dict[str, Any]] = {}
        self._batches: list[Batch] | None = None
        self._summaries_cache: dict[str, list[tuple[dict[str, Any], str]]] | None = None

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
        return pretrain.sources(self.config)

    def training_stages(self) -> list[str]:
        """The names of the training stages, in DAG order."""
        return list(TRAINING_STAGES)

    def stage_runs(self, stage: str) -> list[str]:
        """The study's runs of one training stage (see :data:`workflow.stages.registry.TRAINING_STAGES`)."""
        return TRAINING_STAGES[stage].runs(self.config)

    def training_runs(self) -> list[str]:
        """Every run that trains a model, in DAG order."""
        return [run for stage in TRAINING_STAGES for run in self.stage_runs(stage)]

    def pretrain_runs(self) -> list[str]:
        return self.stage_runs("pretrain")

    def finetune_runs(self) -> list[str]:
        """Every fine-tuning method from every source, and scratch once per seed."""
        return self.stage_runs("finetune")

    def subset_runs(self, stage: str) -> list[str]:
        """Runs of ``prune_data`` (method x fraction x seed) or ``distill`` (also x
        teacher x temperature x alpha)."""
        return data_pruning.subset_runs(self.config, stage)

    def dense_runs(self) -> list[str]:
        """The dense model of each network-pruning seed: level 0 of every method and rewind step."""
        return [run for run in self.stage_runs("prune_network") if runs.parse(run)["method"] == "dense"]

    def network_pruning_runs(self) -> list[str]:
        """Pruned runs: method x rewind step x seed x level (1 to ``levels``)."""
        return [run for run in self.stage_runs("prune_network") if runs.parse(run)["method"] != "dense"]

    def ensemble_runs(self) -> list[str]:
        """Extra members of each ensemble (member 0 is the study's ``finetune/<source>/full`` run)."""
        return self.stage_runs("ensemble")

    def data_pruning_methods(self) -> list[str]:
        return data_pruning.methods(self.config)

    def score_stores(self) -> list[str]:
        """Score stores of the study (rs2 needs none: it draws a new subset every epoch)."""
        return data_pruning.score_stores(self)

    def score_path(self, method: str) -> str | None:
        """The score store a data-pruning method selects with (``el2n-hard`` -> el2n)."""
        return data_pruning.score_path(self, method)

    def score_spec(self, score: str) -> dict[str, Any]:
        """What determines a score store: the method, its settings, data and model."""
        return data_pruning.score_spec(self, score)

    def ensembles(self) -> dict[str, list[str]]:
        """Each ensemble's store path -> its members' runs, member 0 first: per source, kind and seed."""
        return finetune.ensembles(self)

    def ensemble_path(self, source: str, kind: str, seed: int) -> str:
        return finetune.ensemble_path(self, source, kind, seed)

    def wiseft_pairs(self) -> dict[str, tuple[str, str]]:
        """Each WiSE-FT store path -> (the linear probe, the fine-tuned run) it interpolates."""
        return finetune.wiseft_pairs(self)

    def wiseft_path(self, source: str, method: str, seed: int) -> str:
        return finetune.wiseft_path(self, source, method, seed)

    # --- identity ----------------------------------------------------------------
    parse = staticmethod(runs.parse)
    dumps = staticmethod(runs.dumps)

    def parent(self, run: str) -> str | None:
        """The run whose weights this run starts from, if any."""
        r = runs.parse(run)
        return TRAINING_STAGES[r["stage"]].parent(self, r)

    def task(self, run: str) -> str:
        """``sources/<name>`` for pretraining, ``target`` for everything after it."""
        r = runs.parse(run)
        return TRAINING_STAGES[r["stage"]].task(r)

    def train_config(self, stage: str) -> dict[str, Any]:
        """The global ``train`` settings with the stage's overrides on top."""
        return {**self.config["train"], **self.config.get(stage, {}).get("train", {})}

    def spec(self, run: str) -> dict[str, Any]:
        """Everything that determines a training run: what every run has, and what its stage adds.

        Computed once per run (a study of thousands of runs plans each several times);
        the copy returned is the caller's at its top level, its nested values shared.
        """
        if run not in self._specs:
            self._specs[run] = self._spec(run)
        return dict(self._specs[run])

    def _spec(self, run: str) -> dict[str, Any]:
        r = runs.parse(run)
        stage = TRAINING_STAGES[r["stage"]]
        spec: dict[str, Any] = {
            "run": run,
            "stage": stage.name,
            "seed": r["seed"],
            "data": self.task_dataset(stage.task(r)),
            "model": self.config["model"],
            "train": self.train_config(stage.name),
            "parent": stage.parent(self, r),
        }
        spec.update(stage.spec(self, r))
        return spec

    def pack_key(self, run: str) -> dict[str, Any]:
        """What ``run`` must share with the other runs of its pack (see :mod:`workflow.packs`)."""
        spec = self.spec(run)
        return TRAINING_STAGES[spec["stage"]].pack_key(spec)

    # --- packs -------------------------------------------------------------------
    def packs(self) -> list[Pack]:
        """Every training run in one pack of at most ``execution.pack_size`` runs (computed once)."""
        if self._packs is None:
            self._packs = packs.plan(self, self.config["execution"]["pack_size"])
            self._pack_of = packs.index(self._packs)
        return self._packs

    def pack_of(self, run: str) -> Pack:
        """The pack that trains ``run``."""
        self.packs()
        return self._pack_of[run]

    def pack_job(self, pack: Pack) -> Job:
        """The job that trains a pack: what each member's :meth:`training_job` reads and writes.

        Its ``specs`` key every output on the whole pack's description (every member's
        spec and the stack mode), so that changing one run reruns its pack's job, which
        trains the runs not stored for their key (:mod:`workflow.cache`).
        """
        jobs = [self.training_job(run) for run in pack.runs]
        inputs = {"data": jobs[0].inputs["data"]}
        for job in jobs:
            inputs.update({f"{role}:{job.runs[0]}": path for role, path in job.inputs.items() if role != "data"})
        outputs = {f"{name}:{job.runs[0]}": path for job in jobs for name, path in job.outputs.items()}
        keyed = runs.dumps(self.pack_description(pack))
        return Job("train", pack.runs, inputs, outputs, {name: keyed for name in outputs})

    def pack_description(self, pack: Pack) -> dict[str, Any]:
        """What the job of a pack is handed (:func:`workflow.jobs.train_pack_job`): each run's
        spec, folder and input files by role, and how the pack steps (computed once per pack)."""
        if pack.id in self._descriptions:
            return self._descriptions[pack.id]
        members = []
        for run in pack.runs:
            job = self.training_job(run)
            members.append({"spec": self.spec(run), "out": self.path(run),
                            "inputs": {role: path for role, path in job.inputs.items() if role != "data"}})
        execution = self.config["execution"]
        self._descriptions[pack.id] = {"pack": pack.id, "stack": execution["stack"],
                                       "on_divergence": execution["on_divergence"],
                                       "data": self.data_path(self.task(pack.runs[0])), "runs": members}
        return self._descriptions[pack.id]

    def pack_checkpoint(self, pack: Pack) -> str:
        """Where the job of a pack saves its state (outside every run's folder)."""
        return f"{self.root}/checkpoints/packs/{pack.id}.pt"

    # --- analysis batches --------------------------------------------------------
    def analysis_batches(self) -> list[Batch]:
        """Every analysis store in the ``analyze`` or ``spectra`` job of its training pack
        (see :mod:`workflow.analysis.batches`; computed once)."""
        if self._batches is None:
            self._batches = batches.plan(self)
        return self._batches

    def batch_description(self, batch: Batch) -> dict[str, Any]:
        """What the job of an analysis batch is handed (computed once per batch)."""
        if batch.id not in self._descriptions:
            self._descriptions[batch.id] = batches.describe(batch, self.task_settings, self.data_path("target"))
        return self._descriptions[batch.id]

    def batch_inputs(self, batch: Batch) -> list[str]:
        """The files an analysis batch's job reads: other jobs' stores and models, and the
        target task's data unless it only compares stored activations."""
        data = [self.data_path("target")] if any(t.kind != "similarity" for t in batch.tasks) else []
        return batches.inputs(batch) + data

    def task_settings(self, kind: str) -> dict[str, Any]:
        """The settings of one kind of analysis task: the probe set's for activations."""
        return self.analysis_spec() if kind == "activations" else self.analysis_settings(kind)

    def summaries_description(self) -> dict[str, Any]:
        """What the job that gathers every summary is handed: per summary, its store and entries;
        the run index (:meth:`run_index`), its store and its table; and with a zoo, the
        summaries its per-model table is built from and where that goes."""
        return {"summaries": {name: {"out": self.summary_path(name), "entries": entries,
                                     **({"attrs": self.summary_attrs(name)} if self.summary_attrs(name) else {})}
                              for name, entries in self.summaries().items()},
                "index": {"out": self.run_index_paths(), "root": self.root, "runs": self.run_index()},
                **({"zoo_models": {"out": self.zoo_models_paths(), "summaries": self.zoo_model_sources()}}
                   if "zoo" in self.summaries() else {})}

    def zoo_models_paths(self) -> dict[str, str]:
        """The zoo's per-model table (:func:`workflow.jobs.write_zoo_models`) as a Zarr store and as CSV."""
        return {"zarr": f"{self.root}/summary/zoo_models.zarr", "csv": f"{self.root}/summary/zoo_models.csv"}

    def zoo_model_sources(self) -> dict[str, str]:
        """The summaries the zoo's per-model table is built from, those this study has."""
        from workflow.summaries import ZOO_MODEL_SOURCES

        return {name: self.summary_path(name) for name in ("zoo", *ZOO_MODEL_SOURCES) if name in self.summaries()}

    def summary_attrs(self, name: str) -> dict[str, Any]:
        """Settings a summary carries for those who read it: the zoo's phase thresholds, the
        class-manifold search's settings."""
        if name == "zoo" and "zoo" in self.config:
            return {"phases": self.config["zoo"]["phases"]}
        if name == "manifold" and "manifold" in self.config["analyze"]:
            return {"manifold": self.analysis_settings("manifold")}
        return {}

    def summary_inputs(self) -> list[str]:
        """Every store the summaries gather, and every run's metrics (for the run index)."""
        paths = [path for entries in self.summaries().values() for _, path in entries]
        return list(dict.fromkeys(paths + [self.path(run, "metrics.zarr") for run in self.training_runs()]))

    def run_index_paths(self) -> dict[str, str]:
        """The run index as a Zarr store and as CSV."""
        return {"zarr": f"{self.root}/summary/runs.zarr", "csv": f"{self.root}/summary/runs.csv"}

    def run_index(self) -> list[dict[str, Any]]:
        """One row per training run of the study, in DAG order: its id, stage and coordinates
        (in the names of :mod:`workflow.axes`), its parent and pack, and the paths of its model,
        its metrics and every analysis store it is part of, relative to the results folder (so
        that a copy of the folder keeps its index)."""
        stores: dict[str, list[str]] = {}
        pairs = {**self.similarity_pairs(), **self.relative_pairs(), **self.connectivity_pairs(),
                 **self.wiseft_pairs(), **self.ensembles(),
                 **{self.manifold_path(run): (run,) for run in self.manifold_runs()}}
        for path, members in pairs.items():
            for run in dict.fromkeys(members):
                stores.setdefault(run, []).append(path)
        activations, spectra = set(self.activation_runs()), set(self.spectra_runs())
        rows = []

        def rel(path: str) -> str:
            return path.removeprefix(f"{self.root}/")

        for run in self.training_runs():
            r = runs.parse(run)
            stage = TRAINING_STAGES[r["stage"]]
            rows.append({
                "run": run, "stage": stage.name, **stage.index_coords(r),
                "parent": self.parent(run) or "", "pack": self.pack_of(run).id,
                "model": f"{run}/model.pt", "metrics": f"{run}/metrics.zarr",
                "activations": f"{run}/activations.zarr" if run in activations else "",
                "spectra": rel(self.spectra_path(run)) if run in spectra else "",
                "other_stores": ";".join(rel(path) for path in stores.get(run, [])),
            })
        return rows

    def job_description(self, job: str) -> tuple[str, dict[str, Any]]:
        """The command of ``python -m workflow`` that runs a planned job (a pack's id, an
        analysis batch's id, or ``collect``), and the description it is handed."""
        if job == "collect":
            return "collect", self.summaries_description()
        for batch in self.analysis_batches():
            if batch.id == job:
                return "analyze", self.batch_description(batch)
        for pack in self.packs():
            if pack.id == job:
                return "train-pack", self.pack_description(pack)
        raise ValueError(f"no job {job!r} in this study")

    # --- jobs --------------------------------------------------------------------
    def training_job(self, run: str) -> Job:
        """The job that trains ``run``: its task, its parent's model and its stage's inputs
        (scores, teacher) in; its model and metrics out."""
        spec = self.spec(run)
        stage = TRAINING_STAGES[spec["stage"]]
        inputs = {"data": self.data_path(stage.task(runs.parse(run)))}
        if spec["parent"] is not None:
            inputs["parent"] = self.path(spec["parent"], "model.pt")
        inputs.update(stage.inputs(self, spec))
        outputs = {"model": self.path(run, "model.pt"), "metrics": self.path(run, "metrics.zarr")}
        keyed = runs.dumps(spec)
        return Job("train", (run,), inputs, outputs, {name: keyed for name in outputs})

    def score_job(self, score: str) -> Job:
        """The job that scores every target training example by ``score``."""
        out = self.path(f"prune_data/scores/{score}", "scores.zarr")
        return Job("scores", (), data_pruning.score_inputs(self, score), {"scores": out},
                   {"scores": runs.dumps(self.score_spec(score))})

    # --- summaries -----------------------------------------------------------------
    def summaries(self) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """Per summary: the stores it gathers, each with its coordinates on the sweep axes.

        A summary the study has no runs for (e.g. CKA when nothing is fine-tuned from
        a pretrained model) is left out. Computed once; the caller must not change it.
        """
        if self._summaries_cache is None:
            self._summaries_cache = {name: entries for name, entries in self._summaries().items() if entries}
        return self._summaries_cache

    def _summaries(self) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """What each stage's home declares (:meth:`~workflow.stages.TrainingStage.summary_entries`,
        :meth:`~workflow.stages.TrainingStage.other_summaries`), then the analyses' summaries."""
        out: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for stage in TRAINING_STAGES.values():
            if stage.summary:
                out[stage.summary] = [(coords, self.path(run, "metrics.zarr")) for run in stage.runs(self.config)
                                      for coords in stage.summary_entries(self, runs.parse(run))]
            for name, entries in stage.other_summaries(self).items():
                out.setdefault(name, []).extend(entries)
        for name, entries in self.analysis_summaries().items():
            out.setdefault(name, []).extend(entries)
        return out
