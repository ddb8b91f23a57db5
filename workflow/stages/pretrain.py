"""Pretraining: one run per source task (``data.sources``) and seed, from a fresh initialisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workflow import axes
from workflow.runs import run_id
from workflow.stages import TrainingStage

if TYPE_CHECKING:
    from workflow.study import Study


def sources(config: Mapping[str, Any]) -> list[str]:
    """The names of the pretraining tasks, in config order (none without a pretrain stage)."""
    return list(config["data"].get("sources", {})) if "pretrain" in config else []


class Pretrain(TrainingStage):
    name = "pretrain"
    summary = "pretrain"
    analysed = True

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"source": r["source"], "seed": r["seed"]}]

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        return [run_id("pretrain", source=src, seed=s) for src in sources(config) for s in config["pretrain"]["seeds"]]

    def task(self, r: Mapping[str, Any]) -> str:
        return f"sources/{r['source']}"
