"""The VHDX log: find the active sequence and replay it in memory (MS-VHDX 2.3).

The log is a circular buffer of 4 KiB sectors holding entries (MS-VHDX 2.3.1):
a header sector with up to 126 descriptors, more descriptor sectors of 128,
then one data sector per data descriptor. :func:`load_log` scans every 4 KiB
position for valid entries and picks the active sequence (MS-VHDX 2.3.2,
2.3.3); :func:`replay_in_memory` installs the result of replaying it as an
overlay on the :class:`~pyvhdx.source.FileSource`, so a read-only open sees the
replayed file without anything being written (DESIGN.md "Log"; SPEC-NOTES
pitfall 3).

Bounds: the log region is checked against the file before anything is read;
entries are read and checksummed in chunks of at most 1 MiB; zero descriptors
stay ranges; only the active sequence's data sectors are kept (4 KiB each,
bounded by the log length). The checksum work of a scan and the number of
descriptors kept are capped, so a hostile log cannot make the scan quadratic.
"""

from __future__ import annotations

import struct
import uuid
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

from construct import ConstructError

from .checksum import crc32c as _crc32c_continue
from .checksum import crc32c_with_zeroed_field
from .constants import VHDX_LOG_SECTOR_SIZE, MiB
from .errors import InvalidImageError, LogReplayError, TruncatedImageError
from .source import FileSource, SectorOverlay
from .structures.vhdx import DATA_DESCRIPTOR, DATA_SECTOR, LOG_ENTRY_HEADER, ZERO_DESCRIPTOR

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = [
    "LogDescriptor",
    "LogEntry",
    "LogState",
    "entry_checksum_ok",
    "entry_headers",
    "load_log",
    "replay_in_memory",
]

WriteKind = Literal["data", "zero"]

_SECTOR = VHDX_LOG_SECTOR_SIZE
_HEADER_SIZE = 64  # MS-VHDX 2.3.1.1
_DESC_SIZE = 32
# Zero and data descriptors share one layout (MS-VHDX 2.3.1.2, 2.3.1.3):
# signature, u32 (reserved | TrailingBytes), u64 (ZeroLength | LeadingBytes),
# FileOffset, SequenceNumber. struct, not construct: this is the per-item loop.
_DESC = struct.Struct("<4sIQQQ")
_U32 = struct.Struct("<I")
_CHUNK_SECTORS = 256  # read and checksum entries 1 MiB at a time
_MAX_DESCRIPTORS = 1 << 18  # kept across all valid entries (a 1 MiB log holds < 2**15)
_MAX_FILE_OFFSET = (1 << 63) - 1  # the largest offset any file system can hold
_ZERO_GUID = uuid.UUID(int=0)

assert LOG_ENTRY_HEADER.sizeof() == _HEADER_SIZE
assert _DESC.size == _DESC_SIZE == ZERO_DESCRIPTOR.sizeof() == DATA_DESCRIPTOR.sizeof()
assert DATA_SECTOR.sizeof() == _SECTOR


class LogDescriptor(NamedTuple):
    """One descriptor of a valid entry, in replay order (MS-VHDX 2.3.1.2-2.3.1.3)."""

    kind: WriteKind
    file_offset: int  # target offset in the file (4 KiB aligned)
    length: int  # ZeroLength, or 4096 for a data descriptor
    sector_log_offset: int  # data: offset of its data sector in the log region; zero: -1
    leading_bytes: bytes  # data: target bytes 0..7; zero: b""
    trailing_bytes: bytes  # data: target bytes 4092..4095; zero: b""


@dataclass(frozen=True)
class LogEntry:
    """One valid log entry found in the log region (MS-VHDX 2.3.1.1)."""

    log_offset: int  # offset of the entry inside the log region
    file_offset: int  # absolute file offset
    sequence_number: int
    tail: int
    entry_length: int
    descriptor_count: int
    flushed_file_offset: int
    last_file_offset: int
    zero_descriptors: list[tuple[int, int]]  # (file_offset, length)
    data_descriptors: list[tuple[int, int]]  # (file_offset, 4096) target sectors
    descriptors: tuple[LogDescriptor, ...] = field(default=(), repr=False, compare=False)


