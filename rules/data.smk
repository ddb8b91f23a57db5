localrules:
    make_data,


rule make_data:
    """Make a task's data file once; every job of the task reads it. A local rule: torchvision
    downloads run on the submitting host, since compute nodes often have no network."""
    output:
        f"{R}/data/{{task}}.npz",
    params:
        spec=lambda w: dumps(STUDY.task_dataset(w.task)),
    wildcard_constraints:
        task=r"target|sources/[a-z][a-z0-9_]*",
    conda:
        ENV
    log:
        f"{R}/logs/data/{{task}}.log",
    shell:
        JOB + " data --spec {params.spec:q} --out {output} > {log} 2>&1"
