"""What changed between two disks, as runs of sectors and as a delta image
(changed-block backups: a full backup, then deltas that hold only what changed).

Two ways to find the changes, chosen by :func:`diff_images` and reported:

- ``"chain"``: NEW is a differencing disk whose chain reaches BASE (any depth).
  The changes are the ranges the levels above BASE store (their allocation and
  sector bitmaps, :func:`pyvhdx.compare.allocation_map`); no data is read. A
  range written with the bytes BASE already had still counts, unless ``exact``,
  which compares those ranges and keeps the sectors that differ.
- ``"compare"``: any two images. Ranges that read as zeros without being stored
  in both are skipped; the rest is read in chunks of both and compared sector by
  sector with numpy, in bounded memory.

A delta (:func:`write_delta`) is a differencing image whose parent is BASE
holding NEW's bytes over every changed run, so that BASE + DELTA reads as NEW;
``merge_image`` of the ``pyvhdx.merge`` module applies it. A raw delta is a sparse raw file
with the changed runs at their offsets, plus the runs as JSON.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np

from .compare import CHUNK_SIZE, Allocation, allocation_map
from .errors import InvalidArgumentError
from .image import DiskImage, open_image
from .newfile import new_file

__all__ = ["SECTOR", "DiffResult", "diff_images", "write_delta", "write_raw_delta"]

#: The granularity of the runs.
SECTOR: Final = 512


@dataclasses.dataclass(frozen=True)
class DiffResult:
    """The changed runs ``(start, length)`` of NEW against BASE, sorted and coalesced."""

    method: str  # "chain" or "compare"
    base_size: int
    new_size: int
    runs: list[tuple[int, int]]
    #: Per run, where NEW's bytes at its start are: the file holding them and the
    #: offset there (None where they read as zeros without being stored).
    sources: list[tuple[str | None, int | None]] = dataclasses.field(default_factory=list)

    @property
    def changed_bytes(self) -> int:
        return sum(n for _, n in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "base-size": self.base_size,
            "new-size": self.new_size,
            "changed-bytes": self.changed_bytes,
            "runs": [
                {"start": s, "length": n, "image": src[0], "file-offset": src[1]}
                for (s, n), src in zip(self.runs, self.sources or self._unknown(), strict=True)
            ],
        }

    def _unknown(self) -> list[tuple[str | None, int | None]]:
        return [(None, None)] * len(self.runs)


class _Runs:
    """Runs appended in ascending order, touching ones joined."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []

    def add(self, start: int, length: int) -> None:
        if length <= 0:
            return
        if self.runs and self.runs[-1][0] + self.runs[-1][1] == start:
            self.runs[-1] = (self.runs[-1][0], self.runs[-1][1] + length)
        else:
            self.runs.append((start, length))

    def add_mask(self, start: int, mask: np.ndarray) -> None:
        """Sectors ``start + i * SECTOR`` where ``mask[i]`` (the last one may be short)."""
        edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
        for a, z in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            self.add(start + a * SECTOR, (z - a) * SECTOR)


def _sectors(a: np.ndarray) -> np.ndarray:
    """``a`` (bytes) as rows of one sector, the last row zero-padded."""
    pad = -len(a) % SECTOR
    if pad:
        a = np.concatenate((a, np.zeros(pad, np.uint8)))
    return a.reshape(-1, SECTOR)


class _Reader:
    def __init__(self, img: DiskImage) -> None:
        self.img = img
        self.buf = bytearray(CHUNK_SIZE)

    def read(self, offset: int, length: int) -> memoryview:
        mv = memoryview(self.buf)[:length]
        self.img.readinto_at(offset, mv)
        return mv


_ZEROS: Final = bytes(CHUNK_SIZE)


def _same(a: memoryview, b: memoryview) -> bool:
    """``a == b`` at memcmp speed (memoryview's own == compares byte by byte)."""
    return bool(np.array_equal(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)))


