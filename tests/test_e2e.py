"""End to end: the real ``snakemake`` runs the tiny study through the whole DAG.

The workflow files are copied into a fresh folder, as a clone would have them,
and Snakemake runs there; the package comes from the installed environment.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from workflow.plots import FIGURES
from workflow.study import Study

REPO = Path(__file__).resolve().parent.parent
TINY = "config/studies/tiny.yaml"
pytestmark = pytest.mark.e2e


def snakemake(
    cwd: Path, *args: str, configfiles: tuple[str, ...] = (TINY,), check: bool = True
) -> subprocess.CompletedProcess:
    """Run the real snakemake command line in ``cwd``; later config files override earlier ones."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", *configfiles]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# A pack's rule: the layout rule of its stage, then the pack (rules/train.smk); an analysis
# batch's rule: its kind of job, then its pack's rule (rules/analyze.smk).
PACK_RULE = re.compile(r"^(\w+?)_[0-9a-f]{8}_\d+(?:_\d+)?$")
BATCH_RULE = re.compile(r"^(?:analyze|spectra|manifold)_\w+$")


def _store_kind(path: str) -> str:
    """What an analysis batch's output is: activations, or the analysis under analyze/."""
    if path.endswith("/activations.zarr"):
        return "activations"
    return path.split("/analyze/", 1)[1].split("/", 1)[0]


def planned(cwd: Path, *args: str, configfiles: tuple[str, ...] = (TINY,)) -> dict[str, int]:
    """What a dry run would execute (empty when nothing is to be done): jobs per rule; for
    training, runs per layout rule (``pretrain``, ``finetune``, ...) whatever pack trains them;
    for analyses, stores per kind (``activations``, ``similarity``, ...) whatever batch has them."""
    proc = snakemake(cwd, "--dry-run", *args, configfiles=configfiles)
    out = proc.stdout + proc.stderr
    if "Job stats:" not in out:
        return {}
    jobs: dict[str, int] = {}
    for block in re.split(r"\n\[[^\n]*\]\n", out.split("Job stats:", 1)[1]):
        rule = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        if not rule:
            continue
        rule, output = rule.group(1), re.search(r"^    output: (.*)$", block, re.M)
        outputs = [o.removesuffix(" (update)") for o in output.group(1).split(", ")] if output else []
        if BATCH_RULE.match(rule):
            counts = Counter(_store_kind(path) for path in outputs)
        elif pack := PACK_RULE.match(rule):
            counts = Counter({pack.group(1): sum(path.endswith("/model.pt") for path in outputs)})
        else:
            counts = Counter({rule: 1})
        for name, n in counts.items():
            jobs[name] = jobs.get(name, 0) + n
    return jobs


