"""Analysis batches: which analyses one job computes.

Training runs train in packs (:mod:`workflow.packs`); their analyses run in batches
of the same packs, so that a study pays one process start-up per pack and kind of
job, not one per store. Each training pack has at most three analysis jobs:

* ``analyze``: the activations of the pack's runs on the probe set, then every
  comparison whose second run (the child, student, pruned model, second seed, or the
  model itself) is one of them: similarity along each kind of edge, relative
  representations and mode connectivity. All pairs of an edge kind between two packs
  are thus one job, and the first model's activations come from its own pack's job.
* ``spectra``: the NTK and Hessian spectra and ranks of the pack's runs. The costly
  analysis has its own job, so that changing another analysis's settings does not
  recompute it.
* ``manifold``: the class-manifold dimension of the pack's zoo models that
  ``analyze.manifold`` selects, costly too and on its own for the same reason.

Every store keeps its own path, so summaries read them as before. A batch's job is
keyed on its description (every task and the settings of its kinds): changing a
run retrains it and reruns the batches that read its files; changing one
analysis's settings reruns the batches that hold that analysis. A batch that runs
computes only the stores not already written for their key (:mod:`workflow.cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from workflow.study import Study

# The kinds of task, in the order a batch runs them (activations before what reads them),
# and the job each belongs to.
TASK_JOBS = {"activations": "analyze", "similarity": "analyze", "relative": "analyze",
             "connectivity": "analyze", "spectra": "spectra", "manifold": "manifold"}
BATCH_JOBS = ("analyze", "spectra", "manifold")


@dataclass(frozen=True)
class Task:
    """One store of one analysis: what it reads (role -> file), the runs it is about."""

    kind: str  # a key of TASK_JOBS
    out: str
    inputs: Mapping[str, str]  # model (activations, spectra); a, b (similarity: activations; else models)
    runs: tuple[str, ...]  # (run,) or (run a, run b)


@dataclass(frozen=True)
class Batch:
    """The analyses of one training pack that one job computes, in order."""

    id: str  # <job>/<pack id>: its log is named for it
    job: str  # analyze | spectra
    pack: str
    tasks: tuple[Task, ...]


def plan(study: Study) -> list[Batch]:
    """Every analysis store of ``study`` in one batch: per training pack, its ``analyze`` and
    ``spectra`` jobs (those that have something to do), in the order the packs train."""
    tasks: dict[tuple[str, str], list[Task]] = {}

    def add(owner: str, task: Task) -> None:
        tasks.setdefault((TASK_JOBS[task.kind], study.pack_of(owner).id), []).append(task)

    acts = {run: study.path(run, "activations.zarr") for run in study.activation_runs()}
    for run, path in acts.items():
        add(run, Task("activations", path, {"model": study.path(run, "model.pt")}, (run,)))
    for path, (a, b) in study.similarity_pairs().items():
        add(b, Task("similarity", path, {"a": acts[a], **({"b": acts[b]} if b != a else {})}, (a, b)))
    for kind, pairs in (("relative", study.relative_pairs()), ("connectivity", study.connectivity_pairs())):
        for path, (a, b) in pairs.items():
            add(b, Task(kind, path, {"a": study.path(a, "model.pt"), "b": study.path(b, "model.pt")}, (a, b)))
    for run in study.spectra_runs():
        add(run, Task("spectra", study.spectra_path(run), {"model": study.path(run, "model.pt")}, (run,)))
    for run in study.manifold_runs():
        add(run, Task("manifold", study.manifold_path(run), {"model": study.path(run, "model.pt")}, (run,)))

    order = list(TASK_JOBS)
    batches = []
    for pack in study.packs():
        for job in BATCH_JOBS:
            if (job, pack.id) in tasks:
                ordered = sorted(tasks[job, pack.id], key=lambda t: order.index(t.kind))  # stable within a kind
                batches.append(Batch(f"{job}/{pack.id}", job, pack.id, tuple(ordered)))
    return batches


def inputs(batch: Batch) -> list[str]:
    """The files a batch's job reads that other jobs write (not its own stores), in order."""
    own = {task.out for task in batch.tasks}
    return list(dict.fromkeys(p for task in batch.tasks for p in task.inputs.values() if p not in own))


def describe(batch: Batch, settings: Callable[[str], Mapping[str, Any]], data: str) -> dict[str, Any]:
    """What the job of ``batch`` is handed (:func:`workflow.analysis.stages.run_batch`): its
    tasks, the target task's data file, and ``settings(kind)`` of each kind of task it has."""
    kinds = list(dict.fromkeys(task.kind for task in batch.tasks))
    return {
        "batch": batch.id,
        "data": data,
        "settings": {kind: dict(settings(kind)) for kind in kinds},
        "tasks": [{"kind": t.kind, "out": t.out, "inputs": dict(t.inputs), "runs": list(t.runs)} for t in batch.tasks],
    }
