"""Random teachers: students distilled, without labels, from a frozen untrained network
of the study's architecture, started at (or near) it; then a linear probe of both (see
:mod:`workflow.random_teacher`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workflow.runs import run_id
from workflow.stages import TrainingSetup, TrainingStage

if TYPE_CHECKING:
    from pathlib import Path

    from workflow.study import Study

# The independent initialisation whose weights, times the noise, move a student off its
# teacher is drawn from this seed plus the run's.
NOISE_SEED = 20_000


class RandomTeacher(TrainingStage):
    name = "random_teacher"
    stackable = ("noise", "noise_seed")  # students of one teacher setup at several distances train together
    summary = "random_teacher"

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"noise": r["noise"], "seed": r["seed"]}]

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        if "random_teacher" not in config:
            return []
        rt = config["random_teacher"]
        return [run_id("random_teacher", noise=float(n), seed=s) for n in rt["noise"] for s in rt["seeds"]]

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        rt = study.config["random_teacher"]
        return {"noise": r["noise"], "noise_seed": NOISE_SEED + r["seed"],
                "teacher_temperature": rt["teacher_temperature"], "student_temperature": rt["student_temperature"],
                "probe_ridge": rt["probe_ridge"]}

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        import copy

        from workflow.finetune import calibrate_batchnorm
        from workflow.models import seeded_model
        from workflow.random_teacher import RandomTeacherLoss, outputs_mean, start_near

        # the teacher is the seed's own initialisation: the model the job built
        teacher = copy.deepcopy(setup.model)
        calibrate_batchnorm(teacher, setup.data.x_train, setup.cfg.batch_size)
        teacher.eval().requires_grad_(False)
        fresh = seeded_model(spec["model"], setup.data.in_length, setup.data.num_classes, spec["noise_seed"],
                             setup.device)
        start_near(setup.model, teacher, fresh, spec["noise"])
        setup.loss_fn = RandomTeacherLoss(teacher, outputs_mean(teacher, setup.data.x_train),
                                          spec["teacher_temperature"], spec["student_temperature"])

    def finish(self, spec: Mapping[str, Any], setup: TrainingSetup) -> None:
        import xarray as xr

        from workflow.random_teacher import probe_accuracy

        data = setup.data
        evaluated = {"test": (data.x_test, data.y_test)}
        if data.x_val is not None:
            evaluated["val"] = (data.x_val, data.y_val)
        for who, model in (("", setup.model), ("teacher_", setup.loss_fn.teacher)):  # type: ignore[union-attr]
            acc = probe_accuracy(model, data.x_train, data.y_train, evaluated, data.num_classes, spec["probe_ridge"])
            for split, value in acc.items():
                setup.metrics[f"{who}probe_{split}_acc"] = xr.DataArray(value)