def _compare_range(
    out: _Runs, ra: _Reader | None, rb: _Reader | None, start: int, end: int
) -> None:
    """Differing sectors of ``[start, end)``; a missing reader reads as zeros. With two
    readers, NEW's chunk is read in a worker thread while BASE's is read here (positional
    reads release the GIL)."""
    pos = start
    zeros = memoryview(_ZEROS)
    pool = _pool() if ra is not None and rb is not None else None
    while pos < end:
        n = min(CHUNK_SIZE, end - pos)
        if pool is not None and ra is not None and rb is not None:
            pending = pool.submit(rb.read, pos, n)
            a = ra.read(pos, n)
            b = pending.result()
        else:
            a = ra.read(pos, n) if ra is not None else zeros[:n]
            b = rb.read(pos, n) if rb is not None else zeros[:n]
        if not _same(a, b):  # the sectors only where something differs
            x, y = _sectors(np.frombuffer(a, np.uint8)), _sectors(np.frombuffer(b, np.uint8))
            out.add_mask(pos, np.asarray((x != y).any(axis=1), dtype=bool))
        pos += n


_POOL: list[concurrent.futures.ThreadPoolExecutor] = []


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """One reader thread for the process (made on first use)."""
    if not _POOL:
        _POOL.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pyvhdx-diff"))
    return _POOL[0]


def _walk(base: DiskImage, new: DiskImage, end: int, out: _Runs) -> None:
    """The compare path over ``[0, end)``: both allocation maps in step."""
    ita: Iterator[Allocation] = allocation_map(base, 0, end)
    itb: Iterator[Allocation] = allocation_map(new, 0, end)
    ra, rb = _Reader(base), _Reader(new)
    ea, eb = next(ita, None), next(itb, None)
    pos = 0
    while pos < end and ea is not None and eb is not None:
        stop = min(ea.start + ea.length, eb.start + eb.length)
        za, zb = ea.reads_zero, eb.reads_zero
        if not (za and zb):
            _compare_range(out, None if za else ra, None if zb else rb, pos, stop)
        pos = stop
        if ea.start + ea.length == stop:
            ea = next(ita, None)
        if eb.start + eb.length == stop:
            eb = next(itb, None)


def _depth_of(new: DiskImage, base_path: Path) -> int | None:
    """How many levels above BASE ``new`` is in its own chain, if BASE is in it."""
    depth, cur = 0, new
    while cur is not None:
        if depth and Path(cur.name).resolve() == base_path:
            return depth
        cur = cur.parent  # type: ignore[assignment]
        depth += 1
    return None


