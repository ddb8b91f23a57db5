"""Pretraining: one run per source task (``data.sources``) and seed, from a fresh initialisation."""

from __future__ import annotations

from typing import Any, Mapping

from workflow.runs import run_id
from workflow.stages import TrainingStage


def sources(config: Mapping[str, Any]) -> list[str]:
    """The names of the pretraining tasks, in config order (none without a pretrain stage)."""
    return list(config["data"].get("sources", {})) if "pretrain" in config else []


class Pretrain(TrainingStage):
    name = "pretrain"

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        return [run_id("pretrain", source=src, seed=s) for src in sources(config) for s in config["pretrain"]["seeds"]]

    def task(self, r: Mapping[str, Any]) -> str:
        return f"sources/{r['source']}"
