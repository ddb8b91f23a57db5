"""One home per stage family.

Each module here holds everything the pipeline knows about one family of training
runs: which runs a study has (their ids), what determines each (its spec), which
run it starts from (its parent), which files its job reads, and how its training
is prepared (:class:`TrainingStage.prepare`). Methods inside a stage come from
registries (fine-tuning methods in :mod:`workflow.finetune`, scores in
:mod:`workflow.scoring`, network-pruning methods in
:mod:`workflow.stages.network_pruning`).

The planner (:mod:`workflow.study`) lists runs and specs from these homes without
importing torch: each ``prepare`` imports what it trains with when it runs.

* :mod:`~workflow.stages.pretrain`: pretraining on each source task;
* :mod:`~workflow.stages.finetune`: fine-tuning methods, scratch, ensemble members,
  and the WiSE-FT and ensemble evaluations;
* :mod:`~workflow.stages.data_pruning`: score stores and training on kept subsets;
* :mod:`~workflow.stages.distill`: students on the same subsets, with a teacher;
* :mod:`~workflow.stages.network_pruning`: the dense run, IMP and its baselines;
* :mod:`~workflow.stages.random_teacher`: students of frozen untrained teachers, without labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    import xarray as xr
    from torch import nn

    from workflow.data import TaskData
    from workflow.study import Study
    from workflow.train import EpochSampler, LossFn, TrainConfig


@dataclass
class TrainingSetup:
    """Everything the training loop is handed for one run, and what the run keeps besides its weights.

    The job builds it with the run's freshly seeded model, its task and its training
    settings; the stage's :meth:`TrainingStage.prepare` fills in the rest.
    """

    model: nn.Module  # ready to train once prepared: weights loaded, requires_grad set
    data: TaskData  # the examples it trains on (a subset, for data pruning)
    cfg: TrainConfig
    seed: int  # of its initialisation and data order
    device: torch.device
    loss_fn: LossFn | None = None  # default: cross-entropy
    masks: dict[str, torch.Tensor] | None = None  # held after every optimiser step
    sampler: EpochSampler | None = None  # default: every example once per epoch
    snapshot_steps: tuple[int, ...] = ()  # weights kept at these steps, saved as ``rewind``
    rewind: dict[int, dict[str, torch.Tensor]] | None = None  # saved with the model
    kept: torch.Tensor | None = None  # the indices of the training examples kept
    metrics: dict[str, xr.DataArray] = field(default_factory=dict)  # beside the per-epoch history


# What every run's spec has that may differ between the runs of one pack (see :meth:`TrainingStage.pack_key`).
STACKABLE = ("run", "seed", "parent", "train_seed")
# The training settings an optimiser applies element by element: the runs of one pack may
# differ in them too, each keeping its own values and schedule (workflow.engines).
ELEMENTWISE = ("lr", "weight_decay", "momentum")


class TrainingStage:
    """A family of training runs. Subclasses set :attr:`name` and override what differs."""

    name: str = ""  # the stage: the first folder of its run ids
    # The spec's keys, besides STACKABLE, in which runs of one pack may differ: what a
    # training loop can step side by side (examples, masks, teacher), not what changes
    # the architecture, the trainable parameters or the number of steps.
    stackable: tuple[str, ...] = ()

    def pack_key(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """What runs must share to train in one pack: the spec without what may differ.

        A run whose job decides some of its training settings (:meth:`decided_by_job`) is
        keyed on its own id, so it trains in a pack of its own: its pack mates could not
        be known, when the study is planned, to train with the same settings.
        """
        key = {k: v for k, v in spec.items() if k not in STACKABLE + self.stackable}
        key["train"] = {k: v for k, v in spec["train"].items() if k not in ELEMENTWISE}
        if self.decided_by_job(spec):
            key["run"] = spec["run"]
        return key

    def decided_by_job(self, spec: Mapping[str, Any]) -> tuple[str, ...]:
        """The training settings (fields of ``train``) that the job of a run decides from its
        input files rather than its spec, e.g. FLOPs-matched epochs from its parent's masks.
        Every other setting is decided once, at planning time, in the spec."""
        return ()

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        """The runs of this stage in a study (a loaded config), in DAG order: which runs
        exist depends on the config alone."""
        raise NotImplementedError

    def task(self, r: Mapping[str, Any]) -> str:
        """The task a run trains on (``target``, or ``sources/<name>``), from its parsed id."""
        return "target"

    def parent(self, study: Study, r: Mapping[str, Any]) -> str | None:
        """The run whose weights this run starts from, if any."""
        return None

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        """What the stage adds to (or overrides in) the common spec of a run."""
        return {}

    def inputs(self, study: Study, spec: Mapping[str, Any]) -> dict[str, str]:
        """The files a run's job reads besides its task and its parent's model, by role
        (``scores``, ``teacher``)."""
        return {}

    # --- what the study's summaries and analyses gather from the stage ----------------
    summary: str = ""  # the summary of the stage's runs' metrics ("" for none)
    method_axis: str = "method"  # the name, in summaries and the run index, of the ``method`` of its run ids
    # The stage's runs are analysed as models one by one (spectra, each model's layers
    # against each other, seed against seed, relative representations).
    analysed: bool = False

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A run's coordinates in :attr:`summary`, one dict per cell it fills (the dense run of
        network pruning is level 0 of every method), in the names of :mod:`workflow.axes`."""
        return []

    def index_coords(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """A run's coordinates in the study's run index: the fields of its id (without the
        stage), its ``method`` named by :attr:`method_axis`."""
        return {(self.method_axis if k == "method" else k): v for k, v in r.items() if k != "stage"}

    def other_summaries(self, study: Study) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """The stage's summaries of stores other than its runs' metrics (score stores,
        WiSE-FT, ensembles): per summary, each store with its coordinates."""
        return {}

    def lineage(self, study: Study, r: Mapping[str, Any]) -> tuple[str, str] | None:
        """The edge of the lineage that ends at this run, for the similarity along it: (its kind,
        a key of :data:`workflow.analysis.plan.SIMILARITY_SUMMARIES`; the run it is compared with)."""
        return None

    def connections(self, study: Study) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        """The pairs of the stage's runs that mode connectivity joins (with ``analyze.connectivity``):
        each pair's coordinates (:func:`workflow.axes.pair_coords` and the seed) and (run a, run b)."""
        return []

    def seed_pairs(self, study: Study) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        """Pairs of the stage's runs that differ only in their seed, each compared by mode
        connectivity (with ``analyze.connectivity``) and layer similarity (with the ``seeds``
        edge of ``analyze.similarity``) into the summaries ``connectivity_seed_pairs`` and
        ``similarity_seed_pairs``: each pair's coordinates (its runs' with ``other_seed``)
        and (run a, run b). A zoo: every two seeds of a cell."""
        return []

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        """Make ``setup`` ready to train the run: load the start, set masks, loss, data and sampler.

        ``inputs``: the files of :meth:`inputs`, and ``parent`` when the run has one.
        """

    def finish(self, spec: Mapping[str, Any], setup: TrainingSetup) -> None:
        """After training, before the run is written: add what the trained run is measured by
        to ``setup.metrics`` (e.g. a random teacher's student's linear probe)."""
