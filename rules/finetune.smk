def finetune_inputs(w):
    run = f"finetune/{w.method}/s{w.seed}"
    parent = STUDY.parent(run)
    return {"data": STUDY.data_path("target"), **({"parent": STUDY.path(parent, "model.pt")} if parent else {})}


rule finetune:
    """Fine-tune each pretrained model on the target task (or train from scratch)."""
    input:
        unpack(finetune_inputs),
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
