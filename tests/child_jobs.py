"""Jobs for the child process that misbehave on purpose (tests/test_runner.py): the child runs
``work`` of any module it can import, and this one's do what a hostile file can make native code do."""

import os
import signal
import sys
import threading
import time

from pipeline.core.runner import JobError


def work(job: dict) -> dict:
    if job["do"] == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if job["do"] == "hang":
        time.sleep(600)
    if job["do"] == "refuse":
        raise JobError("cannot run in LiteRT: refused")
    if job["do"] == "raise":
        raise RuntimeError("an unexpected failure")
    if job["do"] == "die_after":  # answers, then crashes while the next job is on its way
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGSEGV)).start()
    if job["do"] == "nap":
        time.sleep(0.3)
    if job["do"] == "garbage":  # native code writing on the answers' pipe
        os.write(int(sys.argv[1]), b"not json\n")
    print("printed on stdout, not an answer", flush=True)
    return {"pid": os.getpid()}
