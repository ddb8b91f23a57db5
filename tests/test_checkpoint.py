"""Resumable training: a run stopped anywhere and run again ends exactly where an
uninterrupted run ends (CPU), whether it crashed (last periodic checkpoint) or was
stopped by a scheduler's signal (checkpoint after the current step)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from workflow import scoring, storage
from workflow.checkpoint import Checkpointing, Preempted
from workflow.forgetting import ForgettingTracker
from workflow.prune_data import RepeatedRandomSubsets
from workflow.prune_network import magnitude_masks, prunable_parameters
from workflow.jobs import compute_scores
from workflow.study import Study
from workflow.train import TrainConfig, train, train_pack

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROOT = Path(__file__).resolve().parents[1]

CFG = TrainConfig(epochs=4, batch_size=50, lr=0.01, optimizer="sgd", weight_decay=1e-4)  # 5 steps per epoch
STEPS = 20


class Crash(RuntimeError):
    """Stands in for a job killed without warning (SIGKILL, a node failure)."""


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_run(a, b) -> None:
    (model_a, result_a), (model_b, result_b) = a, b
    state_a, state_b = _state(model_a), _state(model_b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    xr.testing.assert_identical(result_a.history, result_b.history)
    assert result_a.steps == result_b.steps
    assert result_a.snapshots.keys() == result_b.snapshots.keys()
    for step in result_a.snapshots:
        assert all(torch.equal(result_a.snapshots[step][k], result_b.snapshots[step][k]) for k in state_a)


def _interrupt_at(step: int, action):
    """A loss that runs ``action`` on the forward pass of optimiser step ``step`` (1-based)."""
    calls = {"n": 0}

    def loss_fn(logits, xb, yb):
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return torch.nn.functional.cross_entropy(logits, yb)

    return loss_fn


def _crash() -> None:
    raise Crash()


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # handled: training stops after this step


# The state a run carries besides weights: SGD momentum, the order of the epoch in
# progress, masks, snapshots, a sampler that remembers its passes (RS2 at 0.9: 5 steps per
# epoch too), Adam's moments.
SETUPS = {
    "plain": lambda make_cnn, task: {},
    "adam_masks_snapshots": lambda make_cnn, task: {
        "cfg": replace(CFG, optimizer="adam", lr=0.003),
        "masks": magnitude_masks(prunable_parameters(make_cnn(0)), None, 0.5, "global"),
        "snapshot_steps": (0, 3, 12),
    },
    "rs2_sampler": lambda make_cnn, task: {"sampler": lambda: RepeatedRandomSubsets(len(task.y_train), 0.9)},
}


def _run(make_cnn, task, setup: dict, checkpoint=None, loss_fn=None):
    model = make_cnn(0)
    options = {k: v for k, v in setup.items() if k != "cfg"}
    if "sampler" in options:
        options["sampler"] = options["sampler"]()  # a fresh sampler, as a new process builds
    result = train(model, task, setup.get("cfg", CFG), seed=3, progress=False, checkpoint=checkpoint,
                   loss_fn=loss_fn, **options)
    return model, result


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("crash_step", [1, 7, 10, 11, 19])
def test_a_crashed_run_resumes_to_the_same_weights_and_metrics(make_cnn, task, tmp_path, setup, every, crash_step):
    options = SETUPS[setup](make_cnn, task)
    reference = _run(make_cnn, task, options)
    checkpoint = Checkpointing(tmp_path / "ckpt.pt", every=every, key="run")
    with pytest.raises(Crash):
        _run(make_cnn, task, options, checkpoint, _interrupt_at(crash_step, _crash))
    resumed = _run(make_cnn, task, options, checkpoint)
    _assert_same_run(reference, resumed)


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("stop_step", [3, 5, 13, 20])
def test_a_signal_saves_after_the_step_and_the_rerun_resumes_from_it(make_cnn, task, tmp_path, setup, stop_step):
    options = SETUPS[setup](make_cnn, task)
    reference = _run(make_cnn, task, options)
    checkpoint = Checkpointing(tmp_path / "ckpt.pt", every=100, key="run")  # no periodic checkpoint
    handler = signal.getsignal(signal.SIGTERM)
    if stop_step == STEPS:  # the last step: the run just finishes
        finished = _run(make_cnn, task, options, checkpoint, _interrupt_at(stop_step, _terminate))
        _assert_same_run(reference, finished)
        return
    with pytest.raises(Preempted) as stopped:
        _run(make_cnn, task, options, checkpoint, _interrupt_at(stop_step, _terminate))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is restored
    saved = checkpoint.load()
    assert saved["step"] == stop_step
    # resumed with a loss that would crash at any step it repeated
    resumed = _run(make_cnn, task, options, checkpoint, _interrupt_at(10**9, _crash))
    _assert_same_run(reference, resumed)
    assert resumed[1].stopped_by == "SIGTERM"


def test_a_checkpoint_of_another_run_is_discarded_not_resumed(make_cnn, task, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        _run(make_cnn, task, {}, Checkpointing(path, key="other"), _interrupt_at(12, _crash))
    assert Checkpointing(path, key="other").load() is not None
    assert Checkpointing(path, key="run").load() is None
    assert not path.exists()  # deleted: no retry can trip over it again
    assert "discarding checkpoint" in capsys.readouterr().err
    with pytest.raises(Crash):
        _run(make_cnn, task, {}, Checkpointing(path, key="other"), _interrupt_at(12, _crash))
    _assert_same_run(_run(make_cnn, task, {}), _run(make_cnn, task, {}, Checkpointing(path, key="run")))


def test_an_unreadable_checkpoint_is_discarded(make_cnn, task, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"half a checkpoint")
    assert Checkpointing(path, key="run").load() is None
    assert not path.exists()
    assert "unreadable" in capsys.readouterr().err
    _assert_same_run(_run(make_cnn, task, {}), _run(make_cnn, task, {}, Checkpointing(path, key="run")))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_a_pack_checkpointed_on_its_device_resumes_there(make_cnn, task, tmp_path, device, stack):
    """A checkpoint is read onto the CPU; the resumed pack's weights, optimiser state, start
    weights (for the weight distance) and snapshots go back to the pack's device. On the CPU
    the resumed pack is bitwise the uninterrupted one; on a GPU it agrees to float rounding."""
    from workflow.train import Member

    on_device = type(task)(*(t.to(device) for t in (task.x_train, task.y_train, task.x_test, task.y_test)))
    masks = magnitude_masks(prunable_parameters(make_cnn(1)), None, 0.5, "global")

    def pack(loss_fn=None):
        return [Member(make_cnn(s).to(device), on_device.subset(range(40 * s, 40 * s + 200)), seed=s,
                       loss_fn=loss_fn if s == 0 else None,
                       masks={k: v.to(device) for k, v in masks.items()} if s == 1 else None,
                       snapshot_steps=(0, 6), desc=str(s))
                for s in range(2)]

    reference = pack()
    expected = train_pack(reference, CFG, stack=stack, progress=False)
    checkpoint = Checkpointing(tmp_path / "ckpt.pt", key="pack")
    with pytest.raises(Crash):
        train_pack(pack(_interrupt_at(8, _crash)), CFG, stack=stack, progress=False, checkpoint=checkpoint)
    resumed = pack()
    results = train_pack(resumed, CFG, stack=stack, progress=False, checkpoint=checkpoint)
    exact = device == "cpu"
    for ref, res, a, b in zip(reference, resumed, expected, results):
        assert b.resumed_step == 4 and b.stopped_by == "kill"  # 4 steps an epoch: crashed in the second
        sa, sb = _state(ref.model), _state(res.model)
        for k in sa:
            assert sb[k].device.type == device
            assert torch.equal(sa[k], sb[k]) if exact else torch.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-5), k
        for step in (0, 6):
            assert all(v.device.type == device for v in b.snapshots[step].values())
        if exact:
            xr.testing.assert_identical(a.history, b.history)
        else:
            xr.testing.assert_allclose(a.history, b.history, rtol=1e-4, atol=1e-5)


def test_checkpointing_refuses_a_hook_without_state_and_a_zero_interval(make_cnn, task, tmp_path):
    with pytest.raises(ValueError, match="on_batch hook's state"):
        train(make_cnn(0), task, CFG, seed=0, progress=False, on_batch=lambda *args: None,
              checkpoint=Checkpointing(tmp_path / "c.pt"))
    with pytest.raises(ValueError, match="interval"):
        Checkpointing(tmp_path / "c.pt", every=0)


@pytest.mark.parametrize("crash_step", [4, 6, 17])
def test_a_forgetting_count_resumes_with_its_training_run(make_cnn, task, tmp_path, crash_step):
    def counted(checkpoint=None, loss_fn=None):
        tracker = ForgettingTracker(len(task.y_train))
        model, result = _run(make_cnn, task, {"on_batch": tracker}, checkpoint, loss_fn)
        return model, result, tracker

    *reference, ref_tracker = counted()
    checkpoint = Checkpointing(tmp_path / "ckpt.pt", every=1, key="run")
    with pytest.raises(Crash):
        counted(checkpoint, _interrupt_at(crash_step, _crash))
    *resumed, tracker = counted(checkpoint)
    _assert_same_run(reference, resumed)
    assert torch.equal(tracker.presentations, ref_tracker.presentations)  # no batch counted twice or missed
    np.testing.assert_array_equal(tracker.counts(), ref_tracker.counts())


@pytest.mark.parametrize("score", ["el2n", "forgetting"])
def test_a_scoring_job_resumes_its_pack_of_repetitions(task_path, tmp_path, monkeypatch, score):
    """The repetitions train as one pack: a crash in the second one's 7th step (epoch 2) leaves
    the pack's checkpoint of epoch 1, and the rerun goes on from it to the same scores."""
    config = yaml.safe_load((ROOT / "config" / "studies" / "tiny.yaml").read_text())
    config["prune_data"][score] = {"inits": 2, **({"epoch": 2} if score == "el2n" else {})}
    spec = Study(config).score_spec(score)
    compute_scores(spec, tmp_path / "reference.zarr", data_path=task_path, device="cpu", progress=False)
    checkpoint = tmp_path / "checkpoints" / f"{score}.pt"

    def crash_in_the_second_run(members, *args, **kwargs):
        members[1].loss_fn = _interrupt_at(7, _crash)
        return train_pack(members, *args, **kwargs)

    monkeypatch.setattr(scoring, "train_pack", crash_in_the_second_run)
    with pytest.raises(Crash):
        compute_scores(spec, tmp_path / "scores.zarr", data_path=task_path, device="cpu", progress=False,
                       checkpoint=checkpoint)
    assert storage.load_torch(checkpoint)["epoch"] == 1
    assert not (tmp_path / "scores.zarr").exists()

    resumed = []

    def record_resumption(*args, **kwargs):
        results = train_pack(*args, **kwargs)
        resumed.extend(r.resumed_step for r in results)
        return results

    monkeypatch.setattr(scoring, "train_pack", record_resumption)
    compute_scores(spec, tmp_path / "scores.zarr", data_path=task_path, device="cpu", progress=False,
                   checkpoint=checkpoint)
    assert resumed == [5, 5]  # both went on after their first epoch (5 steps)
    xr.testing.assert_identical(storage.open_dataset(tmp_path / "reference.zarr").drop_attrs(),
                                storage.open_dataset(tmp_path / "scores.zarr").drop_attrs())
    assert not list((tmp_path / "checkpoints").iterdir())  # the checkpoint removed once the store is written


