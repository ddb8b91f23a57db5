"""Packs: the training loop trains K models in lockstep, one after another or stacked.

A sequential pack gives every run bitwise what it gets trained alone; a stacked
pack agrees with that to float rounding; reruns and resumed packs are bitwise
identical; a diverging member stops the pack naming itself."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import xarray as xr

from workflow.checkpoint import Checkpointing
from workflow.distill import kd_loss
from workflow.engines import resolve_stack
from workflow.forgetting import ForgettingTracker
from workflow.prune_network import magnitude_masks, prunable_parameters
from workflow.train import DivergenceError, Member, TrainConfig, train, train_pack

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CFG = TrainConfig(epochs=2, batch_size=40, lr=0.01, optimizer="adam", weight_decay=1e-4)  # 3 steps per epoch on 120


def _members(make_cnn, task) -> list[Member]:
    """Four runs that differ in every way a pack allows: seed, examples, masks, loss, hooks."""
    teacher = make_cnn(seed=9).eval().requires_grad_(False)

    def kd(logits, xb, yb):
        with torch.no_grad():
            t = teacher(xb)
        return kd_loss(logits, t, yb, 4.0, 0.5)

    pruned = make_cnn(seed=3)
    masks = magnitude_masks({n: p.detach() for n, p in prunable_parameters(pruned).items()}, None, 0.5, "global")
    return [
        Member(make_cnn(seed=0), task.subset(range(0, 120)), seed=0, desc="a"),
        Member(make_cnn(seed=1), task.subset(range(120, 240)), seed=1, loss_fn=kd, desc="b"),
        Member(make_cnn(seed=2), task.subset(range(60, 180)), seed=5, snapshot_steps=(0, 2),
               on_batch=ForgettingTracker(120), desc="c"),
        Member(pruned, task.subset(range(0, 240, 2)), seed=3, masks=masks, desc="d"),
    ]


def _alone(m: Member, cfg: TrainConfig = CFG):
    return train(m.model, m.data, cfg, seed=m.seed, loss_fn=m.loss_fn, masks=m.masks,
                 snapshot_steps=m.snapshot_steps, on_batch=m.on_batch, progress=False, desc=m.desc)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise(model_a, result_a, model_b, result_b) -> None:
    a, b = _state(model_a), _state(model_b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    xr.testing.assert_identical(result_a.history, result_b.history)
    assert result_a.snapshots.keys() == result_b.snapshots.keys()
    for step in result_a.snapshots:
        assert all(torch.equal(result_a.snapshots[step][k], result_b.snapshots[step][k]) for k in a)


def test_a_sequential_pack_trains_each_run_bitwise_as_alone(make_cnn, task) -> None:
    pack = _members(make_cnn, task)
    alone = copy.deepcopy(pack)
    results = train_pack(pack, CFG, stack="sequential", progress=False)
    for m, r, solo in zip(pack, results, alone):
        _assert_bitwise(m.model, r, solo.model, _alone(solo))
    assert torch.equal(pack[2].on_batch.events, alone[2].on_batch.events)
    assert all((p[~mask] == 0).all() for name, mask in pack[3].masks.items()
               for p in [dict(pack[3].model.named_parameters())[name]])


def test_a_stacked_pack_agrees_with_each_run_alone(make_cnn, task) -> None:
    """Every weight, BatchNorm statistic and metric within 1e-5 relative after one epoch (and two)."""
    for epochs in (1, 2):
        cfg = replace(CFG, epochs=epochs)
        pack = _members(make_cnn, task)
        alone = copy.deepcopy(pack)
        results = train_pack(pack, cfg, stack="stacked", progress=False)
        for m, r, solo in zip(pack, results, alone):
            ref = _alone(solo, cfg)
            a, b = _state(m.model), _state(solo.model)
            for k in a:
                if a[k].is_floating_point():
                    err = (a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)
                    assert err <= 1e-5, (m.desc, k, float(err))
                else:
                    assert torch.equal(a[k], b[k]), k  # num_batches_tracked
            for name in ("train_loss", "test_acc", "weight_distance"):
                assert abs(r.history[name] - ref.history[name]).max() <= 1e-5 * max(1.0, float(abs(ref.history[name]).max()))
        assert all((dict(pack[3].model.named_parameters())[n][~mask] == 0).all() for n, mask in pack[3].masks.items())


@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_a_rerun_of_a_pack_is_bitwise_identical(make_cnn, task, stack) -> None:
    first, second = _members(make_cnn, task), _members(make_cnn, task)
    r1 = train_pack(first, CFG, stack=stack, progress=False)
    r2 = train_pack(second, CFG, stack=stack, progress=False)
    for a, ra, b, rb in zip(first, r1, second, r2):
        _assert_bitwise(a.model, ra, b.model, rb)


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_a_pack_killed_mid_training_resumes_to_the_uninterrupted_pack(make_cnn, task, tmp_path, stack) -> None:
    """Killed at step 5 (epoch 2), the rerun goes on from the checkpoint of epoch 1."""
    cfg = replace(CFG, epochs=3)
    whole = _members(make_cnn, task)
    expected = train_pack(whole, cfg, stack=stack, progress=False)

    calls = {"n": 0}

    def crash_at_step_5(logits, xb, yb):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash()
        return torch.nn.functional.cross_entropy(logits, yb)

    saving = Checkpointing(tmp_path / "pack.pt", every=1, key="pack")
    killed = _members(make_cnn, task)
    killed[0].loss_fn = crash_at_step_5
    with pytest.raises(Crash):
        train_pack(killed, cfg, stack=stack, progress=False, checkpoint=saving)
    assert saving.path.exists()
    again = _members(make_cnn, task)
    resumed = train_pack(again, cfg, stack=stack, progress=False, checkpoint=saving)
    assert all(r.resumed_step == 3 and r.stopped_by == "kill" for r in resumed)
    for a, ra, b, rb in zip(whole, expected, again, resumed):
        _assert_bitwise(a.model, ra, b.model, rb)


@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_a_diverging_member_stops_the_pack_naming_it(make_cnn, task, stack) -> None:
    pack = _members(make_cnn, task)[:3]
    pack[1].loss_fn = lambda logits, xb, yb: torch.nn.functional.cross_entropy(logits, yb) * float("nan")
    with pytest.raises(DivergenceError, match=r"^b: loss is nan at epoch 1, step 1 "):
        train_pack(pack, CFG, stack=stack, progress=False)


def test_a_pack_refuses_members_of_different_lengths_and_stacking_different_models(make_cnn, task) -> None:
    uneven = [Member(make_cnn(0), task.subset(range(120)), 0), Member(make_cnn(1), task.subset(range(200)), 1)]
    with pytest.raises(ValueError, match=r"as many steps per epoch; these take \[3, 5\]"):
        train_pack(uneven, CFG, progress=False)
    wide = [Member(make_cnn(0), task, 0), Member(make_cnn(1, channels=8), task, 1)]
    with pytest.raises(ValueError, match="member 1 differs from member 0"):
        train_pack(wide, CFG, stack="stacked", progress=False)
    frozen = [Member(make_cnn(0), task, 0), Member(make_cnn(1), task, 1)]
    frozen[1].model.head.requires_grad_(False)
    with pytest.raises(ValueError, match="one set of trainable parameters"):
        train_pack(frozen, CFG, stack="stacked", progress=False)


@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_bf16_autocasts_the_forward_pass_and_keeps_float32_weights(make_cnn, task, stack) -> None:
    """bf16 trains in autocast: the weights stay float32, and end near, not at, the fp32 ones."""
    cfg = replace(CFG, epochs=1)
    fp32, bf16 = ([Member(make_cnn(seed=s), task.subset(range(120)), seed=s) for s in range(2)] for _ in range(2))
    train_pack(fp32, cfg, stack=stack, progress=False)
    seen: list[torch.dtype] = []
    hook = bf16[0].model.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    train_pack(bf16, replace(cfg, precision="bf16"), stack=stack, progress=False)
    hook.remove()
    for a, b in zip(fp32, bf16):
        sa, sb = _state(a.model), _state(b.model)
        assert all(sb[k].dtype == sa[k].dtype for k in sa)
        w = "conv1.0.weight"
        rel = float((sa[w] - sb[w]).norm() / sa[w].norm())
        assert 0 < rel < 0.05, rel  # rounded differently, trained the same way
    if stack == "sequential":  # the hook sees the member's own module (stacked calls a copy)
        assert torch.bfloat16 in seen


def test_a_compiled_pack_agrees_with_the_eager_one(make_cnn, task) -> None:
    cfg = replace(CFG, epochs=1)
    eager, compiled = ([Member(make_cnn(seed=s), task.subset(range(120)), seed=s) for s in range(2)] for _ in range(2))
    train_pack(eager, cfg, stack="sequential", progress=False)
    train_pack(compiled, replace(cfg, compile=True), stack="sequential", progress=False)
    for a, b in zip(eager, compiled):
        sa, sb = _state(a.model), _state(b.model)
        for k in sa:
            if sa[k].is_floating_point():
                assert (sa[k] - sb[k]).norm() <= 1e-4 * sa[k].norm().clamp_min(1e-30), k


def test_precision_must_be_fp32_or_bf16() -> None:
    with pytest.raises(ValueError, match="precision 'fp16' unknown; allowed: fp32, bf16"):
        replace(CFG, precision="fp16")


def test_auto_stacks_on_a_gpu_only() -> None:
    assert resolve_stack("auto", torch.device("cpu")) == "sequential"
    assert resolve_stack("auto", torch.device("cuda", 0)) == "stacked"
    assert resolve_stack("stacked", torch.device("cpu")) == "stacked"
    with pytest.raises(ValueError, match="allowed: auto, stacked, sequential"):
        resolve_stack("vmap", torch.device("cpu"))


def test_auto_steps_members_of_different_shapes_in_turn() -> None:
    """EVA runs of one pack may take different ranks per seed: they cannot stack."""
    gpu = torch.device("cuda", 0)
    same = [torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)]
    assert resolve_stack("auto", gpu, same) == "stacked"
    assert resolve_stack("auto", gpu, [torch.nn.Linear(3, 2), torch.nn.Linear(3, 4)]) == "sequential"
    frozen = [torch.nn.Linear(3, 2), torch.nn.Linear(3, 2).requires_grad_(False)]
    assert resolve_stack("auto", gpu, frozen) == "sequential"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_a_pack_steps_on_cuda_without_waiting_for_the_host(make_cnn, task, stack) -> None:
    """No step of either engine, nor the finiteness check of its losses, synchronises with the host."""
    from workflow.engines import ENGINES, cross_entropy
    from workflow.train import Finite

    device = torch.device("cuda")
    models = [make_cnn(seed=s).to(device) for s in range(4)]
    engine = ENGINES[stack](models, [None] * 4, [CFG] * 4, 10)
    finite = Finite(4, device)
    x, y = task.x_train[:160].to(device), task.y_train[:160].to(device)
    engine.train_mode()
    xbs, ybs = list(x.view(4, 40, -1)), list(y.view(4, 40))
    engine.step(xbs, ybs, [cross_entropy] * 4)  # warm-up: first kernels, allocator
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            losses, _ = engine.step(xbs, ybs, [cross_entropy] * 4)
            finite.watch(losses, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    finite.check([Member(m, task, 0, desc=str(k)) for k, m in enumerate(models)], 1, engine.lr)


@cuda
def test_a_stacked_pack_on_cuda_agrees_with_the_sequential_one(make_cnn, task) -> None:
    cuda_task = type(task)(*(t.cuda() for t in (task.x_train, task.y_train, task.x_test, task.y_test)))
    runs = {}
    for stack in ("sequential", "stacked"):
        pack = [Member(make_cnn(seed=s).cuda(), cuda_task.subset(range(40 * s, 40 * s + 120)), seed=s)
                for s in range(3)]
        runs[stack] = (pack, train_pack(pack, replace(CFG, epochs=1), stack=stack, progress=False))
    for a, b in zip(runs["sequential"][0], runs["stacked"][0]):
        sa, sb = _state(a.model), _state(b.model)
        for k in sa:
            if sa[k].is_floating_point():
                assert (sa[k] - sb[k]).norm() <= 1e-3 * sb[k].norm().clamp_min(1e-30), k


# --- element-wise settings per member, and divergence as data ---------------------------------


def _assert_stacked_is_alone(pack, cfg: TrainConfig, alone) -> None:
    """A stacked pack of ``pack()`` trains each member to within 1e-5 of it alone (``alone``:
    (member, result) pairs)."""
    stacked = pack()
    for (a, ra), b, rb in zip(alone, stacked, train_pack(stacked, cfg, stack="stacked", progress=False)):
        sa, sb = _state(a.model), _state(b.model)
        for k in sa:
            if sa[k].is_floating_point():
                torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-5)
        xr.testing.assert_allclose(ra.history, rb.history, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer, settings", [
    ("adam", [{"lr": 0.001}, {"lr": 0.01}, {"lr": 0.03, "weight_decay": 1e-3}]),
    ("adamw", [{"lr": 0.001, "weight_decay": 0.1}, {"lr": 0.01}, {"lr": 0.02, "weight_decay": 0.01}]),
    ("sgd", [{"lr": 0.01, "momentum": 0.0}, {"lr": 0.05, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.5,
                                                                        "weight_decay": 1e-3}]),
])
def test_a_stacked_pack_of_three_learning_rates_equals_each_run_alone(make_cnn, task, optimizer, settings) -> None:
    """Each member keeps its own learning rate, weight decay, momentum and cosine schedule."""
    base = replace(CFG, optimizer=optimizer, schedule="cosine")
    cfgs = [replace(base, **s) for s in settings]

    def pack():
        return [Member(make_cnn(seed=k), task.subset(range(40 * k, 40 * k + 120)), seed=k, cfg=c, desc=str(k))
                for k, c in enumerate(cfgs)]

    alone = [(m, _alone(m, m.cfg)) for m in pack()]
    _assert_stacked_is_alone(pack, base, alone)
    sequential = pack()
    for (a, ra), b, rb in zip(alone, sequential, train_pack(sequential, base, progress=False)):
        _assert_bitwise(a.model, ra, b.model, rb)


def test_a_pack_refuses_members_that_differ_in_more_than_elementwise_settings(make_cnn, task) -> None:
    pack = [Member(make_cnn(seed=0), task, 0), Member(make_cnn(seed=1), task, 1, cfg=replace(CFG, epochs=3))]
    with pytest.raises(ValueError, match="may differ only in lr, weight_decay, momentum"):
        train_pack(pack, CFG, progress=False)


@pytest.mark.parametrize("stack", ["sequential", "stacked"])
def test_a_diverging_member_is_recorded_and_the_rest_train_on(make_cnn, task, stack) -> None:
    """on_divergence="record": the member whose loss stops being finite stops updating, its
    metrics are NaN from that epoch on, its result says where; the others are as alone."""
    cfg = replace(CFG, epochs=3, optimizer="sgd", lr=0.01)

    def pack():
        return [Member(make_cnn(seed=k), task.subset(range(40 * k, 40 * k + 120)), seed=k, desc=str(k),
                       cfg=replace(cfg, lr=1e30) if k == 1 else None)
                for k in range(3)]

    alone = [(m, _alone(m, cfg)) for m in pack() if m.cfg is None]
    members = pack()
    with pytest.raises(DivergenceError, match="1: loss is"):
        train_pack(pack(), cfg, stack=stack, progress=False)
    results = train_pack(members, cfg, stack=stack, progress=False, on_divergence="record")
    diverged = results[1]
    epoch, step = diverged.diverged
    assert epoch == 1 and 1 <= step <= 3  # 3 steps an epoch: it diverged in the first
    assert diverged.history["test_acc"].isel(epoch=0).notnull()
    assert diverged.history["test_acc"].isel(epoch=slice(1, None)).isnull().all()
    assert all(torch.isfinite(p).all() for p in members[1].model.parameters())  # stopped before its bad step
    assert all(torch.isfinite(b).all() for b in members[1].model.buffers())
    for (a, ra), b, rb in zip(alone, [members[0], members[2]], [results[0], results[2]]):
        assert rb.diverged is None
        if stack == "sequential":
            _assert_bitwise(a.model, ra, b.model, rb)
        else:
            xr.testing.assert_allclose(ra.history, rb.history, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="allowed: fail, record"):
        train_pack(pack(), cfg, progress=False, on_divergence="ignore")


def test_a_stacked_pack_of_students_distils_from_every_teacher_at_once(make_cnn, task) -> None:
    """Students of a trained and an untrained teacher, at other temperatures and alphas: the
    stacked engine runs every teacher in one vmapped pass and equals each student alone."""
    from workflow.distill import KDLoss
    from workflow.engines import Stacked

    teachers = [make_cnn(seed=9).eval().requires_grad_(False), make_cnn(seed=8).eval().requires_grad_(False)]
    losses = [KDLoss(teachers[0], 4.0, 0.5), KDLoss(teachers[1], 2.0, 0.9), KDLoss(teachers[0], 1.0, 0.2)]

    def pack():
        return [Member(make_cnn(seed=k), task.subset(range(40 * k, 40 * k + 120)), seed=k, loss_fn=fn, desc=str(k))
                for k, fn in enumerate(losses)]

    _assert_stacked_is_alone(pack, CFG, [(m, _alone(m)) for m in pack()])
    engine = Stacked([m.model for m in pack()], [None] * 3, [CFG] * 3, 10)
    teachers_once = engine.stacked_teachers(losses)
    assert teachers_once is not None and engine.stacked_teachers(losses) is teachers_once  # built once
    assert Stacked([m.model for m in pack()], [None] * 3, [CFG] * 3, 10).stacked_teachers(
        [losses[0], lambda logits, xb, yb: logits.sum(), losses[2]]) is None  # not every member distils


def test_measuring_a_stacked_pack_at_once_equals_measuring_each_member(make_cnn, task) -> None:
    """The GPU's way (every member's train and test metrics and weight distance in one vmapped
    pass, read once an epoch) agrees with evaluating each member's module, and the weights
    are the same either way."""
    def pack():
        return [Member(make_cnn(seed=k), task.subset(range(40 * k, 40 * k + 120)), seed=k, desc=str(k))
                for k in range(3)]

    apart, together = pack(), pack()
    a = train_pack(apart, CFG, stack="stacked", progress=False, measure_together=False)
    b = train_pack(together, CFG, stack="stacked", progress=False, measure_together=True)
    for ma, mb, ra, rb in zip(apart, together, a, b):
        assert all(torch.equal(x, y) for x, y in zip(_state(ma.model).values(), _state(mb.model).values()))
        xr.testing.assert_allclose(ra.history, rb.history, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stack", ["sequential", "stacked"])
@pytest.mark.parametrize("together", [False, True])
def test_every_engine_measures_the_validation_set_each_epoch_and_never_trains_on_it(
    make_cnn, task, stack: str, together: bool
) -> None:
    from dataclasses import replace

    from workflow.runtime import evaluate

    if together and stack == "sequential":
        pytest.skip("only a stacked pack measures its members at once")
    with_val = replace(task, x_val=task.x_train[200:], y_val=task.y_train[200:])
    members = [Member(make_cnn(seed=k), with_val.subset(range(40 * k, 40 * k + 120)), seed=k, desc=str(k))
               for k in range(2)]
    results = train_pack(members, CFG, stack=stack, progress=False, measure_together=together)
    for member, result in zip(members, results):
        history = result.history
        assert list(history.data_vars)[:6] == ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                                               "test_acc"]
        with torch.no_grad():
            loss, acc = evaluate(member.model, with_val.x_val, with_val.y_val)
        assert float(history["val_acc"].isel(epoch=-1)) == pytest.approx(acc, abs=1e-6)
        assert float(history["val_loss"].isel(epoch=-1)) == pytest.approx(loss, rel=1e-5)
        assert int(member.data.rows.max()) < 200  # trained on rows 0..199 only, never on the validation rows
    # without a validation set, nothing changes: the history is the one it always was
    plain = train_pack([Member(make_cnn(seed=0), task.subset(range(120)), seed=0)], CFG, progress=False)[0]
    assert "val_acc" not in plain.history
