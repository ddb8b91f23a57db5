"""Distillation: students trained on the data-pruning subsets with Hinton's KD loss,
taught by the study's trained teacher (trained once, a run of the study) or by a
frozen, untrained network of the same architecture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workflow.stages import TrainingSetup, TrainingStage
from workflow.stages.data_pruning import (
    prepare_subset,
    subset_coords,
    subset_inputs,
    subset_pack_key,
    subset_runs,
    subset_spec,
)

if TYPE_CHECKING:
    from pathlib import Path

    from workflow.study import Study

# Untrained teachers are initialised from this seed plus the student's seed, so a
# student never starts at its teacher.
UNTRAINED_TEACHER_SEED = 10_000


class Distill(TrainingStage):
    name = "distill"
    # the subsets of one fraction, and every teacher, temperature and alpha
    stackable = ("method", "score", "keep", "offset", "teacher", "temperature", "alpha", "teacher_run",
                 "teacher_spec", "teacher_seed")
    summary = "distill"
    method_axis = "selection"

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [subset_coords(r, "fraction", "teacher", "temperature", "alpha")]

    def lineage(self, study: Study, r: Mapping[str, Any]) -> tuple[str, str] | None:
        """The trained teacher -> its student. An untrained teacher is drawn inside each
        student's job and never stored as a model: those students are left out."""
        return ("distill", study.config["distill"]["teacher"]) if r["teacher"] == "trained" else None

    def pack_key(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return subset_pack_key(self, spec)

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        return subset_runs(config, "distill")

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        spec = {**subset_spec(study, r), "teacher": r["teacher"], "temperature": r["temperature"], "alpha": r["alpha"]}
        if r["teacher"] == "trained":
            teacher = study.config["distill"]["teacher"]
            spec.update(teacher_run=teacher, teacher_spec=study.spec(teacher))
        else:  # a frozen random network of the study's architecture, not the student's init
            spec["teacher_seed"] = UNTRAINED_TEACHER_SEED + r["seed"]
        return spec

    def inputs(self, study: Study, spec: Mapping[str, Any]) -> dict[str, str]:
        teacher = {"teacher": study.path(spec["teacher_run"], "model.pt")} if "teacher_run" in spec else {}
        return {**subset_inputs(study, spec), **teacher}

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        from workflow.distill import KDLoss
        from workflow.models import load_model, seeded_model

        prepare_subset(spec, setup, inputs)
        if spec["teacher"] == "trained":
            teacher, _ = load_model(inputs["teacher"], setup.device)
        else:  # random-teacher distillation: a frozen, untrained network
            teacher = seeded_model(spec["model"], setup.data.in_length, setup.data.num_classes,
                                   spec["teacher_seed"], setup.device).eval()
        teacher.requires_grad_(False)
        setup.loss_fn = KDLoss(teacher, spec["temperature"], spec["alpha"])
