rule ensemble:
    """Each member, their ensemble (mean probabilities) and their uniform soup (mean weights), on the test set."""
    input:
        members=lambda w: [
            STUDY.path(r, "model.pt") for r in STUDY.ensembles()[STUDY.ensemble_path(w.source, w.kind, int(w.seed))]
        ],
        data=STUDY.data_path("target"),
    output:
        update(directory(f"{R}/analyze/ensemble/{{source}}/{{kind}}/s{{seed}}/ensemble.zarr")),  # kept when stored for its key
    params:
        members=lambda w, input: " ".join(f"--member {m}" for m in input.members),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/ensemble/{{source}}/{{kind}}/s{{seed}}.log",
    shell:
        JOB + " ensemble {params.members} --data {input.data} --out {output} " + RUN_OPTS + " " + RECOMPUTE
        + " > {log} 2>&1" + DONE


def wiseft_runs(w):
    """(the linear probe, the fine-tuned run) of one WiSE-FT store."""
    return STUDY.wiseft_pairs()[STUDY.wiseft_path(w.source, w.method, int(w.seed))]


rule wiseft:
    """WiSE-FT: the weights interpolated from the linear probe to a fine-tuned model, evaluated at every alpha."""
    input:
        start=lambda w: STUDY.path(wiseft_runs(w)[0], "model.pt"),
        end=lambda w: STUDY.path(wiseft_runs(w)[1], "model.pt"),
        data=STUDY.data_path("target"),
    output:
        update(directory(f"{R}/analyze/wiseft/{{source}}/{{method}}/s{{seed}}/wiseft.zarr")),  # kept when stored for its key
    params:
        alphas=lambda w: json.dumps(config["finetune"]["wiseft"]["alphas"]),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/wiseft/{{source}}/{{method}}/s{{seed}}.log",
    shell:
        JOB + " wiseft --start {input.start} --end {input.end} --alphas {params.alphas:q} --data {input.data} "
        "--out {output} " + RUN_OPTS + " " + RECOMPUTE + " > {log} 2>&1" + DONE
