"""Resumable training: periodic checkpoints, and a clean stop on the signals of a scheduler.

A :class:`Checkpointing` names one file outside the job's outputs (the workflow
deletes a failed job's outputs, never this file). The training loop saves its whole
state there every ``every`` epochs, and mid-epoch when SLURM announces a time limit
or preemption (SIGTERM, SIGUSR1); then it raises :class:`Preempted`, so the job exits
non-zero and the scheduler or Snakemake's retries run it again. A rerun loads the
checkpoint and goes on from it: on the CPU it ends with exactly the weights and
metrics of an uninterrupted run, since every source of randomness is restored with
the weights.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from workflow import storage
from workflow.runs import digest

# What a scheduler sends before it kills a job: SIGTERM at preemption and at the time
# limit (then SIGKILL after KillWait), SIGUSR1 when a job asks for a warning
# (``--signal=USR1@<seconds>``).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# The layout of a saved training state; raised whenever an engine or the loop saves
# something else, so that no job resumes from a state it cannot read.
FORMAT = 2


class Preempted(SystemExit):
    """Training stopped on a signal after saving its checkpoint; the job should exit non-zero.

    A ``SystemExit`` so that an uncaught one ends the process with ``128 + signal``,
    the status a shell gives a process killed by that signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} after saving a checkpoint; run again to resume"


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a training run saves its state.

    ``key`` identifies what the run computes (e.g. a hash of its spec): a checkpoint
    left by a run with another key is not resumed from, so a changed config trains
    afresh instead of continuing someone else's run.
    """

    path: Path
    every: int = 1
    key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 epoch, got {self.every}")

    @staticmethod
    def key_of(spec: Mapping[str, Any]) -> str:
        """A short key of a run's spec and of the layout of saved states (:data:`FORMAT`), from
        their canonical JSON (:func:`workflow.runs.digest`)."""
        return digest({"spec": spec, "format": FORMAT})

    @classmethod
    def of_spec(cls, path: str | Path | None, spec: Mapping[str, Any], every: int = 1) -> Checkpointing | None:
        """Checkpoints at ``path`` of the job described by ``spec`` (None without a path)."""
        return None if path is None else cls(Path(path), every=every, key=cls.key_of(spec))

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none.

        A checkpoint of other work (another key: a changed spec, parent, input or
        engine) or one that cannot be read is never resumed into: it is deleted, with a
        line on stderr (the job's log), and training starts afresh.
        """
        if not self.path.exists():
            return None
        try:
            state = storage.load_torch(self.path)
            found = state.get("key")
        except Exception as err:  # noqa: BLE001 (a half-written or foreign file: start afresh)
            state, found = None, f"unreadable ({type(err).__name__}: {err})"
        if state is not None and found == self.key:
            return state
        print(f"discarding checkpoint {self.path}: it is of other work (key {found}, this job's {self.key}); "
              "training starts afresh", file=sys.stderr, flush=True)
        self.remove()
        return None

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically: a kill during the write leaves the previous checkpoint."""
        storage.save_torch({**state, "key": self.key}, self.path)

    def remove(self) -> None:
        """Delete the checkpoint once the run's outputs are written."""
        self.path.unlink(missing_ok=True)


def stopped_by(state: Mapping[str, Any]) -> str:
    """What stopped the run that saved ``state``: the signal it saved on, or ``kill``
    when the state is a periodic checkpoint and the run died without warning."""
    return signal.Signals(state["signal"]).name if state.get("signal") else "kill"


def rng_states() -> dict[str, Any]:
    """The global random states training may draw from (dropout, numpy)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], int | None]]:
    """Catch :data:`STOP_SIGNALS` for the duration; yields a function that returns the
    signal received so far, or None. The previous handlers are restored afterwards.

    Signals can only be caught in the main thread; elsewhere nothing is caught.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

