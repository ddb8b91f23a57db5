rule finetune:
    """Fine-tune each pretrained model on the target task (or train from scratch)."""
    input:
        unpack(lambda w: parented_inputs(f"finetune/{w.method}/s{w.seed}")),
    output:
        model=f"{R}/finetune/{{method}}/s{{seed}}/model.pt",
        metrics=directory(f"{R}/finetune/{{method}}/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"finetune/{w.method}/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/finetune/{{method}}/s{{seed}}.log",
    shell:
        TRAIN_SHELL
