"""The run-level cache: a job leaves every result stored for exactly its key, and computes
every other, so a pack that gains a run trains only that run."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import xarray as xr

from workflow import cache, jobs, storage
from workflow.study import Study

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _bytes(folder: Path) -> dict[str, str]:
    """Every file of a run's folder, by content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_identity_follows_content_and_survives_a_copy(tmp_path: Path) -> None:
    ds = xr.Dataset({"x": ("i", [1.0, 2.0])})
    with storage.stamp("k1"):
        storage.write_dataset(ds, tmp_path / "a.zarr", storage.provenance())
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "copy.zarr")
    assert cache.identity(tmp_path / "a.zarr") == cache.identity(tmp_path / "copy.zarr")
    assert cache.stored_key(tmp_path / "a.zarr") == "k1"
    with storage.stamp("k2"):
        storage.write_dataset(ds, tmp_path / "a.zarr", storage.provenance())
    assert cache.identity(tmp_path / "a.zarr") != cache.identity(tmp_path / "copy.zarr")
    (tmp_path / "f").write_bytes(b"one")
    first = cache.identity(tmp_path / "f")
    (tmp_path / "f").write_bytes(b"two")
    assert cache.identity(tmp_path / "f") != first
    assert cache.key({"a": 1}, {"f": tmp_path / "f", "none": None}) != cache.key({"a": 2}, {"f": tmp_path / "f"})
    assert cache.stored_key(tmp_path / "missing.zarr") is None
    assert storage.provenance().get("key") is None  # only inside stamp()


@pytest.fixture
def study(read_config, tmp_path: Path, task_path: Path) -> Study:
    config = read_config("tiny")
    config["results"] = str(tmp_path / "results")
    config["pretrain"]["seeds"] = [0, 1, 2]
    study = Study(config)
    data = Path(study.data_path("sources/mnist1d"))
    data.parent.mkdir(parents=True)
    shutil.copy(task_path, data)
    return study


def _pack(study: Study, runs: list[str]) -> dict:
    """The description of a pack of ``runs``, as the workflow hands it to the job."""
    (pack,) = {study.pack_of(run).id: study.pack_of(run) for run in runs}.values()
    description = dict(study.pack_description(pack))
    description["runs"] = [m for m in description["runs"] if m["spec"]["run"] in runs]
    return description


def test_a_pack_trains_only_the_runs_not_stored_for_their_key(study: Study, capsys) -> None:
    runs = ["pretrain/mnist1d/s0", "pretrain/mnist1d/s1", "pretrain/mnist1d/s2"]
    folders = [Path(study.path(run)) for run in runs]
    jobs.train_pack_job(_pack(study, runs[:2]), device="cpu", progress=False)
    first = [_bytes(f) for f in folders[:2]]
    capsys.readouterr()

    # the pack gains a seed: only that run trains, the others' files stay as they were
    jobs.train_pack_job(_pack(study, runs), device="cpu", progress=False)
    assert "training 1 of 3 runs" in capsys.readouterr().out
    assert [_bytes(f) for f in folders[:2]] == first
    alone = Path(study.root) / "alone"
    spec = study.spec(runs[2])
    jobs.train_run(spec, alone, data_path=study.data_path("sources/mnist1d"), device="cpu", progress=False)
    xr.testing.assert_equal(storage.open_dataset(alone / "metrics.zarr"), storage.open_dataset(folders[2] / "metrics.zarr"))

    # nothing left to train; --recompute trains every run again, to the same numbers
    jobs.train_pack_job(_pack(study, runs), device="cpu", progress=False)
    assert "training 0 of 3 runs" in capsys.readouterr().out
    assert [_bytes(f) for f in folders[:2]] == first
    before = storage.open_dataset(folders[0] / "metrics.zarr")
    jobs.train_pack_job(_pack(study, runs), device="cpu", progress=False, recompute=True)
    assert "training 3 of 3 runs" in capsys.readouterr().out
    assert _bytes(folders[0]) != first[0]  # written again (a new creation time) ...
    xr.testing.assert_equal(storage.open_dataset(folders[0] / "metrics.zarr"), before)  # ... to the same numbers


def test_a_changed_spec_or_a_retrained_parent_retrains_the_run(study: Study, capsys) -> None:
    parent, child = "pretrain/mnist1d/s0", "finetune/mnist1d/full/s0"
    jobs.train_pack_job(_pack(study, [parent]), device="cpu", progress=False)
    description = _pack(study, [child])
    description["data"] = study.data_path("sources/mnist1d")  # the tiny task stands in for the target task
    jobs.train_pack_job(description, device="cpu", progress=False)
    trained = _bytes(Path(study.path(child)))
    capsys.readouterr()

    changed = {**description, "runs": [{**m, "spec": {**m["spec"], "train": {**m["spec"]["train"], "lr": 0.02}}}
                                       for m in description["runs"]]}
    jobs.train_pack_job(changed, device="cpu", progress=False)
    assert "training 1 of 1 runs" in capsys.readouterr().out

    jobs.train_pack_job(description, device="cpu", progress=False)  # back to the spec it was stored for
    assert "training 1 of 1 runs" in capsys.readouterr().out
    jobs.train_pack_job(description, device="cpu", progress=False)
    assert "training 0 of 1 runs" in capsys.readouterr().out

    # its parent trained again, to an unchanged spec: a new parent, so the child trains again
    jobs.train_pack_job(_pack(study, [parent]), device="cpu", progress=False, recompute=True)
    capsys.readouterr()
    jobs.train_pack_job(description, device="cpu", progress=False)
    assert "training 1 of 1 runs" in capsys.readouterr().out
    assert _bytes(Path(study.path(child))) != trained


def test_a_half_written_run_is_trained_again(study: Study, capsys) -> None:
    """A job killed between a run's two files leaves metrics.zarr stored for the new key and
    model.pt for none (or an old one): the run is not stored."""
    run = "pretrain/mnist1d/s0"
    jobs.train_pack_job(_pack(study, [run]), device="cpu", progress=False)
    Path(study.path(run, "model.pt")).unlink()
    capsys.readouterr()
    jobs.train_pack_job(_pack(study, [run]), device="cpu", progress=False)
    assert "training 1 of 1 runs" in capsys.readouterr().out
