localrules:
    collect,


# Every analysis store is computed by the batch of its training pack (workflow.analysis.batches):
# one rule per pack and kind of job, e.g. analyze_finetune_a47f3f28_0 (activations of the
# pack's runs, then the similarity, relative representations and connectivity that end at
# them) and spectra_finetune_a47f3f28_0. Asking for one store runs its batch;
# `--set-resources analyze:...` or `spectra:...` applies to every batch of that kind.
# Like a pack's, its outputs are update() outputs: it computes only the stores not stored
# for their key (workflow.cache).
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
            f"{R}/logs/{_batch.id}.log",
        script:
            "scripts/job.py"

    give_stage_resources(_name, _batch.job)
    RECOMPUTE_RULES.add(_name)


# One job gathers every summary: a summary is cheap to gather, and a study of many runs
# would otherwise pay a process start-up per summary.
rule collect:
    """Gather per-run stores into the study's summaries, each with its sweep axes as dimensions."""
    input:
        list(dict.fromkeys(path for entries in STUDY.summaries().values() for _, path in entries)),
    output:
        [directory(STUDY.summary_path(name)) for name in STUDY.summaries()],
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
