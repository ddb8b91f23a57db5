"""All reading and writing of results: Zarr stores through xarray, model files, figures.

Every writer here is atomic: it writes to a hidden sibling path and renames it into
place only once the write is complete, so a job killed half-way leaves either
nothing or a finished result, never a half store that looks finished.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import functools
import glob
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import xarray as xr

from workflow import __version__

PathLike = str | os.PathLike

# The cache key of what is being written (see workflow.cache): set by the job around the
# writes of one result, so the science that builds the result's attributes needs no part in it.
_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("key", default=None)


@contextlib.contextmanager
def stamp(key: str) -> Iterator[None]:
    """Every result written inside records ``key`` in its provenance (:func:`provenance`):
    a later job finds it stored for that key and leaves it (:mod:`workflow.cache`)."""
    token = _KEY.set(key)
    try:
        yield
    finally:
        _KEY.reset(token)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    Works for files and directories (Zarr stores). On error the temporary is
    removed and ``path`` is left as it was. Temporaries of ``path`` left by a killed
    writer (SIGKILL runs no clean-up) are removed first: one job owns each output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# The libraries whose versions every result records beside the project's own.
RECORDED_PACKAGES = ("dlsci", "torch", "xarray", "zarr", "numpy", "snakemake")


def _git(*args: str) -> str | None:
    """``git <args>`` in the checkout this package was loaded from, or None outside one."""
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """What code made a result: the git commit of the package's checkout and whether its
    tree differed from it (tracked changes or untracked files), and the installed
    versions of :data:`RECORDED_PACKAGES`. Read once per process."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "git_commit": commit or "unknown",  # e.g. an installed wheel, not a checkout
        "git_dirty": bool(status) if commit else "unknown",
        "versions": versions,
    }


def provenance(
    spec: Mapping[str, Any] | None = None,
    *,
    parent: str | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Attributes that say where a result came from.

    ``spec`` is the resolved configuration of the run, stored as JSON text so that
    any Zarr reader can show it. Inside :func:`stamp`, ``key`` is the cache key.
    """
    attrs: dict[str, Any] = {
        "package": "dlsci",
        "package_version": __version__,
        **code_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),  # a rewrite is a new result
        "host": socket.gethostname(),
    }
    if spec is not None:
        attrs["config"] = json.dumps(spec, sort_keys=True)
    if parent is not None:
        attrs["parent"] = parent
    if seed is not None:
        attrs["seed"] = int(seed)
    if device is not None:
        attrs["device"] = device
    if _KEY.get() is not None:
        attrs["key"] = _KEY.get()
    return attrs


def write_dataset(ds: xr.Dataset, path: PathLike, attrs: Mapping[str, Any] | None = None) -> Path:
    """Write ``ds`` as a Zarr store at ``path``, atomically, with ``attrs`` added.

    Chunking follows the dataset's own chunks (``ds.chunk({...})``) when it has any.
    Metadata is consolidated so that a plain ``xr.open_zarr(path)`` opens it fast
    and without warnings.
    """
    ds = _variable_length_strings(ds.copy())
    ds.attrs.update(attrs or {})
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Consolidated metadata is an extension of Zarr v3 that zarr-python and
        # xarray both read; the warning is about other implementations.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds.to_zarr(tmp, mode="w", consolidated=True)
    return Path(path)


def _variable_length_strings(ds: xr.Dataset) -> xr.Dataset:
    """Store text (method names, layer names) as variable-length UTF-8.

    Numpy's fixed-width unicode has no Zarr v3 specification (zarr warns that other
    readers may not open it); variable-length UTF-8 strings do.
    """
    for name, var in ds.variables.items():
        if var.dtype.kind == "U":
            ds[name] = var.astype(object)
    return ds


def open_dataset(path: PathLike, *, load: bool = True) -> xr.Dataset:
    """Open a store written by :func:`write_dataset` (loaded into memory by default)."""
    ds = xr.open_zarr(path, consolidated=True)
    return ds.load() if load else ds


def save_torch(obj: Any, path: PathLike) -> Path:
    """``torch.save`` written atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_torch(path: PathLike, map_location: str = "cpu") -> Any:
    """Load a file written by :func:`save_torch` (our own files, so full unpickling)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


def write_json(obj: Any, path: PathLike) -> Path:
    """JSON text written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return Path(path)


def save_figure(fig: Any, path: PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix of ``path``. The
    same figure gives the same bytes: a PDF carries no creation date."""
    final = Path(path)
    fmt = final.suffix.lstrip(".")
    metadata = {"CreationDate": None} if fmt == "pdf" else None
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=dpi, metadata=metadata)
    return final
