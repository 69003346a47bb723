"""What every stage command runs inside: one lock per project folder, SIGTERM handled like Ctrl-C,
and the leftovers of killed runs swept away.

- **Lock**: a stage that writes takes ``.mobiledeploy.lock`` in the project folder (``fcntl.flock``,
  released by the kernel when the process ends, even on SIGKILL). A second run stops at once with a
  line naming the PID that holds it, so it can never adopt the resume state of a live run or mix its
  model with another's.
- **Signals**: SIGTERM (what CI sends on cancel) raises :class:`Terminated`, a ``KeyboardInterrupt``,
  so context managers remove temporary files and ``subprocess`` stops children as for Ctrl-C; the
  command exits 143 (Ctrl-C: 130).
- **Children**: LiteRT runs in a child process (:func:`run_child`; one per command, :func:`session`)
  that gets SIGKILL when its parent dies (:func:`dies_with_parent`), and a run removes the temporary
  folders that killed runs left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
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


class JobError(Exception):
    """Raised by a job in the child for a file LiteRT cannot run: its message becomes the PipelineError's."""


class _ChildFailed(Exception):
    """The child died, or answered garbage, on a job (its message: the PipelineError's, if it is the file's)."""


class _Child:
    """The child process that runs the jobs of a :func:`session`, one after another: it is started at the
    first job, and again after a crash or a timeout ended it. Jobs go in on its stdin, one JSON line each;
    each answer comes back as one JSON line on a pipe of its own (anything native code prints goes to
    stderr, kept in a file for the message of a failure)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.answers, write_end = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(write_end)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, pass_fds=(write_end,),
                                     preexec_fn=dies_with_parent())
        os.close(write_end)

    def run(self, module: str, job: dict, path: Path, timeout: float) -> dict:
        """``module.work(job)``'s answer. A child that dies (or answers garbage) on a job after earlier
        ones may be dying of them (a delayed crash, a heap an earlier file damaged): the job runs again
        in a new child, and only a failure there is this file's."""
        if self.proc is not None and self.proc.poll() is not None:  # gone between jobs: not this file's doing
            self.close()
        fresh = self.proc is None
        try:
            answer = self._run_once(module, job, path, timeout)
        except _ChildFailed as failed:
            if fresh:
                raise PipelineError(str(failed)) from None
            return self.run(module, job, path, timeout)  # in a new child: a failure there is the file's
        if "error" in answer:
            raise PipelineError(f"{path}: {answer['error']}")
        return answer["result"]

    def _run_once(self, module: str, job: dict, path: Path, timeout: float) -> dict:
        if self.proc is None:
            self._start()
        told = self.stderr.seek(0, os.SEEK_END)
        try:
            self.proc.stdin.write((json.dumps({"module": module, "job": job}) + "\n").encode())
            self.proc.stdin.flush()
            line = self._answer(timeout)
        except BrokenPipeError:
            line = b""
        except TimeoutError:
            self.close()
            raise PipelineError(f"{path}: LiteRT did not finish within {timeout:.0f}s") from None
        if line:
            with contextlib.suppress(ValueError):
                answer = json.loads(line)
                if isinstance(answer, dict) and ("result" in answer or "error" in answer):
                    return answer
            self.close()
            raise _ChildFailed(f"{path}: LiteRT's child process answered something that is not an answer")
        code = self.proc.wait()  # the child is gone
        self.stderr.seek(told)
        lines = [s for s in self.stderr.read().decode(errors="replace").splitlines() if s.strip()]
        self.close()
        if code < 0:
            raise _ChildFailed(f"{path}: the LiteRT interpreter crashed ({signal.Signals(-code).name}) on this "
                               "file; it is not a valid TFLite model")
        raise _ChildFailed(f"{path}: {lines[-1].strip() if lines else 'LiteRT failed'}")

    def _answer(self, timeout: float) -> bytes:
        """One line from the answers pipe (b"{}" if more came at once: not an answer); b"" if the child
        closed it (it died)."""
        deadline, chunks = time.monotonic() + timeout, []
        while not chunks or not chunks[-1].endswith(b"\n"):
            ready, _, _ = select.select([self.answers], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            chunk = os.read(self.answers, 1 << 16)
            if not chunk:
                return b""
            chunks.append(chunk)
        got = b"".join(chunks)
        return got if got.count(b"\n") == 1 else b"{}"

    def close(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(BrokenPipeError):  # a job it never read
            self.proc.stdin.close()
        os.close(self.answers)
        self.stderr.close()
        self.proc = None


_sessions: list[_Child] = []


@contextlib.contextmanager
def session():
    """Inside the block, this process's LiteRT jobs (:func:`run_child`) share one child process instead of
    starting one each (about 0.25 s apiece; a validate runs up to three jobs a file)."""
    child = _Child()
    _sessions.append(child)
    try:
        yield
    finally:
        _sessions.remove(child)
        child.close()


def run_child(module: str, job: dict, path: Path, timeout: float) -> dict:
    """What ``module.work(job)`` returns for the .tflite at ``path``, computed in a child process (the
    session's, or one of its own). A crash of the interpreter's native code, a timeout or a failure
    becomes one PipelineError naming ``path``."""
    if _sessions:
        return _sessions[-1].run(module, job, path, timeout)
    with session():
        return run_child(module, job, path, timeout)


def _serve(answers: int) -> None:
    """The child: run each job read from stdin, and write its answer to the ``answers`` file descriptor.
    stdout is pointed at stderr, so nothing printed can be taken for an answer."""
    os.set_inheritable(answers, False)  # a process a job starts must not hold it open
    out = os.fdopen(answers, "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"result": importlib.import_module(request["module"]).work(request["job"])}
        except JobError as exc:
            answer = {"error": str(exc)}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":  # the module itself, not this __main__ copy: jobs raise its JobError
    importlib.import_module(__spec__.name)._serve(int(sys.argv[1]))
