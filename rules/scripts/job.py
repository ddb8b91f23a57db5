# The job of a pack, an analysis batch or the summaries (rules/train.smk, analyze.smk):
# `python -m workflow <command>`, in this process.
#
# A job's description (a pack's runs, a batch's analyses, every summary's entries) can be
# longer than a command line may be, so this script plans it again from the study's
# config and writes it beside the job's log; the same job can then be rerun by hand, e.g.
#   python -m workflow train-pack --pack <log folder>/<pack>.json --device cuda
import json
import os
from pathlib import Path

from workflow.cli import main
from workflow.runs import digest
from workflow.study import Study

FILE_OPTION = {"train-pack": "--pack", "analyze": "--batch", "collect": "--summaries"}

study = Study(snakemake.config, checked=True)  # noqa: F821 (given by Snakemake)
command, description = study.job_description(snakemake.params.job)  # noqa: F821
assert digest(description) == snakemake.params.spec, "the job changed since it was planned"  # noqa: F821
log = Path(snakemake.log[0])  # noqa: F821
log.parent.mkdir(parents=True, exist_ok=True)
described = log.with_suffix(".json")
described.write_text(json.dumps(description, indent=1) + "\n")
# Everything the job prints, from Python or from torch's C++, goes to the log.
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, 1)
os.dup2(fd, 2)
options = snakemake.params.options.format(threads=snakemake.threads).split()  # noqa: F821
if snakemake.params.get("checkpoint"):  # noqa: F821
    options += ["--checkpoint", snakemake.params.checkpoint]  # noqa: F821
forced = Path(f"{log}.recompute")  # left by onstart when this job was forced (rules/common.smk)
if forced.exists() and command != "collect":
    options.append("--recompute")
status = main([command, FILE_OPTION[command], str(described), *options])
forced.unlink(missing_ok=True)
raise SystemExit(status)
