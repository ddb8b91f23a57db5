# Shared by every rule: the study plan and the command that runs one job.
import json
import os
import sys

from workflow.config import ConfigError, load_config
from workflow.runs import WILDCARDS, dumps, layout_regex
from workflow.study import Study

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


# The wildcards of run ids and stores, written once in the package (workflow.runs).
wildcard_constraints:
    **WILDCARDS,


# Training and scoring jobs checkpoint outside their outputs, which Snakemake deletes
# when a job fails: a rerun (or a retry) goes on from the checkpoint.
CHECKPOINTS = (
    f"--checkpoints {R}/checkpoints --checkpoint-every {config['checkpoint_every']}"
    if config["checkpoint_every"] else ""
)
