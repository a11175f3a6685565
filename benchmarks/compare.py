#!/usr/bin/env python3
"""Compare pyvhdx with a raw-file read of the same bytes and with its peers.

Usage: python benchmarks/compare.py [--size-gib 2] [--runs 5] [--workdir DIR] [--quick]

Builds a test disk (half random data, half zeros, in seeded 1 MiB runs) and
converts it with qemu-img to VHDX dynamic (qemu's default block size and 1 MiB
blocks), VHDX fixed (block_state_zero=off), VHD dynamic and VHD fixed
(force_size=on), plus an empty 64 TiB dynamic VHDX and an empty 2040 GiB dynamic
VHD. Then, in one run with the page cache warm, it measures (median of --runs):

- sequential reads of the whole disk in 1 MiB and 64 KiB chunks (GB/s): a raw
  file readinto (the reference), pyvhdx, libvhdi (pyvhdi) and dissect.hypervisor
  when installed;
- 20,000 random aligned 4 KiB reads (reads/s);
- open plus a first-sector read of the huge images (ms) and peak RSS (in a child
  process each);
- convert to VHDX dynamic: pyvhdx against qemu-img (s), in process and as
  ``pyvhdx convert --no-sync`` against ``qemu-img convert`` (command lines);
- the bytes API (``--only api``): ``read_at`` random 4 KiB and sequential 64 KiB
  reads, and ``stream().read(65536)``, against libvhdi's
  ``read_buffer_at_offset`` and ``os.pread`` of the raw file (all return bytes);
- command line start-up (``--only cli``): ``pyvhdx --help``, ``pyvhdx info``
  against ``qemu-img info`` of a small VHDX, and ``python -c pass`` (the
  interpreter's own start-up); ``--cli-python`` runs the command lines with the
  ``pyvhdx`` script of another interpreter (a venv's: a pyenv or conda python
  with many ``.pth`` files starts slower than a user's venv);
- allocating small writes (``--only writes``): 2,000 one-byte writes, each into
  a new 1 MiB block of a 4 GiB VHDX, pyvhdx (a child process: open, write,
  close) against ``qemu-io -t writeback``.

It prints a table with every figure as a ratio to the reference and to each peer.
With ``--cpu`` the in-process read figures are CPU time (user + system) instead
of wall time, and the child-process rows add each child's CPU time: on a machine
that other work keeps busy, wall time measures the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20
GiB = 1 << 30


# -- the test disk -------------------------------------------------------------------


def make_disk(path: Path, size: int, seed: int = 2024) -> None:
    """Half random, half zero 1 MiB runs, chosen by a seeded generator; holes for zeros."""
    rng = np.random.default_rng(seed)
    runs = size // MiB
    data_runs = rng.permutation(runs)[: runs // 2]
    mask = np.zeros(runs, dtype=bool)
    mask[data_runs] = True
    with path.open("wb") as f:
        f.truncate(size)
        for i in np.flatnonzero(mask).tolist():
            f.seek(i * MiB)
            f.write(rng.integers(0, 256, MiB, dtype=np.uint8).tobytes())


def qemu(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def build(workdir: Path, size: int) -> dict[str, Path]:
    workdir = workdir / f"{size // MiB}MiB"  # images of one disk size together
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "disk.raw"
    if not raw.exists() or raw.stat().st_size != size:
        make_disk(raw, size)
    images = {
        "vhdx-dynamic": ("vhdx", "subformat=dynamic"),
        "vhdx-dynamic-1M": ("vhdx", "subformat=dynamic,block_size=1M"),
        "vhdx-fixed": ("vhdx", "subformat=fixed,block_state_zero=off"),
        "vhd-dynamic": ("vpc", "subformat=dynamic,force_size=on"),
        "vhd-fixed": ("vpc", "subformat=fixed,force_size=on"),
    }
    out = {"raw": raw}
    for name, (fmt, opts) in images.items():
        path = workdir / f"{name}.{'vhd' if fmt == 'vpc' else 'vhdx'}"
        if not path.exists():
            qemu("convert", "-f", "raw", "-O", fmt, "-o", opts, str(raw), str(path))
        out[name] = path
    huge_vhdx = workdir / "empty-64T.vhdx"
    if not huge_vhdx.exists():
        qemu("create", "-f", "vhdx", str(huge_vhdx), "64T")
    huge_vhd = workdir / "empty-2040G.vhd"
    if not huge_vhd.exists():
        qemu("create", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", str(huge_vhd), "2040G")
    out["huge-vhdx"] = huge_vhdx
    out["huge-vhd"] = huge_vhd
    return out


# -- readers: each returns (size, readinto_at(offset, buffer) -> int) -------------------


def raw_reader(path: Path) -> tuple[int, Callable[[int, memoryview], int], Callable[[], None]]:
    fd = os.open(path, os.O_RDONLY)
    return os.fstat(fd).st_size, lambda off, mv: os.preadv(fd, [mv], off), lambda: os.close(fd)


def pyvhdx_reader(path: Path) -> tuple[int, Callable[[int, memoryview], int], Callable[[], None]]:
    import pyvhdx

    img = pyvhdx.open(path)
    return img.virtual_size, img.readinto_at, img.close


def pyvhdi_reader(path: Path) -> tuple[int, Callable[[int, memoryview], int], Callable[[], None]]:
    import pyvhdi

    f = pyvhdi.file()
    f.open(str(path))

    def read(off: int, mv: memoryview) -> int:
        data = f.read_buffer_at_offset(len(mv), off)
        mv[: len(data)] = data
        return len(data)

    return f.get_media_size(), read, f.close


def dissect_reader(path: Path) -> tuple[int, Callable[[int, memoryview], int], Callable[[], None]]:
    from dissect.hypervisor import vhd, vhdx

    fh = path.open("rb")
    disk = vhdx.VHDX(fh) if path.suffix == ".vhdx" else vhd.VHD(fh)

    def read(off: int, mv: memoryview) -> int:
        disk.seek(off)
        data = disk.read(len(mv))
        mv[: len(data)] = data
        return len(data)

    return disk.size, read, fh.close


def available_peers() -> dict[str, Any]:
    peers: dict[str, Any] = {"pyvhdx": pyvhdx_reader}
    try:
        import pyvhdi  # noqa: F401

        peers["pyvhdi"] = pyvhdi_reader
    except ImportError:
        pass
    try:
        import dissect.hypervisor  # noqa: F401

        peers["dissect"] = dissect_reader
    except ImportError:
        pass
    return peers


# -- measurements -----------------------------------------------------------------------


#: The clock of the in-process read figures (``--cpu``: time.process_time).
CLOCK: Callable[[], float] = time.perf_counter


def seq_gbps(read: Callable[[int, memoryview], int], size: int, chunk: int, runs: int) -> float:
    buf = bytearray(chunk)
    mv = memoryview(buf)
    times = []
    for _ in range(runs):
        t = CLOCK()
        off = 0
        while off < size:
            n = read(off, mv)
            if n <= 0:
                break
            off += n
        times.append(CLOCK() - t)
    return size / statistics.median(times) / 1e9


def random_rate(read: Callable[[int, memoryview], int], offsets: list[int], runs: int) -> float:
    buf = bytearray(4096)
    mv = memoryview(buf)
    times = []
    for _ in range(runs):
        t = CLOCK()
        for off in offsets:
            read(off, mv)
        times.append(CLOCK() - t)
    return len(offsets) / statistics.median(times)


# -- the bytes API: read_at, the stream, against pyvhdi and os.pread -----------------------


def bytes_loops(
    raw: Path, image: Path, size: int, offsets: list[int]
) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """Loops that each read whole bytes objects: ``(name -> loop, close)``."""
    import pyvhdx

    fd = os.open(raw, os.O_RDONLY)
    img = pyvhdx.open(image)
    stream = img.stream()
    read_at, pread = img.read_at, os.pread
    seq = range(0, size, 65536)

    # Each loop calls the reader directly (no wrapper of ours in between) and drops
    # each result at once, as a reader would.
    def raw_loop(n: int, where: Any) -> Callable[[], None]:
        def run() -> None:
            for off in where:
                pread(fd, n, off)

        return run

    def pyvhdx_loop(n: int, where: Any) -> Callable[[], None]:
        def run() -> None:
            for off in where:
                read_at(off, n)

        return run

    loops: dict[str, Callable[[], object]] = {
        "random raw pread": raw_loop(4096, offsets),
        "random pyvhdx read_at": pyvhdx_loop(4096, offsets),
        "seq raw pread": raw_loop(65536, seq),
        "seq pyvhdx read_at": pyvhdx_loop(65536, seq),
    }

    def stream_loop() -> None:
        stream.seek(0)
        while stream.read(65536):
            pass

    loops["seq pyvhdx stream.read"] = stream_loop
    closers = [lambda: os.close(fd), img.close]
    try:
        import pyvhdi

        f = pyvhdi.file()
        f.open(str(image))
        rv = f.read_buffer_at_offset

        def pyvhdi_loop(n: int, where: Any) -> Callable[[], None]:
            def run() -> None:
                for off in where:
                    rv(n, off)

            return run

        loops["random pyvhdi"] = pyvhdi_loop(4096, offsets)
        loops["seq pyvhdi"] = pyvhdi_loop(65536, seq)
        closers.append(f.close)
    except ImportError:
        pass

    def close() -> None:
        for c in closers:
            c()

    return loops, close


def bytes_rows(
    raw: Path, image: Path, kind: str, size: int, offsets: list[int], runs: int
) -> list[Any]:
    """Rows of the bytes API: every loop timed in interleaved rounds (the median)."""
    loops, close = bytes_loops(raw, image, size, offsets)
    times: dict[str, list[float]] = {name: [] for name in loops}
    try:
        for _ in range(runs):
            for name, loop in loops.items():
                t = CLOCK()
                loop()
                times[name].append(CLOCK() - t)
    finally:
        close()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rows = []
    for name, t in med.items():
        shape, who = name.split(" ", 1)
        ref = med[f"{shape} raw pread"]
        others = (
            {"pyvhdi": med[f"{shape} pyvhdi"] / t}
            if f"{shape} pyvhdi" in med and "pyvhdi" not in who
            else {}
        )
        if shape == "random":
            rows.append(
                (f"{kind} {who}", "bytes: rand 4 KiB reads/s", len(offsets) / t, ref / t, others)
            )
        else:
            rows.append(
                (f"{kind} {who}", "bytes: seq 64 KiB GB/s", size / t / 1e9, ref / t, others)
            )
    return rows


# -- child processes: the command lines --------------------------------------------------


def run_child(args: list[str]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of a child process run to the end."""
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), args)
    return wall, usage.ru_utime + usage.ru_stime


