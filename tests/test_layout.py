"""Tests of the package's shape: which modules a job loads, so that the job side stays
free of the planner, the report of matplotlib, the analyses of the training loop, and
the planner (with its packs) of torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# module -> modules it must not load, directly or through anything it imports.
MUST_NOT_LOAD = {
    "workflow.config": ["workflow.study"],
    "workflow.report": ["matplotlib", "workflow.study", "workflow.plots"],
    "workflow.checkpoint": ["workflow.study", "workflow.analysis.plan"],
    "workflow.stages.registry": ["workflow.study", "workflow.analysis.plan", "torch", "matplotlib"],
    "workflow.jobs": ["workflow.study", "workflow.analysis.plan", "matplotlib"],
    "workflow.analysis.stages": ["workflow.study", "workflow.train", "matplotlib"],
    "workflow.cli": ["torch", "matplotlib", "workflow.study"],
    # planning (every Snakemake start, every pack job's script) needs no torch or Zarr
    "workflow.study": ["torch", "xarray", "zarr", "matplotlib"],
}


def _loaded(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", sorted(MUST_NOT_LOAD))
def test_a_module_loads_only_what_its_side_needs(module: str) -> None:
    loaded = _loaded(module)
    assert module in loaded
    unwanted = [m for m in MUST_NOT_LOAD[module] if m in loaded]
    assert not unwanted, f"importing {module} loads {unwanted}"


def test_checking_a_zoo_config_loads_no_torch() -> None:
    """Every Snakemake start checks its config: the zoo's alignment and manifold checks too."""
    code = ("import json, sys, yaml; from workflow.config import load_config; "
            "load_config(yaml.safe_load(open('config/studies/zoo.yaml'))); print(json.dumps(sorted(sys.modules)))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root).stdout
    assert "torch" not in json.loads(out)


def test_the_base_install_has_what_snakemakes_report_needs() -> None:
    # `snakemake --report` imports pygments, an extra of snakemake's; the test extra brings it
    # with pytest, so without this a user's `pip install -e .` could not make the report.
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    snakemake = [r for r in map(Requirement, project["dependencies"]) if r.name == "snakemake"]
    assert snakemake and "reports" in snakemake[0].extras
