"""Writing outputs so that a reader never sees half of one, a failed write leaves nothing
behind, and two processes never write the same output.

Every output is written under a temporary name beside it (`.tmp-<pid>-<name>`, hidden, with
the name's suffix kept so writers that pick a format by extension still work) and renamed
over it when complete. A write that fails (a full disk, no permission) removes its temporary
and raises `WriteError`, one line naming the output. `claim` locks an output for one process
and removes temporaries that a killed earlier writer left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


class WriteError(OSError):
    """An output could not be written; the message names it and says why, on one line."""


class OutputBusyError(RuntimeError):
    """Another process holds the output."""


def temporary_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


def remove(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def describe_write_failure(path: str | Path, error: BaseException) -> WriteError:
    """One line for a failed write: the output, the reason and, when the disk is the cause,
    how much room is left."""
    code = getattr(error, "errno", None)
    if code is None:  # safetensors and torch.save wrap the OS error in their own message
        text = str(error)
        code = next((c for name, c in _ERRNO_WORDS if name in text), None)
    reason = os.strerror(code) if code else " ".join(str(error).split())[:200]
    if code in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(Path(path).parent).free
            reason += f"; {free / 2**20:.0f} MiB free on its disk"
    error = WriteError(f"{path}: cannot write ({reason}); nothing was left behind")
    error.errno = code or errno.EIO
    return error


_ERRNO_WORDS = [
    ("No space left", errno.ENOSPC),
    ("File too large", errno.EFBIG),
    ("Disk quota", errno.EDQUOT),
    ("Permission denied", errno.EACCES),
    ("Read-only file system", errno.EROFS),
]


def _is_write_failure(error: BaseException) -> bool:
    if isinstance(error, OSError) and not isinstance(error, WriteError):
        return True
    name = type(error).__name__
    # safetensors' SafetensorError; torch.save's RuntimeError from its zip writer
    return name == "SafetensorError" or (
        isinstance(error, RuntimeError)
        and ("inline_container" in str(error) or "PytorchStreamWriter" in str(error))
    )


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (file or directory) to write `path` under; rename it over
    `path` when the block completes, remove it when the block fails. Write failures become
    `WriteError` naming `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            remove(path)
        os.replace(tmp, path)
    except BaseException as error:
        remove(tmp)
        if _is_write_failure(error):
            raise describe_write_failure(path, error) from error
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def remove_stale_temporaries(directory: Path, output: str = "") -> list[Path]:
    """Remove the temporaries in `directory` that earlier writers left: all of them, or those
    of the output named `output` and of its companions (`shard.h5` -> `shard.index.parquet`).
    Call it only while holding the output's `claim`."""
    if not directory.is_dir():
        return []
    name, stem = glob.escape(output), glob.escape(Path(output).stem)
    patterns = (
        [f"{TMP_PREFIX}*-{name}", f"{TMP_PREFIX}*-{stem}.*"] if output else [f"{TMP_PREFIX}*"]
    )
    stale = sorted({p for pattern in patterns for p in directory.glob(pattern)})
    for p in stale:
        remove(p)
    return stale


@contextlib.contextmanager
def claim(path: str | Path) -> Iterator[None]:
    """Hold `path` (an output file or run directory) for this process: a second process
    claiming it fails at once naming the holder. Temporaries of `path` that a killed earlier
    writer left beside it are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise describe_write_failure(lock, error) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"{path}: another process (pid {holder}) is writing it; wait for it to end "
                "or choose another output"
            ) from None
        # the previous holder may have removed the lock file between our open and flock
        if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        remove_stale_temporaries(path.parent, path.name)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