# --- a real process, killed -----------------------------------------------------------


def _train_command(spec: dict, out: Path, data: Path, checkpoints: Path | None) -> list[str]:
    command = [sys.executable, "-m", "workflow", "train", "--spec", json.dumps(spec), "--out", str(out),
               "--data", str(data), "--device", "cpu", "--threads", "1", "--no-progress"]
    return command + (["--checkpoints", str(checkpoints)] if checkpoints else [])


def _saved_run(out: Path) -> tuple[dict[str, torch.Tensor], xr.Dataset]:
    return storage.load_torch(out / "model.pt")["state_dict"], storage.open_dataset(out / "metrics.zarr")


@pytest.fixture(scope="module")
def long_run(task_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A pretraining spec of the tiny study that trains for a few seconds, and its uninterrupted result."""
    config = yaml.safe_load((ROOT / "config" / "studies" / "tiny.yaml").read_text())
    config["pretrain"]["train"] = {"epochs": 60}
    spec = Study(config).spec("pretrain/mnist1d/s0")
    reference = tmp_path_factory.mktemp("reference")
    subprocess.run(_train_command(spec, reference, task_path, None), check=True, cwd=ROOT)
    return spec, _saved_run(reference)


def _assert_same_saved_run(a, b) -> None:
    (weights_a, metrics_a), (weights_b, metrics_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    xr.testing.assert_identical(metrics_a.drop_attrs(), metrics_b.drop_attrs())


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint at {path}"
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_a_job_killed_with_sigkill_and_run_again_ends_as_an_uninterrupted_one(long_run, task_path, tmp_path, delay):
    spec, reference = long_run
    out, checkpoints = tmp_path / "run", tmp_path / "checkpoints"
    checkpoint = checkpoints / f"{spec['run']}.pt"
    process = subprocess.Popen(_train_command(spec, out, task_path, checkpoints), cwd=ROOT)
    _wait_for(checkpoint, process)
    time.sleep(delay)  # somewhere later in training, maybe while a checkpoint is written
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert not (out / "model.pt").exists()
    assert checkpoint.exists()  # written aside and renamed: a whole checkpoint, the last one or an earlier one
    saved_step = storage.load_torch(checkpoint)["step"]
    subprocess.run(_train_command(spec, out, task_path, checkpoints), check=True, cwd=ROOT)
    resumed = _saved_run(out)
    assert resumed[1].attrs["resumed_from_step"] == saved_step > 0  # went on, did not start over
    assert resumed[1].attrs["stopped_by"] == "kill"  # from a periodic checkpoint, with no warning
    _assert_same_saved_run(reference, resumed)
    assert not checkpoint.exists()  # removed once the outputs are written


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_job_told_to_stop_saves_exits_non_zero_and_resumes(long_run, task_path, tmp_path, sig):
    spec, reference = long_run
    out, checkpoints = tmp_path / "run", tmp_path / "checkpoints"
    checkpoint = checkpoints / f"{spec['run']}.pt"
    process = subprocess.Popen(_train_command(spec, out, task_path, checkpoints), cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(checkpoint, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig
    assert "run again to resume" in stderr
    assert checkpoint.exists() and not (out / "model.pt").exists()
    saved_step = storage.load_torch(checkpoint)["step"]
    subprocess.run(_train_command(spec, out, task_path, checkpoints), check=True, cwd=ROOT)
    resumed = _saved_run(out)
    assert resumed[1].attrs["resumed_from_step"] == saved_step > 0
    assert resumed[1].attrs["stopped_by"] == signal.Signals(sig).name
    _assert_same_saved_run(reference, resumed)
