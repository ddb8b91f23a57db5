"""Jobs killed at several points of the DAG, and Snakemake itself killed: plain
``snakemake`` then redoes only the unfinished work, and the study ends exactly as an
uninterrupted one.

The kills are real SIGKILLs at chosen moments. A ``sitecustomize`` module on the jobs'
``PYTHONPATH`` wraps ``os.replace``, the call that renames a finished output (or a
checkpoint) into place, and kills the process at the renames named in
``DLSCI_TEST_KILLS``, once each: just before the rename (a job dying while it writes)
or just after it (a job dying after a checkpoint, or Snakemake dying before it
records a finished job). Nothing in the package knows about it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import xarray as xr

import yaml
from snakemake.utils import update_config

from test_e2e import REPO, TINY, copy_workflow, planned
from workflow import storage
from workflow.study import Study

pytestmark = pytest.mark.e2e
RESULTS = "results/tiny"

KILLER = '''
import json, os, signal

_KILLS = json.loads(os.environ.get("DLSCI_TEST_KILLS", "[]"))
_replace = os.replace


def _replace_or_die(src, dst, *args, **kwargs):
    for kill in _KILLS:
        if not os.fspath(dst).endswith(kill["path"]):
            continue
        try:  # once per kill, across processes and reruns
            os.close(os.open(kill["marker"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        if kill["when"] == "after":
            _replace(src, dst, *args, **kwargs)
        if kill["who"] == "snakemake":  # jobs run in Snakemake's process group
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


if _KILLS:
    os.replace = _replace_or_die
'''

# The tiny study with fewer variants of each stage: every kind of job, fewer of each.
SMALLER = {
    "prune_data": {"scores": ["el2n", "forgetting"]},
    "distill": {"teachers": ["trained"]},
    "prune_network": {"methods": ["imp"]},
    "finetune": {"ensemble": {"kinds": ["seeds"]}},
    "analyze": {"similarity": {"edges": ["within", "seeds"]}},
}



def _study() -> Study:
    """The smaller tiny study, as Snakemake merges its two config files."""
    config = yaml.safe_load((REPO / TINY).read_text())
    update_config(config, SMALLER)
    return Study(config)


def _pack_checkpoint(run: str) -> str:
    study = _study()
    return study.pack_checkpoint(study.pack_of(run)).removeprefix(f"{RESULTS}/")


def _batch_outputs(store: str) -> list[str]:
    """Every store of the analysis batch that writes ``store``."""
    study = _study()
    (batch,) = [b for b in study.analysis_batches() if f"{RESULTS}/{store}" in {t.out for t in b.tasks}]
    return [task.out.removeprefix(f"{RESULTS}/") for task in batch.tasks]


# Jobs killed while Snakemake goes on (--keep-going): a training pack after its first
# checkpoint, a fine-tuning pack between its run's two outputs (scratch: the packs
# fine-tuned from a source wait on the killed pretraining pack), a scoring job after the
# first checkpoint of its pack of training runs, an analysis batch writing a similarity store.
JOB_KILLS = [
    (_pack_checkpoint("pretrain/mnist1d/s1"), "after"),
    ("finetune/scratch/s0/model.pt", "before"),
    ("checkpoints/scores/forgetting.pt", "after"),
    ("analyze/similarity/within/pretrain/synthetic/s0/analysis.zarr", "before"),
]
KILLED_OUTPUTS = [  # the killed jobs' outputs: those of every run of the killed packs
    "pretrain/mnist1d/s0/model.pt", "pretrain/mnist1d/s0/metrics.zarr",
    "pretrain/mnist1d/s1/model.pt", "pretrain/mnist1d/s1/metrics.zarr",
    "finetune/scratch/s0/model.pt", "finetune/scratch/s0/metrics.zarr",
    "prune_data/scores/forgetting/scores.zarr",
    *_batch_outputs("analyze/similarity/within/pretrain/synthetic/s0/analysis.zarr"),
]
# Snakemake killed, with its running jobs, right after the resumed pretraining pack
# renamed its last run's model into place and before Snakemake recorded the job as finished.
SNAKEMAKE_KILL = ("pretrain/mnist1d/s1/model.pt", "after")


def _run(cwd: Path, *args: str, kills: list[tuple[str, str]] = (), who: str = "job") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if kills:
        hooks = cwd / "kill_hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(KILLER)
        plan = [{"path": path, "when": when, "who": who, "marker": str(hooks / f"fired-{who}-{i}")}
                for i, (path, when) in enumerate(kills)]
        env["DLSCI_TEST_KILLS"] = json.dumps(plan)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
    (cwd / "smaller.yaml").write_text(json.dumps(SMALLER))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", TINY, "smaller.yaml", *args]
    # its own process group, so that killing Snakemake's group spares pytest
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          start_new_session=True)


def _outputs(cwd: Path) -> dict[str, int]:
    """Every result (model file or store) under the results folder, with its mtime."""
    root = cwd / RESULTS
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("logs/", "checkpoints/")) or any(part.startswith(".") for part in path.parts):
            continue
        if path.suffix in (".pt", ".zarr", ".npz", ".png", ".pdf", ".md"):
            found[rel] = path.stat().st_mtime_ns
    return found


def _leftovers(cwd: Path) -> list[str]:
    """Temporaries of killed writers, anywhere under the results folder."""
    return sorted(p.relative_to(cwd).as_posix() for p in (cwd / RESULTS).rglob(".*.tmp-*"))


def _assert_complete(cwd: Path, outputs: dict[str, int]) -> None:
    """Every output that exists is whole: model files load, stores open with all their arrays."""
    for rel in outputs:
        path = cwd / RESULTS / rel
        if path.suffix == ".pt":
            assert "state_dict" in storage.load_torch(path), rel
        elif path.suffix == ".zarr":
            storage.open_dataset(path)


def _incomplete(cwd: Path) -> set[str]:
    """Outputs Snakemake marked as being written by a job it has not recorded as done."""
    marks = cwd / ".snakemake" / "incomplete"
    found = set()
    for path in marks.rglob("*") if marks.exists() else ():
        if path.is_file() and path.name != "migration_underway":
            # Snakemake splits a long base64 name into folders, each but the last prefixed with @
            encoded = "".join(part.lstrip("@") for part in path.relative_to(marks).parts)
            found.add(Path(base64.urlsafe_b64decode(encoded).decode()).as_posix().removeprefix(f"{RESULTS}/"))
    return found


def _assert_same_results(reference: Path, resumed: Path) -> None:
    ref, got = _outputs(reference), _outputs(resumed)
    assert ref.keys() == got.keys()
    for rel in ref:
        a, b = reference / RESULTS / rel, resumed / RESULTS / rel
        if a.suffix == ".pt":
            sa, sb = storage.load_torch(a)["state_dict"], storage.load_torch(b)["state_dict"]
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), rel
        elif a.suffix == ".zarr":
            xr.testing.assert_identical(storage.open_dataset(a).drop_attrs(), storage.open_dataset(b).drop_attrs())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smaller tiny study, run without interruption."""
    cwd = copy_workflow(tmp_path_factory.mktemp("reference"))
    proc = _run(cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd


def test_killed_jobs_and_a_killed_snakemake_lose_nothing_and_redo_only_unfinished_work(
    reference: Path, tmp_path: Path
) -> None:
    cwd = copy_workflow(tmp_path / "study")

    # 1. Four jobs killed at different points; Snakemake goes on with everything else.
    first = _run(cwd, "--keep-going", kills=JOB_KILLS)
    assert first.returncode != 0
    assert len(list((cwd / "kill_hooks").glob("fired-job-*"))) == len(JOB_KILLS)  # every kill happened
    done = _outputs(cwd)
    _assert_complete(cwd, done)
    for rel in KILLED_OUTPUTS:  # Snakemake removed the killed jobs' outputs, complete or not
        assert rel not in done, rel
    checkpoints = cwd / RESULTS / "checkpoints"
    assert (cwd / RESULTS / JOB_KILLS[0][0]).exists()  # kept for the rerun to go on from
    assert (checkpoints / "scores/forgetting.pt").exists()
    assert "prune_data/scores/el2n/scores.zarr" in done  # the rest of the study went on

    # 2. Plain snakemake, killed with all its jobs just after a job renamed its model into place.
    second = _run(cwd, kills=[SNAKEMAKE_KILL], who="snakemake")
    assert second.returncode == -9
    after_kill = _outputs(cwd)
    _assert_complete(cwd, after_kill)
    incomplete = _incomplete(cwd)
    assert "pretrain/mnist1d/s1/model.pt" in incomplete  # renamed, but not recorded as done
    assert all(after_kill[rel] == mtime for rel, mtime in done.items())  # nothing finished was redone

    # 3. Unlock (Snakemake died holding its lock) and run plain snakemake again.
    locked = _run(cwd)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    assert _run(cwd, "--unlock").returncode == 0
    third = _run(cwd)
    assert third.returncode == 0, third.stderr[-4000:]
    final = _outputs(cwd)
    redone = {rel for rel, mtime in after_kill.items() if final[rel] != mtime}
    assert redone <= incomplete, redone - incomplete  # only what Snakemake had not recorded as done
    assert planned(cwd, configfiles=(TINY, "smaller.yaml")) == {}
    assert _leftovers(cwd) == []  # every killed writer's temporary was cleared by the rewrite
    assert not [p for p in checkpoints.rglob("*") if p.is_file()]  # every checkpoint removed once used

    # The killed training runs went on from their checkpoints (pretrain/mnist1d/s1 twice,
    # since Snakemake died before recording it), and the study ends as an uninterrupted one.
    resumed = storage.open_dataset(cwd / RESULTS / "pretrain/mnist1d/s1/metrics.zarr")
    assert 0 < resumed.attrs["resumed_from_step"] < resumed.attrs["steps"]
    _assert_same_results(reference, cwd)
