#!/usr/bin/env python3
"""Throughput of ``pyvhdx serve`` against ``qemu-nbd`` serving the same VHDX (issue 17).

Usage: python benchmarks/nbdbench.py [--size-gib 2] [--workdir DIR] [--runs 3]

A dynamic VHDX of --size-gib, half of its 32 MiB blocks full of data, is served
read-only by both on 127.0.0.1. Measured in the same run, the median of --runs:
``qemu-img convert -O raw`` from each export into a file (one client), and four
such clients at once (the aggregate rate).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from tests.conftest import free_port, wait_for_port

MiB = 1 << 20
GiB = 1 << 30


def _convert(url: str, out: Path, clients: int) -> float:
    """Seconds for ``clients`` concurrent ``qemu-img convert`` of ``url``."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", url, f"{out}.{k}"],
            stderr=subprocess.DEVNULL,
        )
        for k in range(clients)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"qemu-img convert failed: {codes}")
    return time.perf_counter() - t0


def main() -> int:
    import pyvhdx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    size = int(args.size_gib * GiB) // (32 * MiB) * (32 * MiB)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        image = work / "disk.vhdx"
        pyvhdx.create(image, size)
        piece = bytearray(random.Random(1).randbytes(8 * MiB))
        with pyvhdx.open(image, "r+") as img:
            for block in range(0, size // (32 * MiB), 2):
                for off in range(0, 32 * MiB, len(piece)):
                    piece[:8] = (block * 32 * MiB + off).to_bytes(8, "little")
                    img.write_at(block * 32 * MiB + off, piece)
        p1, p2 = free_port(), free_port()
        ours = subprocess.Popen(
            [sys.executable, "-m", "pyvhdx", "serve", str(image), "--port", str(p1)],
            stderr=subprocess.DEVNULL,
        )
        theirs = subprocess.Popen(
            ["qemu-nbd", "-r", "-f", "vhdx", "-t", "-e", "8", "-p", str(p2), str(image)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(p1, ours, 30, "pyvhdx serve")
            wait_for_port(p2, theirs, 30, "qemu-nbd")
            rows = []
            for name, port in (("pyvhdx serve", p1), ("qemu-nbd", p2)):
                url = f"nbd://127.0.0.1:{port}"
                one = statistics.median(_convert(url, work / "out", 1) for _ in range(args.runs))
                four = statistics.median(_convert(url, work / "out", 4) for _ in range(args.runs))
                rows.append((name, size / one / MiB, 4 * size / four / MiB))
        finally:
            ours.terminate()
            theirs.terminate()
            ours.wait()
            theirs.wait()
    for name, one, four in rows:
        print(
            f"{name:13} 1 client {one:7.0f} MiB/s   4 clients {four:7.0f} MiB/s ({four / one:.2f}x)"
        )
    print(
        f"pyvhdx / qemu-nbd: 1 client {rows[0][1] / rows[1][1]:.2f}x, "
        f"4 clients {rows[0][2] / rows[1][2]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
