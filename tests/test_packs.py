"""The planner's packs: which runs one job trains, and that packs stay put as a study grows."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from workflow.study import Study


def _study(config: dict, pack_size: int | None = None) -> Study:
    config = copy.deepcopy(config)
    if pack_size is not None:
        config["execution"] = {**config.get("execution", {}), "pack_size": pack_size}
    return Study(config)


@pytest.mark.parametrize("pack_size", [1, 3, 16])
def test_every_run_is_in_one_pack_of_runs_that_can_train_together(default_config, pack_size) -> None:
    study = _study(default_config, pack_size)
    packs = study.packs()
    members = [run for pack in packs for run in pack.runs]
    assert sorted(members) == sorted(study.training_runs())  # each run once
    assert len({pack.id for pack in packs}) == len(packs)
    for pack in packs:
        assert 1 <= len(pack.runs) <= pack_size
        assert {study.parse(run)["stage"] for run in pack.runs} == {pack.stage}
        keys = {study.dumps(study.pack_key(run)) for run in pack.runs}
        assert len(keys) == 1, pack.id  # the same architecture, data, schedule, trainable parameters
        assert not {study.parent(run) for run in pack.runs} & set(pack.runs)  # no run waits on a pack mate
    if pack_size == 1:
        assert len(packs) == len(study.training_runs())
    assert [p.runs for p in _study(default_config, pack_size).packs()] == [p.runs for p in packs]  # deterministic


def test_the_default_study_packs_what_differs_only_in_seed_examples_masks_or_parent(default_config) -> None:
    study = _study(default_config, 16)
    runs = {pack.id.split("/")[0]: [] for pack in study.packs()}
    for pack in study.packs():
        runs[pack.stage].append(pack.runs)
    # full fine-tuning from both sources and both seeds: one pack; methods apart
    assert ("finetune/mnist1d/full/s0", "finetune/synthetic/full/s0", "finetune/mnist1d/full/s1",
            "finetune/synthetic/full/s1") in runs["finetune"]
    # equal-size subsets of one fraction, whichever score chose them
    assert ("prune_data/el2n-hard/f0.25/s0", "prune_data/random/f0.25/s0", "prune_data/el2n-hard/f0.25/s1",
            "prune_data/random/f0.25/s1") in runs["prune_data"]
    # IMP level 2 beside the random masks of level 1 (both wait on IMP level 1), never beside level 1
    assert ("prune_network/imp/k20/s0/level2", "prune_network/random/k20/s0/level1",
            "prune_network/imp/k20/s1/level2", "prune_network/random/k20/s1/level1") in runs["prune_network"]
    assert len(study.packs()) == 16 and len(study.training_runs()) == 52


def test_a_run_records_its_pack_and_the_job_of_a_pack_writes_each_runs_files(default_config) -> None:
    study = _study(default_config, 16)
    pack = study.pack_of("distill/trained/random/f0.5/T4-a0.5/s1")
    job = study.pack_job(pack)
    assert job.runs == pack.runs
    assert sorted(job.outputs.values()) == sorted(study.path(r, f) for r in pack.runs for f in ("model.pt", "metrics.zarr"))
    assert study.path("finetune/scratch/s0", "model.pt") in job.inputs.values()  # the teacher
    description = study.pack_description(pack)
    assert [m["spec"]["run"] for m in description["runs"]] == list(pack.runs)
    assert description["stack"] == "auto" and description["pack"] == pack.id
    assert all(m["out"] == study.path(m["spec"]["run"]) for m in description["runs"])


def _packs(study: Study) -> dict[str, tuple[str, ...]]:
    return {pack.id: pack.runs for pack in study.packs()}


def _specs(study: Study) -> dict[str, str]:
    return {pack.id: study.pack_job(pack).specs[next(iter(study.pack_job(pack).specs))] for pack in study.packs()}


def test_adding_a_seed_changes_only_the_packs_that_gain_it(default_config) -> None:
    """Seeds fill packs in blocks: with two runs per seed and packs of 4, seeds 0-1 fill a pack
    and seed 2 starts the next; nothing already packed moves."""
    before = _study(default_config, 4)
    grown = copy.deepcopy(default_config)
    grown["prune_data"]["seeds"] = [0, 1, 2]
    after = _study(grown, 4)
    old, new = _packs(before), _packs(after)
    gained = {pid for pid in new if new[pid] != old.get(pid)}
    assert all(pid.startswith(("prune_data/", "distill/")) for pid in gained)  # distill trains on its subsets
    assert all(all(study_run.endswith("/s2") for study_run in new[pid]) for pid in gained)  # only new packs
    assert {pid: runs for pid, runs in new.items() if pid not in gained} == old
    old_specs, new_specs = _specs(before), _specs(after)
    assert all(new_specs[pid] == old_specs[pid] for pid in old)  # no old pack reruns


def test_adding_a_fraction_or_changing_a_stage_leaves_the_other_packs_alone(default_config) -> None:
    before = _study(default_config)
    more = copy.deepcopy(default_config)
    more["prune_data"]["fractions"] = [0.25, 0.5, 0.75, 0.9]
    after = _study(more)
    assert set(_packs(before)) < set(_packs(after))
    assert all(_packs(after)[pid] == runs for pid, runs in _packs(before).items())
    assert all(_specs(after)[pid] == spec for pid, spec in _specs(before).items())

    changed = copy.deepcopy(default_config)
    changed["prune_network"]["train"]["lr"] = 0.02
    rerun = {pid for pid, spec in _specs(_study(changed)).items() if _specs(before).get(pid) != spec}
    assert rerun and all(pid.startswith("prune_network/") for pid in rerun)
    assert len(rerun) == sum(pid.startswith("prune_network/") for pid in _packs(before))


def test_pack_size_and_stack_are_checked_before_any_job(default_config) -> None:
    from workflow.config import ConfigError, load_config

    for bad, expected in (({"pack_size": 0}, "execution.pack_size"), ({"stack": "vmap"}, "execution.stack"),
                          ({"packsize": 4}, "packsize")):
        config = {**copy.deepcopy(default_config), "execution": bad}
        with pytest.raises(ConfigError, match=expected):
            load_config(config)


# --- analysis batches ---------------------------------------------------------------------------


def _stores(study: Study) -> list[str]:
    """Every analysis store of a study, from the analysis plan (not from the batches)."""
    return ([study.path(run, "activations.zarr") for run in study.activation_runs()]
            + list(study.similarity_pairs()) + list(study.relative_pairs()) + list(study.connectivity_pairs())
            + [study.spectra_path(run) for run in study.spectra_runs()])


@pytest.mark.parametrize("pack_size", [1, 16])
def test_every_analysis_store_is_in_one_batch_of_its_training_pack(default_config, pack_size) -> None:
    study = _study(default_config, pack_size)
    batches = study.analysis_batches()
    outs = [task.out for batch in batches for task in batch.tasks]
    assert sorted(outs) == sorted(_stores(study))  # each store once
    assert len({b.id for b in batches}) == len(batches) and all(b.id == f"{b.job}/{b.pack}" for b in batches)
    for batch in batches:
        assert {t.kind == "spectra" for t in batch.tasks} == {batch.job == "spectra"}
        assert all(study.pack_of(task.runs[-1]).id == batch.pack for task in batch.tasks)  # its second run's pack
        kinds = [t.kind for t in batch.tasks]
        assert kinds == sorted(kinds, key=["activations", "similarity", "relative", "connectivity", "spectra"].index)
        own = {t.out for t in batch.tasks}
        assert not own & set(study.batch_inputs(batch))  # it reads what other jobs wrote
        for task in batch.tasks:
            for path in task.inputs.values():
                assert path in own or path in study.batch_inputs(batch)
    # all activations of one pack in one job; every pair of an edge kind between two packs in one job
    where = {task.out: batch.id for batch in batches for task in batch.tasks}
    for pack in study.packs():
        acts = {where[study.path(r, "activations.zarr")] for r in pack.runs if r in study.activation_runs()}
        assert len(acts) <= 1
    edges: dict[tuple[str, str, str], set[str]] = {}
    for path, (a, b) in study.similarity_pairs().items():
        edge = path.split("/analyze/similarity/")[1].split("/")[0]
        edges.setdefault((edge, study.pack_of(a).id, study.pack_of(b).id), set()).add(where[path])
    assert all(len(jobs) == 1 for jobs in edges.values())


def test_the_default_study_is_at_most_fifty_jobs(default_config) -> None:
    study = _study(default_config)
    jobs = (len(study.sources()) + 1 + len(study.score_stores()) + len(study.packs())
            + len(study.analysis_batches()) + 3)  # make_data per task; collect, plot, all
    assert jobs == 42 <= 50


def _batch_keys(study: Study) -> dict[str, str]:
    return {b.id: study.dumps(study.batch_description(b)) for b in study.analysis_batches()}


def test_a_changed_analysis_setting_reruns_the_batches_that_hold_it(default_config) -> None:
    before = _batch_keys(_study(default_config))
    measures = copy.deepcopy(default_config)
    measures["analyze"]["similarity"]["measures"] = ["linear_cka"]
    rerun = {bid for bid, key in _batch_keys(_study(measures)).items() if before[bid] != key}
    assert rerun and all(bid.startswith("analyze/") for bid in rerun)  # not the costly spectra
    assert rerun == {b.id for b in _study(default_config).analysis_batches()
                     if any(t.kind == "similarity" for t in b.tasks)}
    spectra = copy.deepcopy(default_config)
    spectra["analyze"]["spectra"]["hessian_k"] = 3
    rerun = {bid for bid, key in _batch_keys(_study(spectra)).items() if before[bid] != key}
    assert rerun == {bid for bid in before if bid.startswith("spectra/")}


def test_adding_a_seed_reruns_only_the_analyses_of_the_packs_that_gain_it(default_config) -> None:
    before = _study(default_config, 4)
    grown = copy.deepcopy(default_config)
    grown["prune_network"]["seeds"] = [0, 1, 2]
    after = _study(grown, 4)
    gained = {pid for pid, runs in _packs(after).items() if _packs(before).get(pid) != runs}
    old, new = _batch_keys(before), _batch_keys(after)
    changed = {bid for bid in new if old.get(bid) != new[bid]}
    assert changed == {b.id for b in after.analysis_batches() if b.pack in gained}
    assert all(bid.startswith("analyze/prune_network/") for bid in changed)


STUDIES = ["default"] + sorted(p.stem for p in (Path(__file__).parent.parent / "config" / "studies").glob("*.yaml"))


def _grown(config: dict) -> dict:
    """A shipped study with at least two seeds in every stage and two rewind steps, so that
    its packs hold runs that differ in seed and rewind step, as a real study's do."""
    config = copy.deepcopy(config)
    for settings in config.values():
        if isinstance(settings, dict) and len(settings.get("seeds", [0, 1])) < 2:
            settings["seeds"] = [*settings["seeds"], max(settings["seeds"]) + 1]
    pn = config.get("prune_network")
    if pn and len(pn.get("rewind_steps", [0, 1])) < 2:
        pn["rewind_steps"] = [*pn["rewind_steps"], max(pn["rewind_steps"]) + 1]
    return config