def stage_rules(cwd: Path, layout: str) -> list[str]:
    """The rules of a layout's packs, as ``snakemake --list-rules`` names them."""
    proc = snakemake(cwd, "--list-rules")
    return [name for name in proc.stdout.split() if (m := PACK_RULE.match(name)) and m.group(1) == layout]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest)
    for folder in ("rules", "config", "envs", "profiles"):
        shutil.copytree(REPO / folder, dest / folder)
    return dest


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in which the tiny study has run to completion."""
    cwd = copy_workflow(tmp_path_factory.mktemp("study"))
    snakemake(cwd)
    return cwd


@pytest.fixture(scope="module")
def study(study_dir: Path) -> Study:
    tiny = yaml.safe_load((study_dir / TINY).read_text())
    return Study({**tiny, "results": str(study_dir / tiny["results"])})


def open_quietly(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def test_every_run_store_exists_and_opens(study: Study) -> None:
    for run in study.training_runs():
        ds = open_quietly(Path(study.path(run, "metrics.zarr")))
        assert set(ds.data_vars) >= {"train_loss", "train_acc", "test_loss", "test_acc"}
        assert ds.sizes["epoch"] >= 2
        for key in ("config", "seed", "package_version", "device", "created"):
            assert key in ds.attrs, (run, key)
        assert ds.attrs.get("parent") == study.parent(run)
        assert Path(study.path(run, "model.pt")).stat().st_size > 0
    for store in study.score_stores():
        assert open_quietly(Path(study.path(store, "scores.zarr")))["score"].dims == ("init", "sample")
    for run in study.activation_runs():
        ds = open_quietly(Path(study.path(run, "activations.zarr")))
        assert list(ds.attrs["layers"]) == ["conv1", "conv2", "conv3", "head"]


def test_every_similarity_store_compares_its_two_models_layer_by_layer(study: Study) -> None:
    measures = study.config["analyze"]["similarity"]["measures"]
    pairs = study.similarity_pairs()
    kinds = {path.split("/analyze/similarity/")[1].split("/")[0] for path in pairs}
    assert kinds == {"finetune", "prune", "distill", "seeds", "within"}  # every edge the tiny study has
    for path, (a, b) in pairs.items():
        ds = open_quietly(Path(path))
        assert sorted(ds.data_vars) == sorted(measures), path
        assert all(ds[m].dims == ("layer_a", "layer_b") for m in measures), path
        assert list(ds["layer_a"].values) == list(ds["layer_b"].values) == ["conv1", "conv2", "conv3", "head"]
        assert (ds.attrs["model_a"], ds.attrs["model_b"]) == (a, b)
        cka = ds["linear_cka"].values
        kind = path.split("/analyze/similarity/")[1].split("/")[0]
        if kind == "within":  # a layer with itself: CKA(X, X) = 1, and the matrix is symmetric
            np.testing.assert_allclose(np.diag(cka), 1.0, rtol=0, atol=1e-12)
            np.testing.assert_allclose(cka, cka.T, rtol=0, atol=1e-12)
        else:  # linear CKA of two models is a similarity in [0, 1]
            assert ((cka >= -1e-12) & (cka <= 1 + 1e-12)).all(), path
    # the distilled students are compared with the trained teacher only
    distill = [runs for path, runs in pairs.items() if "/similarity/distill/" in path]
    assert len(distill) == 6 and all(a == "finetune/scratch/s0" and "/trained/" in b for a, b in distill)


def test_summaries_have_sweep_axes_as_dimensions(study: Study) -> None:
    expected = {
        "pretrain": {"source", "seed", "epoch"},
        "finetune": {"model", "seed", "epoch"},
        "data_pruning": {"selection", "fraction", "seed", "epoch"},
        "distill": {"selection", "fraction", "teacher", "temperature", "alpha", "seed", "epoch"},
        "scores": {"scoring", "init", "sample"},
        "network_pruning": {"pruning", "rewind", "level", "seed", "epoch", "param"},
        "similarity": {"model", "seed", "layer_a", "layer_b"},
        "similarity_prune": {"pruning", "rewind", "level", "seed", "layer_a", "layer_b"},
        "similarity_distill": {"selection", "fraction", "teacher", "temperature", "alpha", "seed", "layer_a",
                               "layer_b"},
        "similarity_seeds": {"model", "layer_a", "layer_b"},
        "similarity_within": {"model", "seed", "layer_a", "layer_b"},
        "spectra": {"model", "seed", "eig", "hessian_eig", "param", "layer"},
        "connectivity": {"pair", "seed", "alpha"},
        "relative": {"model", "space", "measure", "anchor_index"},
        "wiseft": {"model", "seed", "alpha"},
        "ensemble": {"source", "kind", "seed", "member"},
    }
    assert set(study.summaries()) == set(expected)
    measures = set(study.config["analyze"]["similarity"]["measures"])
    for name, dims in expected.items():
        ds = open_quietly(Path(study.summary_path(name)))
        assert set(ds.sizes) == dims, name
        if name.startswith("similarity"):
            assert set(ds.data_vars) == measures, name
    seeds = open_quietly(Path(study.summary_path("similarity_seeds")))
    # the tiny study fine-tunes one seed: only pretrained models have a twin
    assert seeds["model"].values.tolist() == ["pretrain/mnist1d", "pretrain/synthetic"]
    assert set(seeds["finetuning"].values.tolist()) == {"none"} and set(seeds["stage"].values.tolist()) == {"pretrain"}
    dp = open_quietly(Path(study.summary_path("data_pruning")))
    kd = open_quietly(Path(study.summary_path("distill")))
    assert sorted(kd["teacher"].values) == ["trained", "untrained"]
    assert sorted(kd["selection"].values) == sorted(dp["selection"].values)
    assert sorted(dp["selection"].values) == [
        "el2n-hard", "forgetting-hard", "grand-hard", "prototypes-hard", "random", "rs2"
    ]
    spectra = open_quietly(Path(study.summary_path("spectra")))
    similarity = open_quietly(Path(study.summary_path("similarity_within")))
    # one name per layer in every store: the recorded layers, and parameters by their state-dict keys
    assert spectra["layer"].values.tolist() == similarity["layer_a"].values.tolist()
    pruning = open_quietly(Path(study.summary_path("network_pruning")))
    assert set(spectra["param"].values.tolist()) >= set(pruning["param"].values.tolist())


def test_every_summary_is_safe_to_query_by_keyword(study: Study) -> None:
    """Every summary of the tiny study: one label selected along every dimension with keyword
    .sel; no dimension named like a .sel argument; every cell filled; counts are integers and
    flags booleans; every variable has its long name and unit."""
    import inspect

    import xarray as xr

    from workflow import axes

    arguments = {name for f in (xr.Dataset.sel, xr.Dataset.isel, xr.Dataset.interp, xr.Dataset.reindex)
                 for name in inspect.signature(f).parameters} - {"self"}
    assert arguments <= axes.SELECTION_ARGUMENTS | {"indexers_kwargs", "coords_kwargs"}
    for name in study.summaries():
        ds = open_quietly(Path(study.summary_path(name)))
        assert not set(ds.coords) & axes.SELECTION_ARGUMENTS, name
        assert set(ds.dims) <= set(axes.DIMENSIONS), (name, set(ds.dims) - set(axes.DIMENSIONS))
        one = ds.sel(**{dim: ds[dim].values[-1] for dim in ds.dims if dim in ds.coords})
        assert one.sizes == {dim: n for dim, n in ds.sizes.items() if dim not in ds.coords}, name
        for var in ds.data_vars:
            da = ds[var]
            assert da.attrs.get("long_name") and da.attrs.get("units"), (name, var)
            _, _, kind = axes.variable_info(str(var))
            complete = not bool(da.isnull().any())  # a missing cell (a seed a stage lacks) has no integer
            if kind == "int" and complete:
                assert da.dtype.kind == "i", (name, var, da.dtype)
            elif kind == "bool" and complete:
                assert da.dtype == bool, (name, var, da.dtype)
            # no cell is empty by construction (runs stopping at different epochs aside)
            ragged = [d for d in axes.RAGGED if d in da.dims]  # runs reach different epochs, scores repeat differently
            filled = da.notnull().any(ragged) if ragged else da.notnull()
            if {"model", "seed"} <= set(da.dims):  # stages may have different seeds: a run's cell exists
                runs = set(study.training_runs())
                exists = xr.DataArray([[f"{m}/s{s}" in runs for s in ds["seed"].values] for m in ds["model"].values],
                                      dims=("model", "seed"), coords={"model": ds["model"], "seed": ds["seed"]})
                assert bool((filled == exists).all()), (name, var)
            else:
                assert bool(filled.all()), (name, var, float(filled.mean()))
    finetune = open_quietly(Path(study.summary_path("finetune")))
    one = finetune.test_acc.sel(model="finetune/mnist1d/full", seed=0)
    by_axes = finetune.set_index(model=["source", "finetuning"]).test_acc.sel(source="mnist1d", finetuning="full")
    assert float(one.isel(epoch=-1)) == float(by_axes.sel(seed=0).isel(epoch=-1))


def test_the_run_index_lists_every_run_with_its_coordinates_files_and_final_metrics(study: Study) -> None:
    import pandas as pd

    paths = study.run_index_paths()
    index = open_quietly(Path(paths["zarr"]))
    table = pd.read_csv(paths["csv"], index_col="run", keep_default_na=False)
    assert index["run"].values.tolist() == study.training_runs() == table.index.tolist()
    full = index.sel(run="finetune/mnist1d/full/s0")
    assert full["stage"].item() == "finetune" and full["finetuning"].item() == "full"
    assert full["source"].item() == "mnist1d" and int(full["seed"]) == 0
    assert full["parent"].item() == "pretrain/mnist1d/s0" and full["pack"].item() == study.pack_of(full.run.item()).id
    root = Path(study.root)  # the paths are relative to the study's results folder
    metrics = open_quietly(root / full["metrics"].item())
    assert float(full["final_test_acc"]) == float(metrics["test_acc"].isel(epoch=-1))
    assert int(full["epochs"]) == int(metrics["epoch"].values[-1])
    assert full["model"].item() == "finetune/mnist1d/full/s0/model.pt"
    assert (root / full["model"].item()).is_file() and (root / full["activations"].item()).is_dir()
    stores = full["other_stores"].item().split(";")
    assert "analyze/similarity/finetune/finetune/mnist1d/full/s0/analysis.zarr" in stores
    assert all((root / p).is_dir() for p in stores)
    # picking runs by their coordinates, as the README shows
    pruned = index.where(index.stage == "prune_network", drop=True)  # as the README picks runs
    assert sorted(pruned["run"].values.tolist()) == sorted(study.stage_runs("prune_network"))
    assert table.loc["prune_data/random/f0.5/s0", "selection"] == "random"
    assert float(table.loc["prune_data/random/f0.5/s0", "final_test_acc"]) == pytest.approx(
        float(index.sel(run="prune_data/random/f0.5/s0")["final_test_acc"]))


def test_logs_are_named_like_their_rules_and_a_pack_log_ends_with_its_runs_final_metrics(
    study_dir: Path, study: Study
) -> None:
    logs = Path(study.root) / "logs"
    packs = sorted(logs.glob("packs/*.log"))
    assert len(packs) == len(study.packs()) and all(PACK_RULE.match(p.stem) for p in packs)
    assert all(BATCH_RULE.match(p.stem) for p in logs.glob("analyze/*.log")) and list(logs.glob("analyze/*.log"))
    for log in packs:
        described = json.loads(log.with_suffix(".json").read_text())
        tail = log.read_text().rstrip().splitlines()[-len(described["runs"]):]
        for run, line in zip(described["runs"], tail):
            metrics = open_quietly(Path(run["out"]) / "metrics.zarr") if Path(run["out"]).is_absolute() else \
                open_quietly(study_dir / run["out"] / "metrics.zarr")
            assert line.split()[0] == run["spec"]["run"], log
            assert f"test_acc {float(metrics['test_acc'].isel(epoch=-1)):.4f}" in line, log


def test_the_report_has_a_table_for_every_summary(study: Study) -> None:
    from workflow.report import report

    text = report(study.root)
    for title in ("pretrain (source task)", "finetune (target task)", "data pruning, no distillation",
                  "data pruning with distillation", "network pruning", "WiSE-FT", "ensembles and soups",
                  "similarity", "spectra", "zero-shot stitching", "mode connectivity",
                  "similarity, dense vs pruned", "similarity, trained teacher vs student",
                  "similarity, first vs second seed", "similarity within each model"):
        assert f"{title}" in text, title
    assert not re.search(r"\bnan\b", text.lower())
    assert text.count("provenance: the code that made the stores") == 1 and "commit " in text


def test_every_figure_exists_as_png_and_pdf(study: Study) -> None:
    from workflow.plots import drawable

    figures = [figure for figure in FIGURES if drawable(figure, study.summaries())]
    # the tiny study has every stage but a zoo and random teachers
    assert set(FIGURES) - set(figures) == {"zoo", "zoo_scores", "random_teacher"}
    for figure in figures:
        image = matplotlib.image.imread(study.plot_path(figure, "png"))
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert Path(study.plot_path(figure, "pdf")).read_bytes().startswith(b"%PDF")


def test_the_snakemake_report_holds_every_figure_with_its_caption_the_tables_and_the_config(
        study_dir: Path, study: Study) -> None:
    import zipfile

    from workflow.plots import drawable

    tables = Path(study.root) / "report" / "tables.html"
    assert "<h3>finetune (target task): final test accuracy (%)</h3>" in tables.read_text()
    config = yaml.safe_load((Path(study.root) / "report" / "config.yaml").read_text())
    assert config["results"] == "results/tiny" and config["execution"]["stack"]  # the schema's defaults filled in
    snakemake(study_dir, "--report", "report.zip")
    with zipfile.ZipFile(study_dir / "report.zip") as archive:
        names = archive.namelist()
        text = "".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    figures = [figure for figure in FIGURES if drawable(figure, study.summaries())]
    for figure in figures:
        assert any(n.endswith(f"/{figure}.png") for n in names), figure
    assert any(n.endswith("/tables.html") for n in names) and any(n.endswith("/config.yaml") for n in names)
    for category in ("Pretraining and transfer", "Data pruning and distillation", "Network pruning",
                     "Analysis along the lineage", "Study"):
        assert category in text, category
    assert "WiSE-FT: test accuracy of the weights" in text  # a caption


def test_the_notebook_runs_on_a_finished_studys_results(study: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    """notebooks/explore.ipynb, executed headless as a researcher would open it (from
    notebooks/), on the tiny study's results: every cell runs, the figure is drawn."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
    monkeypatch.setenv("DLSCI_RESULTS", str(Path(study.root).resolve()))
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the redrawn figure
    last = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert float(last.split("(")[-1].rstrip(")")) < 1e-5  # the stored activations are the model's own


