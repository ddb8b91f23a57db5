# The job of one pack (rules/train.smk): `python -m workflow train-pack`, in this process.
#
# A pack's description (every run's spec, folder and input files) can be longer than a
# command line may be, so this script plans it again from the study's config and writes
# it beside the job's log; the same job can then be rerun by hand:
#   python -m workflow train-pack --pack <log folder>/<pack>.json --device cuda
import json
import os
from pathlib import Path

from workflow.checkpoint import Checkpointing
from workflow.cli import main
from workflow.study import Study

study = Study(snakemake.config, checked=True)  # noqa: F821 (given by Snakemake)
(planned,) = [p for p in study.packs() if p.id == snakemake.params.pack]  # noqa: F821
description = study.pack_description(planned)
assert Checkpointing.key_of(description) == snakemake.params.spec, "the pack changed since it was planned"  # noqa: F821
log = Path(snakemake.log[0])  # noqa: F821
log.parent.mkdir(parents=True, exist_ok=True)
pack = log.with_suffix(".json")
pack.write_text(json.dumps(description, indent=1) + "\n")
# Everything the job prints, from Python or from torch's C++, goes to the log.
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, 1)
os.dup2(fd, 2)
options = snakemake.params.options.format(threads=snakemake.threads).split()  # noqa: F821
if snakemake.params.checkpoint:  # noqa: F821
    options += ["--checkpoint", snakemake.params.checkpoint]  # noqa: F821
raise SystemExit(main(["train-pack", "--pack", str(pack), *options]))