@pytest.mark.parametrize("name", STUDIES)
def test_every_pack_of_every_shipped_study_trains_its_runs_with_the_same_settings(read_config, name) -> None:
    """Training settings are decided in one place: a run whose job decides some of them
    (FLOPs-matched epochs, from its parent's masks) trains in a pack of its own; the runs
    of every other pack share every training setting of their specs but those an optimiser
    applies element by element (a zoo cell's learning rates)."""
    from workflow.stages import ELEMENTWISE
    from workflow.stages.registry import TRAINING_STAGES

    study = Study(_grown(read_config(name)))
    for pack in study.packs():
        specs = [study.spec(run) for run in pack.runs]
        stage = TRAINING_STAGES[pack.stage]
        if len(specs) > 1:
            assert not any(stage.decided_by_job(spec) for spec in specs), pack.id
            shared = [{k: v for k, v in spec["train"].items() if k not in ELEMENTWISE} for spec in specs]
            assert len({study.dumps(train) for train in shared}) == 1, pack.id
            assert len({study.dumps(spec["model"]) for spec in specs}) == 1, pack.id


def test_flops_matched_scratch_runs_train_alone(read_config) -> None:
    study = Study(_grown(read_config("lottery")))
    scratch = [run for run in study.network_pruning_runs() if study.parse(run)["method"] == "scratch"]
    assert len(scratch) == 3 * 2 * 8  # seeds x rewind steps x levels
    assert all(study.pack_of(run).runs == (run,) for run in scratch)
    reinit = [run for run in study.network_pruning_runs() if study.parse(run)["method"] == "reinit"]
    assert max(len(study.pack_of(run).runs) for run in reinit) > 1  # fixed epochs: still packed


def test_runs_that_differ_in_elementwise_optimiser_settings_share_a_pack(default_config) -> None:
    """Learning rate, weight decay and momentum are per member (workflow.engines): a study whose
    stage sweeps them packs those runs together, as it packs seeds."""
    from workflow.stages.registry import TRAINING_STAGES

    study = _study(default_config)
    spec = study.spec("pretrain/mnist1d/s0")
    stage = TRAINING_STAGES["pretrain"]
    other = {**spec, "train": {**spec["train"], "lr": 0.1, "weight_decay": 0.5, "momentum": 0.0}}
    assert stage.pack_key(other) == stage.pack_key(spec)
    assert stage.pack_key({**spec, "train": {**spec["train"], "epochs": 99}}) != stage.pack_key(spec)
