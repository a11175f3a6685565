"""The VHDX log (MS-VHDX 2.3): scanning, the active sequence, in-memory replay.

Synthetic logs are built here from the construct declarations with correct
CRC-32C checksums; the real DiscUtils image with a pending log is checked against
qemu's on-disk replay of a copy and against its known content hash.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import tracemalloc
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvhdx.checksum import crc32c_with_zeroed_field
from pyvhdx.errors import (
    InvalidArgumentError,
    InvalidImageError,
    LogReplayError,
    PyvhdxError,
    TruncatedImageError,
)
from pyvhdx.log import LogState, load_log, replay_in_memory
from pyvhdx.source import FileSource, SectorOverlay
from pyvhdx.structures.vhdx import (
    DATA_DESCRIPTOR,
    DATA_SECTOR,
    HEADER,
    LOG_ENTRY_HEADER,
    ZERO_DESCRIPTOR,
)
from tests.conftest import (
    MiB,
    decompress_realworld,
    find_qemu_img,
    load_expected,
    require_realworld,
    sha256_of_file,
)

S = 4096
GUID = uuid.UUID("e6fc743c-81ed-4fe8-bf54-698ed57ba0b8")
OTHER_GUID = uuid.UUID("11111111-2222-3333-4444-555555555555")
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
FILE_SIZE = 4 * MiB

# A descriptor to build: ("data", file_offset, 4096 payload bytes) or ("zero", file_offset, length).
Desc = tuple[str, int, Any]


def payload(seed: int) -> bytes:
    return random.Random(seed).randbytes(S)


def build_entry(
    seq: int,
    tail: int,
    descs: Sequence[Desc] = (),
    *,
    guid: uuid.UUID = GUID,
    flushed: int = 0,
    last: int = 0,
    desc_seq: int | None = None,
    data_seq: int | None = None,
    pad_sectors: int = 0,
    bad_crc: bool = False,
    entry_length: int | None = None,
    descriptor_count: int | None = None,
) -> bytes:
    """One log entry (MS-VHDX 2.3.1) with a correct CRC-32C unless ``bad_crc``."""
    count = len(descs)
    desc_sectors = (64 + 32 * count + S - 1) // S
    data = [d for d in descs if d[0] == "data"]
    total = desc_sectors + len(data) + pad_sectors
    body = bytearray(total * S)
    body[0:64] = LOG_ENTRY_HEADER.build(
        {
            "checksum": 0,
            "entry_length": total * S if entry_length is None else entry_length,
            "tail": tail,
            "sequence_number": seq,
            "descriptor_count": count if descriptor_count is None else descriptor_count,
            "reserved": 0,
            "log_guid": guid,
            "flushed_file_offset": flushed,
            "last_file_offset": last,
        }
    )
    dseq = seq if desc_seq is None else desc_seq
    for i, (kind, file_offset, x) in enumerate(descs):
        off = 64 + 32 * i
        if kind == "zero":
            raw = ZERO_DESCRIPTOR.build(
                {
                    "reserved": 0,
                    "zero_length": x,
                    "file_offset": file_offset,
                    "sequence_number": dseq,
                }
            )
        else:
            raw = DATA_DESCRIPTOR.build(
                {
                    "trailing_bytes": int.from_bytes(x[4092:], "little"),
                    "leading_bytes": int.from_bytes(x[:8], "little"),
                    "file_offset": file_offset,
                    "sequence_number": dseq,
                }
            )
        body[off : off + 32] = raw
    sseq = seq if data_seq is None else data_seq
    for j, (_, _, x) in enumerate(data):
        off = (desc_sectors + j) * S
        body[off : off + S] = DATA_SECTOR.build(
            {"sequence_high": sseq >> 32, "data": x[8:4092], "sequence_low": sseq & 0xFFFFFFFF}
        )
    crc = crc32c_with_zeroed_field(body, 4)
    if bad_crc:
        crc ^= 1
    body[4:8] = crc.to_bytes(4, "little")
    return bytes(body)


def make_image(
    entries: Sequence[tuple[int, bytes]],
    *,
    log_offset: int = LOG_OFFSET,
    log_length: int = LOG_LENGTH,
    file_size: int = FILE_SIZE,
    seed: int = 0,
) -> bytearray:
    """File bytes: random content, an empty log region, entries placed (wrapping) in it."""
    base = bytearray(random.Random(seed).randbytes(file_size))
    base[log_offset : log_offset + log_length] = bytes(log_length)
    for pos, blob in entries:
        for i in range(0, len(blob), S):
            p = (pos + i) % log_length
            base[log_offset + p : log_offset + p + S] = blob[i : i + S]
    return base


def model_replay(base: bytes | bytearray, active: Sequence[Sequence[Desc]], last: int) -> bytes:
    """Naive replay onto a copy: each descriptor in order, then extend to ``last``."""
    out = bytearray(base)
    for descs in active:
        for kind, file_offset, x in descs:
            data = bytes(x) if kind == "data" else bytes(int(x))  # zero: x is a length
            end = file_offset + len(data)
            if end > len(out):
                out.extend(bytes(end - len(out)))
            out[file_offset:end] = data
    if last > len(out):
        out.extend(bytes(last - len(out)))
    return bytes(out)


def open_log(data: bytes | bytearray, **kw: Any) -> tuple[FileSource, LogState]:
    source = FileSource(io.BytesIO(bytes(data)))
    state = load_log(
        source,
        log_offset=kw.get("log_offset", LOG_OFFSET),
        log_length=kw.get("log_length", LOG_LENGTH),
        log_guid=kw.get("log_guid", GUID),
    )
    return source, state


def write_file(tmp_path: Path, data: bytes | bytearray, name: str = "img.vhdx") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def file_state(path: Path) -> tuple[str, int, int]:
    st_ = os.stat(path)
    return sha256_of_file(path), st_.st_size, st_.st_mtime_ns


# -- one entry, several entries ----------------------------------------------------


def test_single_entry_data_and_zero(tmp_path: Path) -> None:
    descs: list[Desc] = [
        ("data", 3 * MiB, payload(1)),
        ("zero", 3 * MiB + 2 * S, 3 * S),
        ("data", 3 * MiB + 8 * S, payload(2)),
    ]
    base = make_image([(0, build_entry(7, 0, descs, flushed=FILE_SIZE, last=FILE_SIZE))])
    path = write_file(tmp_path, base)
    before = file_state(path)

    source = FileSource(path)
    state = load_log(source, log_offset=LOG_OFFSET, log_length=LOG_LENGTH, log_guid=GUID)
    assert source.overlay is None  # load_log only reads
    assert [e.sequence_number for e in state.entries] == [7]
    assert state.active == state.entries
    entry = state.active[0]
    assert (entry.log_offset, entry.file_offset, entry.tail) == (0, LOG_OFFSET, 0)
    assert entry.entry_length == 3 * S and entry.descriptor_count == 3
    assert entry.zero_descriptors == [(3 * MiB + 2 * S, 3 * S)]
    assert entry.data_descriptors == [(3 * MiB, S), (3 * MiB + 8 * S, S)]
    assert state.writes() == [
        (3 * MiB, S, "data"),
        (3 * MiB + 2 * S, 3 * S, "zero"),
        (3 * MiB + 8 * S, S, "data"),
    ]

    replay_in_memory(source, state)
    expected = model_replay(base, [descs], FILE_SIZE)
    assert source.size == FILE_SIZE
    assert source.read(0, source.size) == expected
    assert source.read(3 * MiB + 5, 2 * S) == expected[3 * MiB + 5 : 3 * MiB + 5 + 2 * S]
    assert source.read_exact(3 * MiB + 8 * S, S, "sector") == payload(2)
    buf = bytearray(S)
    assert source.readinto_raw(memoryview(buf), 3 * MiB) == S
    assert bytes(buf) == base[3 * MiB : 3 * MiB + S]  # raw reads bypass the overlay
    source.close()
    assert file_state(path) == before


def test_sequence_of_entries_later_writes_win() -> None:
    a, b, c = payload(10), payload(11), payload(12)
    e1: list[Desc] = [("data", 2 * MiB, a), ("data", 2 * MiB + S, a)]
    e2: list[Desc] = [("zero", 2 * MiB, 2 * S), ("data", 2 * MiB + 4 * S, b)]
    e3: list[Desc] = [("data", 2 * MiB + S, c), ("zero", 2 * MiB + 4 * S, S)]
    blobs = [build_entry(100, 0, e1), build_entry(101, 0, e2), build_entry(102, 0, e3)]
    pos = [0, len(blobs[0]), len(blobs[0]) + len(blobs[1])]
    base = make_image(list(zip(pos, blobs, strict=True)))
    source, state = open_log(base)
    assert [e.sequence_number for e in state.active] == [100, 101, 102]
    assert [e.log_offset for e in state.active] == pos
    replay_in_memory(source, state)
    assert source.read(0, FILE_SIZE) == model_replay(base, [e1, e2, e3], 0)
    assert source.read(2 * MiB, S) == bytes(S)
    assert source.read(2 * MiB + S, S) == c
    assert source.read(2 * MiB + 4 * S, S) == bytes(S)


def test_sequence_wraps_around_the_log_end() -> None:
    # Entry 1 starts two sectors before the end and wraps (its data sectors are at
    # the start of the region); entry 2 follows it after the wrap.
    d1: list[Desc] = [("data", 2 * MiB, payload(20)), ("data", 2 * MiB + S, payload(21))]
    d2: list[Desc] = [("data", 2 * MiB + 2 * S, payload(22)), ("zero", 2 * MiB, S)]
    start = LOG_LENGTH - S
    e1 = build_entry(5, start, d1)
    e2 = build_entry(6, start, d2)
    assert len(e1) == 3 * S
    pos2 = (start + len(e1)) % LOG_LENGTH
    base = make_image([(start, e1), (pos2, e2)])
    source, state = open_log(base)
    assert [(e.log_offset, e.sequence_number) for e in state.active] == [(start, 5), (pos2, 6)]
    replay_in_memory(source, state)
    assert source.read(0, FILE_SIZE) == model_replay(base, [d1, d2], 0)


def test_newer_sequence_wins_over_older_complete_one() -> None:
    old: list[Desc] = [("data", 2 * MiB, payload(30))]
    new: list[Desc] = [("data", 2 * MiB, payload(31))]
    o1, o2 = build_entry(10, 0, old), build_entry(11, 0, old)
    n1, n2 = build_entry(20, 64 * S, new), build_entry(21, 64 * S, new)
    base = make_image([(0, o1), (len(o1), o2), (64 * S, n1), (64 * S + len(n1), n2)])
    source, state = open_log(base)
    assert [e.sequence_number for e in state.entries] == [10, 11, 20, 21]
    assert [e.sequence_number for e in state.active] == [20, 21]
    replay_in_memory(source, state)
    assert source.read(2 * MiB, S) == payload(31)


def test_torn_newest_entry_leaves_previous_sequence_active() -> None:
    d: list[Desc] = [("data", 2 * MiB, payload(40))]
    torn: list[Desc] = [("data", 2 * MiB, payload(41))]
    e1, e2 = build_entry(1, 0, d), build_entry(2, 0, d)
    e3 = build_entry(3, 0, torn, bad_crc=True)
    base = make_image([(0, e1), (len(e1), e2), (len(e1) + len(e2), e3)])
    source, state = open_log(base)
    assert [e.sequence_number for e in state.entries] == [1, 2]
    assert [e.sequence_number for e in state.active] == [1, 2]
    replay_in_memory(source, state)
    assert source.read(2 * MiB, S) == payload(40)


def test_tail_outside_the_sequence_makes_it_invalid() -> None:
    d: list[Desc] = [("data", 2 * MiB, payload(50))]
    e1 = build_entry(5, 0, d)
    e2 = build_entry(6, 128 * S, d)  # points at an empty position
    base = make_image([(0, e1), (len(e1), e2)])
    source, state = open_log(base)
    assert len(state.entries) == 2
    assert state.active == []
    assert state.head is None and state.writes() == []
    replay_in_memory(source, state)  # nothing to replay: no overlay
    assert source.overlay is None

    # With an older valid sequence elsewhere, that one becomes active.
    older = build_entry(3, 64 * S, [("data", 2 * MiB, payload(51))])
    source, state = open_log(make_image([(0, e1), (len(e1), e2), (64 * S, older)]))
    assert [e.sequence_number for e in state.active] == [3]


def test_tail_trims_entries_already_applied() -> None:
    # The head's tail names the second entry: the first one is not replayed.
    e1 = build_entry(1, 0, [("data", 2 * MiB, payload(60))])
    e2 = build_entry(2, len(e1), [("data", 2 * MiB + S, payload(61))])
    e3 = build_entry(3, len(e1), [("data", 2 * MiB + 2 * S, payload(62))])
    base = make_image([(0, e1), (len(e1), e2), (len(e1) + len(e2), e3)])
    source, state = open_log(base)
    assert [e.sequence_number for e in state.active] == [2, 3]
    replay_in_memory(source, state)
    assert source.read(2 * MiB, S) == base[2 * MiB : 2 * MiB + S]
    assert source.read(2 * MiB + S, 2 * S) == payload(61) + payload(62)


def test_sequence_numbers_must_increase_by_one() -> None:
    e1 = build_entry(1, 0, [("data", 2 * MiB, payload(70))])
    e2 = build_entry(3, 0, [("data", 2 * MiB, payload(71))])  # gap: 1 -> 3
    _, state = open_log(make_image([(0, e1), (len(e1), e2)]))
    assert len(state.entries) == 2
    assert [e.sequence_number for e in state.active] == [1]  # e2's tail is not in its chain


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"desc_seq": 8}, id="descriptor-sequence"),
        pytest.param({"data_seq": 8}, id="data-sector-sequence"),
        pytest.param({"data_seq": 7 | (1 << 40)}, id="data-sector-sequence-high"),
        pytest.param({"bad_crc": True}, id="crc"),
        pytest.param({"guid": OTHER_GUID}, id="log-guid"),
        pytest.param({"entry_length": 0xFFFFFFFF}, id="entry-length-absurd"),
        pytest.param({"entry_length": 0}, id="entry-length-zero"),
        pytest.param({"entry_length": S}, id="entry-length-short"),
        pytest.param({"entry_length": 2 * LOG_LENGTH}, id="entry-length-beyond-log"),
        pytest.param({"descriptor_count": 0xFFFFFFFF}, id="descriptor-count-absurd"),
        pytest.param({"descriptor_count": 3}, id="descriptor-count-too-high"),
    ],
)
def test_invalid_entry_is_ignored(kw: dict[str, Any]) -> None:
    d: list[Desc] = [("data", 2 * MiB, payload(80)), ("zero", 2 * MiB + S, S)]
    base = make_image([(0, build_entry(7, 0, d, **kw))])
    _, state = open_log(base)
    assert state.entries == [] and state.active == []


@pytest.mark.parametrize(
    "descs",
    [
        pytest.param([("zero", 2 * MiB, 100)], id="zero-length-unaligned"),
        pytest.param([("zero", 2 * MiB + 1, S)], id="zero-offset-unaligned"),
        pytest.param([("data", 2 * MiB + 512, payload(1))], id="data-offset-unaligned"),
    ],
)
def test_misaligned_descriptor_makes_entry_invalid(descs: list[Desc]) -> None:
    _, state = open_log(make_image([(0, build_entry(7, 0, descs))]))
    assert state.entries == []


def test_bad_descriptor_signature_makes_entry_invalid() -> None:
    blob = bytearray(build_entry(7, 0, [("zero", 2 * MiB, S)]))
    blob[64:68] = b"junk"
    blob[4:8] = crc32c_with_zeroed_field(blob, 4).to_bytes(4, "little")
    _, state = open_log(make_image([(0, bytes(blob))]))
    assert state.entries == []


def test_empty_entry_and_padding_sectors() -> None:
    # An entry without descriptors is valid (MS-VHDX 2.3.1.1: DescriptorCount can be
    # zero); sectors beyond the data sectors are covered by the CRC only.
    e1 = build_entry(1, 0, [], last=FILE_SIZE)
    e2 = build_entry(2, 0, [("data", 2 * MiB, payload(90))], pad_sectors=2, last=FILE_SIZE)
    assert len(e2) == 4 * S
    source, state = open_log(make_image([(0, e1), (len(e1), e2)]))
    assert [e.sequence_number for e in state.active] == [1, 2]
    replay_in_memory(source, state)
    assert source.read(2 * MiB, S) == payload(90)


def test_replay_extends_the_file() -> None:
    size = 3 * MiB
    d: list[Desc] = [("data", 3 * MiB + 4 * S, payload(100)), ("zero", 2 * MiB, S)]
    base = make_image([(0, build_entry(1, 0, d, flushed=size, last=5 * MiB))], file_size=size)
    source, state = open_log(base)
    assert source.size == size
    replay_in_memory(source, state)
    assert source.physical_size == size
    assert source.size == 5 * MiB
    expected = model_replay(base, [d], 5 * MiB)
    assert source.read(0, 6 * MiB) == expected  # short at the replayed end
    assert source.read(size - 10, 20) == expected[size - 10 : size + 10]
    assert (
        source.read(3 * MiB + 4 * S - 3, S) == expected[3 * MiB + 4 * S - 3 : 3 * MiB + 5 * S - 3]
    )
    assert source.read_exact(5 * MiB - S, S, "end") == bytes(S)
    with pytest.raises(TruncatedImageError):
        source.read_exact(5 * MiB - S, S + 1, "past the end")

    # A write past LastFileOffset extends the file too (MS-VHDX 2.3.3).
    d2: list[Desc] = [("data", 6 * MiB, payload(101))]
    base2 = make_image([(0, build_entry(1, 0, d2, last=size))], file_size=size)
    source, state = open_log(base2)
    replay_in_memory(source, state)
    assert source.size == 6 * MiB + S
    assert source.read(6 * MiB - 1, S + 1) == b"\0" + payload(101)


def test_truncated_file_below_flushed_file_offset() -> None:
    entry = build_entry(1, 0, [("data", 2 * MiB, payload(1))], flushed=8 * MiB)
    with pytest.raises(TruncatedImageError) as info:
        open_log(make_image([(0, entry)]))
    assert info.value.field == "FlushedFileOffset"
    assert info.value.offset == LOG_OFFSET + 48


def test_zero_log_guid_reads_nothing() -> None:
    source = FileSource(io.BytesIO(b""))
    state = load_log(
        source, log_offset=LOG_OFFSET, log_length=LOG_LENGTH, log_guid=uuid.UUID(int=0)
    )
    assert state.entries == [] and state.active == []


def test_reload_ignores_an_installed_overlay() -> None:
    d: list[Desc] = [("data", LOG_OFFSET + 64 * S, payload(5))]  # writes into the log region
    source, state = open_log(make_image([(0, build_entry(1, 0, d))]))
    replay_in_memory(source, state)
    again = load_log(source, log_offset=LOG_OFFSET, log_length=LOG_LENGTH, log_guid=GUID)
    assert again.entries == state.entries


# -- malformed regions, bounded work ------------------------------------------------


@pytest.mark.parametrize(
    ("log_offset", "log_length", "error", "field"),
    [
        (LOG_OFFSET, 0, InvalidImageError, "LogLength"),
        (LOG_OFFSET, 1000, InvalidImageError, "LogLength"),
        (LOG_OFFSET + 1, LOG_LENGTH, InvalidImageError, "LogOffset"),
        (-S, LOG_LENGTH, InvalidImageError, "LogOffset"),
        (LOG_OFFSET, 0xFFF00000, TruncatedImageError, "LogLength"),
        (FILE_SIZE, LOG_LENGTH, TruncatedImageError, "LogLength"),
        (1 << 62, LOG_LENGTH, TruncatedImageError, "LogLength"),
    ],
)
def test_bad_log_region(
    log_offset: int, log_length: int, error: type[PyvhdxError], field: str
) -> None:
    base = make_image([(0, build_entry(1, 0, [("data", 2 * MiB, payload(1))]))])
    source = FileSource(io.BytesIO(bytes(base)))
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            load_log(source, log_offset=log_offset, log_length=log_length, log_guid=GUID)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == field and info.value.offset == log_offset
    assert info.value.structure == "VHDX log"
    assert peak < 256 * 1024  # nothing is read from a bad region


def test_truncated_log_region(tmp_path: Path) -> None:
    base = make_image([(0, build_entry(1, 0, [("data", 2 * MiB, payload(1))]))])
    path = write_file(tmp_path, base[: LOG_OFFSET + LOG_LENGTH // 2])
    source = FileSource(path)
    with pytest.raises(TruncatedImageError) as info:
        load_log(source, log_offset=LOG_OFFSET, log_length=LOG_LENGTH, log_guid=GUID)
    assert info.value.field == "LogLength"
    source.close()


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"entry_length": 0xFFFFFFFF}, id="entry-length"),
        pytest.param({"entry_length": 0xFFFFF000}, id="entry-length-aligned"),
        pytest.param({"descriptor_count": 0xFFFFFFFF}, id="descriptor-count"),
        pytest.param({"descriptor_count": 0x7FFFFFF}, id="descriptor-count-fits-u32"),
    ],
)
def test_absurd_sizes_allocate_nothing_large(kw: dict[str, Any]) -> None:
    base = make_image([(p * S, build_entry(1 + p, 0, **kw)) for p in range(0, 256, 3)])
    source = FileSource(io.BytesIO(bytes(base)))
    tracemalloc.start()
    try:
        state = load_log(source, log_offset=LOG_OFFSET, log_length=LOG_LENGTH, log_guid=GUID)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert state.entries == [] and state.active == []
    assert peak < 4 * MiB  # 1 MiB read chunks, not EntryLength or DescriptorCount


def test_hostile_overlapping_headers_hit_the_work_limit() -> None:
    # A full-length header at every position of a 4 MiB log: checksumming them all
    # would take 4 GiB of work; the scan stops with a LogReplayError instead.
    log_length = 4 * MiB
    header = build_entry(1, 0, [], entry_length=log_length)[:S]
    base = bytearray(FILE_SIZE + log_length)
    for p in range(0, log_length, S):
        base[LOG_OFFSET + p : LOG_OFFSET + p + S] = header
    with pytest.raises(LogReplayError) as info:
        open_log(base, log_length=log_length)
    assert info.value.field == "EntryLength"


def test_descriptor_limit() -> None:
    # 2**18 descriptors is far more than a real log holds (a 1 MiB log: < 2**15).
    from pyvhdx import log

    d: list[Desc] = [("zero", 2 * MiB, S)] * 200
    blobs = [build_entry(1 + i, 0, d) for i in range(4)]
    pos = 0
    entries = []
    for b in blobs:
        entries.append((pos, b))
        pos += len(b)
    base = make_image(entries)
    old = log._MAX_DESCRIPTORS
    log._MAX_DESCRIPTORS = 500
    try:
        with pytest.raises(LogReplayError) as info:
            open_log(base)
    finally:
        log._MAX_DESCRIPTORS = old
    assert info.value.field == "DescriptorCount"


def test_targets_beyond_any_file_size() -> None:
    d: list[Desc] = [("zero", (1 << 63) - S, 2 * S)]
    source, state = open_log(make_image([(0, build_entry(1, 0, d))]))
    with pytest.raises(LogReplayError) as info:
        replay_in_memory(source, state)
    assert info.value.field == "FileOffset"
    assert source.overlay is None
    e = build_entry(1, 0, [], last=1 << 63)
    source, state = open_log(make_image([(0, e)]))
    with pytest.raises(LogReplayError):
        replay_in_memory(source, state)


def test_bit_flips_raise_only_pyvhdx_errors() -> None:
    d: list[Desc] = [("data", 2 * MiB, payload(3)), ("zero", 2 * MiB + S, S)]
    e1, e2 = build_entry(1, 0, d), build_entry(2, 0, d)
    base = make_image([(0, e1), (len(e1), e2)])
    rng = random.Random(1)
    for _ in range(150):
        damaged = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            i = LOG_OFFSET + rng.randrange(len(e1) + len(e2))
            damaged[i] ^= 1 << rng.randrange(8)
        try:
            source, state = open_log(damaged)
            replay_in_memory(source, state)
            source.read(0, source.size)
        except PyvhdxError:
            pass


# -- hypothesis: random writes through a synthetic log ------------------------------

TARGET = 2 * MiB  # writes land in [TARGET, TARGET + 80 sectors), some past the end
SMALL_FILE = 2 * MiB + 64 * S

op_strategy = st.one_of(
    st.tuples(st.just("data"), st.integers(0, 79), st.integers(0, 2**32)),
    st.tuples(st.just("zero"), st.integers(0, 79), st.integers(1, 8)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op_strategy, min_size=0, max_size=40),
    splits=st.integers(1, 4),
    start_sector=st.integers(0, LOG_LENGTH // S - 1),
    last_extra=st.integers(0, 32),
    reads=st.lists(
        st.tuples(st.integers(0, SMALL_FILE + 90 * S), st.integers(0, 5 * S)), max_size=8
    ),
)
def test_random_writes_through_the_log(
    ops: list[tuple[str, int, int]],
    splits: int,
    start_sector: int,
    last_extra: int,
    reads: list[tuple[int, int]],
) -> None:
    descs: list[Desc] = []
    for kind, sector, x in ops:
        if kind == "data":
            descs.append(("data", TARGET + sector * S, payload(x)))
        else:
            descs.append(("zero", TARGET + sector * S, x * S))
    # Contiguous slices, one entry each, so the sequence keeps the writes' order.
    size = -(-len(descs) // splits) if descs else 0
    chunks = [descs[i : i + size] for i in range(0, len(descs), size)] if descs else [[]]
    last = SMALL_FILE + last_extra * S
    start = start_sector * S
    placed = []
    pos = start
    for n, chunk in enumerate(chunks):
        blob = build_entry(1000 + n, start, chunk, last=last)
        placed.append((pos, blob))
        pos = (pos + len(blob)) % LOG_LENGTH
    base = make_image(placed, file_size=SMALL_FILE, seed=start_sector)
    source, state = open_log(base)
    assert [e.sequence_number for e in state.active] == [1000 + n for n in range(len(chunks))]
    replay_in_memory(source, state)
    expected = model_replay(base, chunks, last)
    assert source.size == len(expected)
    assert source.read(0, source.size + S) == expected
    for offset, length in reads:
        assert source.read(offset, length) == expected[offset : offset + length]


# -- the overlay itself ------------------------------------------------------------


def test_sector_overlay_reads() -> None:
    a, b = payload(200), payload(201)
    overlay = SectorOverlay({S: a, 3 * S: b}, [(5 * S, 7 * S), (6 * S, 9 * S), (9 * S, 10 * S)], 0)
    assert overlay.zero_ranges == [(5 * S, 10 * S)]
    assert overlay.sector_offsets == [S, 3 * S]
    assert overlay.size == 10 * S
    assert overlay.sector(S) == a and overlay.sector(2 * S) is None
    base = bytes(range(256)) * (12 * S // 256)
    source = FileSource(io.BytesIO(base))
    source.set_overlay(overlay)
    model = bytearray(base)
    model[S : 2 * S] = a
    model[3 * S : 4 * S] = b
    model[5 * S : 10 * S] = bytes(5 * S)
    rng = random.Random(3)
    for _ in range(300):
        off = rng.randrange(0, 13 * S)
        n = rng.randrange(0, 6 * S)
        assert source.read(off, n) == bytes(model[off : off + n])
    source.set_overlay(None)
    assert source.overlay is None and source.overlay_size is None
    assert source.read(0, len(base)) == base


@pytest.mark.parametrize(
    ("sectors", "zeros"),
    [
        ({1: bytes(S)}, []),
        ({S: bytes(10)}, []),
        ({-S: bytes(S)}, []),
        ({S: bytes(S)}, [(0, S + 1)]),
        ({}, [(S, 0)]),
    ],
)
def test_sector_overlay_rejects_bad_items(
    sectors: dict[int, bytes], zeros: list[tuple[int, int]]
) -> None:
    with pytest.raises(InvalidArgumentError):
        SectorOverlay(sectors, zeros, 0)


def test_no_overlay_keeps_short_reads() -> None:
    source = FileSource(io.BytesIO(b"x" * 100))
    assert source.overlay is None
    assert source.read(90, 20) == b"x" * 10
    with pytest.raises(InvalidArgumentError):
        source.set_overlay({0: b""})  # type: ignore[arg-type]


# -- the real image -----------------------------------------------------------------

REAL = "DiscUtils/vhdx-log-replay.vhdx.gz"
REAL_SHA = "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e"
STALE_SHA = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"


def _real_image(tmp_path: Path) -> Path:
    require_realworld()
    entry = next(e for e in load_expected() if e["file"] == REAL)
    assert entry["content_sha256"] == REAL_SHA
    return decompress_realworld(entry, tmp_path)


def _load_real(source: FileSource) -> LogState:
    headers = [HEADER.parse(source.read(off, S)) for off in (64 * 1024, 128 * 1024)]
    h = max(headers, key=lambda x: x.sequence_number)
    return load_log(source, log_offset=h.log_offset, log_length=h.log_length, log_guid=h.log_guid)


@pytest.mark.realworld
def test_real_image_log(tmp_path: Path) -> None:
    path = _real_image(tmp_path)
    before = file_state(path)
    with open(path, "rb") as f:
        raw = f.read()
    source = FileSource(path)
    state = _load_real(source)
    # Windows left five entries writing the BAT sector at 3 MiB; the head's tail
    # names the fourth, so the active sequence is the last two.
    assert [e.log_offset for e in state.entries] == [0, 0x1000, 0x3000, 0x5000, 0x7000]
    assert [e.log_offset for e in state.active] == [0x5000, 0x7000]
    assert state.writes() == [(3 * MiB, S, "data"), (3 * MiB, S, "data")]
    replay_in_memory(source, state)
    assert source.size == len(raw)
    replayed = source.read(0, source.size)
    changed = [i for i in range(0, len(raw), S) if replayed[i : i + S] != raw[i : i + S]]
    assert changed == [3 * MiB]
    source.close()
    assert file_state(path) == before


@pytest.mark.realworld
@pytest.mark.oracle
def test_real_image_matches_qemu_replay(tmp_path: Path) -> None:
    qemu = find_qemu_img()
    path = _real_image(tmp_path)
    before = file_state(path)
    copy = tmp_path / "qemu-replayed.vhdx"
    shutil.copyfile(path, copy)
    subprocess.run([qemu, "check", "-q", "-r", "all", str(copy)], check=True, capture_output=True)
    oracle = copy.read_bytes()

    source = FileSource(path)
    state = _load_real(source)
    replay_in_memory(source, state)
    for offset, length, _ in state.writes():
        assert source.read(offset, length) == oracle[offset : offset + length]
    mine = source.read(0, source.size)
    assert len(mine) <= len(oracle)
    differ = {i for i in range(0, len(mine), S) if mine[i : i + S] != oracle[i : i + S]}
    assert differ <= {64 * 1024, 128 * 1024}  # qemu also rewrites both headers
    assert oracle[len(mine) :] == bytes(len(oracle) - len(mine))
    source.close()
    assert file_state(path) == before


@pytest.mark.realworld
def test_real_image_content_after_replay(tmp_path: Path) -> None:
    import pyvhdx

    path = _real_image(tmp_path)
    before = file_state(path)
    digest = hashlib.sha256()
    with pyvhdx.open(path) as img:
        offset = 0
        while offset < img.virtual_size:
            n = min(4 * MiB, img.virtual_size - offset)
            digest.update(img.read_at(offset, n))
            offset += n
    assert digest.hexdigest() == REAL_SHA != STALE_SHA
    assert file_state(path) == before
