"""Publish a model directory so that a reader finds the old version or the new one, never neither.

``out_dir`` (``models/current``) becomes a symlink to a complete, fsync'd directory in
``.<name>.versions/`` beside it, and a new version is published by renaming a new symlink over
it: one atomic step on POSIX. The version it replaced is kept for rollback; older ones, and what
a killed writer left, are deleted. A plain directory at ``out_dir`` (the model committed in git)
is moved among the versions on the first publish, in one exchange on Linux (``renameat2``);
elsewhere that one conversion leaves a moment with no model.

One writer at a time: a lock on the versions directory makes a second one wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType

BUILD_PREFIX = ".build-"


def versions_dir(out_dir: Path) -> Path:
    """Where the published versions of ``out_dir`` live: ``models/.current.versions``."""
    return out_dir.with_name(f".{out_dir.name}.versions")


class Draft:
    """A version being written: its files stay in a private build directory until :meth:`publish`.

    Leaving the ``with`` block unpublished (an error) discards them; ``out_dir`` is untouched.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.versions = versions_dir(self.out_dir)
        self.path = self.versions  # set to the build directory on entry
        self._lock = -1

    def __enter__(self) -> Draft:
        self.versions.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.versions, os.O_RDONLY)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=self.versions))
        self.path.chmod(0o755)  # mkdtemp makes it owner-only; a non-root server must read it
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self.path.name.startswith(BUILD_PREFIX):  # not published
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            os.close(self._lock)

    def put(self, rel: str, data: bytes) -> None:
        """Write one file, flushed to disk: after the swap it must survive a power cut too."""
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def publish(self, version: str) -> Path:
        """Make ``out_dir`` show these files; returns the versioned directory they now live in."""
        for directory in sorted({self.path, *(p for p in self.path.rglob("*") if p.is_dir())}, reverse=True):
            _fsync_dir(directory)
        final = self.versions / _free_name(self.versions, version)
        os.rename(self.path, final)
        self.path = final
        _fsync_dir(self.versions)
        previous = _point(self.out_dir, final)
        _prune(self.versions, keep={final.name, previous})
        return final


def place(directory: Path, rel: str, data: bytes) -> Path:
    """Add one file to a model directory in one step: a reader finds the old file (or none) or
    the new one, whole. ``directory`` is a resolved published version (or a plain directory);
    when it is one of a versions directory, the writers' lock keeps a publish from pruning it
    meanwhile."""
    target = directory / rel
    versions = directory.parent
    lock = os.open(versions, os.O_RDONLY) if versions.name.endswith(".versions") else -1
    try:
        if lock >= 0:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the model directory is gone", str(directory))
        fd, temp = tempfile.mkstemp(prefix=f".{rel}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(temp, 0o644)  # mkstemp makes it owner-only; a non-root server must read it
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_dir(directory)
    finally:
        if lock >= 0:
            os.close(lock)
    return target


def _point(out_dir: Path, target: Path) -> str | None:
    """Swap ``out_dir`` for a symlink to ``target``; returns the version it showed before, if kept."""
    link = out_dir.with_name(f".{out_dir.name}.next")
    _discard(link)  # what a killed writer left
    os.symlink(os.path.relpath(target, out_dir.parent), link)  # relative: the tree may be copied
    versions = target.parent
    if out_dir.is_dir() and not out_dir.is_symlink():  # the committed model: keep it for rollback
        previous: str | None = _free_name(versions, _version_of(out_dir))
        if _exchange(link, out_dir):
            os.rename(link, versions / str(previous))  # ``link`` now names the old directory
        else:
            os.rename(out_dir, versions / str(previous))
            os.replace(link, out_dir)
    else:
        previous = _shown(out_dir, versions)
        os.replace(link, out_dir)
    _fsync_dir(out_dir.parent)
    return previous


def _shown(out_dir: Path, versions: Path) -> str | None:
    """The name of the version ``out_dir`` links to, if it is one of ``versions``."""
    if not out_dir.is_symlink():
        return None
    target = out_dir.parent / os.readlink(out_dir)
    return target.name if target.parent.resolve() == versions.resolve() else None


def _version_of(directory: Path) -> str:
    try:
        return str(json.loads((directory / "metadata.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "previous"


def _free_name(versions: Path, version: str) -> str:
    """A directory name for ``version`` not yet taken (retraining the same day can repeat one)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", version).lstrip(".") or "version"
    name, n = base, 2
    while (versions / name).exists() or (versions / name).is_symlink():
        name, n = f"{base}-{n}", n + 1
    return name


def _prune(versions: Path, keep: set[str | None]) -> None:
    for entry in versions.iterdir():
        if entry.name not in keep:
            _discard(entry)


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where there is none."""
    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):  # an old kernel, or a filesystem that cannot
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
