rule make_data:
    """Generate (later: download) a task's data once; every job of the task reads it."""
    output:
        f"{R}/data/{{task}}.npz",
    params:
        spec=lambda w: Study.dumps(config["data"][w.task]),
    wildcard_constraints:
        task="source|target",
    conda:
        ENV
    log:
        f"{R}/logs/data/{{task}}.log",
    shell:
        JOB + " data --spec {params.spec:q} --out {output} > {log} 2>&1"
