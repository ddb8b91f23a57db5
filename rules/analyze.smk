localrules:
    collect,


rule activations:
    """Activations of the chosen layers (analyze.layers, conv) of one run's model on the probe set."""
    input:
        model=f"{R}/{{run}}/model.pt",
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/{{run}}/activations.zarr"),
    params:
        settings=lambda w: dumps(STUDY.analysis_spec()),
    wildcard_constraints:
        run=run_pattern("pretrain", "finetune", "prune_data", "distill", "prune_network"),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/activations/{{run}}.log",
    shell:
        JOB + " activations --model {input.model} --data {input.data} --settings {params.settings:q} "
        "--out {output} " + RUN_OPTS + " > {log} 2>&1"


# Built once: a study has thousands of similarity jobs, each looking up its two runs.
SIMILARITY_PAIRS = STUDY.similarity_pairs()


def similarity_runs(w):
    return SIMILARITY_PAIRS[STUDY.similarity_path(w.edge, w.run)]


def similarity_inputs(w):
    """The activations of both models; of one for a model against itself."""
    a, b = similarity_runs(w)
    return {"a": STUDY.path(a, "activations.zarr"), **({"b": STUDY.path(b, "activations.zarr")} if b != a else {})}


rule similarity:
    """Every configured similarity measure, layer x layer, between the two models of one edge of the lineage."""
    input:
        unpack(similarity_inputs),
    output:
        directory(f"{R}/analyze/similarity/{{edge}}/{{run}}/analysis.zarr"),
    params:
        b=lambda w, input: f"--b {input.b} --name-b {w.run}" if "b" in input.keys() else "",
        name_a=lambda w: similarity_runs(w)[0],
        settings=lambda w: dumps(STUDY.analysis_settings("similarity")),
    wildcard_constraints:
        edge="|".join(SIMILARITY_EDGES),
        run=run_pattern("pretrain", "finetune", "distill", "prune_network"),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/similarity/{{edge}}/{{run}}.log",
    shell:
        JOB + " similarity --a {input.a} --name-a {params.name_a} {params.b} "
        "--settings {params.settings:q} --out {output} --threads {threads} > {log} 2>&1"


rule spectra:
    """The NTK and Hessian spectra and the weights' effective ranks of one pretrained or fine-tuned model."""
    input:
        model=f"{R}/{{run}}/model.pt",
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/analyze/spectra/{{run}}/analysis.zarr"),
    params:
        settings=lambda w: dumps(STUDY.analysis_settings("spectra")),
    wildcard_constraints:
        run=run_pattern("pretrain", "finetune"),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/spectra/{{run}}.log",
    shell:
        JOB + " spectra --model {input.model} --data {input.data} --settings {params.settings:q} "
        "--out {output} " + RUN_OPTS + " > {log} 2>&1"


def relative_runs(w):
    return STUDY.relative_pairs()[STUDY.relative_path(w.run, int(w.other))]


rule relative:
    """Relative against absolute representations of a run and its next-seed twin, and zero-shot stitching."""
    input:
        a=f"{R}/{{run}}/model.pt",
        b=lambda w: STUDY.path(relative_runs(w)[1], "model.pt"),
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/analyze/relative/{{run}}/vs_s{{other}}/analysis.zarr"),
    params:
        names=lambda w: "--name-a {} --name-b {}".format(*relative_runs(w)),
        settings=lambda w: dumps(STUDY.analysis_settings("relative")),
    wildcard_constraints:
        run=run_pattern("pretrain", "finetune"),
        other=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/relative/{{run}}/vs_s{{other}}.log",
    shell:
        JOB + " relative --a {input.a} --b {input.b} {params.names} --data {input.data} "
        "--settings {params.settings:q} --out {output} " + RUN_OPTS + " > {log} 2>&1"


def connectivity_runs(w):
    return STUDY.connectivity_pairs()[STUDY.connectivity_path(w.pair, w.source, int(w.seed))]


rule connectivity:
    """Loss and error on the straight line between two models, BatchNorm re-estimated at each point."""
    input:
        a=lambda w: STUDY.path(connectivity_runs(w)[0], "model.pt"),
        b=lambda w: STUDY.path(connectivity_runs(w)[1], "model.pt"),
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/analyze/connectivity/{{pair}}/{{source}}/s{{seed}}/analysis.zarr"),
    params:
        names=lambda w: "--name-a {} --name-b {}".format(*connectivity_runs(w)),
        settings=lambda w: dumps(STUDY.analysis_settings("connectivity")),
    wildcard_constraints:
        pair=r"[a-z0-9_]+",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/connectivity/{{pair}}/{{source}}/s{{seed}}.log",
    shell:
        JOB + " connectivity --a {input.a} --b {input.b} {params.names} --data {input.data} "
        "--settings {params.settings:q} --out {output} " + RUN_OPTS + " > {log} 2>&1"


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
