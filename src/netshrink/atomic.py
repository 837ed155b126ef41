"""Atomic output: a file or folder appears complete or not at all.

Everything is first written to a hidden temporary next to the destination (same
folder, hence same file system) and then renamed onto it, so a crash, a full disk
or an exception never leaves a half-written result behind.

An existing destination is never replaced unless the caller passes
``overwrite=True``; without it :class:`~netshrink.errors.OutputExistsError` is
raised. With ``overwrite=True`` a file is replaced by one atomic ``os.replace``;
a folder is first renamed aside, the new one renamed into place and only then the
old one deleted (it is restored if the swap fails).

A process killed outright (SIGKILL, power loss) cannot delete its temporary. Each
temporary's name carries its writer's process id (``.NAME.PID.XXXX.tmp``), and the
next write to the same destination deletes the temporaries of writers that are no
longer running (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from netshrink.errors import InvalidInputError, OutputExistsError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_directory", "remove_stale"]


def _exists_error(path: Path) -> OutputExistsError:
    kind = "folder" if path.is_dir() else "file"
    return OutputExistsError(
        f"{path} already exists ({kind}); refusing to overwrite it. "
        "Choose another output path, delete it, or pass overwrite=True "
        "(--force on the command line)."
    )


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise InvalidInputError(
            f"cannot write {path}: the folder {parent} does not exist; create it first."
        )


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def remove_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries left beside ``path`` by writers that were killed; return them."""
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f".{_glob_escape(path.name)}.*.*.tmp"):
        pid = leftover.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable on POSIX; harmless to skip where unsupported.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed to disk and
    then renamed onto ``path``. Raises OutputExistsError if ``path`` exists and
    ``overwrite`` is False (checked race-free with a hard link where the file
    system supports it); InvalidInputError if the parent folder is missing or
    ``path`` is an existing folder.
    """
    path = Path(path)
    _check_parent(path)
    if path.is_dir():
        raise InvalidInputError(f"cannot write the file {path}: a folder of that name exists.")
    if path.exists() and not overwrite:
        raise _exists_error(path)
    remove_stale(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: no clobbering
            except FileExistsError:
                raise _exists_error(path) from None
            except OSError:
                # No hard links on this file system: fall back to check-then-rename.
                if path.exists():
                    raise _exists_error(path) from None
                os.replace(tmp, path)
            else:
                tmp.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, overwrite: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder atomically: ``with atomic_directory(out) as tmp: ...``.

    Yields a fresh temporary folder next to ``path``; fill it inside the block.
    When the block ends normally the temporary folder is renamed onto ``path``;
    when it raises, the temporary folder is deleted and the exception propagates,
    so ``path`` never holds a partial result.

    Raises OutputExistsError before the block runs (and again at the end, should
    ``path`` appear meanwhile) if ``path`` exists and ``overwrite`` is False.
    With ``overwrite=True`` an existing file or folder at ``path`` is replaced
    only once the new folder is complete.
    """
    path = Path(path)
    _check_parent(path)
    if path.exists() and not overwrite:
        raise _exists_error(path)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not (path.exists() or path.is_symlink()):
            try:
                # POSIX rename replaces an *empty* folder created in the instant since
                # the check above; a non-empty one makes it fail (handled below).
                os.rename(tmp, path)
            except OSError:
                if path.exists():
                    raise _exists_error(path) from None
                raise
        elif not overwrite:
            raise _exists_error(path)
        else:
            _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def _swap_into_place(new: Path, path: Path) -> None:
    """Replace the existing ``path`` (file or folder) by the folder ``new``."""
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    old = aside / "old"
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)  # put the previous result back
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