@dataclass
class LogState:
    """What :func:`load_log` found (MS-VHDX 2.3): ``entries`` carrying ``log_guid`` by
    position, ``active`` the active sequence tail first (empty: none, 2.3.3)."""

    log_guid: uuid.UUID
    log_offset: int
    log_length: int
    entries: list[LogEntry]
    active: list[LogEntry]

    @property
    def head(self) -> LogEntry | None:
        """The newest entry of the active sequence, or None."""
        return self.active[-1] if self.active else None

    def writes(self) -> list[tuple[int, int, WriteKind]]:
        """``(file_offset, length, "data" | "zero")`` per descriptor, in replay order (2.3.3)."""
        return [(d.file_offset, d.length, d.kind) for e in self.active for d in e.descriptors]


# -- reading the circular region -------------------------------------------------


class _LogRegion:
    """Positional reads of the log region as a circular buffer (storage only)."""

    def __init__(self, source: FileSource, offset: int, length: int) -> None:
        self.source = source
        self.offset = offset
        self.length = length

    def read(self, pos: int, size: int) -> bytearray:
        """Read ``size`` (<= length) bytes from ``pos``, wrapping at the end."""
        out = bytearray(size)
        mv = memoryview(out)
        done = 0
        while done < size:
            p = (pos + done) % self.length
            n = min(size - done, self.length - p)
            got = self.source.readinto_raw(mv[done : done + n], self.offset + p)
            if got != n:
                raise TruncatedImageError(
                    "file ends inside the log region",
                    structure="VHDX log",
                    field="LogLength",
                    offset=self.offset + p + got,
                )
            done += n
        return out


class _Budget:
    """Caps on the work of one scan (checksummed bytes, descriptors kept)."""

    def __init__(self, log_offset: int, log_length: int) -> None:
        self.log_offset = log_offset
        # A real log checksums each sector about once or twice; a hostile one
        # (a full-length header at every position) would need length**2 / 4096.
        self.crc_bytes = 8 * log_length + 256 * MiB
        self.descriptors = _MAX_DESCRIPTORS

    def spend_crc(self, n: int, entry_pos: int) -> None:
        self.crc_bytes -= n
        if self.crc_bytes < 0:
            raise LogReplayError(
                "log scan stopped: too many overlapping entry headers to checksum",
                structure="VHDX log entry",
                field="EntryLength",
                offset=self.log_offset + entry_pos,
            )

    def spend_descriptors(self, n: int, entry_pos: int) -> None:
        self.descriptors -= n
        if self.descriptors < 0:
            raise LogReplayError(
                f"log holds more than {_MAX_DESCRIPTORS} descriptors",
                structure="VHDX log entry",
                field="DescriptorCount",
                offset=self.log_offset + entry_pos,
            )


# -- entries ---------------------------------------------------------------------


def _descriptor_sectors(count: int) -> int:
    """Sectors holding the header and ``count`` descriptors (126 + 128 per sector)."""
    return (_HEADER_SIZE + _DESC_SIZE * count + _SECTOR - 1) // _SECTOR


def _data_sector_ok(buf: bytearray | bytes, off: int, seq: int) -> bool:
    """MS-VHDX 2.3.1.4: signature ``data`` and the entry's sequence number split in two."""
    return (
        buf[off : off + 4] == b"data"
        and _U32.unpack_from(buf, off + 4)[0] == seq >> 32
        and _U32.unpack_from(buf, off + _SECTOR - 4)[0] == seq & 0xFFFFFFFF
    )


def parse_entry_header(header: bytes) -> Any | None:
    """A log entry header (MS-VHDX 2.3.1.1) as parsed, or None if it does not parse."""
    try:
        return LOG_ENTRY_HEADER.parse(header)
    except ConstructError:
        return None


