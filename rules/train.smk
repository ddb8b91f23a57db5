# Every training run, whatever its stage: one rule body. The jobs come from the planner
# (STUDY.training_job): its inputs by role (data, parent, scores, teacher), the spec its
# outputs are keyed on. One rule name per layout of a stage's run ids, so that
# `--forcerun finetune`, a profile's set-resources and the job stats name the stage.
TRAIN_RULES = {
    "pretrain": ("pretrain", 0),
    "scratch": ("finetune", 0),  # finetune/scratch/s<seed>: no source
    "finetune": ("finetune", 1),
    "ensemble_member": ("ensemble", 0),
    "prune_data": ("prune_data", 0),
    "distill": ("distill", 0),
    "prune_network_dense": ("prune_network", 0),
    "prune_network": ("prune_network", 1),
}


def train_options(input):
    """Command-line options for the inputs of a training job besides its task."""
    return " ".join(f"--{name} {input[name]}" for name in ("parent", "scores", "teacher") if name in input.keys())


for _name, (_stage, _layout) in TRAIN_RULES.items():

    rule:
        name:
            _name
        input:
            unpack(lambda w: STUDY.training_job(w.run).inputs),
        output:
            model=f"{R}/{{run}}/model.pt",
            metrics=directory(f"{R}/{{run}}/metrics.zarr"),
        params:
            spec=lambda w: STUDY.training_job(w.run).specs["model"],
            out=lambda w: STUDY.path(w.run),
            inputs=lambda w, input: train_options(input),
        wildcard_constraints:
            run=layout_regex(_stage, _layout),
        conda:
            ENV
        threads: config["threads"]
        log:
            f"{R}/logs/{{run}}.log",
        shell:
            JOB + " train --spec {params.spec:q} --data {input.data} --out {params.out} "
            "{params.inputs} " + RUN_OPTS + " " + CHECKPOINTS + " > {log} 2>&1"
