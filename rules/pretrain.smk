rule pretrain:
    """Supervised pretraining on the source task, one run per seed."""
    input:
        data=STUDY.data_path("source"),
    output:
        model=f"{R}/pretrain/s{{seed}}/model.pt",
        metrics=directory(f"{R}/pretrain/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"pretrain/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs="",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/pretrain/s{{seed}}.log",
    shell:
        TRAIN_SHELL
