rule distill:
    """Students on the pruned subsets, taught by the one teacher of the study."""
    input:
        unpack(subset_inputs),
        teacher=STUDY.path(config["distill"]["teacher"], "model.pt"),
    output:
        model=f"{R}/distill/{{method}}/f{{fraction}}/s{{seed}}/model.pt",
        metrics=directory(f"{R}/distill/{{method}}/f{{fraction}}/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"distill/{w.method}/f{w.fraction}/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/distill/{{method}}/f{{fraction}}/s{{seed}}.log",
    shell:
        TRAIN_SHELL
