"""The tiny study on a real single-node SLURM cluster, through ``profiles/slurm``.

``tests/slurm/cluster.sh`` installs Debian's slurm-wlm and munge when missing, writes
a slurm.conf for this host and starts munged, slurmctld and slurmd; the test runs
``snakemake --profile profiles/slurm`` on the tiny study until it completes, checks
that every output is there, and stops the daemons it started. It needs root and
Debian's packages (CI has both); elsewhere it is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_e2e import REPO, TINY, copy_workflow, planned
from workflow.study import Study

SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running single-node SLURM cluster (state and logs in a temporary folder)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a SLURM cluster on this host needs root and apt-get (Debian's slurm-wlm and munge)")
    state = tmp_path_factory.mktemp("slurm")
    subprocess.run(["bash", str(SCRIPT), "start", str(state)], check=True, timeout=900)
    try:
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], check=True, timeout=120)


def test_the_tiny_study_runs_to_completion_through_the_slurm_profile(cluster: Path, tmp_path: Path) -> None:
    cwd = copy_workflow(tmp_path / "study")
    shutil.copytree(REPO / "profiles", cwd / "profiles")
    # Poll often: the tiny study's jobs take seconds, not hours.
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--configfile", TINY,
           "--seconds-between-status-checks", "2", "--slurm-init-seconds-before-status-checks", "1",
           "--slurm-keep-successful-logs"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    log = proc.stdout + proc.stderr
    assert "submitted with SLURM jobid" in log  # the jobs went through sbatch, not the local executor
    assert "(100%) done" in log
    # Every output exists and is up to date: the local profile finds nothing to do.
    assert planned(cwd) == {}
    tiny = yaml.safe_load((cwd / TINY).read_text())
    study = Study({**tiny, "results": str(cwd / tiny["results"])})
    for run in study.training_runs():
        assert Path(study.path(run, "model.pt")).exists(), run
    for name in study.summaries():
        assert Path(study.summary_path(name)).is_dir(), name
    # Training jobs asked for a GPU and got one of the node's stand-in GPUs.
    job_logs = list((cwd / ".snakemake" / "slurm_logs" / "rule_pretrain").rglob("*.log"))
    assert job_logs and all("gpu=1" in path.read_text() for path in job_logs)
