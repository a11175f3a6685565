"""One measured child process for the benchmark scripts: wall time and its own peak RSS.

The peak RSS comes from the child's own rusage (``os.wait4``). A child started by
a large process counts the pages it shared before ``exec``, so the scripts build
their images in a process of their own and stay small while they measure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

MiB = 1 << 20
GiB = 1 << 30
#: ``pyvhdx`` run by this interpreter.
PYVHDX = [sys.executable, "-m", "pyvhdx"]


def run_child(*args: str, check: bool = True) -> tuple[float, int, int]:
    """``(seconds, peak RSS in MiB, exit status)`` of ``args`` run to the end."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if check and code:
        raise subprocess.CalledProcessError(code, args)
    return elapsed, usage.ru_maxrss // 1024, code
