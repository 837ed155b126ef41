"""On-disk cache of trained zoo weights: safetensors + JSON, no pickle.

Layout, under :func:`cache_dir` (``$NETSHRINK_CACHE``, else
``$XDG_CACHE_HOME/netshrink`` or ``~/.cache/netshrink``)::

    zoo/<name>-<key>.safetensors   the state dict (tensors only)
    zoo/<name>-<key>.json          metadata: recipe, architecture, test accuracy, timing, versions
    zoo/<name>-<key>.lock          empty; serialises training of one entry across processes

``<key>`` is a short hash of the model name, the recipe class and all recipe
fields (architecture and training), so changing any of them trains afresh
instead of loading stale weights. Both files are written atomically, the JSON
last: an entry counts as cached only when both exist. An entry whose files exist
but cannot be read or do not fit the architecture raises
:class:`CorruptCacheError`, which names the files and suggests
``netshrink train NAME --force``; it is never silently retrained, because
training takes minutes and the user should know why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.atomic import atomic_write_bytes, atomic_write_text
from netshrink.errors import InvalidInputError
from netshrink.zoo.training import TrainingRecipe

__all__ = ["CACHE_FORMAT", "CorruptCacheError", "cache_dir", "cache_key", "cache_paths", "read", "write", "lock"]

#: Bump when the cache layout changes; part of every key.
CACHE_FORMAT = 1


class CorruptCacheError(InvalidInputError):
    """Cached zoo weights or metadata exist but cannot be used."""


def cache_dir() -> Path:
    """Root of netshrink's cache: ``$NETSHRINK_CACHE``, ``$XDG_CACHE_HOME/netshrink`` or ``~/.cache/netshrink``."""
    env = os.environ.get("NETSHRINK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "netshrink"


def cache_key(name: str, recipe: TrainingRecipe) -> str:
    """12 hex digits identifying (name, recipe class, every recipe field, cache format)."""
    identity = {
        "format": CACHE_FORMAT,
        "name": name,
        "recipe_class": type(recipe).__qualname__,
        "recipe": recipe.as_dict(),
        "architecture": recipe.architecture(),
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_paths(name: str, recipe: TrainingRecipe) -> tuple[Path, Path]:
    """(weights ``.safetensors``, metadata ``.json``) paths of a zoo entry."""
    stem = f"{name}-{cache_key(name, recipe)}"
    folder = cache_dir() / "zoo"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


@contextlib.contextmanager
def lock(name: str, recipe: TrainingRecipe) -> Iterator[None]:
    """Exclusive inter-process lock on one cache entry (a no-op where fcntl is missing)."""
    weights, _ = cache_paths(name, recipe)
    weights.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(weights.with_suffix(".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _corrupt(name: str, path: Path, problem: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"the cached {name!r} model in {path} is unusable: {problem}. "
        f"Retrain it with `netshrink train {name} --force` (or netshrink.zoo.train({name!r}, force=True)), "
        "or delete the file."
    )


def read(name: str, recipe: TrainingRecipe, model: nn.Module) -> dict[str, Any] | None:
    """Load cached weights into ``model`` and return the metadata; None when not cached.

    Raises CorruptCacheError when the files exist but are unreadable, belong to
    another key, hold non-finite values or do not match ``model``'s state dict.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = cache_paths(name, recipe)
    if not (weights.is_file() and meta_path.is_file()):
        return None
    key = cache_key(name, recipe)
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(name, meta_path, f"the metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("cache_key") != key:
        raise _corrupt(name, meta_path, f"the metadata does not carry cache key {key}")
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(name, weights, f"the safetensors file cannot be read ({exc})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise _corrupt(name, weights, f"tensors {bad} hold NaN or Inf")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise _corrupt(name, weights, f"the weights do not fit the architecture ({' '.join(first[:3])})") from None
    return metadata


def write(name: str, recipe: TrainingRecipe, model: nn.Module, metadata: dict[str, Any]) -> tuple[Path, Path]:
    """Store ``model``'s state dict and ``metadata`` (JSON-able) atomically; returns the two paths.

    Replaces an existing entry of the same key (used by forced retraining).
    """
    from safetensors.torch import save

    weights, meta_path = cache_paths(name, recipe)
    weights.parent.mkdir(parents=True, exist_ok=True)
    key = cache_key(name, recipe)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"netshrink_name": name, "netshrink_cache_key": key})
    # Metadata last: its presence marks a complete entry. Remove it first so an
    # interrupted replacement never pairs new weights with old metadata.
    with contextlib.suppress(FileNotFoundError):
        meta_path.unlink()
    atomic_write_bytes(weights, blob, overwrite=True)
    atomic_write_text(meta_path, json.dumps({**metadata, "cache_key": key}, indent=2) + "\n", overwrite=True)
    return weights, meta_path
