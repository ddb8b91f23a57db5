"""The run-level cache: a job computes only the results not already stored for exactly
what they would be computed from.

A pack (or an analysis batch) is the unit of execution; a run (or a store) is the
unit of caching. Every result records its *key* (:func:`key`): the digest of what
determines it, its spec or settings, and the :func:`identity` of every file it reads
(its task's data, its parent's model, its teacher, its scores, the activation stores
it compares). A job that finds a result stored under its key leaves it as it is, so
a pack that gains a member (a seed appended to the study) trains only that member,
and a batch that gains a store computes only that store.

The identity of a file is a digest of its content; that of a Zarr store, of its
metadata, which carries the store's own key and its creation time. A parent that is
retrained, even with an unchanged spec, thus gives its children new keys: they are
retrained too. This module imports torch only to read a model file's key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from workflow.runs import digest

PathLike = str | os.PathLike

_identities: dict[tuple[str, int, int], str] = {}


def identity(path: PathLike) -> str:
    """A digest of what a file holds: its bytes, or for a Zarr store its metadata
    (every ``zarr.json``: attributes, the key it was written for, array layouts).

    Remembered per path, size and modification time within a process.
    """
    p = Path(path)
    stat = p.stat()
    memo = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if memo not in _identities:
        h = hashlib.sha256()
        if p.is_dir():
            for meta in sorted(p.rglob("zarr.json")):
                h.update(str(meta.relative_to(p)).encode() + b"\0" + meta.read_bytes() + b"\0")
        else:
            with p.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        _identities[memo] = h.hexdigest()[:16]
    return _identities[memo]


def key(what: Mapping[str, Any], inputs: Mapping[str, PathLike | None]) -> str:
    """The key of a result: ``what`` determines it (a spec, an analysis's settings), computed
    from the files ``inputs`` (role -> path; None for a role it does not have)."""
    return digest({"what": what, "inputs": {role: identity(p) for role, p in sorted(inputs.items()) if p}})


def stored_key(path: PathLike) -> str | None:
    """The key a result was written for (see :func:`workflow.storage.stamp`), or None when
    it is missing, unreadable or has none."""
    p = Path(path)
    try:
        if p.is_dir():
            return json.loads((p / "zarr.json").read_text()).get("attributes", {}).get("key")
        if p.is_file():
            from workflow import storage

            return storage.load_torch(p).get("provenance", {}).get("key")
    except Exception:  # a result that cannot be read is not stored
        return None
    return None


def is_stored(paths: Iterable[PathLike], wanted: str) -> bool:
    """Whether every one of a result's files is stored for the key ``wanted``."""
    return all(stored_key(p) == wanted for p in paths)


def needed(paths: Iterable[PathLike], wanted: str, recompute: bool = False) -> bool:
    """Whether a job must compute the result stored at ``paths`` under the key ``wanted``
    (always with ``recompute``); says so on stdout when it need not."""
    paths = list(paths)
    if recompute or not is_stored(paths, wanted):
        return True
    print(f"stored for its key {wanted}: {', '.join(map(str, paths))}", flush=True)
    return False
