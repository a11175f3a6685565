#!/usr/bin/env python3
"""Time and peak memory of compact and resize (issue 15), against the disk's own
sequential copy rate measured in the same run.

Usage: python benchmarks/lifecycle.py [--size-gib 4] [--workdir DIR]

- compact: a dynamic VHDX (32 MiB blocks) of --size-gib holding random data in
  every other block, and zeros written over half of the rest of them, so that a
  quarter of the stored blocks read as zeros; ``pyvhdx compact --mode quick``.
  Its rate is the image file's size over the time, as a ratio to copying a file of
  that size (``cp``, page cache dropped by fsync first, the same run).
- resize: an empty 1 GiB dynamic VHDX grown to 64 TiB (the BAT moves: 16 MiB
  written) and then by one more block (nothing moves), and a 1 GiB dynamic VHD
  grown to 2040 GiB (its BAT moves past the footer).

Each operation runs as ``python -m pyvhdx`` in a child process: wall time and the
child's peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.childproc import PYVHDX, GiB, MiB, run_child


def _compact_image(path: Path, size: int) -> None:
    import pyvhdx

    pyvhdx.create(path, size)
    rng = random.Random(1)
    block = 32 * MiB
    piece = rng.randbytes(4 * MiB)
    with pyvhdx.open(path, "r+") as img:
        for b in range(0, size // block, 2):
            for off in range(0, block, len(piece)):
                img.write_at(b * block + off, piece)
        for b in range(0, size // block, 4):
            img.write_at(b * block, bytes(block))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = int(args.size_gib * GiB) // (32 * MiB) * (32 * MiB)
    if args.make is not None:  # in a process of its own: the measured children would
        _compact_image(args.make, size)  # count this one's pages in their peak RSS
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        image = work / "half.vhdx"
        subprocess.run(
            [sys.executable, __file__, "--make", str(image), "--size-gib", str(args.size_gib)],
            check=True,
        )
        file_size = image.stat().st_size
        copy = work / "copy.bin"
        t0 = time.perf_counter()
        shutil.copyfile(image, copy)
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
        copy_rate = file_size / (time.perf_counter() - t0)
        copy.unlink()
        seconds, rss, _ = run_child(*PYVHDX, "compact", str(image), "--mode", "quick")
        rate = file_size / seconds
        print(
            f"compact --mode quick of a {size / GiB:.1f} GiB disk ({file_size / MiB:.0f} MiB "
            f"file -> {image.stat().st_size / MiB:.0f} MiB): {seconds:.2f} s, "
            f"{rate / MiB:.0f} MiB/s = {rate / copy_rate:.2f} x the copy rate "
            f"({copy_rate / MiB:.0f} MiB/s), peak RSS {rss} MiB"
        )
        for ext, first, target in ((".vhdx", "64T", "64T"), (".vhd", "2040G", None)):
            path = work / f"grow{ext}"
            subprocess.run([*PYVHDX, "create", str(path), "1G"], check=True, capture_output=True)
            seconds, rss, _ = run_child(*PYVHDX, "resize", str(path), first)
            print(
                f"resize {ext} 1 GiB -> {first} (its BAT moves): {seconds * 1000:.0f} ms, "
                f"peak RSS {rss} MiB"
            )
            if target is not None:
                t0 = time.perf_counter()
                subprocess.run(
                    [*PYVHDX, "resize", "--shrink", str(path), "63T"],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                seconds, rss, _ = run_child(*PYVHDX, "resize", str(path), target)
                print(
                    f"resize {ext} 63 TiB -> {target} (nothing moves): "
                    f"{seconds * 1000:.0f} ms, peak RSS {rss} MiB"
                )
        t0 = time.perf_counter()
        subprocess.run([*PYVHDX, "--version"], check=True, capture_output=True)
        print(f"(interpreter start and import: {(time.perf_counter() - t0) * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
