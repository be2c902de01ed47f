"""Run a command as a child process and measure it whole: wall time and its own peak memory."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass


@dataclass
class ProcessRun:
    seconds: float
    peak_mb: float
    stdout: str
    stderr: str


def run_process(args: list[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Wall time from start to exit, and the child's maximum resident set size (from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {child.returncode}:\n{stderr[-3000:]}")
    return ProcessRun(seconds, usage.ru_maxrss / 1024, stdout, stderr)