def entry_headers(
    source: FileSource, log_offset: int, log_length: int
) -> Iterator[tuple[int, Any]]:
    """``(position, parsed header)`` of every 4 KiB sector of the log region that parses
    as an entry header (MS-VHDX 2.3.1.1), valid or not; storage only."""
    region = _LogRegion(source, log_offset, log_length)
    step = _CHUNK_SECTORS * _SECTOR
    for chunk_pos in range(0, log_length, step):
        chunk = region.read(chunk_pos, min(step, log_length - chunk_pos))
        for i in range(0, len(chunk), _SECTOR):
            if chunk[i : i + 4] == b"loge":
                hdr = parse_entry_header(bytes(chunk[i : i + _HEADER_SIZE]))
                if hdr is not None:
                    yield chunk_pos + i, hdr


def entry_checksum_ok(
    source: FileSource, log_offset: int, log_length: int, pos: int, hdr: Any
) -> bool:
    """Whether the CRC-32C of the entry at ``pos`` (at most ``log_length`` bytes, wrapping
    around the region) matches its Checksum field (MS-VHDX 2.3.1.1)."""
    region = _LogRegion(source, log_offset, log_length)
    length: int = hdr.entry_length
    crc = 0
    for done in range(0, length, _CHUNK_SECTORS * _SECTOR):
        buf = region.read(pos + done, min(_CHUNK_SECTORS * _SECTOR, length - done))
        if done == 0:
            buf[4:8] = bytes(4)  # the Checksum field reads as zero
        crc = _crc32c_continue(buf, crc)
    return bool(crc == hdr.checksum)


def _entry_header(hdr: Any, region: _LogRegion, log_guid: uuid.UUID) -> Any | None:
    """The entry header (MS-VHDX 2.3.1.1) if its fields can start a valid entry."""
    length: int = hdr.entry_length
    if hdr.log_guid != log_guid or hdr.sequence_number == 0:
        return None
    if length == 0 or length % _SECTOR or length > region.length:
        return None
    if _descriptor_sectors(hdr.descriptor_count) > length // _SECTOR:
        return None
    return hdr


def _check_descriptors(buf: bytearray, base: int, stop: int, seq: int, state: list[int]) -> bool:
    """Descriptors wholly inside ``buf`` (entry bytes ``base`` to ``stop``), from ``state``.

    ``state`` is ``[next descriptor, count, data descriptors seen]``, advanced in place.
    """
    while state[0] < state[1] and _HEADER_SIZE + _DESC_SIZE * (state[0] + 1) <= stop:
        sig, _, value, target, dseq = _DESC.unpack_from(
            buf, _HEADER_SIZE + _DESC_SIZE * state[0] - base
        )
        if dseq != seq or target % _SECTOR:
            return False
        if sig == b"desc":
            state[2] += 1
        elif sig != b"zero" or value % _SECTOR:
            return False
        state[0] += 1
    return True


def _entry_consistent(region: _LogRegion, pos: int, hdr: Any, budget: _Budget) -> bool:
    """Pass 1: stream the entry once, checking descriptors and data sectors as they go
    by and accumulating the CRC; stop at the first inconsistency."""
    seq: int = hdr.sequence_number
    count: int = hdr.descriptor_count
    total = hdr.entry_length // _SECTOR
    desc_sectors = _descriptor_sectors(count)
    crc = 0
    state = [0, count, 0]  # next descriptor, count, data descriptors
    for k0 in range(0, total, _CHUNK_SECTORS):
        k1 = min(total, k0 + _CHUNK_SECTORS)
        budget.spend_crc((k1 - k0) * _SECTOR, pos)
        buf = region.read((pos + k0 * _SECTOR) % region.length, (k1 - k0) * _SECTOR)
        if k0 == 0:
            buf[4:8] = bytes(4)  # the Checksum field reads as zero (MS-VHDX 2.3.1.1)
        crc = _crc32c_continue(buf, crc)
        if not _check_descriptors(buf, k0 * _SECTOR, k1 * _SECTOR, seq, state):
            return False
        n_data = state[2]
        if state[0] == count and desc_sectors + n_data > total:
            return False
        for k in range(max(k0, desc_sectors), min(k1, desc_sectors + n_data)):
            if not _data_sector_ok(buf, (k - k0) * _SECTOR, seq):
                return False
    return bool(crc == hdr.checksum)


