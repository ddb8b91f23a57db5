localrules:
    collect,


# Every analysis store is computed by the batch of its training pack (workflow.analysis.batches):
# one rule per pack and kind of job, e.g. analyze_finetune_a47f3f28_0 (activations of the
# pack's runs, then the similarity, relative representations and connectivity that end at
# them) and spectra_finetune_a47f3f28_0. Asking for one store runs its batch;
# `--set-resources analyze:...` or `spectra:...` applies to every batch of that kind.
# Like a pack's, its outputs are update() outputs: it computes only the stores not stored
# for their key (workflow.cache).
from collections import Counter

for _batch in STUDY.analysis_batches():
    _name = _batch.job + "_" + pack_rule(PACKS[_batch.pack])

    rule:
        name:
            _name
        input:
            STUDY.batch_inputs(_batch),
        output:
            [update(directory(task.out)) for task in _batch.tasks],
        params:  # functions, bound now (see rules/train.smk)
            job=lambda w, batch=_batch.id: batch,
            spec=lambda w, key=digest(STUDY.batch_description(_batch)): key,
            options=lambda w: RUN_OPTS,
        conda:
            ENV
        threads: config["threads"]
        log:
            f"{R}/logs/{_batch.job}/{_name}.log",
        script:
            "scripts/job.py"

    give_stage_resources(_name, _batch.job)
    _kinds = ", ".join(f"{n} {kind}" for kind, n in Counter(task.kind for task in _batch.tasks).items())
    describe_rule(_name, f"Analyses of the runs of pack {_batch.pack} (stage {PACKS[_batch.pack].stage}): "
                         f"{_kinds} store(s).")
    RECOMPUTE_RULES.add(_name)


# One job gathers every summary: a summary is cheap to gather, and a study of many runs
# would otherwise pay a process start-up per summary.
rule collect:
    """Gather per-run stores into the study's summaries, each with its sweep axes as dimensions,
    and write the run index (summary/runs.zarr, runs.csv): every run, its coordinates, parent,
    pack, files and final metrics; with a zoo, its per-model table (summary/zoo_models.zarr, .csv)."""
    input:
        STUDY.summary_inputs(),
    output:
        [directory(STUDY.summary_path(name)) for name in STUDY.summaries()],
        directory(STUDY.run_index_paths()["zarr"]),
        STUDY.run_index_paths()["csv"],
        [directory(STUDY.zoo_models_paths()["zarr"]), STUDY.zoo_models_paths()["csv"]] if "zoo" in STUDY.summaries() else [],
    params:
        job="collect",
        spec=digest(STUDY.summaries_description()),
        options="",
    conda:
        ENV
    log:
        f"{R}/logs/summary/collect.log",
    script:
        "scripts/job.py"