def child_rounds(
    cases: dict[str, list[str]], runs: int, setup: Callable[[], None] = lambda: None
) -> dict[str, tuple[float, float]]:
    """Median ``(wall, CPU)`` seconds of each command, run in interleaved rounds."""
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, args in cases.items():
            setup()
            wall, cpu = run_child(args)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {n: (statistics.median(walls[n]), statistics.median(cpus[n])) for n in cases}


def child_rows(label: str, medians: dict[str, tuple[float, float]], ref: str) -> list[Any]:
    """Rows of child-process figures, each with its ratio to ``ref`` (wall and CPU)."""
    rows = []
    for name, (wall, cpu) in medians.items():
        others = (
            {}
            if name == ref
            else {ref: wall / medians[ref][0], f"{ref} cpu": cpu / medians[ref][1]}
        )
        rows.append((f"{label} {name}", "seconds", wall, None, {"cpu s": cpu, **others}))
    return rows


def cli_command(python: Path) -> list[str]:
    """``pyvhdx`` as a user runs it with ``python``: the script pip installed beside
    it, else ``python -m pyvhdx``. Its modules are compiled first: a shell that sets
    PYTHONDONTWRITEBYTECODE would otherwise time the compiler at every start."""
    import pyvhdx as package

    subprocess.run(
        [str(python), "-m", "compileall", "-q", str(Path(package.__file__).parent)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    script = python.parent / "pyvhdx"
    return [str(script)] if script.exists() else [str(python), "-m", "pyvhdx"]


#: 2,000 one-byte writes, each into a new 1 MiB block (block i * 2 of the 4 GiB disk)
SMALL_WRITES = 2000
_WRITER = """
import sys, pyvhdx
with pyvhdx.open(sys.argv[1], "r+") as img:
    for i in range({count}):
        img.write_at(i * 2 << 20, b"x")
"""


def small_write_cases(workdir: Path) -> tuple[dict[str, list[str]], Callable[[], None]]:
    """pyvhdx and qemu-io each write :data:`SMALL_WRITES` bytes into fresh copies."""
    empty = workdir / "small-writes-empty.vhdx"
    if not empty.exists():
        qemu("create", "-f", "vhdx", "-o", "block_size=1M", str(empty), "4G")
    ours, theirs = workdir / "small-writes-pyvhdx.vhdx", workdir / "small-writes-qemu.vhdx"

    def setup() -> None:
        shutil.copyfile(empty, ours)
        shutil.copyfile(empty, theirs)
        os.sync()

    qemu_io = ["qemu-io", "-f", "vhdx", "-t", "writeback"]
    for i in range(SMALL_WRITES):
        qemu_io += ["-c", f"write {i * 2 << 20} 1"]
    env_code = _WRITER.format(count=SMALL_WRITES)
    cases = {
        "pyvhdx": [sys.executable, "-c", env_code, str(ours)],
        "qemu-io": [*qemu_io, str(theirs)],
    }
    return cases, setup


def open_probe(reader: str, path: Path, runs: int) -> tuple[float, float]:
    """Open + first-sector read in a child process: (median ms, peak RSS MiB)."""
    code = f"""
import re, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import compare
size, read, close = compare.{reader}(compare.Path({str(path)!r}))  # imports, warm-up
close()
times = []
for _ in range({max(runs, 100)}):
    t = time.perf_counter()
    size, read, close = compare.{reader}(compare.Path({str(path)!r}))
    buf = memoryview(bytearray(512))
    read(0, buf)
    close()
    times.append(time.perf_counter() - t)
times.sort()
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(times[len(times) // 2] * 1000, hwm / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    ms, rss = out.stdout.split()
    return float(ms), float(rss)


def timed(func: Callable[[], object], runs: int, setup: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_rounds(
    funcs: dict[str, Callable[[], object]], runs: int, setup: Callable[[], None]
) -> dict[str, float]:
    """Median seconds of each function, measured in interleaved rounds.

    Round k runs every function once, in turn, each after ``setup``: a drift of
    the machine's state (page-cache writeback, memory reclaim) then lands on all
    of them alike instead of on whichever ran last.
    """
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(runs):
        for name, func in funcs.items():
            setup()
            t = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


# -- main ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    for mod in ("pyvhdx", "pyvhdi", "numpy"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", None) or m.get_version())
        except Exception:
            pass
    try:
        from importlib.metadata import version

        out["dissect.hypervisor"] = version("dissect.hypervisor")
    except Exception:
        pass
    q = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout
    out["qemu-img"] = q.split("\n")[0].replace("qemu-img version ", "")
    return out


KINDS = ("vhdx-dynamic", "vhdx-dynamic-1M", "vhdx-fixed", "vhd-dynamic", "vhd-fixed")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer cases (1 MiB reads, 2 runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--only",
        choices=["reads", "api", "open", "convert", "cli", "writes"],
        action="append",
        help="run only these parts (repeatable; default: all)",
    )
    ap.add_argument(
        "--cpu", action="store_true", help="in-process reads timed as CPU time, not wall time"
    )
    ap.add_argument(
        "--kind",
        action="append",
        choices=KINDS,
        help="images of the reads and api parts (repeatable; default: all)",
    )
    ap.add_argument(
        "--cli-python",
        type=Path,
        default=Path(sys.executable),
        help="the interpreter of the command-line rows (a venv's python, where pyvhdx is "
        "installed: its own start-up is then a user's; default: this one)",
    )
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu:
        CLOCK = time.process_time
    if shutil.which("qemu-img") is None:
        print("qemu-img is needed (apt-get install qemu-utils)", file=sys.stderr)
        return 2
    size = int(args.size_gib * GiB) // MiB * MiB
    runs = 2 if args.quick else args.runs
    workdir = args.workdir or Path(tempfile.gettempdir()) / "pyvhdx-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    images = build(workdir, size)
    peers = available_peers()
    results: dict[str, Any] = {"versions": versions(), "size": size, "runs": runs, "rows": []}
    rows = results["rows"]

    # warm the page cache
    for p in images.values():
        if p.stat().st_blocks * 512 < 8 * GiB:
            with p.open("rb") as f:
                while f.read(64 * MiB):
                    pass

    rng = np.random.default_rng(7)
    offsets = (rng.integers(0, size // 4096, 20_000) * 4096).tolist()
    raw_size, raw_read, raw_close = raw_reader(images["raw"])
    chunks = [MiB] if args.quick else [MiB, 64 * 1024]
    ref_seq = {c: seq_gbps(raw_read, raw_size, c, runs) for c in chunks}
    ref_rand = random_rate(raw_read, offsets, runs)
    raw_close()
    for c in chunks:
        rows.append(("raw file", f"seq {c // 1024} KiB GB/s", ref_seq[c], 1.0, {}))
    rows.append(("raw file", "random 4 KiB reads/s", ref_rand, 1.0, {}))

    parts = set(args.only or ["reads", "api", "open", "convert", "cli", "writes"])
    # the command line the CLI rows run (compiled once, here, only when they run)
    pyvhdx_cli = cli_command(args.cli_python) if parts & {"convert", "cli"} else []
    kinds = args.kind or KINDS
    for kind in kinds if "reads" in parts else ():
        figures: dict[str, dict[str, float]] = {}
        for peer, make in peers.items():
            try:
                psize, read, close = make(images[kind])
                if psize < size:
                    raise RuntimeError(f"virtual size {psize} is smaller than the disk {size}")
            except Exception as exc:
                print(f"{peer} cannot open {kind}: {exc}", file=sys.stderr)
                continue
            figs = {}
            for c in chunks:
                figs[f"seq {c // 1024} KiB GB/s"] = seq_gbps(read, min(psize, size), c, runs)
            figs["random 4 KiB reads/s"] = random_rate(read, offsets, runs)
            close()
            figures[peer] = figs
        for metric in next(iter(figures.values())):
            ref = (
                ref_seq[MiB]
                if "1024 KiB" in metric
                else (ref_seq.get(64 * 1024, 0) if "64 KiB" in metric else ref_rand)
            )
            for peer, figs in figures.items():
                others = {
                    o: figs[metric] / f[metric]
                    for o, f in figures.items()
                    if o != peer and f.get(metric)
                }
                rows.append((f"{kind} {peer}", metric, figs[metric], figs[metric] / ref, others))

    api_kinds = [k for k in kinds if k in ("vhdx-dynamic", "vhdx-dynamic-1M", "vhd-dynamic")]
    for kind in api_kinds if "api" in parts else ():
        rows.extend(bytes_rows(images["raw"], images[kind], kind, size, offsets, runs))

    # the 2 GiB dynamic images beside the huge ones: open time must not grow with size
    opens = {"huge-vhdx": "huge-vhdx", "2GiB-vhdx": "vhdx-dynamic", "huge-vhd": "huge-vhd"}
    opens["2GiB-vhd"] = "vhd-dynamic"
    for name, image in opens.items() if "open" in parts else ():
        for peer in peers:
            reader = f"{peer}_reader" if peer != "dissect" else "dissect_reader"
            try:
                ms, rss = open_probe(reader, images[image], runs)
            except subprocess.CalledProcessError as exc:
                print(f"{peer} cannot open {name}: {exc.stderr[-200:]}", file=sys.stderr)
                continue
            rows.append((f"{name} {peer}", "open+read ms", ms, None, {"peak RSS MiB": rss}))

    # convert: pyvhdx against qemu-img. Each run starts from a quiet page cache
    # (os.sync outside the timing, destination removed): the cost of writeback left
    # over from an earlier run would otherwise land on the next.
    import pyvhdx

    def quiet_for(dst: Path) -> Callable[[], None]:
        def quiet() -> None:
            dst.unlink(missing_ok=True)
            os.sync()

        return quiet

    conv_runs = max(3, runs)
    conversions = [
        ("raw->vhdx", images["raw"], "vhdx", ["-O", "vhdx"]),
        ("vhdx->raw", images["vhdx-dynamic"], "raw", ["-O", "raw"]),
        ("raw->vhd", images["raw"], "vhd", ["-O", "vpc", "-o", "force_size=on"]),
        ("vhdx->vhd", images["vhdx-dynamic"], "vhd", ["-O", "vpc", "-o", "force_size=on"]),
    ]
    for label, src, ext, qemu_args in conversions if "convert" in parts else ():
        dst = workdir / f"convert-out.{ext}"
        quiet = quiet_for(dst)

        def run_pyvhdx(src: Path = src, dst: Path = dst) -> None:
            pyvhdx.convert(src, dst, progress=False, sync=False)

        def run_pyvhdx_sync(src: Path = src, dst: Path = dst) -> None:
            pyvhdx.convert(src, dst, progress=False)

        def run_qemu(src: Path = src, dst: Path = dst, qa: list[str] = qemu_args) -> None:
            subprocess.run(["qemu-img", "convert", *qa, str(src), str(dst)], check=True)

        t = timed_rounds(
            {"pyvhdx": run_pyvhdx, "pyvhdx+fsync": run_pyvhdx_sync, "qemu-img": run_qemu},
            conv_runs,
            quiet,
        )
        t_py, t_py_sync, t_qemu = t["pyvhdx"], t["pyvhdx+fsync"], t["qemu-img"]
        quiet()
        rows.append((f"convert {label} pyvhdx", "seconds", t_py, None, {"qemu-img": t_py / t_qemu}))
        rows.append(
            (
                f"convert {label} pyvhdx+fsync",
                "seconds",
                t_py_sync,
                None,
                {"qemu-img": t_py_sync / t_qemu},
            )
        )
        rows.append((f"convert {label} qemu-img", "seconds", t_qemu, None, {}))
        if label.startswith("raw->"):  # command line against command line
            out_fmt = ext
            cli = {
                "pyvhdx convert --no-sync": [
                    *pyvhdx_cli,
                    "convert",
                    "--no-sync",
                    "--no-progress",
                    "-O",
                    out_fmt,
                    str(src),
                    str(dst),
                ],
                "qemu-img convert": [
                    "qemu-img",
                    "convert",
                    "-f",
                    "raw",
                    *qemu_args,
                    str(src),
                    str(dst),
                ],
            }
            medians = child_rounds(cli, conv_runs, quiet)
            quiet()
            rows.extend(child_rows(f"CLI {label}", medians, "qemu-img convert"))

    if "cli" in parts:  # start-up: the whole command, interpreter included
        small = workdir / "small.vhdx"
        if not small.exists():
            qemu("create", "-f", "vhdx", str(small), "64M")
        cli = {
            "python -c pass": [str(args.cli_python), "-c", "pass"],  # the interpreter alone
            "pyvhdx --help": [*pyvhdx_cli, "--help"],
            "pyvhdx info": [*pyvhdx_cli, "info", str(small)],
            "qemu-img info": ["qemu-img", "info", str(small)],
        }
        rows.extend(child_rows("start-up", child_rounds(cli, max(5, runs)), "qemu-img info"))

    if "writes" in parts:
        cases, setup = small_write_cases(workdir)
        medians = child_rounds(cases, conv_runs, setup)
        rows.extend(child_rows(f"{SMALL_WRITES} small writes", medians, "qemu-io"))
        for name in ("small-writes-pyvhdx.vhdx", "small-writes-qemu.vhdx"):
            (workdir / name).unlink(missing_ok=True)

    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def print_table(results: dict[str, Any]) -> None:
    v = results["versions"]
    print(
        f"# {results['size'] / GiB:g} GiB disk, median of {results['runs']} runs, "
        + ", ".join(f"{k} {val}" for k, val in v.items())
    )
    print(f"| {'case':34} | {'metric':22} | {'value':>10} | {'x raw':>6} | ratios |")
    print(f"|{'-' * 36}|{'-' * 24}|{'-' * 12}|{'-' * 8}|--------|")
    for case, metric, value, vs_ref, others in results["rows"]:
        ref = f"{vs_ref:6.2f}" if vs_ref is not None else "      "
        extra = ", ".join(
            f"{k} {r:.0f}" if "RSS" in k else f"{k} {r:.3f}" if k == "cpu s" else f"x {k} {r:.2f}"
            for k, r in others.items()
        )
        print(f"| {case:34} | {metric:22} | {value:10.3f} | {ref} | {extra} |")


if __name__ == "__main__":
    sys.exit(main())