def _read_entry(
    region: _LogRegion, pos: int, header: Any, log_guid: uuid.UUID, budget: _Budget
) -> LogEntry | None:
    """The entry at ``pos`` if valid (MS-VHDX 2.3.1: header, descriptors, data sectors, CRC-32C);
    it may wrap around the end of the region."""
    hdr = _entry_header(header, region, log_guid)
    if hdr is None or not _entry_consistent(region, pos, hdr, budget):
        return None
    count: int = hdr.descriptor_count
    desc_sectors = _descriptor_sectors(count)

    # Pass 2 (valid entries only): keep the descriptors, in order.
    budget.spend_descriptors(count, pos)
    area = region.read(pos, desc_sectors * _SECTOR)
    descriptors: list[LogDescriptor] = []
    zero: list[tuple[int, int]] = []
    data: list[tuple[int, int]] = []
    data_index = 0
    for i in range(count):
        off = _HEADER_SIZE + _DESC_SIZE * i
        sig, _, value, target, _ = _DESC.unpack_from(area, off)
        if sig == b"zero":
            descriptors.append(LogDescriptor("zero", target, value, -1, b"", b""))
            zero.append((target, value))
        else:
            sector_pos = (pos + (desc_sectors + data_index) * _SECTOR) % region.length
            data_index += 1
            descriptors.append(
                LogDescriptor(
                    "data",
                    target,
                    _SECTOR,
                    sector_pos,
                    bytes(area[off + 8 : off + 16]),
                    bytes(area[off + 4 : off + 8]),
                )
            )
            data.append((target, _SECTOR))
    return LogEntry(
        log_offset=pos,
        file_offset=region.offset + pos,
        sequence_number=hdr.sequence_number,
        tail=hdr.tail,
        entry_length=hdr.entry_length,
        descriptor_count=count,
        flushed_file_offset=hdr.flushed_file_offset,
        last_file_offset=hdr.last_file_offset,
        zero_descriptors=zero,
        data_descriptors=data,
        descriptors=tuple(descriptors),
    )


def _check_region(source: FileSource, log_offset: int, log_length: int) -> None:
    """The log region must be 4 KiB aligned, non-empty and inside the file."""
    if log_length <= 0 or log_length % _SECTOR:
        raise InvalidImageError(
            f"log length {log_length:#x} is not a positive multiple of 4 KiB",
            structure="VHDX log",
            field="LogLength",
            offset=log_offset,
        )
    if log_offset < 0 or log_offset % _SECTOR:
        raise InvalidImageError(
            f"log offset {log_offset:#x} is not a multiple of 4 KiB",
            structure="VHDX log",
            field="LogOffset",
            offset=log_offset,
        )
    size = source.physical_size
    if log_offset + log_length > size:
        raise TruncatedImageError(
            f"log region {log_offset:#x}+{log_length:#x} ends past the end of the file ({size:#x})",
            structure="VHDX log",
            field="LogLength",
            offset=log_offset,
        )


