"""Kill a running ``pyvhdx merge`` at random points and check what it leaves.

Shared by ``tests/integration/test_merge_safety.py`` (a few points, small
child) and ``tools/merge_kill.py`` (the campaign: 30 points per signal and
format, a child holding 512 MiB). Everything runs through the real CLI in a
child process; the assertions use ``pyvhdx hash`` as a user would.

For each point: a fresh copy of the chain, ``pyvhdx merge CHILD`` started, a
signal sent after a random delay, then

1. ``pyvhdx hash CHILD`` equals the chain's hash before the merge (or, if the
   merge had finished, CHILD is gone and the parent has that hash);
2. ``pyvhdx merge CHILD`` (resuming) exits 0, and the parent then hashes as
   the chain did; no merge record is left.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyvhdx

MiB = 1 << 20
PYVHDX = [sys.executable, "-m", "pyvhdx"]


@dataclass
class KillOutcome:
    """What one kill left."""

    signal: str
    delay: float
    state: str  # "not started", "interrupted", "finished"
    ok: bool
    detail: str = ""


def _default_signals() -> None:
    """In the child: SIGINT as a terminal sends it (a shell's background job, or
    nohup, starts with it ignored, and Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYVHDX, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def cli_hash(image: str, cwd: Path) -> str:
    r = cli("hash", image, cwd=cwd)
    if r.returncode != 0:
        return f"error {r.returncode}: {r.stderr.strip()}"
    return r.stdout.split()[0]


def make_chain(folder: Path, ext: str, child_mib: int, seed: int = 1) -> tuple[str, str]:
    """base<ext> (dynamic, 2x child_mib virtual) with data, and child<ext> holding
    ``child_mib`` MiB of non-zero data over it (some of it over the base's data)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = 2 * child_mib * MiB
    base, child = f"base{ext}", f"child{ext}"
    rng = random.Random(seed)
    pyvhdx.create(folder / base, size)
    with pyvhdx.open(folder / base, "r+") as img:
        for off in range(0, size // 2, 4 * MiB):
            img.write_at(off, rng.randbytes(64 * 1024) * 64)
    pyvhdx.create(folder / child, size, parent=folder / base)
    with pyvhdx.open(folder / child, "r+") as img:
        pos = child_mib * MiB // 2  # half over the base's data, half over its holes
        for _ in range(child_mib // 4):
            img.write_at(pos, rng.randbytes(64 * 1024) * 64)
            pos += 4 * MiB
    return base, child


def copy_folder(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        subprocess.run(["cp", "--sparse=always", str(f), str(dst / f.name)], check=True)


def time_merge(template: Path, work: Path, child: str) -> tuple[float, float]:
    """(seconds until the merge record appears, seconds of the whole merge)."""
    copy_folder(template, work)
    record_file = work / (child + ".pyvhdx-merge")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*PYVHDX, "merge", child], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while not record_file.exists() and proc.poll() is None:
        time.sleep(0.002)
    t_record = time.monotonic() - t0
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return t_record, time.monotonic() - t0


def kill_once(
    template: Path,
    work: Path,
    base: str,
    child: str,
    expected: str,
    sig: signal.Signals,
    delay: float,
    after_record: bool = False,
) -> KillOutcome:
    """One kill, ``delay`` seconds after the start (or after the merge record appears)."""
    copy_folder(template, work)
    record_file = work / (child + ".pyvhdx-merge")
    proc = subprocess.Popen(
        [*PYVHDX, "merge", child],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )
    if after_record:
        deadline = time.monotonic() + 60
        while not record_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=600)
    name = sig.name
    if not (work / child).exists():
        # finished; a kill between deleting the child and its record leaves the
        # record, which the next merge of the same name removes
        got = cli_hash(base, work)
        if got != expected:
            return KillOutcome(name, delay, "finished", False, f"parent reads {got}")
        if record_file.exists():
            r = cli("merge", child, cwd=work)
            if r.returncode != 0 or record_file.exists():
                detail = f"stale record not cleared: {r.returncode} {r.stderr.strip()}"
                return KillOutcome(name, delay, "finished", False, detail)
            return KillOutcome(name, delay, "finished, record left", True)
        return KillOutcome(name, delay, "finished", True)
    record = record_file.exists()
    state = "interrupted" if record else "not started"
    got = cli_hash(child, work)
    if got != expected:
        return KillOutcome(name, delay, state, False, f"child reads {got} after kill ({err})")
    if record:
        info = cli("info", child, cwd=work)
        if "merge" not in info.stdout:
            return KillOutcome(name, delay, state, False, "info does not report the merge")
    r = cli("merge", child, cwd=work)
    if r.returncode != 0:
        return KillOutcome(name, delay, state, False, f"resume failed: {r.stderr.strip()}")
    got = cli_hash(base, work)
    leftovers = sorted(p.name for p in work.iterdir() if p.name not in (base,))
    ok = got == expected and not leftovers
    detail = "" if ok else f"after resume parent {got}, left {leftovers}"
    return KillOutcome(name, delay, state, ok, detail)


def campaign(folder: Path, ext: str, child_mib: int, points: int, seed: int) -> list[KillOutcome]:
    """``points`` kills per signal (SIGKILL, SIGINT) at random delays within one merge."""
    template = folder / f"template{ext}"
    work = folder / f"work{ext}"
    base, child = make_chain(template, ext, child_mib, seed)
    expected = cli_hash(child, template)
    t_record, duration = time_merge(template, work, child)
    rng = random.Random(seed)
    out: list[KillOutcome] = []
    for sig in (signal.SIGKILL, signal.SIGINT):
        for i in range(points):
            # one point in five anywhere in the run (start-up, planning, the
            # record's own writing); the rest inside the copy, where the parent
            # is half merged
            if i % 5 == 0:
                out.append(
                    kill_once(template, work, base, child, expected, sig, rng.uniform(0, duration))
                )
            else:
                delay = rng.uniform(0.0, (duration - t_record) * 0.8)
                out.append(kill_once(template, work, base, child, expected, sig, delay, True))
    shutil.rmtree(work, ignore_errors=True)
    return out
