def scores_inputs(w):
    """The task, and for prototype scores the model whose embedding is clustered."""
    inputs = {"data": STUDY.data_path("target")}
    if w.score == "prototypes":
        inputs["model"] = STUDY.path(config["prune_data"]["prototypes"]["embedding"], "model.pt")
    return inputs


def subset_inputs(w):
    """The task, and the score store the method selects with (rs2 has none)."""
    store = STUDY.score_path(w.method)
    return {"data": STUDY.data_path("target"), **({"scores": store} if store else {})}


rule scores:
    """Score every target training example once; every fraction and seed reuses it."""
    input:
        unpack(scores_inputs),
    output:
        directory(f"{R}/prune_data/scores/{{score}}/scores.zarr"),
    params:
        spec=lambda w: Study.dumps(STUDY.score_spec(w.score)),
        model=lambda w, input: f"--model {input.model}" if "model" in input.keys() else "",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/scores/{{score}}.log",
    shell:
        JOB + " scores --spec {params.spec:q} --data {input.data} {params.model} --out {output} "
        + RUN_OPTS + " " + CHECKPOINTS + " > {log} 2>&1"


rule prune_data:
    """Train from scratch on the kept subset of the target training data."""
    input:
        unpack(subset_inputs),
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


rule prune_network_dense:
    """The dense model every network-pruning run of its seed starts from: level 0,
    with snapshots of its weights at every rewind step."""
    input:
        data=STUDY.data_path("target"),
    output:
        model=f"{R}/prune_network/dense/s{{seed}}/model.pt",
        metrics=directory(f"{R}/prune_network/dense/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"prune_network/dense/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs="",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/prune_network/dense/s{{seed}}.log",
    shell:
        TRAIN_SHELL


rule prune_network:
    """One network-pruning run: an IMP level (prune the previous level, rewind,
    retrain) or a baseline at the same sparsity."""
    input:
        unpack(lambda w: parented_inputs(f"prune_network/{w.method}/k{w.rewind}/s{w.seed}/level{w.level}")),
    output:
        model=f"{R}/prune_network/{{method}}/k{{rewind}}/s{{seed}}/level{{level}}/model.pt",
        metrics=directory(f"{R}/prune_network/{{method}}/k{{rewind}}/s{{seed}}/level{{level}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"prune_network/{w.method}/k{w.rewind}/s{w.seed}/level{w.level}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/prune_network/{{method}}/k{{rewind}}/s{{seed}}/level{{level}}.log",
    shell:
        TRAIN_SHELL
