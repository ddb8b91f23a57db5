def scores_store(method):
    """The score store a data-pruning method selects with (``el2n-hard`` -> el2n)."""
    return f"{R}/prune_data/scores/{method.split('-')[0]}/scores.zarr"


rule scores:
    """Score every target training example once; every fraction and seed reuses it."""
    input:
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/prune_data/scores/{{score}}/scores.zarr"),
    params:
        spec=lambda w: Study.dumps(STUDY.score_spec(w.score)),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/scores/{{score}}.log",
    shell:
        JOB + " scores --spec {params.spec:q} --data {input.data} --out {output} " + RUN_OPTS + " > {log} 2>&1"


rule prune_data:
    """Train from scratch on the kept subset of the target training data."""
    input:
        data=STUDY.data_path("target"),
        scores=lambda w: scores_store(w.method),
    output:
        model=f"{R}/prune_data/{{method}}/f{{fraction}}/s{{seed}}/model.pt",
        metrics=directory(f"{R}/prune_data/{{method}}/f{{fraction}}/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"prune_data/{w.method}/f{w.fraction}/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/prune_data/{{method}}/f{{fraction}}/s{{seed}}.log",
    shell:
        TRAIN_SHELL


def network_pruning_inputs(w):
    run = f"prune_network/{w.method}/s{w.seed}/level{w.level}"
    parent = STUDY.parent(run)
    return {"data": STUDY.data_path("target"), **({"parent": STUDY.path(parent, "model.pt")} if parent else {})}


rule prune_network:
    """One level of iterative magnitude pruning: prune the previous level, rewind, retrain."""
    input:
        unpack(network_pruning_inputs),
    output:
        model=f"{R}/prune_network/{{method}}/s{{seed}}/level{{level}}/model.pt",
        metrics=directory(f"{R}/prune_network/{{method}}/s{{seed}}/level{{level}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"prune_network/{w.method}/s{w.seed}/level{w.level}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/prune_network/{{method}}/s{{seed}}/level{{level}}.log",
    shell:
        TRAIN_SHELL
