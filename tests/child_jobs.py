"""Jobs for the child process that misbehave on purpose (tests/test_runner.py): the child runs
``work`` of any module it can import, and this one's do what a hostile file can make native code do."""

import os
import signal
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
    print("printed on stdout, not an answer", flush=True)
    return {"pid": os.getpid()}
