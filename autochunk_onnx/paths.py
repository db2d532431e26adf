"""Paths the tool writes (the model, its data file, reports, plots, saved inputs), checked before any work.

Why: the model is written by rename, which replaces whatever has the output's name - a device,
a FIFO, a socket or a symlink to one (`/dev/null`, `/dev/stdout` as root). So only a missing
path or an existing regular file (or a symlink to one) may be written; anything else, and `-`
(this tool never writes a model to stdout), is refused with exit 2 before anything runs.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import BadInputError

_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


_SYSTEM = ("/dev", "/proc", "/sys")  # devices, streams, kernel files: never ours to replace (/dev/shm is)


def _system(path: str) -> bool:
    if path == "/dev/shm" or path.startswith("/dev/shm/"):
        return False
    return any(path == d or path.startswith(d + os.sep) for d in _SYSTEM)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def check_writable_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse `-` and an existing path that is not a regular file (after symlinks); check the
    folder can take a new file. Returns the path. Raises BadInputError (exit 2)."""
    text = os.fspath(path)
    if text in ("-", ""):
        raise BadInputError(f"{what} {text!r}: give a file path (writing to stdout is not supported)")
    p = Path(text)
    for where in (os.path.abspath(p), os.path.realpath(p)):
        # /dev/stdout -> /proc/self/fd/1 may lead to a regular file, but a rename onto it replaces the symlink
        if _system(where):
            raise BadInputError(f"{what} {p} is a system path ({where}); give a file path")
    if os.path.lexists(p):
        try:
            st = os.stat(p)
        except OSError:
            raise BadInputError(f"{what} {p} is a broken symlink; refusing to replace it") from None
        if not stat.S_ISREG(st.st_mode):
            link = " (a symlink to one)" if p.is_symlink() else ""
            raise BadInputError(f"{what} {p} is a {_kind(st.st_mode)}{link}, not a regular file; refusing to replace it")
    _check_folder(p, what)
    return p


def _check_folder(p: Path, what: str) -> None:
    folder = p.parent if str(p.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BadInputError(f"{what} folder {folder} is not writable ({probe} is a file, not a folder)")
    try:  # a real write: os.access says yes to root on read-only mounts
        fd, tmp = tempfile.mkstemp(prefix=".autochunk-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError:
        raise BadInputError(f"{what} folder {folder} is not writable") from None


def check_model_output(src: str | os.PathLike | None, out: str | os.PathLike, force: bool = False,
                       keep_failed: bool = False) -> Path:
    """The model OUTPUT, its data file (OUTPUT.data) and, with --keep-failed, OUTPUT.failed.onnx
    (and its data): each must be writable as a regular file; OUTPUT may be the input only with force."""
    o = check_writable_file(out, "output")
    check_writable_file(o.with_name(o.name + ".data"), "output data file")
    if keep_failed:
        failed = check_writable_file(o.with_name(o.name + ".failed.onnx"), "--keep-failed file")
        check_writable_file(failed.with_name(failed.name + ".data"), "--keep-failed data file")
    s = Path(src) if src is not None else None  # None: the model came as a ModelProto
    if s is not None and s.exists() and o.exists() and os.path.samefile(s, o) and not force:
        raise BadInputError(f"output {o} is the input model; refusing to overwrite it (use --force)")
    return o
