"""Kill a running ``pyvhdx resize`` or ``pyvhdx compact`` at random points and check
what it leaves.

Shared by ``tests/integration/test_resize.py`` and ``test_compact.py`` (one
point a case) and ``tools/resize_kill.py`` (the campaign: 30 points a case).
Everything runs through the real CLI in a child process. For each point: a
fresh copy of the image, the command started, SIGKILL after a random delay
(spread over the time one undisturbed run takes, interpreter start left out), then

1. the image opens, has the old or the new size, and reads as before (the old
   prefix; after a grow, zeros past it; a compacted disk: all of it);
2. ``pyvhdx check`` exits 0 (an interrupted VHD resize is a warning: its
   record beside the image says why the footer copies may differ);
3. the same command run again exits 0 and leaves the new size, ``check`` clean.
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
from tests.killlib import _default_signals
from tests.killlib import cli as cli

MiB = 1 << 20
PYVHDX = [sys.executable, "-m", "pyvhdx"]  # as tests.killlib runs it


@dataclass(frozen=True)
class Case:
    """One resize to kill: the image made by :func:`make`, from ``old`` to ``new``."""

    name: str
    ext: str
    kind: str
    old: int
    new: int
    block_size: int | None = None
    compact: bool = False  # pyvhdx compact --mode quick (new == old)

    @property
    def args(self) -> list[str]:
        if self.compact:
            return ["compact", f"disk{self.ext}", "--mode", "quick"]
        return ["resize", f"disk{self.ext}", str(self.new), *(["--shrink"] * (self.new < self.old))]


CASES = [
    # a 1 MiB-block VHDX grown to 16 TiB writes a 128 MiB BAT at the end of the file
    Case("vhdx-grow-bat-moves", ".vhdx", "dynamic", 24 * MiB + 512, 16 << 40, MiB),
    Case("vhdx-fixed-grow", ".vhdx", "fixed", 24 * MiB + 512, 1 << 30, MiB),
    Case("vhdx-shrink", ".vhdx", "dynamic", 256 * MiB, 12 * MiB + 4096, MiB),
    # a 4 KiB-block VHD grown to 64 GiB writes a 64 MiB BAT after the footer
    Case("vhd-grow-bat-moves", ".vhd", "dynamic", 24 * MiB + 512, 64 << 30, 4096),
]
COMPACT_CASES = [
    # 256 MiB, 1 MiB blocks: a quarter of the stored blocks zeros, the rest packed down
    Case("vhdx-compact", ".vhdx", "dynamic", 256 * MiB, 256 * MiB, MiB, compact=True),
    Case("vhd-compact", ".vhd", "dynamic", 256 * MiB, 256 * MiB, 512 * 1024, compact=True),
]


@dataclass
class Outcome:
    case: str
    delay: float
    state: str  # "old", "new", "same content" (compact), and ", recorded as interrupted"
    ok: bool
    detail: str = ""


def make(case: Case, folder: Path) -> bytes:
    """The image of ``case`` in ``folder`` (data below both sizes); its first bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"disk{case.ext}"
    kw = {} if case.block_size is None else {"block_size": case.block_size}
    pyvhdx.create(path, case.old, disk_type=case.kind, **kw)  # type: ignore[arg-type]
    keep = min(case.old, case.new)
    rng = random.Random(7)
    with pyvhdx.open(path, "r+") as img:
        if not case.compact:
            img.write_at(0, rng.randbytes(keep))
            return img.read_at(0, keep)
        for off in range(0, keep, 2 * MiB):  # every other MiB stored, some of it zeros
            img.write_at(off, rng.randbytes(MiB) if off % (8 * MiB) else bytes(MiB))
        img.write_at(keep - MiB, rng.randbytes(MiB))
        return img.read_at(0, keep)


def _copy(template: Path, work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for f in template.iterdir():
        subprocess.run(["cp", "--sparse=always", str(f), str(work / f.name)], check=True)


def time_run(case: Case, template: Path, work: Path) -> float:
    """Seconds one undisturbed ``pyvhdx resize`` takes (process start included)."""
    _copy(template, work)
    t0 = time.monotonic()
    r = cli(*case.args, cwd=work)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def _state(case: Case, path: Path, data: bytes) -> tuple[str, str]:
    """("old"|"new", "") or ("bad", why) for the image left behind."""
    try:
        with pyvhdx.open(path, force_share=True) as img:
            size = img.get_size()
            if size not in (case.old, case.new):
                return "bad", f"size {size}"
            if img.read_at(0, len(data)) != data:
                return "bad", "the kept prefix changed"
            if case.compact:
                return "same content", ""
            if size > len(data) and img.read_at(len(data), MiB) != bytes(
                min(MiB, size - len(data))
            ):
                return "bad", "the grown part is not zeros"
            return ("new" if size == case.new else "old"), ""
    except pyvhdx.PyvhdxError as exc:
        return "bad", f"cannot open: {exc}"


def kill_once(case: Case, template: Path, work: Path, data: bytes, delay: float) -> Outcome:
    _copy(template, work)
    proc = subprocess.Popen(
        [*PYVHDX, *case.args],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    path = work / f"disk{case.ext}"
    state, why = _state(case, path, data)
    if state == "bad":
        return Outcome(case.name, delay, state, False, why)
    check = cli("check", path.name, cwd=work)
    if check.returncode != 0:
        why = f"check {check.returncode}: {check.stdout[-300:]} {check.stderr[-300:]}"
        return Outcome(case.name, delay, state, False, why)
    if "is in progress (interrupted?)" in check.stdout:
        state += ", recorded as interrupted"
    again = cli(*case.args, cwd=work)
    if again.returncode != 0:
        return Outcome(case.name, delay, state, False, f"resize again: {again.stderr.strip()}")
    final, why = _state(case, path, data)
    if final not in ("new", "same content"):
        return Outcome(case.name, delay, state, False, f"after resize again: {final} {why}")
    check = cli("check", path.name, cwd=work)
    if check.returncode != 0:
        return Outcome(case.name, delay, state, False, f"check after: {check.stdout[-400:]}")
    return Outcome(case.name, delay, state, True)


def campaign(case: Case, folder: Path, points: int, seed: int = 1) -> list[Outcome]:
    """``points`` kills of ``case``, delays spread over one undisturbed run's time
    after the interpreter has started (``pyvhdx --version`` timed)."""
    template = folder / f"{case.name}-template"
    data = make(case, template)
    work = folder / f"{case.name}-work"
    total = time_run(case, template, work)
    t0 = time.monotonic()
    cli("--version", cwd=folder)
    start = min(total, time.monotonic() - t0) * 0.8
    rng = random.Random(seed)
    delays = [rng.uniform(start, total) for _ in range(points)]
    return [kill_once(case, template, work, data, d) for d in delays]