def _stored_blocks(img: DiskImage) -> Iterator[int]:
    """Blocks whose BAT entry says this image stores something (data, zeros or part of
    a block), from the raw entries in chunks: no table cache, bounded memory."""
    from .constants import VHD_BAT_UNUSED, VHDX_BAT_STATE_MASK, PayloadState
    from .vhdx.file import VHDXFile

    h: Any = img.handler
    step = 1 << 20  # entries a read
    if isinstance(h, VHDXFile):
        ratio, total = h.chunk_ratio, h.bat_entry_count
        states = (PayloadState.ZERO, PayloadState.FULLY_PRESENT, PayloadState.PARTIALLY_PRESENT)
        for first in range(0, total, step):
            n = min(step, total - first)
            raw = np.frombuffer(h.source.read_exact(h.bat_offset + 8 * first, 8 * n, "BAT"), "<u8")
            state = raw & np.uint64(VHDX_BAT_STATE_MASK)
            index = np.flatnonzero(np.isin(state, np.array(states, np.uint64))) + first
            index = index[(index + 1) % (ratio + 1) != 0]  # payload entries only
            yield from (index - index // (ratio + 1)).tolist()
        return
    blocks = h.table.block_count
    for first in range(0, blocks, step):
        n = min(step, blocks - first)
        raw = np.frombuffer(h.source.read_exact(h.table_offset + 4 * first, 4 * n, "BAT"), ">u4")
        yield from (np.flatnonzero(raw != VHD_BAT_UNUSED) + first).tolist()


def _chain_runs(new: DiskImage, depth: int, out: _Runs) -> None:
    """The ranges the levels above BASE store (their BATs and sector bitmaps)."""
    from .constants import RunKind

    found: list[tuple[int, int]] = []
    level: DiskImage | None = new
    for _ in range(depth):
        assert level is not None
        bs = level.handler.table.block_size
        for block in _stored_blocks(level):
            for ext in level.extents(block * bs, bs):
                if ext.kind is not RunKind.PARENT:
                    found.append((ext.start, ext.length))
        level = level.parent
    for start, length in sorted(found):
        if out.runs and start < out.runs[-1][0] + out.runs[-1][1]:  # levels overlap
            end = max(out.runs[-1][0] + out.runs[-1][1], start + length)
            out.runs[-1] = (out.runs[-1][0], end - out.runs[-1][0])
        else:
            out.add(start, length)


def _exact(base: DiskImage, new: DiskImage, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Of ``runs``, the sectors whose bytes differ."""
    out = _Runs()
    ra, rb = _Reader(base), _Reader(new)
    for start, length in runs:
        _compare_range(out, ra, rb, start, start + length)
    return out.runs


def diff_images(
    base: str | os.PathLike[str],
    new: str | os.PathLike[str],
    *,
    exact: bool = False,
    method: str | None = None,
) -> DiffResult:
    """The runs of sectors in which NEW's content differs from BASE's.

    Args:
        base, new: the two images (any formats pyvhdx reads).
        exact: on the chain path, compare the stored ranges too and keep only
            the sectors that differ.
        method: force ``"compare"`` (``"chain"`` is taken whenever it applies).

    Raises:
        InvalidArgumentError: an unknown method.
        PyvhdxError, OSError: an image cannot be opened or read.
    """
    if method not in (None, "compare"):
        raise InvalidArgumentError(f"method must be 'compare' or left out, not {method!r}")
    out = _Runs()
    with open_image(base) as b, open_image(new) as n:
        bsize, nsize = b.get_size(), n.get_size()
        depth = None if method else _depth_of(n, Path(b.name).resolve())
        if depth is not None and bsize == nsize:
            _chain_runs(n, depth, out)
            runs = _exact(b, n, out.runs) if exact else out.runs
            return DiffResult("chain", bsize, nsize, runs, _sources(n, runs))
        common = min(bsize, nsize)
        _walk(b, n, common, out)
        if nsize > common:  # NEW's tail against nothing: what is not zero
            for run in allocation_map(n, common):
                if not run.reads_zero:
                    _compare_range(out, None, _Reader(n), run.start, run.start + run.length)
        return DiffResult("compare", bsize, nsize, out.runs, _sources(n, out.runs))


def _sources(new: DiskImage, runs: list[tuple[int, int]]) -> list[tuple[str | None, int | None]]:
    """Where NEW stores the first byte of each run (the image of the chain, its offset)."""
    out: list[tuple[str | None, int | None]] = []
    for start, _length in runs:
        first = next(allocation_map(new, start, SECTOR), None)
        if first is None or first.reads_zero:
            out.append((None, None))
        else:
            offset = None if first.file_offset is None else first.file_offset
            out.append((first.filename, offset))
    return out


def _copy_runs(new: DiskImage, runs: list[tuple[int, int]], write: Any) -> None:
    buf = bytearray(CHUNK_SIZE)
    for start, length in runs:
        pos, end = start, start + length
        while pos < end:
            k = min(CHUNK_SIZE, end - pos)
            mv = memoryview(buf)[:k]
            new.readinto_at(pos, mv)
            write(pos, mv)
            pos += k


def _refuse_an_input(delta: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> None:
    """Refuse ``delta`` when it is one of the inputs or of their ancestors: renaming
    the finished delta over BASE, NEW or a parent of theirs would destroy the very
    data it is made from (``diff BASE NEW -o BASE --force``).

    Raises:
        InvalidArgumentError: ``delta`` names (or is a link to) such a file.
    """
    target = os.path.realpath(delta)
    for given in inputs:
        with open_image(given, allow_missing_parent=True) as img:
            member: DiskImage | None = img
            while member is not None:
                name = member.name
                same = os.path.realpath(name) == target or (
                    os.path.exists(delta) and os.path.exists(name) and os.path.samefile(name, delta)
                )
                if same:
                    raise InvalidArgumentError(
                        f"cannot write the delta to {delta}: it is {name}, "
                        "an input of the diff or one of its parents; choose another name"
                    )
                member = member.parent


def write_delta(
    base: str | os.PathLike[str],
    new: str | os.PathLike[str],
    delta: str | os.PathLike[str],
    result: DiffResult | None = None,
    *,
    overwrite: bool = False,
) -> DiffResult:
    """Write the delta image ``delta``: a differencing child of BASE (VHDX or VHD by
    its name, as BASE) holding NEW's bytes over every changed run. It is built under
    a temporary name and renamed into place when complete (:mod:`pyvhdx.newfile`):
    an error, Ctrl-C or a kill never leaves a partial delta under ``delta``.

    Raises:
        InvalidArgumentError: BASE and NEW differ in size (a child has its parent's).
    """
    from .constants import ImageFormat
    from .create import create_vhd_child, create_vhdx_child

    result = diff_images(base, new) if result is None else result
    if result.base_size != result.new_size:
        raise InvalidArgumentError(
            f"a delta is a child of BASE and has its size ({result.base_size} bytes); "
            f"NEW has {result.new_size}: resize BASE first"
        )
    _refuse_an_input(delta, base, new)
    with open_image(base) as b:
        fmt = b.format
    make = create_vhdx_child if fmt is ImageFormat.VHDX else create_vhd_child
    if fmt is ImageFormat.RAW:
        raise InvalidArgumentError(f"{base} is a raw disk: a delta needs a VHDX or VHD base")
    with new_file(delta, overwrite=overwrite) as out:
        make(out.path, base, overwrite=True)
        with open_image(new) as n, open_image(out.path, "r+", parent=base) as d:
            _copy_runs(n, result.runs, d.write_at)
    return result


def write_raw_delta(
    new: str | os.PathLike[str],
    delta: str | os.PathLike[str],
    result: DiffResult,
    *,
    base: str | os.PathLike[str] | None = None,
) -> Path:
    """A sparse raw file of NEW's size with NEW's bytes over the changed runs (holes
    elsewhere), and the runs beside it as ``DELTA.json``; returns the JSON's path.
    ``delta`` may be neither NEW nor ``base`` (when given), nor one of their parents."""
    _refuse_an_input(delta, new, *([] if base is None else [base]))
    target = Path(delta)
    runs_file = target.with_name(target.name + ".json")
    with open_image(new) as n, new_file(target, overwrite=True, size=result.new_size) as out:
        os.ftruncate(out.fd, result.new_size)

        def write(pos: int, data: memoryview) -> None:
            done = 0
            while done < len(data):
                done += os.pwrite(out.fd, data[done:], pos + done)

        _copy_runs(n, result.runs, write)
        # Each file goes in place whole, the raw one first. An older runs file goes
        # before it: a kill between the two leaves the raw file with no runs file
        # (run diff again), never beside the runs of another one.
        runs_file.unlink(missing_ok=True)
    text = (json.dumps(result.to_dict(), indent=1) + "\n").encode()
    with new_file(runs_file, overwrite=True) as out:
        os.write(out.fd, text)  # a new file: one write of a few KiB
    return runs_file