def _active_sequence(entries: dict[int, LogEntry], log_length: int) -> list[LogEntry]:
    """MS-VHDX 2.3.2-2.3.3: the newest valid sequence (head's Tail in its chain), tail first."""
    succ: dict[int, int | None] = {}
    for pos, entry in entries.items():
        after = (pos + entry.entry_length) % log_length
        follower = entries.get(after)
        ok = follower is not None and follower.sequence_number == entry.sequence_number + 1
        succ[pos] = after if ok else None
    head_of: dict[int, int] = {}
    for start in sorted(entries):
        path: list[int] = []
        q = start
        while q not in head_of:
            path.append(q)
            nxt = succ[q]
            if nxt is None:
                head_of[q] = q
                break
            q = nxt
        h = head_of[q]
        for p in path:
            head_of[p] = h
    best: tuple[int, int] | None = None  # (head, tail) of the best valid sequence
    for h in sorted(set(head_of.values())):
        tail = entries[h].tail
        if head_of.get(tail) != h:
            continue
        if best is None or entries[h].sequence_number > entries[best[0]].sequence_number:
            best = (h, tail)
    if best is None:
        return []
    h, q = best
    active = [entries[q]]
    while q != h:
        nxt = succ[q]
        assert nxt is not None
        q = nxt
        active.append(entries[q])
    return active


def load_log(
    source: FileSource, *, log_offset: int, log_length: int, log_guid: uuid.UUID
) -> LogState:
    """Scan the log region from storage only and find its active sequence (MS-VHDX 2.3.3).

    A zero ``log_guid`` means an empty log. Raises InvalidImageError (misaligned or empty
    region), TruncatedImageError (past the end of the file) or LogReplayError (work limits).
    """
    if log_guid == _ZERO_GUID:
        return LogState(log_guid, log_offset, log_length, [], [])
    _check_region(source, log_offset, log_length)
    region = _LogRegion(source, log_offset, log_length)
    budget = _Budget(log_offset, log_length)
    found: dict[int, LogEntry] = {}
    for pos, hdr in entry_headers(source, log_offset, log_length):
        entry = _read_entry(region, pos, hdr, log_guid, budget)
        if entry is not None:
            found[pos] = entry
    active = _active_sequence(found, log_length)
    if active:
        head = active[-1]
        if head.flushed_file_offset > source.physical_size:
            raise TruncatedImageError(
                f"file is {source.physical_size:#x} bytes, smaller than the log head's "
                f"FlushedFileOffset {head.flushed_file_offset:#x}: the file was truncated",
                structure="VHDX log entry",
                field="FlushedFileOffset",
                offset=head.file_offset + 48,
            )
    entries = [found[p] for p in sorted(found)]
    return LogState(log_guid, log_offset, log_length, entries, active)


# -- replay ------------------------------------------------------------------------


class _ReplayImage:
    """The net effect of replayed writes: 4 KiB data sectors and disjoint zero ranges."""

    def __init__(self) -> None:
        self.sectors: dict[int, bytes] = {}
        self.keys: list[int] = []  # sorted keys of ``sectors``
        self.zero_starts: list[int] = []
        self.zero_ends: list[int] = []

    def write_sector(self, offset: int, data: bytes) -> None:
        starts, ends = self.zero_starts, self.zero_ends
        i = bisect_right(starts, offset) - 1
        if i >= 0 and ends[i] > offset:  # carve the sector out of a zero range
            start, end = starts[i], ends[i]
            pieces = [(s, e) for s, e in ((start, offset), (offset + _SECTOR, end)) if e > s]
            starts[i : i + 1] = [s for s, _ in pieces]
            ends[i : i + 1] = [e for _, e in pieces]
        if offset not in self.sectors:
            insort(self.keys, offset)
        self.sectors[offset] = data

    def write_zero(self, start: int, end: int) -> None:
        if end <= start:
            return
        k0 = bisect_left(self.keys, start)
        k1 = bisect_left(self.keys, end)
        for key in self.keys[k0:k1]:
            del self.sectors[key]
        del self.keys[k0:k1]
        starts, ends = self.zero_starts, self.zero_ends
        i = bisect_left(ends, start)  # first range ending at or after start
        j = bisect_right(starts, end)  # first range starting after end
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]


