#!/usr/bin/env python3
"""Time and peak memory of ``pyvhdx diff`` (issue 16), against a full read of the
same pair by ``qemu-img compare`` in the same run.

Usage: python benchmarks/diffbench.py [--size-gib 8] [--workdir DIR]

- compare path: BASE, a dynamic VHDX of --size-gib full of data; NEW, a copy with
  1% of its 1 MiB pieces rewritten. ``pyvhdx diff BASE NEW`` against
  ``qemu-img compare BASE COPY`` of two identical files (which reads both whole:
  on a difference it would stop at the first one).
- chain path: an empty 64 TiB dynamic VHDX and a child with a few writes;
  ``pyvhdx diff BASE CHILD`` reads only the allocation maps.

Each runs in a child process: wall time and its peak RSS (os.wait4).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.childproc import PYVHDX, GiB, MiB, run_child


def _make(work: Path, size: int) -> int:
    """Build the images (in a process of its own, so that the measured children do
    not inherit a large parent's pages in their peak RSS)."""
    import pyvhdx

    base, new, copy = work / "base.vhdx", work / "new.vhdx", work / "copy.vhdx"
    pyvhdx.create(base, size)
    rng = random.Random(1)
    piece = bytearray(rng.randbytes(8 * MiB))
    with pyvhdx.open(base, "r+") as img:
        for off in range(0, size, len(piece)):
            piece[:8] = off.to_bytes(8, "little")
            img.write_at(off, piece[: min(len(piece), size - off)])
    shutil.copyfile(base, new)
    shutil.copyfile(base, copy)
    changed = rng.sample(range(size // MiB), max(1, size // MiB // 100))
    with pyvhdx.open(new, "r+") as img:
        for k in changed:
            img.write_at(k * MiB, rng.randbytes(MiB))
    big, child = work / "big.vhdx", work / "big-child.avhdx"
    pyvhdx.create(big, 64 << 40)
    pyvhdx.create(child, parent=big)
    with pyvhdx.open(child, "r+") as img:
        for k in range(10):
            img.write_at(k * (6 << 40), b"x" * 4096)
    return len(changed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = int(args.size_gib * GiB) // MiB * MiB
    if args.make is not None:
        print(_make(args.make, size))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        made = subprocess.run(
            [sys.executable, __file__, "--make", str(work), "--size-gib", str(args.size_gib)],
            check=True,
            capture_output=True,
            text=True,
        )
        changed = int(made.stdout)
        base, new, copy = work / "base.vhdx", work / "new.vhdx", work / "copy.vhdx"
        q_seconds, q_rss, q_status = run_child(
            "qemu-img", "compare", str(base), str(copy), check=False
        )
        seconds, rss, status = run_child(
            *PYVHDX, "diff", str(base), str(new), "--json", check=False
        )
        print(
            f"diff of two {size / GiB:.1f} GiB VHDX differing in {changed} MiB "
            f"(1%): {seconds:.2f} s, peak RSS {rss} MiB (exit {status}); qemu-img compare "
            f"reading both whole: {q_seconds:.2f} s, peak RSS {q_rss} MiB (exit {q_status}); "
            f"ratio {seconds / q_seconds:.2f}"
        )
        big, child = work / "big.vhdx", work / "big-child.avhdx"
        seconds, rss, status = run_child(
            *PYVHDX, "diff", str(big), str(child), "--json", check=False
        )
        t0 = time.perf_counter()
        subprocess.run([*PYVHDX, "--version"], check=True, capture_output=True)
        start = time.perf_counter() - t0
        print(
            f"diff of a 64 TiB VHDX and its child (chain path): {seconds * 1000:.0f} ms "
            f"(interpreter start {start * 1000:.0f} ms), peak RSS {rss} MiB (exit {status})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
