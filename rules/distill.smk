DISTILL_RUN = "distill/{teacher}/{method}/f{fraction}/T{temperature}-a{alpha}/s{seed}"


def distill_inputs(w):
    """The subset's inputs, and the trained teacher's model (an untrained one is made in the job)."""
    inputs = subset_inputs(w)
    if w.teacher == "trained":
        inputs["teacher"] = STUDY.path(config["distill"]["teacher"], "model.pt")
    return inputs


rule distill:
    """Students on the pruned subsets, taught by the trained teacher (trained once) or an untrained one."""
    input:
        unpack(distill_inputs),
    output:
        model=f"{R}/{DISTILL_RUN}/model.pt",
        metrics=directory(f"{R}/{DISTILL_RUN}/metrics.zarr"),
    params:
        spec=lambda w: spec_json(DISTILL_RUN.format(**dict(w.items()))),
        out=lambda w, output: os.path.dirname(output.model),
        inputs=lambda w, input: train_inputs(input),
    conda:
        ENV
    threads: config["threads"]
    log:
        f"{R}/logs/{DISTILL_RUN}.log",
    shell:
        TRAIN_SHELL
