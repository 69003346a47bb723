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
  (:func:`dies_with_parent`), and a run removes the temporary folders that killed runs left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import PipelineError, clip

LOCK_FILE = ".mobiledeploy.lock"
SHARED_LOCK_ENV = "MOBILEDEPLOY_RUN_LOCK_FD"  # set by --workers for its workers: the lock they share
CHILD_PREFIX = "mobiledeploy-litert-"  # temporary folders: <prefix><pid of the run>-<random>
ALIVE = ".alive"  # inside such a folder: locked by its run while it lives
PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwound like Ctrl-C, reported with exit status 143."""


@contextlib.contextmanager
def project_lock(folder: Path = Path(".")) -> Iterator[int]:
    """Hold the project folder's lock for the block (yielding its file descriptor), or stop naming the
    run that holds it. A worker started by ``--workers`` shares its launcher's lock instead."""
    path = folder / LOCK_FILE
    if SHARED_LOCK_ENV in os.environ:
        yield shared_lock(path, os.environ[SHARED_LOCK_ENV])
        return
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except PermissionError:  # a read-only checkout or another user's lock file: flock works read-only too
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise PipelineError(f"cannot open the run lock {path}: {exc.strerror or exc} (a symlink or a special "
                            "file there is refused; remove it)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PipelineError(f"the run lock {path} is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PipelineError(f"another mobiledeploy run (PID {holder}) is working in this project folder; "
                                "wait for it to finish or stop it, then run this again") from None
        except OSError as exc:
            raise PipelineError(f"cannot take the run lock {path}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):  # the PID is for the message above only
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def shared_lock(path: Path, text: str) -> int:
    """The descriptor ``text`` names, inherited from the launcher of this worker, if it is this project's
    lock file and holds its lock (taking a lock already held through the same open file succeeds, as
    only the launcher and its workers share it); otherwise one line."""
    refused = PipelineError(f"{SHARED_LOCK_ENV}={clip(text, 20)} does not hold the run lock of this project ({path}); "
                            "it is set by `--workers` for the workers it starts: unset it")
    try:
        fd = int(text)
        held, there = os.fstat(fd), os.lstat(path)
        if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino) or not stat.S_ISREG(held.st_mode):
            raise refused
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ValueError, OSError):
        raise refused from None
    return fd


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only)."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
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


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the sweep below still removes what a killed run left


_PRCTL = _prctl()  # looked up here, in the parent: a forked child of a threaded process should not load libraries


def dies_with_parent():
    """A ``preexec_fn``: the child gets SIGKILL from the kernel when this process dies (Linux), and
    exits at once if this process died before the child could ask for that."""
    parent = os.getpid()

    def arrange() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arrange


@contextlib.contextmanager
def child_tempdir() -> Iterator[str]:
    """A temporary folder for a child's inputs and outputs, named after this process and holding a
    locked ``.alive`` file for as long as the block runs: the proof :func:`sweep_leftovers` asks for."""
    folder = tempfile.mkdtemp(prefix=f"{CHILD_PREFIX}{os.getpid()}-")
    alive = os.open(os.path.join(folder, ALIVE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(alive, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(alive)
        shutil.rmtree(folder, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    """True if the run that made ``folder`` is gone: its ``.alive`` lock can be taken (the kernel frees
    it when a process dies, whatever its PID namespace), or it never took one and is over a minute old."""
    try:
        fd = os.open(folder / ALIVE, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return time.time() - folder.lstat().st_mtime > 60
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep_leftovers() -> list[Path]:
    """Remove this user's temporary folders of runs that are gone; returns what was removed."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{CHILD_PREFIX}*"):
        try:
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or not _abandoned(folder):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