def replay_in_memory(source: FileSource, state: LogState) -> None:
    """Install the replay of ``state.active`` as an overlay on ``source`` (MS-VHDX 2.3.3).

    Nothing is written; reads see the replayed, extended file. Raises LogReplayError or
    TruncatedImageError when the log no longer matches the file.
    """
    if not state.active:
        return
    region = _LogRegion(source, state.log_offset, state.log_length)
    image = _ReplayImage()
    head = state.active[-1]
    size = head.last_file_offset
    if size > _MAX_FILE_OFFSET:
        raise LogReplayError(
            f"LastFileOffset {size:#x} is beyond any possible file size",
            structure="VHDX log entry",
            field="LastFileOffset",
            offset=head.file_offset + 56,
        )
    for entry in state.active:
        for index, desc in enumerate(entry.descriptors):
            end = desc.file_offset + desc.length
            if end > _MAX_FILE_OFFSET:
                raise LogReplayError(
                    f"descriptor {index} targets {desc.file_offset:#x}+{desc.length:#x}, "
                    "beyond any possible file size",
                    structure=f"VHDX log entry (sequence {entry.sequence_number})",
                    field="FileOffset",
                    offset=entry.file_offset + _HEADER_SIZE + _DESC_SIZE * index,
                )
            size = max(size, end)
            if desc.kind == "zero":
                image.write_zero(desc.file_offset, end)
                continue
            sector = region.read(desc.sector_log_offset, _SECTOR)
            if not _data_sector_ok(sector, 0, entry.sequence_number):
                raise LogReplayError(
                    "log data sector changed after the log was validated",
                    structure="VHDX log data sector",
                    field="SequenceNumber",
                    offset=state.log_offset + desc.sector_log_offset,
                )
            sector[0:8] = desc.leading_bytes
            sector[_SECTOR - 4 : _SECTOR] = desc.trailing_bytes
            image.write_sector(desc.file_offset, bytes(sector))
    overlay = SectorOverlay(
        image.sectors,
        zip(image.zero_starts, image.zero_ends, strict=True),
        size,
        sector_size=_SECTOR,
    )
    source.set_overlay(overlay)


# -- writing (MS-VHDX 2.3.1) ----------------------------------------------------------


class EntryFields(TypedDict):
    """The fields of a log entry header (MS-VHDX 2.3.1.1) its writer chooses; the
    length and the descriptor count follow from the sectors."""

    sequence_number: int
    log_guid: uuid.UUID
    flushed_file_offset: int
    last_file_offset: int
    tail: int


def build_log_entry(*, sectors: list[tuple[int, bytes]], **header: Unpack[EntryFields]) -> bytes:
    """One log entry carrying whole 4 KiB ``sectors`` ``(file_offset, data)`` (MS-VHDX 2.3.1)."""
    count = len(sectors)
    desc_sectors = 1 if count <= 126 else 1 + -(-(count - 126) // 128)
    length = 4096 * (desc_sectors + count)
    sequence_number = header["sequence_number"]
    out = bytearray(length)
    out[:64] = LOG_ENTRY_HEADER.build(dict(header, entry_length=length, descriptor_count=count))
    for i, (offset, data) in enumerate(sectors):
        pos = 64 + 32 * i if i < 126 else 4096 * (1 + (i - 126) // 128) + 32 * ((i - 126) % 128)
        out[pos : pos + 32] = DATA_DESCRIPTOR.build(
            dict(
                trailing_bytes=int.from_bytes(data[4092:4096], "little"),
                leading_bytes=int.from_bytes(data[0:8], "little"),
                file_offset=offset,
                sequence_number=sequence_number,
            )
        )
        spos = 4096 * (desc_sectors + i)
        out[spos : spos + 4096] = DATA_SECTOR.build(
            dict(
                sequence_high=sequence_number >> 32,
                data=data[8:4092],
                sequence_low=sequence_number & 0xFFFFFFFF,
            )
        )
    out[4:8] = crc32c_with_zeroed_field(out, 4).to_bytes(4, "little")
    return bytes(out)