def test_the_teacher_is_trained_once_however_many_students_use_it(tmp_path: Path) -> None:
    jobs = planned(copy_workflow(tmp_path))
    assert jobs["distill"] == 12  # 6 methods x 2 teachers (one trained, one untrained)
    assert jobs["finetune_scratch"] == 1  # the teacher, finetune/scratch/s0, once
    # full and linear_probe from each of the two sources, and bn_only from random weights
    assert jobs["finetune"] == 5


def test_the_default_study_is_one_job_per_pack_and_analysis_batch(tmp_path: Path) -> None:
    """206 jobs when every run and store was its own job; packs and batches make it 42."""
    cwd = copy_workflow(tmp_path / "default")
    proc = snakemake(cwd, "--dry-run", configfiles=("config/config.yaml",))
    out = proc.stdout + proc.stderr
    totals = re.findall(r"^total\s+(\d+)$", out, re.M)
    assert totals and int(totals[-1]) == 42 <= 50, out[-3000:]


def test_a_finished_study_has_nothing_to_do(study_dir: Path) -> None:
    assert planned(study_dir) == {}


def test_forcerun_reruns_the_stage_and_only_what_depends_on_it(study_dir: Path) -> None:
    jobs = planned(study_dir, "--forcerun", *stage_rules(study_dir, "pretrain"))
    assert jobs["pretrain"] == 4  # 2 sources x 2 seeds
    assert jobs["finetune"] == 4  # full and linear_probe from each source start from pretrain
    # every ensemble member descends from a pretrained model: 2 sources x 3 kinds x 1 extra member
    assert jobs["ensemble_member"] == 6 and jobs["ensemble"] == 6
    # prototype scores cluster pretrain/mnist1d/s0's embedding: that store, and the packs of
    # its runs (every score-based method at f0.5 shares the prototype run's pack)
    assert jobs["scores"] == 1 and jobs["prune_data"] == 5 and jobs["distill"] == 10
    for untouched in ("make_data", "finetune_scratch", "prune_network_dense", "prune_network"):
        assert untouched not in jobs


