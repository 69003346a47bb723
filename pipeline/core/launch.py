"""``--workers N``: one stage run by N local worker processes of a multi-worker run.

The launcher holds the project's run lock and shares it with its workers (:func:`runner.shared_lock`),
gives each a ``TF_CONFIG`` naming all of them on free localhost ports, prints their output line by
line behind ``[worker i]``, and watches them: when one fails or is killed, the others are stopped at
once (a worker left alone would wait in a collective op for ever), and the command fails with one
line; a rerun resumes from the last completed epoch. Ctrl-C and SIGTERM stop them all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

from .errors import PipelineError
from .runner import SHARED_LOCK_ENV, dies_with_parent

POLL_SECONDS = 0.2
STOP_SECONDS = 10.0  # after SIGTERM, how long a worker may take to end before SIGKILL
# the same once another worker has failed: the others wait in a collective op for the one that is gone and
# cannot unwind until TensorFlow gives up on it, and all they write is written atomically, so SIGKILL
# loses nothing (a kill used to wait out the full STOP_SECONDS)
PEER_GONE_SECONDS = 2.0
# once a worker has finished, how long the others may go on (the chief saves and evaluates after the
# last collective op); a worker still running after that is stopped
FINISH_SECONDS = 600.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on localhost now (held open together while they are chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]


def cluster_configs(ports: list[int]) -> list[str]:
    """Each worker's ``TF_CONFIG``: the same cluster, its own task index."""
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def worker_env(tf_config: str, lock_fd: int, workers: int) -> dict[str, str]:
    """A worker's environment: its TF_CONFIG, the shared lock, and its share of this machine's cores
    for TensorFlow's thread pools (unless they are set already)."""
    env = {**os.environ, "TF_CONFIG": tf_config, SHARED_LOCK_ENV: str(lock_fd)}
    share = str(max(1, (os.cpu_count() or 1) // workers))
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.setdefault(key, share)
    return env


def _relay(index: int, stream, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"[worker {index}] {line}")
            sys.stdout.flush()


def _stop(procs: list[subprocess.Popen], grace: float = STOP_SECONDS) -> None:
    """SIGTERM to every worker still running; SIGKILL to those still running ``grace`` seconds later."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(argv: list[str], workers: int, lock_fd: int) -> None:
    """Run ``python -m pipeline <argv>`` as ``workers`` workers of one multi-worker run; return when all
    have succeeded, or raise PipelineError naming the first that did not (the others stopped)."""
    if os.environ.get("TF_CONFIG", "").strip():
        raise PipelineError("--workers starts a cluster of its own, but TF_CONFIG is set: this process is already a "
                            "worker of one (unset TF_CONFIG, or run the command without --workers)")
    configs = cluster_configs(free_ports(workers))
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    relays = []
    try:
        for i, config in enumerate(configs):
            p = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                                 env=worker_env(config, lock_fd, workers), pass_fds=(lock_fd,),
                                 preexec_fn=dies_with_parent())
            procs.append(p)
            relay = threading.Thread(target=_relay, args=(i, p.stdout, lock), daemon=True)
            relay.start()
            relays.append(relay)
        addresses = json.loads(configs[0])["cluster"]["worker"]
        print(f"{workers} workers: " + ", ".join(f"worker {i} at {a} (PID {p.pid})" for i, (a, p) in
                                                 enumerate(zip(addresses, procs))) +
              "; worker 0 is the chief and writes the artefacts", flush=True)
        _watch(procs)
    except PipelineError:
        _stop(procs, PEER_GONE_SECONDS)
        raise
    finally:
        _stop(procs)
        for relay in relays:
            relay.join(timeout=STOP_SECONDS)


def _watch(procs: list[subprocess.Popen]) -> None:
    """Return when every worker has exited 0; raise at the first failure seen (a worker killed by a
    signal is named before one that then failed on its own, losing its peer)."""
    first_done = None
    while True:
        codes = [p.poll() for p in procs]
        failed = sorted((i for i, code in enumerate(codes) if code not in (None, 0)), key=lambda i: codes[i] >= 0)
        if failed:
            i = failed[0]
            running = [str(j) for j, c in enumerate(codes) if c is None]
            stopped = f"; stopped worker{'s' if len(running) > 1 else ''} {', '.join(running)}" if running else ""
            outcome = ("worker 0, the chief, had finished and written the artefact" if codes[0] == 0 else
                       "nothing was written; run the same command again to resume from the last completed epoch")
            raise PipelineError(f"worker {i} {describe_exit(codes[i])}{stopped}; {outcome}")
        if all(code == 0 for code in codes):
            return
        if first_done is None and 0 in codes:
            first_done = time.monotonic()
        if first_done is not None and time.monotonic() - first_done > FINISH_SECONDS:
            late = [str(j) for j, c in enumerate(codes) if c is None]
            raise PipelineError(f"worker {', '.join(late)} still running {FINISH_SECONDS:.0f} s after another "
                                "finished: stopped (a worker waiting for a peer that is gone)")
        time.sleep(POLL_SECONDS)
