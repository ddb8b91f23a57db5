rule scores:
    """Score every target training example once; every fraction and seed reuses it."""
    input:
        unpack(lambda w: STUDY.score_job(w.score).inputs),
    output:
        update(directory(f"{R}/prune_data/scores/{{score}}/scores.zarr")),  # kept when stored for its key
    params:
        spec=lambda w: STUDY.score_job(w.score).specs["scores"],
        model=lambda w, input: f"--model {input.model}" if "model" in input.keys() else "",
        stack=config["execution"]["stack"],  # its repetitions train as one pack
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/scores/{{score}}.log",
    shell:
        JOB + " scores --spec {params.spec:q} --data {input.data} {params.model} --out {output} --stack {params.stack} "
        + RUN_OPTS + " " + CHECKPOINTS + " " + RECOMPUTE + " > {log} 2>&1" + DONE
