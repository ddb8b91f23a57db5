"""Planning scale: the dry run of a study of about 10,000 runs, against bare Snakemake
planning as many trivial jobs, in one run, as a ratio.

    python benchmarks/bench_planning.py                # the data-pruning study at 21 seeds
    python benchmarks/bench_planning.py --seeds 3      # as shipped

Both run as a new user would run them, from a temporary copy of the workflow:
``snakemake -n --forceall`` of the study, and of a Snakefile with one trivial rule
(``touch``) and as many jobs as the study has. Start-up counts (Python, Snakemake,
the package and the planner), since a user pays it on every command.

A pack or batch job writes many files, and Snakemake matches every requested file
against the outputs of the rule that may produce it, so a third row plans bare
Snakemake with as many rules (one job each) and as many output files as the study:
what the DAG costs without any of the planner's work.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STUDY = "config/studies/data_pruning.yaml"

BARE = """\
N = {jobs}


rule all:
    input:
        expand("out/{{i}}.txt", i=range(N - 1)),


rule touch:
    output:
        "out/{{i}}.txt",
    shell:
        "touch {{output}}"
"""


BARE_FILES = """\
N, F = {jobs}, {files}
PER = -(-F // (N - 1))

for _i in range(N - 1):

    rule:
        name:
            f"job_{{_i}}"
        output:
            [f"out/results/stage/some/run/folder/{{_i}}/{{k}}/model.pt" for k in range(PER)],
        shell:
            "touch {{output}}"


rule all:
    input:
        [f"out/results/stage/some/run/folder/{{i}}/{{k}}/model.pt" for i in range(N - 1) for k in range(PER)],
"""

# The output files of every job the study plans: packs, score stores, analysis batches,
# summaries, figures and data files.
FILES = """
import sys, yaml
from workflow.config import load_config
from workflow.plots import FIGURES, drawable
from workflow.study import Study
study = Study(load_config(yaml.safe_load(open(sys.argv[1]))), checked=True)
summaries = list(study.summaries())
files = sum(len(study.pack_job(p).outputs) for p in study.packs())
files += sum(len(b.tasks) for b in study.analysis_batches()) + len(study.score_stores())
files += len(summaries) + 2 * sum(drawable(f, summaries) for f in FIGURES) + len(study.sources()) + 1
print(len(study.training_runs()), files)
"""


def dry_run(cwd: Path, *args: str) -> tuple[float, int]:
    """Wall seconds of ``snakemake -n --forceall`` in ``cwd``, and the jobs it planned."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "all", *args, "-n", "--forceall", "--cores", "2"],
                          cwd=cwd, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    totals = re.findall(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    return seconds, int(totals[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=21, help="prune_data seeds of the data-pruning study")
    p.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study_dir, bare_dir = Path(tmp) / "study", Path(tmp) / "bare"
        study_dir.mkdir()
        shutil.copy(REPO / "Snakefile", study_dir)
        for folder in ("rules", "config", "envs", "profiles"):
            shutil.copytree(REPO / folder, study_dir / folder)
        study = yaml.safe_load((REPO / STUDY).read_text())
        study["prune_data"]["seeds"] = list(range(args.seeds))
        (study_dir / "study.yaml").write_text(yaml.safe_dump(study))
        ours = [dry_run(study_dir, "--configfile", "study.yaml") for _ in range(args.repeats)]
        jobs = ours[0][1]
        runs, files = map(int, subprocess.run([sys.executable, "-c", FILES, str(study_dir / "study.yaml")],
                                              capture_output=True, text=True, check=True).stdout.split())
        bare_dir.mkdir()
        (bare_dir / "Snakefile").write_text(BARE.format(jobs=jobs))
        bare = [dry_run(bare_dir) for _ in range(args.repeats)]
        shutil.rmtree(bare_dir / ".snakemake", ignore_errors=True)
        (bare_dir / "Snakefile").write_text(BARE_FILES.format(jobs=jobs, files=files))
        bare_files = [dry_run(bare_dir) for _ in range(args.repeats)]
    t_ours, t_bare, t_files = (min(t for t, _ in timed) for timed in (ours, bare, bare_files))
    print(f"data-pruning study at {args.seeds} seeds: {runs} training runs, {jobs} jobs, {files} output files")
    print("| dry run (-n --forceall) | jobs | output files | seconds | ratio |")
    print("|---|---|---|---|---|")
    print(f"| bare Snakemake, one trivial rule | {bare[0][1]} | {bare[0][1] - 1} | {t_bare:.1f} | 1.00 |")
    print(f"| bare Snakemake, a rule per job, as many files | {bare_files[0][1]} | {files} | {t_files:.1f} "
          f"| {t_files / t_bare:.2f} |")
    print(f"| this workflow | {jobs} | {files} | {t_ours:.1f} | {t_ours / t_bare:.2f} |")


if __name__ == "__main__":
    main()
