"""What every stage command runs inside: one lock per project folder, SIGTERM handled like Ctrl-C,
and the leftovers of killed runs swept away.

- **Lock**: a stage that writes takes ``.mobiledeploy.lock`` in the project folder (``fcntl.flock``,
  released by the kernel when the process ends, even on SIGKILL). A second run stops at once with a
  line naming the PID that holds it, so it can never adopt the resume state of a live run or mix its
  model with another's.
- **Signals**: SIGTERM (what CI sends on cancel) raises :class:`Terminated`, a ``KeyboardInterrupt``,
  so context managers remove temporary files and ``subprocess`` stops children as for Ctrl-C; the
  command exits 143 (Ctrl-C: 130).
- **Children**: LiteRT runs in child processes that get SIGKILL when their parent dies
  (:func:`die_with_parent`), and a run removes the temporary folders that killed runs left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import PipelineError

LOCK_FILE = ".mobiledeploy.lock"
CHILD_PREFIX = "mobiledeploy-litert-"  # temporary folders: <prefix><pid of the run>-<random>
PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwound like Ctrl-C, reported with exit status 143."""


@contextlib.contextmanager
def project_lock(folder: Path = Path(".")) -> Iterator[None]:
    """Hold the project folder's lock for the block, or stop naming the run that holds it."""
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PipelineError(f"cannot create the run lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PipelineError(f"another mobiledeploy run (PID {holder}) is working in this project folder; "
                                "wait for it to finish or stop it, then run this again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> None:
    """``preexec_fn`` for a child process: the kernel sends it SIGKILL when its parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the sweep below still removes what a killed run left


def child_tempdir() -> tempfile.TemporaryDirectory:
    """A temporary folder for a child's inputs and outputs, named after this process."""
    return tempfile.TemporaryDirectory(prefix=f"{CHILD_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[Path]:
    """Remove the temporary folders of runs that are no longer alive; returns what was removed."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{CHILD_PREFIX}*"):
        pid = folder.name.removeprefix(CHILD_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
