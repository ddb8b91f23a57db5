localrules:
    collect,


rule activations:
    """Activations of every named layer of one run's model on the probe set."""
    input:
        model=f"{R}/{{run}}/model.pt",
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/{{run}}/activations.zarr"),
    params:
        spec=lambda w: Study.dumps(STUDY.analysis_spec()),
        probe_size=config["analyze"]["probe_size"],
    wildcard_constraints:
        run=r"(pretrain|finetune|prune_data|distill|prune_network)/[^.]+",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/activations/{{run}}.log",
    shell:
        JOB + " activations --model {input.model} --data {input.data} --probe-size {params.probe_size} "
        "--out {output} " + RUN_OPTS + " > {log} 2>&1"


rule cka:
    """Linear CKA, layer x layer, between a run's parent and the run."""
    input:
        a=lambda w: STUDY.path(STUDY.parent(w.run), "activations.zarr"),
        b=f"{R}/{{run}}/activations.zarr",
    output:
        directory(f"{R}/analyze/cka/{{run}}/analysis.zarr"),
    params:
        parent=lambda w: STUDY.parent(w.run),
    wildcard_constraints:
        run=r"(finetune|prune_data|distill|prune_network)/[^.]+",
    conda:
        ENV
    log:
        f"{R}/logs/cka/{{run}}.log",
    shell:
        JOB + " cka --a {input.a} --b {input.b} --name-a {params.parent} --name-b {wildcards.run} "
        "--out {output} > {log} 2>&1"


rule collect:
    """Gather per-run stores into one summary whose sweep axes are dimensions."""
    input:
        lambda w: [path for _, path in STUDY.summaries()[w.name]],
    output:
        directory(f"{R}/summary/{{name}}.zarr"),
    params:
        entries=lambda w: json.dumps(STUDY.summaries()[w.name]),
    conda:
        ENV
    log:
        f"{R}/logs/summary/{{name}}.log",
    shell:
        JOB + " collect --entries {params.entries:q} --out {output} > {log} 2>&1"
