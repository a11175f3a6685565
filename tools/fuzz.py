#!/usr/bin/env python3
"""Fuzzing campaign for pyvhdx: hostile images, nothing but pyvhdx errors may escape.

Builds the seed images of ``tests/fuzzlib.py`` (every format and type, chains,
pending logs, qemu-img images when qemu-img is installed), then runs mutated
copies of them through every operation (open, info, inspect, check, map, full
and random reads, compare, convert) in worker processes, each with a time
bound (SIGALRM in the worker, a kill from the parent as a backstop) and two
memory bounds on the case alone, whatever the size of its process: the address
space it may add (``--memory-mb``, ``RLIMIT_AS`` set anew before each case) and
the memory it may touch at its peak (``--peak-mb``, the ``VmHWM`` high-water
mark reset before each case). Every input whose case lets a foreign exception
escape, hangs, exceeds a memory bound or kills its worker is saved under
``--out`` (the mutated file and the rest of its chain, gzipped, and
``case.json`` with the mutation and the traceback); ``--replay`` runs one again.
In the atheris mode libFuzzer's own files (``crash-*``, ``timeout-*``) go to
``--out`` as well. ``--cpu-time`` bounds a case's CPU time instead of its wall
time, for a campaign at ``nice -n 19`` on a busy machine.

``--cli N`` fuzzes the command line instead (issue 19): mutated copies of
``sample_images/`` and of the seeds through the reading commands, in this
process, with hostile option values now and then (``fuzzlib.run_cli_case``);
each misbehaving run (a traceback, an exit status other than 0, 1 and 2,
stdout that is not JSON with ``--json``, a hang) is a line of ``--failures``
with the command that replays it. ``--group sample`` or ``built`` take the
seeds of ``tests/integration/test_cli_fuzz.py`` (its cases are ``--seed 19``).

Usage::

    python tools/fuzz.py --cases 100000 --workers 2 --seed 1
    python tools/fuzz.py --minutes 30
    pip install -e '.[fuzz]'                             # atheris, for the next line
    nice -n 19 python tools/fuzz.py --atheris --minutes 30 --cpu-time \\
        --corpus fuzz-crashes/atheris-corpus            # coverage-guided (atheris)
    python tools/fuzz.py --replay fuzz-crashes/escape/<sig>/case-123/case.json
    python tools/fuzz.py --cli 2000                     # the command line

The summary line gives the cases run, escapes, hangs, memory blowups, worker
crashes, the distinct outcomes (operation, error type, structure and field:
a cheap measure of the code paths reached) and, with ``--coverage``, the
distinct branches (arcs) of ``src/pyvhdx`` executed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import pkgutil
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests/fuzzlib.py holds the harness (shared with the tests)
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS pool: less address space


def _bounded_case(ws: Any, mutation: dict[str, Any], rng_seed: int, opts: dict[str, Any]) -> Any:
    """Run one case under its memory bounds; return its result (a dict).

    Both bounds measure the case alone, whatever the size of the process running
    it: ``memory_mb`` MiB of address space over the size the process has when the
    case starts (``RLIMIT_AS``: a runaway allocation is a ``MemoryError``, recorded
    as ``memory``), and ``peak_mb`` MiB of memory the case touches at its peak (the
    high-water mark, reset before the case): an input that makes pyvhdx allocate
    by an unchecked field is a finding even when the allocation succeeds. A cap
    on the whole process instead (the old atheris mode) reports false
    ``MemoryError``s as soon as the fuzzer itself grows.
    """
    from tests import fuzzlib

    meter = fuzzlib.PeakMeter()
    try:
        with fuzzlib.memory_bound(opts["memory_mb"] << 20), meter:
            result: dict[str, Any] = ws.run(
                mutation,
                rng_seed=rng_seed,
                time_limit=opts["time_limit"],
                cpu_time=opts.get("cpu_time", False),
                convert=not opts["no_convert"],
                write=opts["write"],
            ).to_dict()
    except MemoryError:
        result = {"status": "memory", "outcomes": [], "seconds": 0.0, "escapes": [
            {"op": "harness", "type": "MemoryError", "message": "", "where": "harness",
             "traceback": traceback.format_exc()}]}  # fmt: skip
    result["peak"] = meter.added
    limit = opts["peak_mb"] << 20
    if limit and meter.added is not None and meter.added > limit and result["status"] == "ok":
        message = f"the case touched {meter.added >> 20} MiB (--peak-mb {opts['peak_mb']})"
        result["status"] = "memory"
        result["escapes"].append(
            {"op": "peak-memory", "type": "PeakMemory", "message": message, "where": "case",
             "traceback": ""})  # fmt: skip
    return result


def _rss_mb() -> int:
    from tests.fuzzlib import rss

    return rss() >> 20


def _max_rss_mb(who: int = resource.RUSAGE_SELF) -> int:
    """The peak resident size of this process (or of its ended children), MiB."""
    return resource.getrusage(who).ru_maxrss >> 10


# -- workers ----------------------------------------------------------------------------


def _worker(conn: Connection, seeds: Any, opts: dict[str, Any]) -> None:
    """Run cases sent by the parent until told to stop (a worker process)."""
    from tests import fuzzlib

    root = Path(tempfile.mkdtemp(prefix="w", dir=opts["scratch"]))
    cov = None
    try:
        ws = fuzzlib.Workspace(root, seeds)
        if opts["coverage"]:
            import coverage

            cov = coverage.Coverage(
                branch=True, data_file=None, source=[str(REPO / "src" / "pyvhdx")]
            )
            cov.start()
        while True:
            msg = conn.recv()
            if msg is None:
                break
            case_id, mutation, rng_seed = msg
            conn.send((case_id, _bounded_case(ws, mutation, rng_seed, opts)))
        arcs: list[tuple[str, int, int]] = []
        if cov is not None:
            cov.stop()
            data = cov.get_data()
            for f in data.measured_files():
                arcs += [(os.path.basename(f), a, b) for a, b in data.arcs(f) or []]
        conn.send(("done", arcs))
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Slot:
    """One worker process, its pipe and the case it is running."""

    def __init__(self, ctx: Any, seeds: Any, opts: dict[str, Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, seeds, opts), daemon=True)
        self.proc.start()
        child.close()
        self.case: tuple[int, dict[str, Any], int] | None = None
        self.started = 0.0

    def send(self, case: tuple[int, dict[str, Any], int]) -> None:
        self.case = case
        self.started = time.monotonic()
        self.conn.send(case)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


# -- the campaign -------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.cases = 0
        self.status: collections.Counter[str] = collections.Counter()
        self.outcomes: set[str] = set()
        self.signatures: collections.Counter[str] = collections.Counter()
        self.per_seed: collections.Counter[str] = collections.Counter()
        self.seconds = 0.0
        self.slowest = (0.0, -1)
        self.arcs: set[tuple[str, int, int]] = set()
        self.peak = (0, -1)  # the most memory one case touched, and that case

    def add(self, case_id: int, mutation: dict[str, Any], result: dict[str, Any]) -> list[str]:
        """Count one result; return the signatures of its problems (new or not)."""
        from tests.fuzzlib import escape_signature

        self.cases += 1
        self.per_seed[mutation["seed"]] += 1
        self.status[result["status"]] += 1
        self.outcomes.update(result["outcomes"])
        self.seconds += result["seconds"]
        if result["seconds"] > self.slowest[0]:
            self.slowest = (result["seconds"], case_id)
        if (result.get("peak") or 0) > self.peak[0]:
            self.peak = (result["peak"], case_id)
        sigs = [escape_signature(e) for e in result["escapes"]]
        for s in sigs:
            self.signatures[s] += 1
        return sigs

    def line(self, elapsed: float) -> str:
        s = self.status
        rate = self.cases / elapsed if elapsed else 0.0
        return (
            f"cases {self.cases} ({rate:.1f}/s) | escapes {s['escape']} | hangs {s['hang']} "
            f"| memory {s['memory']} | worker crashes {s['crash']} "
            f"| distinct problems {len(self.signatures)} | distinct outcomes {len(self.outcomes)}"
            + (f" | arcs {len(self.arcs)}" if self.arcs else "")
            + f" | case peak {self.peak[0] >> 20} MiB | rss {_rss_mb()} MiB (max {_max_rss_mb()})"
        )


def _save(
    out: Path,
    seeds: Any,
    case_id: int,
    mutation: dict[str, Any],
    rng_seed: int,
    result: dict[str, Any],
    sigs: list[str],
    seen: collections.Counter[str],
    per_signature: int,
) -> Path | None:
    """Save a problem case (at most ``per_signature`` examples of each signature)."""
    from tests.fuzzlib import apply_mutation

    key = sigs[0] if sigs else result["status"]
    seen[key] += 1
    if seen[key] > per_signature:
        return None
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    d: Path = out / result["status"] / digest / f"case-{case_id}"
    (d / "pristine").mkdir(parents=True, exist_ok=True)
    seed = seeds[mutation["seed"]]
    for f in seed.files:
        data = apply_mutation(f.data, mutation) if f.name == mutation["file"] else f.data
        with gzip.open(d / (f.name + ".gz"), "wb", compresslevel=6) as g:
            g.write(data)
        if f.name == mutation["file"]:  # the unmutated file, for the comparison
            with gzip.open(d / "pristine" / (f.name + ".gz"), "wb", compresslevel=6) as g:
                g.write(f.data)
    record = {
        "case": case_id,
        "signatures": sigs,
        "seed": mutation["seed"],
        "target": seed.target,
        "mutated-file": mutation["file"],
        "mutation": mutation,
        "rng-seed": rng_seed,
        "result": result,
        "replay": f"python tools/fuzz.py --replay {d / 'case.json'}",
    }
    (d / "case.json").write_text(json.dumps(record, indent=1))
    return d


def _mutation_for(seeds: Any, master: int, case_id: int) -> tuple[dict[str, Any], int]:
    from tests.fuzzlib import case_mutation

    return case_mutation(seeds, master, case_id)


def campaign(args: argparse.Namespace, seeds: Any) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    scratch = tempfile.mkdtemp(prefix="pyvhdx-fuzz-", dir=shm)  # workers' files, removed after
    opts = {
        "time_limit": args.time_limit,
        "memory_mb": args.memory_mb,
        "coverage": args.coverage,
        "no_convert": args.no_convert,
        "write": args.write,
        "scratch": scratch,
        "peak_mb": args.peak_mb,
        "cpu_time": args.cpu_time,
    }

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # stop the workers and summarize
    ctx = mp.get_context("fork")
    slots = [_Slot(ctx, seeds, opts) for _ in range(args.workers)]
    stats = Stats()
    seen: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    hard_limit = args.time_limit * (20 if args.cpu_time else 3) + 10
    next_case = args.start
    last_case = args.start + args.cases if args.cases else None
    t0 = time.monotonic()
    last_report = t0

    def more() -> bool:
        if last_case is not None and next_case >= last_case:
            return False
        return deadline is None or time.monotonic() < deadline

    def record(case: tuple[int, dict[str, Any], int], result: dict[str, Any]) -> None:
        case_id, mutation, rng_seed = case
        sigs = stats.add(case_id, mutation, result)
        if result["status"] != "ok":
            saved = _save(out, seeds, case_id, mutation, rng_seed, result, sigs, seen, args.keep)
            if saved is not None and seen[sigs[0] if sigs else result["status"]] == 1:
                print(f"[case {case_id}] {result['status']}: {'; '.join(sigs)} -> {saved}",
                      file=sys.stderr, flush=True)  # fmt: skip

    try:
        for slot in slots:
            if more():
                mutation, rng_seed = _mutation_for(seeds, args.seed, next_case)
                slot.send((next_case, mutation, rng_seed))
                next_case += 1
        while any(s.case is not None for s in slots):
            ready = wait([s.conn for s in slots if s.case is not None], timeout=1.0)
            now = time.monotonic()
            for i, slot in enumerate(slots):
                if slot.case is None:
                    continue
                result = None
                if slot.conn in ready:
                    try:
                        _, result = slot.conn.recv()
                    except (EOFError, OSError):
                        code = slot.proc.exitcode
                        result = {"status": "crash", "outcomes": [], "seconds": now - slot.started,
                                  "escapes": [{"op": "worker", "type": f"exit {code}",
                                               "message": "the worker died", "where": "worker",
                                               "traceback": ""}]}  # fmt: skip
                elif now - slot.started > hard_limit:
                    result = {"status": "hang", "outcomes": [], "seconds": now - slot.started,
                              "escapes": [{"op": "worker", "type": "killed",
                                           "message": f"no answer in {hard_limit} s",
                                           "where": "worker", "traceback": ""}]}  # fmt: skip
                if result is None:
                    continue
                case = slot.case
                slot.case = None
                if result["status"] in ("crash",) or (
                    result["status"] == "hang" and result["escapes"][0]["op"] == "worker"
                ):
                    slot.kill()
                    slots[i] = slot = _Slot(ctx, seeds, opts)
                record(case, result)
                if more():
                    mutation, rng_seed = _mutation_for(seeds, args.seed, next_case)
                    slot.send((next_case, mutation, rng_seed))
                    next_case += 1
            if now - last_report >= args.progress:
                last_report = now
                print(stats.line(now - t0), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for slot in slots:
            try:
                if slot.case is None and slot.proc.is_alive():
                    slot.conn.send(None)
                    if slot.conn.poll(60):
                        msg = slot.conn.recv()
                        if msg[0] == "done":
                            stats.arcs.update(tuple(a) for a in msg[1])
            except (EOFError, OSError):
                pass
            slot.proc.join(5)
            if slot.proc.is_alive():
                slot.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    return _summary(args, stats, time.monotonic() - t0, out)


def _summary(args: argparse.Namespace, stats: Stats, elapsed: float, out: Path) -> int:
    s = stats.status
    per_seed = ", ".join(f"{k} {v}" for k, v in sorted(stats.per_seed.items()))
    lines = [
        f"seeds: {len(stats.per_seed)} ({per_seed})",
        f"cases: {stats.cases} in {elapsed:.0f} s ({stats.cases / max(elapsed, 1e-9):.1f}/s, "
        f"slowest {stats.slowest[0]:.2f} s: case {stats.slowest[1]})",
        f"escapes: {s['escape']}",
        f"hangs: {s['hang']}",
        f"memory blowups: {s['memory']}",
        f"worker crashes: {s['crash']}",
        f"distinct outcomes (operation, error type, structure, field): {len(stats.outcomes)}",
        f"memory: at most {stats.peak[0] >> 20} MiB touched by one case (case {stats.peak[1]}); "
        f"peak RSS {_max_rss_mb()} MiB (this process), "
        f"{_max_rss_mb(resource.RUSAGE_CHILDREN)} MiB (the largest child: a worker, qemu-img)",
    ]
    if stats.arcs:
        lines.append(f"distinct branches (coverage arcs) in src/pyvhdx: {len(stats.arcs)}")
    lines.append(f"distinct problems: {len(stats.signatures)}")
    for sig, n in stats.signatures.most_common():
        lines.append(f"  {n:6d}  {sig}")
    text = "\n".join(lines)
    print(text)
    summary = {
        "cases": stats.cases,
        "seconds": elapsed,
        "status": dict(s),
        "distinct-outcomes": len(stats.outcomes),
        "distinct-arcs": len(stats.arcs) or None,
        "case-peak-bytes": stats.peak[0],
        "peak-rss-mb": _max_rss_mb(),
        "workers-peak-rss-mb": _max_rss_mb(resource.RUSAGE_CHILDREN),
        "problems": dict(stats.signatures),
        "per-seed": dict(stats.per_seed),
        "command": " ".join(sys.argv),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    bad = s["escape"] + s["hang"] + s["memory"] + s["crash"]
    return 1 if bad else 0


# -- replay and atheris ------------------------------------------------------------------


def replay(args: argparse.Namespace) -> int:
    from tests import fuzzlib

    record = json.loads(Path(args.replay).read_text())
    d = Path(args.replay).parent
    work = Path(tempfile.mkdtemp(prefix="pyvhdx-replay-"))
    try:
        (work / "pristine").mkdir()
        for gz in d.glob("*.gz"):
            with gzip.open(gz) as g:
                data = g.read()
            (work / gz.name[:-3]).write_bytes(data)
            (work / "pristine" / gz.name[:-3]).write_bytes(data)
        for gz in d.glob("pristine/*.gz"):
            with gzip.open(gz) as g:
                (work / "pristine" / gz.name[:-3]).write_bytes(g.read())
        names = [p.name for p in work.iterdir() if p.is_file()]
        files = [fuzzlib.SeedFile(n, (work / n).read_bytes()) for n in names]
        seed = fuzzlib.Seed(record["seed"], "", files, record["target"])
        result = fuzzlib.run_case(
            work,
            seed,
            pristine=work / "pristine" / record["target"],
            rng_seed=record["rng-seed"],
            time_limit=args.time_limit,
            write=args.write,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"status: {result.status} ({result.seconds:.2f} s)")
    for e in result.escapes:
        print(f"--- {fuzzlib.escape_signature(e)}\n{e['traceback']}")
    return 0 if result.status == "ok" else 1


def _plug_compare_leak(atheris: Any) -> None:
    """Keep atheris from leaking the result of every instrumented comparison.

    atheris (3.0) replaces each comparison in instrumented code by a call to
    ``atheris._trace_cmp``, which keeps a reference to a result that is not a
    ``bool``: every ``a != b`` of numpy arrays in pyvhdx (compare, inspect, the
    BAT code) leaked its result array, 1.4-2.5 MB a case (587 MB to 5.2 GB in
    1.8k cases). libFuzzer can only use comparisons of ints, strings and bytes,
    whose results are bools; the others are made here without the native hook.
    The instrumented code looks the hook up on the module at each comparison;
    ``atheris.Fuzz()`` binds it anew, so this is called again in the target (a
    no-op once the wrapper is in place).
    """
    native = atheris._trace_cmp
    if getattr(native, "pyvhdx_plugged", False):
        return
    import dis
    import operator

    from atheris import instrument_bytecode

    shift = getattr(instrument_bytecode, "CMP_OP_SHIFT_AMOUNT", 0)
    ops = {"<": operator.lt, "<=": operator.le, "==": operator.eq,
           "!=": operator.ne, ">": operator.gt, ">=": operator.ge}  # fmt: skip
    traced = (int, str, bytes)

    def trace_cmp(left: Any, right: Any, opid: int, idx: int, left_is_const: bool) -> Any:
        if type(left) in traced and type(right) in traced:
            return native(left, right, opid, idx, left_is_const)
        return ops[dis.cmp_op[opid >> shift]](left, right)

    trace_cmp.pyvhdx_plugged = True  # type: ignore[attr-defined]
    atheris._trace_cmp = trace_cmp


def run_atheris(args: argparse.Namespace) -> int:
    """Coverage-guided: atheris's bytes drive the mutation choices, in this process.

    libFuzzer's own files (``crash-*``, ``timeout-*``, ``slow-unit-*``) go to
    ``--out`` too (``-artifact_prefix``); its corpus to ``--corpus`` if given.
    """
    import atheris

    with atheris.instrument_imports(include=["pyvhdx"]):
        import pyvhdx

        # every module now: pyvhdx imports most of them when first used, which
        # would be outside this block (not instrumented, no coverage)
        for module in pkgutil.walk_packages(pyvhdx.__path__, "pyvhdx."):
            if not module.name.endswith("__main__"):
                with contextlib.suppress(ImportError):  # an optional dependency missing
                    importlib.import_module(module.name)
    from tests import fuzzlib

    seeds = _build(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pyvhdx-atheris-"))
    ws = fuzzlib.Workspace(root, seeds)
    opts = {
        "time_limit": args.time_limit,
        "cpu_time": args.cpu_time,
        "memory_mb": args.memory_mb,
        "peak_mb": args.peak_mb,
        "no_convert": args.no_convert,
        "write": args.write,
    }
    stats = Stats()
    seen: collections.Counter[str] = collections.Counter()
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60 if args.minutes else None
    state = {"last": t0}

    def finish() -> None:
        code = _summary(args, stats, time.monotonic() - t0, out)
        shutil.rmtree(root, ignore_errors=True)
        sys.stdout.flush()
        os._exit(code)

    def one(data: bytes) -> None:
        _plug_compare_leak(atheris)
        fdp = atheris.FuzzedDataProvider(data)
        mutation = fuzzlib.make_mutation(seeds, fuzzlib.FdpChooser(fdp))
        rng_seed = stats.cases
        result = _bounded_case(ws, mutation, rng_seed, opts)
        sigs = stats.add(stats.cases, mutation, result)
        if result["status"] != "ok":
            saved = _save(
                out, seeds, stats.cases, mutation, rng_seed, result, sigs, seen, args.keep
            )
            if saved is not None:
                print(
                    f"[atheris] {result['status']}: {'; '.join(sigs)} -> {saved}", file=sys.stderr
                )
        now = time.monotonic()
        if now - state["last"] >= args.progress:
            state["last"] = now
            print(stats.line(now - t0), file=sys.stderr, flush=True)
        if (args.cases and stats.cases >= args.cases) or (deadline and now >= deadline):
            finish()

    libfuzzer = [
        sys.argv[0],
        f"-artifact_prefix={out}{os.sep}",
        # a backstop (a deadlock, with --cpu-time): the harness bounds each case
        f"-timeout={int(args.time_limit * (20 if args.cpu_time else 3) + 10)}",
        f"-report_slow_units={int(args.time_limit * 3 + 10)}",  # (a hang is a case result)
        "-rss_limit_mb=0",  # each case's memory is bounded in _bounded_case
        "-max_len=2048",  # choices consume a few bytes each: a case needs ~50-500
        "-len_control=0",
    ]
    if args.corpus:
        Path(args.corpus).mkdir(parents=True, exist_ok=True)
        libfuzzer.append(args.corpus)
    libfuzzer += args.libfuzzer or []
    atheris.Setup(libfuzzer, one)
    atheris.Fuzz()
    return 0  # pragma: no cover - Fuzz() does not return


def _cli_seeds(args: argparse.Namespace, directory: Path) -> Any:
    """The seeds of a ``--group`` (``sample`` and ``built`` are the test suite's)."""
    from tests import fuzzlib

    seeds = {} if args.group == "built" else fuzzlib.sample_seeds()
    if args.group == "built":
        seeds.update(fuzzlib.build_seeds(directory, qemu=False, names=fuzzlib.CLI_SEEDS))
    elif args.group == "all":
        seeds.update(fuzzlib.build_seeds(directory, qemu=not args.no_qemu, names=args.only))
    return seeds


def run_cli_campaign(args: argparse.Namespace) -> int:
    """Mutated images through the reading commands of the command line, in-process.

    Each case runs four commands (``fuzzlib.run_cli_case``); every misbehaving
    run (an escaped exception, a traceback, an exit status other than 0, 1 and 2,
    stdout that is not JSON with --json, a hang) is one line in ``--failures``
    with the command that replays its case.
    """
    from tests import fuzzlib

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures_path = Path(args.failures) if args.failures else out / "cli-failures.txt"
    scratch = Path(tempfile.mkdtemp(prefix="pyvhdx-clifuzz-"))
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60 if args.minutes else None
    runs, bad = 0, 0
    statuses: collections.Counter[str] = collections.Counter()
    signatures: collections.Counter[str] = collections.Counter()
    case_id = args.start
    try:
        seeds = _cli_seeds(args, scratch / "seeds")
        print(f"seeds: {', '.join(sorted(seeds))}", file=sys.stderr)
        ws = fuzzlib.Workspace(scratch / "work", seeds)
        last_report = t0
        with failures_path.open("a") as log:
            while (not args.cli or case_id < args.start + args.cli) and (
                deadline is None or time.monotonic() < deadline
            ):
                mutation, rng_seed = fuzzlib.case_mutation(seeds, args.seed, case_id)
                for r in fuzzlib.run_cli_case(
                    ws, mutation, rng_seed, time_limit=args.time_limit, cpu_time=args.cpu_time
                ):
                    runs += 1
                    statuses[f"{r.argv[0]} {r.status}"] += 1
                    if not r.problems:
                        continue
                    bad += 1
                    sig = fuzzlib.cli_problem_signature(r)
                    signatures[sig] += 1
                    line = (
                        f"[{args.group} case {case_id}, seed image {mutation['seed']}, cause "
                        f"{r.cause or '?'}] {r.describe(scratch)} | replay: python tools/fuzz.py "
                        f"--cli 1 --group {args.group} --seed {args.seed} --start {case_id}"
                    )
                    log.write(line + "\n")
                    log.flush()
                    if signatures[sig] == 1 or args.cli == 1:
                        print(line, file=sys.stderr, flush=True)
                        if args.cli == 1:
                            print(r.stderr, file=sys.stderr)
                case_id += 1
                now = time.monotonic()
                if now - last_report >= args.progress:
                    last_report = now
                    print(f"cli cases {case_id - args.start} | runs {runs} | misbehaved {bad} "
                          f"| distinct {len(signatures)}", file=sys.stderr, flush=True)  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print(f"cli cases: {case_id - args.start} in {elapsed:.0f} s; command runs: {runs}; "
          f"misbehaved: {bad} (listed in {failures_path})")  # fmt: skip
    print(f"distinct problems: {len(signatures)}")
    for sig, n in signatures.most_common():
        print(f"  {n:6d}  {sig}")
    print("exit statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    return 1 if bad else 0


# -- main ---------------------------------------------------------------------------------


def _build(args: argparse.Namespace) -> Any:
    from tests import fuzzlib

    seeds_dir = (
        Path(args.seeds_dir) if args.seeds_dir else Path(tempfile.mkdtemp(prefix="pyvhdx-seeds-"))
    )
    try:
        seeds = fuzzlib.build_seeds(seeds_dir, qemu=not args.no_qemu, names=args.only or None)
    finally:
        if not args.seeds_dir:
            shutil.rmtree(seeds_dir, ignore_errors=True)
    print(f"seeds: {', '.join(sorted(seeds))}", file=sys.stderr)
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=0, help="cases to run (0: until --minutes)")
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes")
    p.add_argument("--seed", type=int, default=0, help="master seed of the random mutator")
    p.add_argument("--start", type=int, default=0, help="first case number (resume a run)")
    p.add_argument("--out", default="fuzz-crashes", help="folder for problem inputs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    p.add_argument("--cpu-time", action="store_true",
                   help="bound the CPU time of a case, not its wall time (a fuzzer at nice 19 "
                        "on a busy machine)")  # fmt: skip
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="address space a case may add to its process (0: no limit)")  # fmt: skip
    p.add_argument("--peak-mb", type=int, default=512,
                   help="memory a case may touch at its peak (0: no limit)")  # fmt: skip
    p.add_argument("--keep", type=int, default=5, help="inputs saved per distinct problem")
    p.add_argument("--progress", type=float, default=30.0, help="seconds between status lines")
    p.add_argument("--seeds-dir", help="build the seeds here (default: a temporary folder)")
    p.add_argument("--only", action="append", help="fuzz only this seed (repeatable)")
    p.add_argument("--no-qemu", action="store_true", help="no qemu-img seeds")
    p.add_argument("--no-convert", action="store_true", help="skip the conversions")
    p.add_argument(
        "--write",
        action="store_true",
        help="also open a copy r+, write, and check the writes read back",
    )
    p.add_argument("--coverage", action="store_true",
                   help="count the branches of src/pyvhdx reached (slower)")  # fmt: skip
    p.add_argument("--atheris", action="store_true", help="coverage-guided mode with atheris")
    p.add_argument("--libfuzzer", action="append", help="extra libFuzzer flag (atheris mode)")
    p.add_argument("--corpus", help="libFuzzer's corpus folder, kept between runs (atheris mode)")
    p.add_argument("--replay", help="run the case saved in this case.json again")
    p.add_argument("--cli", type=int, metavar="N",
                   help="fuzz the command line instead: N cases (0: until --minutes)")  # fmt: skip
    p.add_argument("--group", choices=("all", "sample", "built"), default="all",
                   help="--cli seeds: sample_images/, the suite's built seeds, or all")  # fmt: skip
    p.add_argument("--failures", help="--cli: append the misbehaving runs to this file")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args)
    if args.atheris:
        return run_atheris(args)
    if args.cli is not None:
        if not args.cli and not args.minutes:
            args.cli = 1000
        return run_cli_campaign(args)
    if not args.cases and not args.minutes:
        args.cases = 1000
    seeds = _build(args)
    return campaign(args, seeds)


if __name__ == "__main__":
    sys.exit(main())