def test_asking_for_one_output_reruns_that_runs_pack_alone(study_dir: Path, study: Study) -> None:
    run = "finetune/synthetic/full/s0"
    mates = study.pack_of(run).runs
    assert mates == ("finetune/mnist1d/full/s0", run)  # full fine-tuning from either source, stacked
    target = Path(study.path(run, "model.pt"))  # absolute; snakemake wants it relative
    others = [Path(study.path(r, "model.pt")) for r in study.training_runs() if r not in mates]
    before = {p: p.stat().st_mtime_ns for p in others}
    old, old_bytes = target.stat().st_mtime_ns, target.read_bytes()
    wanted = str(target.relative_to(study_dir))
    snakemake(study_dir, wanted, "--forcerun", wanted)  # forcing the pack rules of a stage would make them targets
    assert target.stat().st_mtime_ns > old
    assert target.read_bytes() != old_bytes  # forced: trained again, though stored for its key
    assert not list((study_dir / "results/tiny/logs").rglob("*.recompute"))  # the job took its mark
    assert {p: p.stat().st_mtime_ns for p in others} == before
    # the downstream of that run is now out of date, and nothing else
    jobs = planned(study_dir)
    assert "finetune" not in jobs and "pretrain" not in jobs and "prune_data" not in jobs
    snakemake(study_dir)  # bring the study back up to date for the other tests


def test_a_changed_setting_reruns_exactly_its_dependents(study_dir: Path) -> None:
    changed = study_dir / "changed.yaml"
    tiny = yaml.safe_load((study_dir / TINY).read_text())
    tiny["prune_network"]["train"]["lr"] = 0.02
    changed.write_text(yaml.safe_dump(tiny))
    jobs = planned(study_dir, configfiles=(TINY, str(changed)))
    assert jobs.get("prune_network_dense") == 1
    assert jobs.get("prune_network") == 5  # imp and its four baselines, at one level
    assert jobs.get("connectivity") == 1  # the dense model joined to its IMP ticket
    assert jobs.get("activations") == 6  # of the dense model and the five pruned ones,
    assert jobs.get("similarity") == 5  # compared along each dense -> pruned edge
    assert set(jobs) <= {"prune_network_dense", "prune_network", "connectivity", "activations", "similarity",
                         "collect", "plot", "all"}


