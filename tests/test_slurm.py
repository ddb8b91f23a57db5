"""The tiny study on a real single-node SLURM cluster, through ``profiles/slurm``.

``tests/slurm/cluster.sh`` installs Debian's slurm-wlm and munge when missing, writes
a slurm.conf for this host and starts munged, slurmctld and slurmd; the test runs
``snakemake --profile profiles/slurm`` on the tiny study until it completes, checks
that every output is there, signals a long training job as SLURM does before a time
limit and checks that its retry resumes it, and stops the daemons it started. It needs root and
Debian's packages (CI has both); elsewhere it is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from test_e2e import REPO, TINY, copy_workflow, planned
from workflow import storage
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


# The SLURM profile, polled often: these jobs take seconds or minutes, not hours.
_SLURM = ["--profile", "profiles/slurm", "--seconds-between-status-checks", "2",
          "--slurm-init-seconds-before-status-checks", "1", "--slurm-keep-successful-logs"]


def test_the_tiny_study_runs_to_completion_through_the_slurm_profile(cluster: Path, tmp_path: Path) -> None:
    cwd = copy_workflow(tmp_path / "study")
    cmd = [sys.executable, "-m", "snakemake", *_SLURM, "--configfile", TINY]
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
    job_logs = [log for folder in (cwd / ".snakemake" / "slurm_logs").glob("rule_pretrain_*")
                for log in folder.rglob("*.log")]  # one rule per pack, named for its layout
    assert job_logs and all("gpu=1" in path.read_text() for path in job_logs)


# Pretraining that runs for a minute or so on one core, long enough to be stopped mid-way.
LONG = {
    "data": {"sources": {"mnist1d": {"name": "mnist1d", "args": {"num_samples": 4000}}}},
    "model": {"name": "cnn1d", "channels": 16},
    "pretrain": {"seeds": [0], "train": {"epochs": 300}},
}


def test_a_training_job_signalled_by_slurm_saves_and_its_retry_resumes(cluster: Path, tmp_path: Path) -> None:
    cwd = copy_workflow(tmp_path / "study")
    (cwd / "long.yaml").write_text(yaml.safe_dump(LONG))
    run = cwd / "results/tiny/pretrain/mnist1d/s0"
    config = yaml.safe_load((cwd / TINY).read_text())
    update_config(config, LONG)
    study = Study({**config, "results": str(cwd / config["results"])})
    checkpoint = Path(study.pack_checkpoint(study.pack_of("pretrain/mnist1d/s0")))
    cmd = [sys.executable, "-m", "snakemake", "results/tiny/pretrain/mnist1d/s0/model.pt", *_SLURM,
           "--configfile", TINY, "long.yaml"]
    snakemake = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.exists():  # the job is training and has saved its first epoch
            assert snakemake.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        (job,) = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i"],
                                capture_output=True, text=True, check=True).stdout.split()
        # What the profile's --signal=TERM@180 has SLURM send 3 minutes before the time
        # limit: SIGTERM to every process of the job's steps (the batch script is spared).
        subprocess.run(["scancel", "--signal=TERM", job], check=True)
        log, _ = snakemake.communicate(timeout=900)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, log[-4000:]
    assert f"SLURM-job '{job}' failed" in log and "Trying to restart job" in log  # the profile's retry
    metrics = storage.open_dataset(run / "metrics.zarr")
    assert metrics.sizes["epoch"] == 301  # trained to the end, every epoch recorded once
    assert 0 < metrics.attrs["resumed_from_step"] < metrics.attrs["steps"]  # went on, did not start over
    assert metrics.attrs["stopped_by"] == "SIGTERM"  # it saved on the signal, after its current step
    assert not checkpoint.exists()
