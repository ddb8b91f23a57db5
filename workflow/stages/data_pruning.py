"""Data pruning: score every target training example once per score
(:data:`workflow.scoring.SCORERS`), then train on the kept subset of each method,
fraction and seed; RS2 draws a fresh random subset every epoch instead.

The subset runs' ids, specs and data are shared with distillation
(:mod:`workflow.stages.distill`), whose students train on the same subsets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workflow.runs import number_label
from workflow.stages import TrainingSetup, TrainingStage

if TYPE_CHECKING:
    from pathlib import Path

    from workflow.study import Study

# Data-pruning methods with no keep rule: random subsets, and RS2's fresh random
# subset every epoch.
UNORDERED_METHODS = ("random", "rs2")
# Scores computed by models of the study's architecture, trained as prune_data trains.
TRAINED_SCORES = ("el2n", "grand", "forgetting")


def data_pruning_method(score: str, keep: str, offset: float = 0.0) -> str:
    """The label of a data-pruning method: ``el2n-hard``, with an offset ``el2n-hard-o0.1``
    (the most extreme tenth skipped); random and rs2 have neither keep rule nor offset."""
    if score in UNORDERED_METHODS:
        return score
    return f"{score}-{keep}" + (f"-o{number_label(offset)}" if offset else "")


def parse_method(label: str) -> tuple[str, str, float]:
    """``(score, keep rule, offset)`` of a method label (:func:`data_pruning_method`)."""
    score, *rest = label.split("-")
    keep = rest[0] if rest else "hard"
    offset = float(rest[1].removeprefix("o")) if len(rest) > 1 else 0.0
    return score, keep, offset


def methods(config: Mapping[str, Any]) -> list[str]:
    """Every (score, keep rule, offset) of the study as its method label."""
    if "prune_data" not in config:
        return []
    pd = config["prune_data"]
    return list(dict.fromkeys(data_pruning_method(s, k, o) for s in pd["scores"] for k in pd["keep"]
                              for o in pd["offsets"]))


def score_stores(study: Study) -> list[str]:
    """Score stores of the study (rs2 needs none: it draws a new subset every epoch)."""
    if not study.has("prune_data"):
        return []
    return [f"prune_data/scores/{s}" for s in study.config["prune_data"]["scores"] if s != "rs2"]


def score_path(study: Study, method: str) -> str | None:
    """The score store a data-pruning method selects with (``el2n-hard`` -> el2n)."""
    score = method.split("-")[0]
    return None if score == "rs2" else study.path(f"prune_data/scores/{score}", "scores.zarr")


def score_spec(study: Study, score: str) -> dict[str, Any]:
    """What determines a score store: the method, its settings, data and model."""
    pd = study.config["prune_data"]
    spec: dict[str, Any] = {"stage": "scores", "score": score, "data": study.config["data"]["target"]}
    if score in TRAINED_SCORES:
        spec.update(model=study.config["model"], train=study.train_config("prune_data"), **pd[score])
    elif score == "prototypes":
        spec.update(pd["prototypes"], embedding_spec=study.spec(pd["prototypes"]["embedding"]))
    elif score == "random":
        spec["seeds"] = pd["seeds"]  # one independent draw per training seed
    return spec


def score_inputs(study: Study, score: str) -> dict[str, str]:
    """The files a score job reads: the task, and for prototypes the model whose embedding is clustered."""
    inputs = {"data": study.data_path("target")}
    if score == "prototypes":
        inputs["model"] = study.path(study.config["prune_data"]["prototypes"]["embedding"], "model.pt")
    return inputs


def subset_runs(config: Mapping[str, Any], stage: str) -> list[str]:
    """Runs of ``prune_data`` (method x fraction x seed) or ``distill`` (also x teacher x
    temperature x alpha)."""
    if "prune_data" not in config or stage not in config:
        return []
    pd, d = config["prune_data"], config.get("distill", {})
    kd = [(f"{stage}/{t}/", f"T{number_label(T)}-a{number_label(a)}/")
          for t in d.get("teachers", []) for T in d.get("temperature", []) for a in d.get("alpha", [])]
    return [
        f"{head}{m}/f{number_label(f)}/{tail}s{s}"
        for head, tail in (kd if stage == "distill" else [(f"{stage}/", "")])
        for m in methods(config)
        for f in pd["fractions"]
        for s in pd["seeds"]
    ]


def subset_spec(study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
    """What determines the examples a subset run trains on.

    A random subset is its own seed's draw of the random scores: it depends on neither
    the score store nor the other seeds, so adding a seed retrains no random run.
    """
    score, keep, offset = parse_method(r["method"])
    scored = score_spec(study, score)
    if score == "random":
        scored.pop("seeds")
    spec = {
        "method": r["method"],
        "score": scored,
        "keep": keep,
        "fraction": r["fraction"],
        "class_balanced": study.config["prune_data"]["class_balanced"],
    }
    if offset:  # only then: a study without offsets keeps its runs' specs, and their results
        spec["offset"] = offset
    return spec


def subset_inputs(study: Study, spec: Mapping[str, Any]) -> dict[str, str]:
    """The score store the run's method selects with (random and rs2 have none)."""
    store = score_path(study, spec["method"])
    return {"scores": store} if store and spec["method"] != "random" else {}