def test_plots_are_redrawn_from_stored_results_without_training(study_dir: Path, study: Study) -> None:
    png = Path(study.plot_path("cka", "png"))
    old = png.stat().st_mtime_ns
    proc = snakemake(study_dir, "plots", "--forcerun", "plot")
    assert png.stat().st_mtime_ns > old
    ran = set(re.findall(r"rule (\w+):", proc.stdout + proc.stderr))
    assert ran <= {"plot", "plots"}, ran


def test_a_results_folder_copied_as_the_readme_says_redraws_its_figures_without_training(
    study_dir: Path, tmp_path: Path
) -> None:
    """``cp -a`` keeps the files' times, which Snakemake compares: in the copy, nothing is out
    of date, and forcing the figures runs the plot job alone."""
    elsewhere = copy_workflow(tmp_path / "elsewhere")
    subprocess.run(["cp", "-a", str(study_dir / "results"), str(elsewhere / "results")], check=True)
    assert planned(elsewhere) == {}
    assert planned(elsewhere, "plots", "--forcerun", "plot") == {"plot": 1, "plots": 1}


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"pretrain": {"seeds": [0], "epochz": 3}}, ["epochz", "allowed keys: seeds, train"]),
        ({"finetune": {"methods": ["full", "dora"], "seeds": [0]}}, ["finetune.methods[1]", "bn_head, bn_only, eva, full, linear_probe, lora"]),
        ({"train": {"epochs": "ten", "batch_size": 50, "lr": 0.01}}, ["train.epochs", "integer"]),
        ({"distill": {"teacher": "finetune/full/s7"}}, ["distill.teacher", "finetune/scratch/s0"]),
    ],
)
def test_a_bad_config_stops_before_any_job(tmp_path: Path, override: dict, expected: list[str]) -> None:
    cwd = copy_workflow(tmp_path)
    bad = cwd / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    proc = snakemake(cwd, configfiles=(TINY, str(bad)), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    for text in expected:
        assert text in message, message[-3000:]
    assert not (cwd / "results").exists()  # nothing ran, nothing written


def test_a_diverging_run_fails_loudly_and_leaves_no_result(tmp_path: Path) -> None:
    cwd = copy_workflow(tmp_path)
    bad = cwd / "diverge.yaml"
    bad.write_text(yaml.safe_dump({"pretrain": {"seeds": [0], "train": {"lr": 1e30, "optimizer": "sgd"}}}))
    proc = snakemake(cwd, "results/tiny/pretrain/mnist1d/s0/model.pt", configfiles=(TINY, str(bad)), check=False)
    assert proc.returncode != 0
    (log,) = [p.read_text() for p in (cwd / "results/tiny/logs/packs").glob("pretrain_*.log")
              if "mnist1d/s0" in p.with_suffix(".json").read_text()]  # its pack's log, beside its description
    assert "DivergenceError" in log and "lower the learning rate" in log
    assert not (cwd / "results/tiny/pretrain/mnist1d/s0/model.pt").exists()
    assert not (cwd / "results/tiny/pretrain/mnist1d/s0/metrics.zarr").exists()


# --- the run is the unit of caching: a growing study never retrains a finished run -------------


def _stored(results: Path) -> dict[str, str]:
    """The content of every file a job stored for a run, a score or an analysis (not the
    logs, summaries, figures and the report's tables and config, which every rerun rewrites,
    nor Snakemake's time stamps)."""
    return {
        str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in results.rglob("*")
        if p.is_file() and p.parts[len(results.parts)] not in ("logs", "summary", "plots", "report", "checkpoints")
        and p.name != ".snakemake_timestamp"
    }


def _grown(study_dir: Path, tmp_path: Path, change) -> tuple[Path, Study, Study]:
    """A copy of the finished tiny study, a config file ``grown.yaml`` that ``change``s it, and
    the studies before and after."""
    cwd = tmp_path / "study"
    shutil.copytree(study_dir, cwd, symlinks=True)  # times kept: nothing looks newer than it is
    tiny = yaml.safe_load((cwd / TINY).read_text())
    grown = copy.deepcopy(tiny)
    change(grown)
    (cwd / "grown.yaml").write_text(yaml.safe_dump(grown))
    root = str(cwd / tiny["results"])
    return cwd, Study({**tiny, "results": root}), Study({**grown, "results": root})


def _trained(cwd: Path) -> int:
    """How many runs the training packs' logs say they trained."""
    logs = (cwd / "results/tiny/logs/packs").rglob("*.log")
    return sum(int(m) for log in logs for m in re.findall(r"training (\d+) of \d+ runs", log.read_text()))


def _models(stored: dict[str, str]) -> set[str]:
    """The runs whose model is among ``stored`` files."""
    return {path.removesuffix("/model.pt") for path in stored if path.endswith("/model.pt")}


def test_adding_a_seed_trains_only_the_new_runs_and_computes_only_the_new_stores(study_dir: Path, tmp_path: Path) -> None:
    def add_seed(config: dict) -> None:
        for stage in ("pretrain", "finetune", "prune_data", "prune_network"):
            config[stage]["seeds"] = [*config[stage]["seeds"], max(config[stage]["seeds"]) + 1]

    cwd, before_study, study = _grown(study_dir, tmp_path, add_seed)
    results = Path(study.root)
    # The random scores' spec lists the seeds (one draw per seed): the one store that changes.
    random = "prune_data/scores/random/scores.zarr"
    draws = xr.open_zarr(results / random).score.load()
    before = {path: h for path, h in _stored(results).items() if not path.startswith(random)}
    for log in (results / "logs/packs").rglob("*.log"):
        log.unlink()
    snakemake(cwd, configfiles=(TINY, "grown.yaml"))
    after = _stored(results)
    assert {path: after.get(path) for path in before} == before  # every finished file, bitwise
    xr.testing.assert_identical(xr.open_zarr(results / random).score.sel(init=draws.init).load(), draws)
    new_runs = set(study.training_runs()) - set(before_study.training_runs())
    assert _models(after) - _models(before) == new_runs
    assert _trained(cwd) == len(new_runs) > 30  # every stage's new seed, and no other run
    new_stores = {p for p in after if p.endswith("/zarr.json") and p.count(".zarr/") == 1} - set(before)
    assert new_stores  # the new runs' activations, similarities, spectra ... and nothing already there
    assert planned(cwd, configfiles=(TINY, "grown.yaml")) == {}


def test_adding_a_temperature_trains_only_the_new_students(study_dir: Path, tmp_path: Path) -> None:
    cwd, before_study, study = _grown(study_dir, tmp_path, lambda c: c["distill"].update(temperature=[4.0, 2.0]))
    results = Path(study.root)
    before = _stored(results)
    for log in (results / "logs/packs").rglob("*.log"):
        log.unlink()
    snakemake(cwd, configfiles=(TINY, "grown.yaml"))
    after = _stored(results)
    assert {path: after.get(path) for path in before} == before
    students = set(study.training_runs()) - set(before_study.training_runs())
    assert students and all("/T2-a0.5/" in run for run in students)
    assert _trained(cwd) == len(students) == 12  # 6 methods x 2 teachers


def test_a_forced_pack_retrains_its_runs_and_their_children_and_nothing_else(study_dir: Path, tmp_path: Path) -> None:
    """--forcerun of a pack retrains every run of it, though stored for its key; its children
    retrain too, since their keys name their parent's content, not only its spec."""
    cwd, study, _ = _grown(study_dir, tmp_path, lambda c: None)
    results = Path(study.root)
    before = _stored(results)
    pack = study.pack_of("pretrain/mnist1d/s0")
    forced = "pretrain_" + re.sub(r"\W", "_", pack.id.split("/", 1)[1])  # its rule (rules/train.smk)
    assert forced in stage_rules(cwd, "pretrain")
    children = ["finetune/mnist1d/full/s0", "finetune/mnist1d/linear_probe/s0"]
    snakemake(cwd, *(str(Path(study.path(run, "model.pt")).relative_to(cwd)) for run in children), "--forcerun", forced)
    after = _stored(results)
    changed = {path.removesuffix("/model.pt") for path in before if path.endswith("/model.pt") and after[path] != before[path]}
    assert changed == {*pack.runs, *children}
    for sibling in ("pretrain/synthetic/s0", "finetune/synthetic/full/s0", "finetune/scratch/s0"):
        assert sibling not in changed


def test_a_small_twin_of_the_lottery_study_runs_to_the_end(tmp_path: Path) -> None:
    """The lottery study's shape at toy scale: every method, global pruning, two seeds, two
    rewind steps. Its FLOPs-matched scratch runs, whose epochs follow their own masks, train
    in packs of their own; with packs keyed on the spec alone this stopped with "the runs of
    pack ... train with different settings"."""
    cwd = copy_workflow(tmp_path)
    twin = yaml.safe_load((cwd / "config/studies/lottery.yaml").read_text())
    twin.update(results="results/lottery_twin", data={"target": {"name": "mnist1d", "args": {"num_samples": 600}}},
                model={"name": "cnn1d", "channels": 4},
                train={"epochs": 3, "batch_size": 50, "optimizer": "adam", "lr": 0.01, "schedule": "cosine"})
    twin["prune_network"].update(levels=2, rewind_steps=[0, 5], seeds=[0, 1])
    twin["analyze"] = {"probe_size": 50, "spectra": {"hutchinson_probes": 5}}  # 120 test examples
    (cwd / "twin.yaml").write_text(yaml.safe_dump(twin))
    snakemake(cwd, configfiles=("twin.yaml",))
    study = Study({**twin, "results": str(cwd / twin["results"])})
    scratch = [run for run in study.network_pruning_runs() if study.parse(run)["method"] == "scratch"]
    assert len(scratch) == 2 * 2 * 2
    for run in study.training_runs():
        metrics = xr.open_zarr(study.path(run, "metrics.zarr"))
        assert metrics.attrs["pack_runs"] == [run] or run not in scratch
        assert metrics.sizes["epoch"] >= 4  # 3 epochs and the start; scratch more, as its mask saves multiply-adds
    assert any(xr.open_zarr(study.path(run, "metrics.zarr")).sizes["epoch"] > 4 for run in scratch)
    assert planned(cwd, configfiles=("twin.yaml",)) == {}


def test_a_small_twin_of_the_offsets_study_runs_to_the_end(tmp_path: Path) -> None:
    """EL2N with offsets: each offset's run trains on the window after the skipped scores,
    and its coordinates (scoring, keep, offset) lie along the summary's selection."""
    from workflow.prune_data import select

    cwd = copy_workflow(tmp_path)
    twin = yaml.safe_load((cwd / "config/studies/data_pruning_offsets.yaml").read_text())
    twin.update(results="results/offsets_twin", data={"target": {"name": "mnist1d", "args": {"num_samples": 600}}},
                model={"name": "cnn1d", "channels": 4}, analyze={"probe_size": 50},
                train={"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 0.01, "schedule": "cosine"})
    twin["prune_data"].update(fractions=[0.3], offsets=[0, 0.2], seeds=[0], el2n={"inits": 1, "epoch": 1},
                              train={"epochs": 2})
    (cwd / "twin.yaml").write_text(yaml.safe_dump(twin))
    snakemake(cwd, configfiles=("twin.yaml",))
    study = Study({**twin, "results": str(cwd / twin["results"])})
    summary = open_quietly(Path(study.summary_path("data_pruning")))
    assert summary["selection"].values.tolist() == ["el2n-hard", "el2n-hard-o0.2", "random"]
    assert summary["offset"].values.tolist() == [0.0, 0.2, 0.0] and summary["keep"].values.tolist()[-1] == "none"
    scores = open_quietly(Path(study.path("prune_data/scores/el2n", "scores.zarr")))["score"].mean("init").values
    kept = torch.load(study.path("prune_data/el2n-hard-o0.2/f0.3/s0", "model.pt"), weights_only=False)["kept"]
    np.testing.assert_array_equal(kept.numpy(), select(scores, 0.3, "hard", offset=0.2))


def test_small_twins_of_the_random_features_and_random_teachers_studies_run_to_the_end(tmp_path: Path) -> None:
    """BatchNorm-only from random weights beside scratch; students of random teachers, probed."""
    cwd = copy_workflow(tmp_path)
    small = {"data": {"target": {"name": "mnist1d", "args": {"num_samples": 600}, "val_size": 50}},
             "model": {"name": "cnn1d", "channels": 4}, "analyze": {"probe_size": 50},
             "train": {"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 0.01, "schedule": "cosine"}}
    features = yaml.safe_load((cwd / "config/studies/random_features.yaml").read_text())
    features.update(small, results="results/features_twin")
    features["finetune"]["seeds"] = [0]
    teachers = yaml.safe_load((cwd / "config/studies/random_teachers.yaml").read_text())
    teachers.update(small, results="results/teachers_twin")
    teachers["random_teacher"].update(seeds=[0], noise=[0.0, 0.5])
    for name, twin in (("features", features), ("teachers", teachers)):
        (cwd / f"{name}.yaml").write_text(yaml.safe_dump(twin))
        snakemake(cwd, configfiles=(f"{name}.yaml",))
        assert planned(cwd, configfiles=(f"{name}.yaml",)) == {}
    study = Study({**features, "results": str(cwd / features["results"])})
    summary = open_quietly(Path(study.summary_path("finetune")))
    assert summary["model"].values.tolist() == [f"finetune/none/{m}" for m in ("bn_head", "bn_only", "linear_probe")] \
        + ["finetune/scratch"]
    assert set(summary["source"].values.tolist()) == {"none"}
    assert bool(summary["test_acc"].notnull().all())
    study = Study({**teachers, "results": str(cwd / teachers["results"])})
    summary = open_quietly(Path(study.summary_path("random_teacher")))
    assert summary["noise"].values.tolist() == [0.0, 0.5]
    for name in ("probe_test_acc", "probe_val_acc", "teacher_probe_test_acc"):
        assert summary[name].dims == ("noise", "seed") and bool(((summary[name] > 0) & (summary[name] <= 1)).all())
    # one teacher per seed, whatever the noise
    assert summary["teacher_probe_test_acc"].std("noise").max() == 0
    text = subprocess.run([sys.executable, "-m", "workflow", "report", teachers["results"]], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout
    assert "random teachers: a linear probe" in text
    assert matplotlib.image.imread(study.plot_path("random_teacher", "png")).shape[0] > 100


def test_a_small_twin_of_the_digits_study_runs_to_the_end(tmp_path: Path) -> None:
    """The embedded image study: real images from scikit-learn, no download."""
    cwd = copy_workflow(tmp_path)
    twin = yaml.safe_load((cwd / "config/studies/digits.yaml").read_text())
    twin.update(results="results/digits_twin", model={"name": "resnet20", "width": 4, "depth": 8, "channels_in": 1},
                train={"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.01, "schedule": "cosine"})
    twin["analyze"] = {"probe_size": 100}
    for stage in ("pretrain", "finetune", "prune_data"):
        twin[stage]["seeds"] = [0]
    twin["prune_data"].update(fractions=[0.5], el2n={"inits": 1, "epoch": 1})
    twin["distill"]["alpha"] = [0.5]
    (cwd / "twin.yaml").write_text(yaml.safe_dump(twin))
    snakemake(cwd, configfiles=("twin.yaml",))
    study = Study({**twin, "results": str(cwd / twin["results"])})
    for name in ("pretrain", "finetune", "data_pruning", "distill"):
        summary = open_quietly(Path(study.summary_path(name)))
        assert bool(summary["test_acc"].notnull().any()), name
    assert Path(study.plot_path("finetune_methods", "png")).exists()


def test_a_small_twin_of_the_zoo_study_runs_to_the_end(tmp_path: Path) -> None:
    """A zoo of 2 widths x 2 sizes x 2 learning rates x 2 seeds: one pack per cell of width
    and size, one tidy summary over the grid, the Hessian of every model, and a run index."""
    cwd = copy_workflow(tmp_path)
    twin = yaml.safe_load((cwd / "config/studies/zoo.yaml").read_text())
    twin.update(results="results/zoo_twin",
                analyze={"probe_size": 50, "connectivity": {"alphas": 3, "bn_batches": 1, "align": True},
                         "similarity": {"edges": ["seeds"], "measures": ["linear_cka"]},
                         "manifold": {"lrs": [0.1], "seeds": [0], "dims": [1, 8, 40], "trials": 2, "steps": 10}},
                data={"target": {"name": "mnist1d", "args": {"num_samples": 600}, "val_size": 50}},
                train={"epochs": 2, "batch_size": 50, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9})
    twin["zoo"].update(widths=[2, 4], sizes=[100, 200], lrs=[0.01, 0.1], seeds=[0, 1],
                       hessian={"examples": 50, "probes": 2, "batch_size": 50})
    (cwd / "twin.yaml").write_text(yaml.safe_dump(twin))
    assert planned(cwd, configfiles=("twin.yaml",))["zoo"] == 16
    packs = [line for line in snakemake(cwd, "--list-rules", configfiles=("twin.yaml",)).stdout.splitlines()
             if line.startswith("zoo_")]
    assert len(packs) == 4  # one per width and size: the learning rates and seeds of a cell train together
    snakemake(cwd, configfiles=("twin.yaml",))
    study = Study({**twin, "results": str(cwd / twin["results"])})
    summary = open_quietly(Path(study.summary_path("zoo")))
    assert dict(summary["test_acc"].sizes) == {"width": 2, "size": 2, "lr": 2, "seed": 2, "epoch": 3}
    assert summary["init_hidden_covariance"].dims == ("width", "size", "lr", "seed", "layer")
    for name in ("hessian_trace", "hessian_top_eigenvalue", "val_acc", "train_acc", "init_hidden_covariance",
                 "init_ntk_condition_number", "init_ntk_alignment"):
        assert bool(summary[name].notnull().all()), name
    import pandas as pd

    pairs = open_quietly(Path(study.summary_path("connectivity_seed_pairs")))
    assert dict(pairs["test_error_barrier"].sizes) == {"width": 2, "size": 2, "lr": 2, "seed": 1, "other_seed": 1}
    assert bool(pairs["aligned_test_error_barrier"].notnull().all())
    assert pairs["aligned_unit_correlation"].dims == ("width", "size", "lr", "seed", "other_seed", "layer")
    manifold = open_quietly(Path(study.summary_path("manifold")))
    assert dict(manifold["success_rate"].sizes) == {"width": 2, "size": 2, "lr": 1, "seed": 1, "class_label": 10,
                                                    "subspace_dim": 3}
    cka = open_quietly(Path(study.summary_path("similarity_seed_pairs")))["linear_cka"]
    assert bool(cka.notnull().all())
    text = subprocess.run([sys.executable, "-m", "workflow", "report", twin["results"]], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout
    assert "zoo: phase of each cell (aligned barrier above 0.05" in text and "their units aligned" in text
    assert "zoo: rank correlation of the class-manifold dimension" in text
    assert matplotlib.image.imread(study.plot_path("zoo", "png")).shape[0] > 100  # the phase diagram
    assert matplotlib.image.imread(study.plot_path("zoo_scores", "png")).shape[0] > 100
    models = pd.read_csv(cwd / twin["results"] / "summary" / "zoo_models.csv")  # a row per model, every metric
    assert len(models) == 16 and models[["aligned_barrier", "cka", "hessian_trace", "val_acc"]].notnull().all().all()
    # the class-manifold dimension of the models measured (lr 0.1, seed 0), mean over classes; NaN elsewhere
    measured = manifold["class_manifold_dimension"].mean("class_label", skipna=False).to_series()
    rows = models.set_index(["width", "size", "lr", "seed"])["class_manifold_dimension"]
    np.testing.assert_array_equal(rows.reindex(measured.index).to_numpy(), measured.to_numpy())
    assert rows.drop(measured.index).isnull().all()
    # the README's lines that open the zoo as a dataset run as written, on the twin's results
    readme = (REPO / "README.md").read_text().split("* **The zoo is a dataset.**")[1]
    snippet = readme.split("```python\n")[1].split("```")[0].replace("results/zoo/", f"{twin['results']}/")
    snippet = snippet.replace("sel(width=64, size=2000, lr=0.1)", "sel(width=4, size=200, lr=0.1)")
    subprocess.run([sys.executable, "-c", textwrap.dedent(snippet)], cwd=cwd, check=True)
    index = pd.read_csv(cwd / twin["results"] / "summary" / "runs.csv")
    zoo = index[index["stage"] == "zoo"]
    assert len(zoo) == 16 and {"width", "size", "lr", "seed", "model"} <= set(zoo.columns)


def test_every_pack_and_batch_rule_says_what_it_holds_and_starts_with_its_stage(tmp_path: Path) -> None:
    cwd = copy_workflow(tmp_path)
    listed = snakemake(cwd, "--list-rules").stdout.splitlines()
    rules = {line.split(" ", 1)[0]: line.split(" ", 1)[1] if " " in line else "" for line in listed}
    packs = [name for name in rules if PACK_RULE.match(name) and not BATCH_RULE.match(name)]
    batches = [name for name in rules if BATCH_RULE.match(name)]
    assert len(packs) > 10 and len(batches) > 10
    for name in packs:
        stage = re.search(r"of stage (\w+)", rules[name]).group(1)
        assert name.startswith(stage + "_"), (name, rules[name])
        assert re.search(r"Train \d+ run\(s\) of stage \w+ in one job: \w", rules[name])
    for name in batches:
        assert re.search(r"Analyses of the runs of pack \S+ \(stage \w+\): \d+ \w+", rules[name]), name
    # the README's way to force a stage: the names alone
    grep = subprocess.run(f"{sys.executable} -m snakemake --configfile {TINY} --list-rules | grep -o '^finetune_[^ ]*'",
                          shell=True,
                          cwd=cwd, capture_output=True, text=True, check=True)
    assert set(grep.stdout.split()) == {name for name in packs if name.startswith("finetune_")}
    assert "finetune_scratch" in " ".join(grep.stdout.split())
