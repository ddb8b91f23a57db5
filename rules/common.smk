# Shared by every rule: the study plan and the command that runs one job.
import json
import os
import sys

from workflow.config import ConfigError, load_config
from workflow.study import ENSEMBLE_KINDS, SIMILARITY_EDGES, Study

# Refuse a bad configuration before any job starts, naming the key and the
# allowed values (also fills in the schema's defaults).
try:
    config.update(load_config(config, os.path.join(workflow.basedir, "config", "schema.yaml")))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

STUDY = Study(config, checked=True)
R = STUDY.root

# Jobs run `python -m workflow`: make that the Python running Snakemake (unless a
# software environment is activated for the job, which then comes first on PATH),
# and make the package importable from inside any environment.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

ENV = "../envs/dlsci.yaml"  # relative to rules/
JOB = "python -m workflow"
RUN_OPTS = f"--device {config['device']} --threads {{threads}}"


wildcard_constraints:
    seed=r"\d+",
    source=r"[a-z][a-z0-9_]*",
    level=r"\d+",
    rewind=r"\d+",
    fraction=r"[0-9.]+",
    temperature=r"[0-9.]+",
    alpha=r"[0-9.]+",
    teacher=r"trained|untrained",
    method=r"[a-z0-9_]+(-[a-z0-9_]+)?",
    score=r"[a-z0-9_]+",


def run_id(*stages):
    """The wildcard pattern of a run id of one of ``stages``: its folders hold letters, digits,
    _ and -, and dots only before a digit (f0.25, T4-a0.5), so a run id never takes in a
    store's name (metrics.zarr)."""
    return rf"({'|'.join(stages)})(/[\w-]+(\.\d[\w-]*)*)+"


def spec_json(run):
    """The spec of a run as canonical JSON: a changed spec reruns the run."""
    return Study.dumps(STUDY.spec(run))


def parented_inputs(run):
    """The target task, and the parent's model when the run has a parent."""
    parent = STUDY.parent(run)
    return {"data": STUDY.data_path("target"), **({"parent": STUDY.path(parent, "model.pt")} if parent else {})}


def train_inputs(input):
    """Command-line options for the optional inputs of a training job."""
    return " ".join(f"--{name} {input[name]}" for name in ("parent", "scores", "teacher") if name in input.keys())


# Training and scoring jobs checkpoint outside their outputs, which Snakemake deletes
# when a job fails: a rerun (or a retry) goes on from the checkpoint.
CHECKPOINTS = (
    f"--checkpoints {R}/checkpoints --checkpoint-every {config['checkpoint_every']}"
    if config["checkpoint_every"] else ""
)
TRAIN_SHELL = (
    JOB + " train --spec {params.spec:q} --data {input.data} --out {params.out} "
    "{params.inputs} " + RUN_OPTS + " " + CHECKPOINTS + " > {log} 2>&1"
)
