"""Packs: which runs of a study one training job trains together.

A run is the unit of identity and storage; a pack is the unit of execution. The
runs of one stage share a pack when their specs agree on everything but what a
training loop can step side by side (:meth:`workflow.stages.TrainingStage.pack_key`:
seeds, equal-size subsets, masks, teachers, parents, element-wise optimiser
settings) and when neither depends on
the other (a run and its parent in the same stage, e.g. two IMP levels, never
share one).

How a group of such runs is cut into packs of at most ``size`` is deterministic
and keeps packs stable as a study grows: each seed's runs stay together, and seeds
fill packs in blocks in the order the config lists them. With M runs per seed, a
pack holds ``size // M`` seeds; adding a seed at the end of the list changes only
the last block's pack, and adding a fraction makes new packs without touching the
old ones. When one seed alone has more than ``size`` runs, they are cut in order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from workflow import runs as run_ids

if TYPE_CHECKING:
    from workflow.study import Study


@dataclass(frozen=True)
class Pack:
    """Runs of one stage trained by one job, in the order it trains them."""

    id: str  # <stage>/<digest of what they share>-<block>: its log and checkpoint are named for it
    stage: str
    runs: tuple[str, ...]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def plan(study: Study, size: int) -> list[Pack]:
    """Every training run of ``study`` in exactly one pack of at most ``size`` runs, stage by stage."""
    if size < 1:
        raise ValueError(f"pack size must be >= 1, got {size}")
    packs: list[Pack] = []
    for stage in study.training_stages():
        runs = study.stage_runs(stage)
        depth = _depths(runs, study.parent)
        groups: dict[str, list[str]] = {}
        for run in runs:
            key = run_ids.dumps({"key": study.pack_key(run), "depth": depth[run]})
            groups.setdefault(key, []).append(run)
        for key, members in groups.items():
            packs.extend(_cut(stage, _digest(key), members, size))
    return packs


def _depths(runs: list[str], parent: Callable[[str], str | None]) -> dict[str, int]:
    """How many of a run's ancestors are runs of the same stage (listed in ``runs``)."""
    inside = set(runs)
    depth: dict[str, int] = {}

    def of(run: str) -> int:
        if run not in depth:
            p = parent(run)
            depth[run] = of(p) + 1 if p in inside else 0
        return depth[run]

    for run in runs:
        of(run)
    return depth


def _cut(stage: str, digest: str, members: list[str], size: int) -> list[Pack]:
    """One group's runs in packs: seed blocks of ``size // M`` seeds for M runs per seed."""
    by_seed: dict[int, list[str]] = {}
    for run in members:
        by_seed.setdefault(run_ids.parse(run)["seed"], []).append(run)
    per_seed = max(len(r) for r in by_seed.values())
    seeds_per_pack = max(1, size // per_seed)
    blocks: dict[str, list[str]] = {}
    for position, runs in enumerate(by_seed.values()):
        block = position // seeds_per_pack
        for i, run in enumerate(runs):
            label = f"{block}" if per_seed <= size else f"{block}.{i // size}"
            blocks.setdefault(label, []).append(run)
    return [Pack(f"{stage}/{digest}-{label}", stage, tuple(runs)) for label, runs in blocks.items()]


def index(packs: list[Pack]) -> Mapping[str, Pack]:
    """Each run's pack."""
    return {run: pack for pack in packs for run in pack.runs}
