rule pretrain:
    """Pretraining on one source task (data.sources), one run per source and seed."""
    input:
        data=f"{R}/data/sources/{{source}}.npz",
    output:
        model=f"{R}/pretrain/{{source}}/s{{seed}}/model.pt",
        metrics=directory(f"{R}/pretrain/{{source}}/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"pretrain/{w.source}/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs="",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/pretrain/{{source}}/s{{seed}}.log",
    shell:
        TRAIN_SHELL
