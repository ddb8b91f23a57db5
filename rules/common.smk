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


# Jobs keep what is stored for its key (workflow.cache), so their outputs are update()
# outputs: Snakemake copies each aside while its job runs and puts it back if the job
# fails. A Snakemake killed meanwhile leaves those copies behind, and Snakemake 9 then
# fails every later job of that output (copying a folder onto its stale copy). onstart
# runs once the working directory is locked and before any job (never in a dry run, nor
# in the jobs Snakemake spawns), so every copy there now is stale.
#
# A job that keeps stored results (a pack, an analysis batch, a score, WiSE-FT, an
# ensemble: RECOMPUTE_RULES) computes them all again when it is forced (--forcerun, -f,
# -F): onstart leaves a mark beside its log, `<log>.recompute`, which the job reads and
# deletes once it is done (a forced job that fails recomputes on its retry too).
RECOMPUTE_RULES = {"scores", "wiseft", "ensemble"}  # and every pack's and batch's rule
RECOMPUTE = "$(test -e {log}.recompute && echo --recompute)"  # the option, in a shell rule
DONE = " && rm -f {log}.recompute"


onstart:
    import shutil
    from pathlib import Path

    shutil.rmtree(workflow.persistence.path / "backups", ignore_errors=True)
    for job in workflow.dag.needrun_jobs():
        if job.rule.name in RECOMPUTE_RULES and workflow.dag.reason(job).forced:
            Path(f"{job.log[0]}.recompute").touch()


# Training and scoring jobs checkpoint outside their outputs, which Snakemake deletes
# when a job fails: a rerun (or a retry) goes on from the checkpoint.
CHECKPOINTS = (
    f"--checkpoints {R}/checkpoints --checkpoint-every {config['checkpoint_every']}"
    if config["checkpoint_every"] else ""
)
