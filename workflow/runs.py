"""The identity of a run: its id (a readable folder under the results root) and its spec.

A run id is its stage followed by one folder per field of the stage's layout, e.g.
``pretrain/mnist1d/s0``, ``finetune/synthetic/lora/s1`` or
``distill/trained/el2n-hard/f0.25/T4-a0.5/s1``. This module is the one place that
writes the format down: :func:`parse` reads an id, :func:`run_id` writes one, and
the workflow's rules take their output patterns (:func:`pattern`) and wildcard
constraints (:data:`WILDCARDS`) from here. It imports nothing of torch, so planning
a study stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

# Ensembles from one pretrained checkpoint: independent fine-tuning runs; snapshot
# cycles in sequence (SSE); snapshot cycles each from the fine-tuned model (StarSSE).
ENSEMBLE_KINDS = ("seeds", "sse", "starsse")

# The source coordinate, in summaries, of runs with no pretraining (scratch).
NO_SOURCE = "none"

# The folders of a run id after its stage, in order; a stage may have several
# layouts of different lengths (network pruning: the dense run, and the pruned ones).
RUN_LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pretrain": (("source", "seed"),),
    "finetune": (("method", "seed"), ("source", "method", "seed")),  # scratch has no source
    "prune_data": (("method", "fraction", "seed"),),
    "distill": (("teacher", "method", "fraction", "kd", "seed"),),
    "prune_network": (("method", "seed"), ("method", "rewind", "seed", "level")),
    "ensemble": (("source", "kind", "seed", "member"),),
    "random_teacher": (("noise", "seed"),),
    "zoo": (("width", "size", "lr", "seed"),),
}

# The value of every wildcard a run id (or a rule's output) is made of: also the
# rules' wildcard constraints. Numbers in ids are positional (see number_label).
WILDCARDS: dict[str, str] = {
    "seed": r"\d+",
    "source": r"[a-z][a-z0-9_]*",
    "method": r"[a-z0-9_]+(-[a-z0-9_]+)?(-o[0-9.]+)?",  # el2n-hard-o0.1: a data-pruning offset
    "teacher": r"trained|untrained",
    "fraction": r"[0-9.]+",
    "temperature": r"[0-9.]+",
    "alpha": r"[0-9.]+",
    "rewind": r"\d+",
    "level": r"\d+",
    "kind": "|".join(ENSEMBLE_KINDS),
    "member": r"\d+",
    "score": r"[a-z0-9_]+",
    "noise": r"[0-9.]+",
    "width": r"\d+",
    "size": r"\d+",
    "lr": r"[0-9.]+",
}

# How each field of a layout is written as a folder, from its wildcards.
FOLDERS: dict[str, str] = {
    "seed": "s{seed}",
    "source": "{source}",
    "method": "{method}",
    "teacher": "{teacher}",
    "fraction": "f{fraction}",
    "kd": "T{temperature}-a{alpha}",
    "rewind": "k{rewind}",
    "level": "level{level}",
    "kind": "{kind}",
    "member": "m{member}",
    "noise": "n{noise}",
    "width": "w{width}",
    "size": "n{size}",
    "lr": "lr{lr}",
}
_TYPES = {"seed": int, "level": int, "rewind": int, "member": int, "fraction": float, "temperature": float, "alpha": float,
          "noise": float, "width": int, "size": int, "lr": float}
_FOLDER_REGEX = {
    field: re.compile(re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{WILDCARDS[m[1]]})", folder))
    for field, folder in FOLDERS.items()
}


def number_label(f: float) -> str:
    """``0.25 -> "0.25"``, ``1.0 -> "1"``, ``1e-5 -> "0.00001"``: a number in run ids.

    Positional and exact (shortest round-trip digits), so distinct numbers never
    share a run id and the id parses back to the same number.
    """
    return np.format_float_positional(float(f), trim="-")


def _layouts(stage: str) -> tuple[tuple[str, ...], ...]:
    return RUN_LAYOUTS.get(stage, ())


def pattern(stage: str, layout: int = 0) -> str:
    """The run id of a stage's layout with wildcards in braces, e.g.
    ``prune_network/{method}/k{rewind}/s{seed}/level{level}`` (a rule's output pattern)."""
    return "/".join([stage, *(FOLDERS[field] for field in _layouts(stage)[layout])])


def run_id(stage: str, **values: Any) -> str:
    """The id of the run of ``stage`` with these field values (the layout whose fields they name)."""
    for layout in range(len(_layouts(stage))):
        names = set(re.findall(r"\{(\w+)\}", pattern(stage, layout)))
        if names == set(values):
            return pattern(stage, layout).format(
                **{k: number_label(v) if isinstance(v, float) else v for k, v in values.items()}
            )
    raise ValueError(f"no layout of stage {stage!r} has exactly the fields {sorted(values)}")


def parse(run: str) -> dict[str, Any]:
    """The parts of a run id, by the layout of its stage (see :data:`RUN_LAYOUTS`).

    E.g. ``distill/trained/el2n-hard/f0.25/T4-a0.5/s1`` -> stage, teacher,
    method, fraction, temperature, alpha, seed. (Parsed once per id: planning a
    study of thousands of runs parses each many times; the dict is the caller's.)
    """
    return dict(_parse(run))


@lru_cache(maxsize=None)
def _parse(run: str) -> dict[str, Any]:
    stage, *parts = run.split("/")
    layouts = _layouts(stage)
    layout = next((lay for lay in layouts if len(lay) == len(parts)), None)
    if layout is None:
        shapes = " or ".join(f"{stage}/{'/'.join(lay)}" for lay in layouts) or "<stage>/..."
        raise ValueError(f"run id {run!r} does not match {shapes}")
    out: dict[str, Any] = {"stage": stage}
    for field, part in zip(layout, parts):
        match = _FOLDER_REGEX[field].fullmatch(part)
        if match is None:
            raise ValueError(f"run id {run!r}: {part!r} is not a {field}")
        for key, value in match.groupdict().items():
            out[key] = _TYPES.get(key, str)(value)
    return out


def layout_regex(stage: str, layout: int = 0) -> str:
    """The regex of every run id of one layout of a stage (a rule's wildcard constraint)."""
    return re.sub(r"\{(\w+)\}", lambda m: f"({WILDCARDS[m[1]]})", pattern(stage, layout))


def dumps(spec: Mapping[str, Any]) -> str:
    """Canonical JSON of a spec (stable key order, so unchanged specs compare equal)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def digest(spec: Mapping[str, Any]) -> str:
    """A short key of a spec, from its canonical JSON: what a job and its checkpoint are keyed on."""
    return hashlib.sha256(dumps(spec).encode()).hexdigest()[:16]