def subset_pack_key(stage: TrainingStage, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Subsets of one fraction share packs; RS2's fresh subset per epoch is drawn without
    class balance, so it may differ in size from the others and packs apart."""
    return {**TrainingStage.pack_key(stage, spec), "rs2": spec["method"] == "rs2"}


def prepare_subset(spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
    """Train on the kept examples, or (RS2) on a fresh random slice of them every epoch."""
    import torch
    import xarray as xr

    from workflow import storage
    from workflow.prune_data import RepeatedRandomSubsets, random_scores, select

    if spec["score"]["score"] == "rs2":
        setup.sampler = RepeatedRandomSubsets(len(setup.data.y_train), spec["fraction"])
        kept_size = setup.sampler.size
    else:
        # Random pruning draws a fresh subset per seed (the row of the random score store for
        # that seed); score-based methods average their scores over initialisations and so
        # keep the same subset for every seed.
        if spec["score"]["score"] == "random":
            values = random_scores(len(setup.data.y_train), spec["seed"])
        else:
            values = storage.open_dataset(inputs["scores"])["score"].mean("init").values
        kept = select(values, spec["fraction"], keep=spec["keep"], labels=setup.data.y_train.cpu().numpy(),
                      class_balanced=spec["class_balanced"], offset=spec.get("offset", 0.0))
        setup.data = setup.data.subset(kept)
        setup.kept = torch.as_tensor(kept)
        kept_size = len(setup.kept)
    setup.metrics["kept_size"] = xr.DataArray(kept_size, attrs={"description": "training examples per epoch"})


def subset_coords(r: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    """A subset run's coordinates in its summary: its selection (with the scoring, keep rule
    and offset along it), its ``fields`` and its seed."""
    score, keep, offset = parse_method(r["method"])
    keep = "none" if score in UNORDERED_METHODS else keep
    return {"selection": r["method"], "scoring": score, "keep": keep, "offset": offset,
            **{f: r[f] for f in fields}, "seed": r["seed"]}


class PruneData(TrainingStage):
    """A model trained from scratch on the kept subset of each method, fraction and seed."""

    name = "prune_data"
    stackable = ("method", "score", "keep", "offset")  # equal-size subsets of one fraction
    summary = "data_pruning"
    method_axis = "selection"

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [subset_coords(r, "fraction")]

    def other_summaries(self, study: Study) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """Every score store, by its scoring."""
        return {"scores": [({"scoring": store.rsplit("/", 1)[1]}, study.path(store, "scores.zarr"))
                           for store in score_stores(study)]}

    def pack_key(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return subset_pack_key(self, spec)

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        return subset_runs(config, "prune_data")

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        return subset_spec(study, r)

    def inputs(self, study: Study, spec: Mapping[str, Any]) -> dict[str, str]:
        return subset_inputs(study, spec)

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        prepare_subset(spec, setup, inputs)
