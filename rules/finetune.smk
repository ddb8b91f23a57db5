rule finetune:
    """Fine-tune the model pretrained on each source, by each method, on the target task."""
    input:
        unpack(lambda w: parented_inputs(f"finetune/{w.source}/{w.method}/s{w.seed}")),
    output:
        model=f"{R}/finetune/{{source}}/{{method}}/s{{seed}}/model.pt",
        metrics=directory(f"{R}/finetune/{{source}}/{{method}}/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"finetune/{w.source}/{w.method}/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/finetune/{{source}}/{{method}}/s{{seed}}.log",
    shell:
        TRAIN_SHELL


rule scratch:
    """The no-pretraining baseline: the target task trained from a fresh initialisation."""
    input:
        unpack(lambda w: parented_inputs(f"finetune/scratch/s{w.seed}")),
    output:
        model=f"{R}/finetune/scratch/s{{seed}}/model.pt",
        metrics=directory(f"{R}/finetune/scratch/s{{seed}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"finetune/scratch/s{w.seed}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs="",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/finetune/scratch/s{{seed}}.log",
    shell:
        TRAIN_SHELL


rule ensemble_member:
    """One more member of an ensemble from one pretrained checkpoint: a fine-tuning run
    with its own seed, or a snapshot cycle (SSE: from the previous cycle; StarSSE: from the
    fine-tuned model)."""
    input:
        unpack(lambda w: parented_inputs(f"ensemble/{w.source}/{w.kind}/s{w.seed}/m{w.member}")),
    output:
        model=f"{R}/ensemble/{{source}}/{{kind}}/s{{seed}}/m{{member}}/model.pt",
        metrics=directory(f"{R}/ensemble/{{source}}/{{kind}}/s{{seed}}/m{{member}}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(f"ensemble/{w.source}/{w.kind}/s{w.seed}/m{w.member}"),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    wildcard_constraints:
        kind="|".join(ENSEMBLE_KINDS),
        member=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/ensemble/{{source}}/{{kind}}/s{{seed}}/m{{member}}.log",
    shell:
        TRAIN_SHELL


rule ensemble:
    """Each member, their ensemble (mean probabilities) and their uniform soup (mean weights), on the test set."""
    input:
        members=lambda w: [
            STUDY.path(r, "model.pt") for r in STUDY.ensembles()[STUDY.ensemble_path(w.source, w.kind, int(w.seed))]
        ],
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/analyze/ensemble/{{source}}/{{kind}}/s{{seed}}/ensemble.zarr"),
    params:
        members=lambda w, input: " ".join(f"--member {m}" for m in input.members),
    wildcard_constraints:
        kind="|".join(ENSEMBLE_KINDS),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/ensemble/{{source}}/{{kind}}/s{{seed}}.log",
    shell:
        JOB + " ensemble {params.members} --data {input.data} --out {output} " + RUN_OPTS + " > {log} 2>&1"


rule wiseft:
    """WiSE-FT: the weights interpolated from the linear probe to a fine-tuned model, evaluated at every alpha."""
    input:
        start=lambda w: STUDY.path(f"finetune/{w.source}/linear_probe/s{w.seed}", "model.pt"),
        end=lambda w: STUDY.path(f"finetune/{w.source}/{w.method}/s{w.seed}", "model.pt"),
        data=STUDY.data_path("target"),
    output:
        directory(f"{R}/analyze/wiseft/{{source}}/{{method}}/s{{seed}}/wiseft.zarr"),
    params:
        alphas=lambda w: json.dumps(config["finetune"]["wiseft"]["alphas"]),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/wiseft/{{source}}/{{method}}/s{{seed}}.log",
    shell:
        JOB + " wiseft --start {input.start} --end {input.end} --alphas {params.alphas:q} --data {input.data} "
        "--out {output} " + RUN_OPTS + " > {log} 2>&1"
