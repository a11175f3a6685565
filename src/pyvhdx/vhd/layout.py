"""The VHD layout model: every on-disk copy of every VHD structure as found (fields,
checksums, problems; it decides nothing), and the builders (Virtual Hard Disk Image
Format Specification, 2006; SPEC-NOTES.md "VHD", pitfalls 14-20; DESIGN.md "One
layout model per format").
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from .._version import __version__ as _pyvhdx_version
from ..checksum import vhd_checksum
from ..constants import (
    VHD_DYNAMIC_COOKIE,
    VHD_DYNAMIC_HEADER_SIZE,
    VHD_FIXED_DATA_OFFSET,
    VHD_FOOTER_COOKIE,
    VHD_FOOTER_SIZE,
    VHD_MAX_SIZE,
    VHD_OLD_FOOTER_SIZE,
    VHD_SECTOR_SIZE,
    VHD_TIMESTAMP_EPOCH,
    DiskType,
    KiB,
    VHDDiskType,
)
from ..errors import InvalidArgumentError, InvalidImageError, PyvhdxError
from ..info import Problem, kebab_fields
from ..source import FileSource
from ..structures import field_offsets, parse
from ..structures.vhd import (
    DYNAMIC_HEADER_CHECKSUM_OFFSET,
    FOOTER_CHECKSUM_OFFSET,
    PARENT_LOCATOR_COUNT,
    VERSION_1_0,
    VHDDynamicHeader,
    VHDFooter,
    VHDParentLocatorEntry,
)

__all__ = [
    "LOCATOR_ENCODINGS",
    "VHD_CREATOR_APPLICATION",
    "VHD_CREATOR_HOST_OS",
    "VHD_MAX_BLOCK_SIZE",
    "VHD_MAX_CHS_SECTORS",
    "VHD_MIN_BLOCK_SIZE",
    "CHSGeometry",
    "DynamicHeader",
    "FooterCopy",
    "Footers",
    "LayoutProblem",
    "LocatorEntry",
    "bat_chunks",
    "chs_geometry",
    "read_dynamic_header",
    "read_footers",
    "vhd_bitmap_size",
    "vhd_dynamic_header",
    "vhd_footer",
    "vhd_time_stamp",
]

#: Smallest block: one sector (QEMU vpc_open rejects a block size below 512 or
#: not a power of two; the spec's default is 2 MiB, Hyper-V also makes 512 KiB).
VHD_MIN_BLOCK_SIZE: Final = VHD_SECTOR_SIZE
#: Largest block: the largest power of two the u32 Block Size field can hold.
VHD_MAX_BLOCK_SIZE: Final = 1 << 31
#: The largest CHS geometry, 65535 x 16 x 255 sectors (spec appendix).
VHD_MAX_CHS_SECTORS: Final = 65535 * 16 * 255
#: Upper bound on the parent locator data read: a Windows path holds at most
#: 32767 UTF-16 code units.
MAX_LOCATOR_DATA: Final = 64 * KiB
FEATURE_TEMPORARY: Final = 0x1
_FEATURES_RESERVED: Final = 0x2  # "Reserved": the spec says it is always set
#: Where the BAT of a new image goes: after the footer copy and the dynamic header.
VHD_BAT_OFFSET: Final = VHD_FOOTER_SIZE + VHD_DYNAMIC_HEADER_SIZE
_BAT_CHUNK_ENTRIES: Final = 1 << 16
_EPOCH: Final = datetime.datetime.fromtimestamp(VHD_TIMESTAMP_EPOCH, datetime.timezone.utc)
_SPARSE: Final = (VHDDiskType.DYNAMIC, VHDDiskType.DIFFERENCING)
_NIL: Final = uuid.UUID(int=0)
_LOCATOR_ENTRY_SIZE: Final = VHDParentLocatorEntry.sizeof()
_LOCATOR_FIELDS: Final = field_offsets(VHDParentLocatorEntry)

#: Field offsets (spec "Hard Disk Footer Format" and "Dynamic Disk Header Format").
FOOTER_FIELDS: Final = field_offsets(VHDFooter)
HEADER_FIELDS: Final = field_offsets(VHDDynamicHeader)

#: Locator platform codes whose data is a path, and its encoding (spec "Dynamic
#: Disk Header Format", Platform Code; SPEC-NOTES "Parent locator entry").
LOCATOR_ENCODINGS: Final = {
    "W2ku": "utf-16-le",
    "W2ru": "utf-16-le",
    "Wi2k": "ascii",
    "Wi2r": "ascii",
    "MacX": "utf-8",
}

#: Creator Application of every VHD footer: Hyper-V's ``"win "``, for which QEMU
#: believes CurrentSize rather than the CHS geometry (QEMU ``vpc_open``; SPEC-NOTES
#: "Which size is authoritative"); Creator Version is pyvhdx's major.minor.
VHD_CREATOR_APPLICATION: Final = b"win "
#: Creator Host OS: ``Wi2k`` (the spec's code for Windows; the other is ``Mac ``).
VHD_CREATOR_HOST_OS: Final = b"Wi2k"


# --- geometry (spec appendix "CHS Calculation") -------------------------------------


class CHSGeometry(NamedTuple):
    """A disk geometry: cylinders, heads, sectors per track."""

    cylinders: int
    heads: int
    sectors_per_track: int

    @property
    def sectors(self) -> int:
        return self.cylinders * self.heads * self.sectors_per_track

    @property
    def capacity(self) -> int:
        """Bytes addressed by the geometry (at 512 bytes per sector)."""
        return self.sectors * VHD_SECTOR_SIZE


def chs_geometry(total_sectors: int) -> CHSGeometry:
    """The CHS geometry of ``total_sectors`` (spec appendix "CHS Calculation", as QEMU
    ``calculate_geometry``; its capacity may be smaller than ``total_sectors``).
    """
    if total_sectors < 0:
        raise ValueError(f"negative sector count {total_sectors}")
    total_sectors = min(total_sectors, VHD_MAX_CHS_SECTORS)
    if total_sectors >= 65535 * 16 * 63:
        sectors_per_track = 255
        heads = 16
        cyl_times_heads = total_sectors // sectors_per_track
    else:
        sectors_per_track = 17
        cyl_times_heads = total_sectors // sectors_per_track
        heads = max(4, -(-cyl_times_heads // 1024))
        if cyl_times_heads >= heads * 1024 or heads > 16:
            sectors_per_track = 31
            heads = 16
            cyl_times_heads = total_sectors // sectors_per_track
        if cyl_times_heads >= heads * 1024:
            sectors_per_track = 63
            heads = 16
            cyl_times_heads = total_sectors // sectors_per_track
    return CHSGeometry(cyl_times_heads // heads, heads, sectors_per_track)


def vhd_bitmap_size(block_size: int) -> int:
    """Bytes of the sector bitmap before each data block: one bit per sector,
    padded to a sector boundary (spec "Block Allocation Table and Data Blocks").
    """
    bits = block_size // VHD_SECTOR_SIZE
    nbytes = -(-bits // 8)
    return -(-nbytes // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE


def vhd_bat_bytes(entries: int) -> int:
    """Bytes of a BAT of ``entries`` entries, padded to a sector boundary."""
    return -(-4 * entries // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE


# --- text of fields -------------------------------------------------------------------


def timestamp_text(seconds: int) -> str:
    """A VHD time stamp (seconds since 2000-01-01 00:00:00 UTC) as ISO 8601 UTC."""
    return (_EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def fourcc(raw: bytes) -> str:
    """A four-character code as text, spaces kept, control characters dropped."""
    return "".join(ch for ch in raw.decode("latin-1") if ch.isprintable())


def version_text(value: int) -> str:
    return f"{value >> 16}.{value & 0xFFFF}"


def utf16be_name(raw: bytes) -> str:
    """Parent Unicode Name: UTF-16BE up to the first NUL code unit."""
    text = raw[: len(raw) - len(raw) % 2].decode("utf-16-be", errors="replace")
    return text.split("\0", 1)[0]


def vhd_time_stamp(unix_time: float | None = None) -> int:
    """A Unix time (default: now) as a VHD time stamp (seconds since 2000-01-01 UTC)."""
    now = time.time() if unix_time is None else unix_time
    return min(max(0, int(now) - VHD_TIMESTAMP_EPOCH), 0xFFFFFFFF)


# --- what was found ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayoutProblem:
    """A defect of one on-disk copy, named by ``code`` (``"footer.checksum"``...) for
    the reader and ``check`` to map to their own policy.
    """

    code: str
    structure: str
    message: str
    offset: int | None = None
    field: str | None = None

    def problem(
        self, suffix: str = "", *, offset: int | None = None, structure: str | None = None
    ) -> Problem:
        """As an open's :class:`~pyvhdx.info.Problem` (``suffix`` ends the message)."""
        return Problem(
            structure or self.structure,
            self.message + suffix,
            self.offset if offset is None else offset,
            self.field,
        )

    def error(
        self,
        cls: type[PyvhdxError] = InvalidImageError,
        *,
        structure: str | None = None,
        offset: int | None = None,
    ) -> PyvhdxError:
        """As a fatal error of class ``cls``, naming the structure, field and offset."""
        return cls(
            self.message,
            structure=structure or self.structure,
            field=self.field,
            offset=self.offset if offset is None else offset,
        )


class _IntField:
    """A field of the parsed ``fields``, as an int (read-only)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> int:
        return int(getattr(obj.fields, self.name))


class _Checksummed:
    """A structure read with its stored and computed checksums (spec "Checksum")."""

    stored_checksum: int
    computed_checksum: int

    @property
    def checksum_ok(self) -> bool:
        return self.stored_checksum == self.computed_checksum

    @property
    def checksum_message(self) -> str:
        return (
            f"bad checksum: stored {self.stored_checksum:#010x}, "
            f"computed {self.computed_checksum:#010x}"
        )


@dataclasses.dataclass(frozen=True)
class FooterCopy(_Checksummed):
    """One copy of the footer as found in the file (its cookie is intact)."""

    where: str  # "end" or "start"
    offset: int
    length: int  # 512, or 511 for files older than Virtual PC 2004
    raw: bytes  # always 512 bytes (a 511-byte footer is padded with a zero)
    fields: Any  # the parsed VHDFooter
    stored_checksum: int
    computed_checksum: int

    @classmethod
    def from_bytes(cls, where: str, offset: int, data: bytes) -> FooterCopy:
        raw = data + bytes(VHD_FOOTER_SIZE - len(data))
        fields = parse(VHDFooter, raw, structure=f"VHD {_FOOTER_NAMES[where]}", offset=offset)
        computed = vhd_checksum(raw, FOOTER_CHECKSUM_OFFSET)
        return cls(where, offset, len(data), raw, fields, int(fields.checksum), computed)

    disk_type = _IntField()

    @property
    def sparse(self) -> bool:
        """A dynamic or differencing disk's footer."""
        return self.disk_type in _SPARSE

    @property
    def name(self) -> str:
        return _FOOTER_NAMES[self.where]

    def field_offset(self, name: str) -> int:
        return self.offset + FOOTER_FIELDS[name]

    def differing_fields(self, other: FooterCopy) -> list[str]:
        """Names of the footer fields in which this copy and ``other`` differ."""
        a, b = self.fields, other.fields
        return [k for k in a if not k.startswith("_") and a[k] != b.get(k)]

    def checksum_problem(self) -> LayoutProblem | None:
        if self.checksum_ok:
            return None
        at = self.field_offset("Checksum")
        return LayoutProblem("footer.checksum", self.name, self.checksum_message, at, "Checksum")


_FOOTER_NAMES: Final = {"end": "footer at end of file", "start": "footer copy at offset 0"}


def footer_field_problems(copy: FooterCopy) -> Iterator[LayoutProblem]:
    """Defects of a footer's fields, its checksum aside (spec "Hard Disk Footer Format")."""
    f, size = copy.fields, int(copy.fields.current_size)

    def bad(code: str, message: str, field: str) -> LayoutProblem:
        return LayoutProblem(f"footer.{code}", copy.name, message, copy.field_offset(field), field)

    if f.file_format_version != VERSION_1_0:
        message = f"unexpected file format version {f.file_format_version:#010x} (spec: 0x00010000)"
        yield bad("version", message, "FileFormatVersion")
    if copy.disk_type not in (VHDDiskType.FIXED, *_SPARSE):
        message = f"unknown disk type {copy.disk_type} (2 fixed, 3 dynamic, 4 differencing)"
        yield bad("disk-type", message, "DiskType")
    if size % VHD_SECTOR_SIZE:
        message = f"CurrentSize {size} is not a multiple of {VHD_SECTOR_SIZE}"
        yield bad("size-unaligned", message, "CurrentSize")
    if size > VHD_MAX_SIZE:  # fixed VHDs above it exist (Azure, SPEC-NOTES pitfall 19)
        message = f"CurrentSize {size} exceeds the spec's 2040 GiB limit (QEMU refuses it)"
        yield bad("size-above-limit", message, "CurrentSize")
    if copy.disk_type == VHDDiskType.FIXED and f.data_offset != VHD_FIXED_DATA_OFFSET:
        message = f"DataOffset of a fixed disk is {f.data_offset:#x}, not 0xffffffffffffffff"
        yield bad("fixed-data-offset", message, "DataOffset")


def fixed_size_problem(copy: FooterCopy, data_end: int) -> LayoutProblem | None:
    """A fixed disk is its data then the footer (spec "Fixed Hard Disk Image")."""
    size = int(copy.fields.current_size)
    if data_end == size:
        return None
    if data_end < size:
        code = "fixed.short"
        message = (
            f"the file holds {data_end:#x} bytes of disk data, {size - data_end} short of "
            f"CurrentSize {size} (the file must be CurrentSize + 512 bytes)"
        )
    else:
        code = "fixed.extra"
        message = (
            f"{data_end - size} bytes between the end of the disk data ({size:#x}) and the "
            "footer are not part of the disk"
        )
    return LayoutProblem(code, copy.name, message, copy.field_offset("CurrentSize"), "CurrentSize")


@dataclasses.dataclass(frozen=True)
class Footers:
    """Both footer copies as found (spec "Hard Disk Footer Format")."""

    file_size: int
    end: FooterCopy | None  # the footer at the end of the file, if its cookie is there
    start: FooterCopy | None  # the copy at offset 0 of a dynamic or differencing disk
    cut_at: int | None  # where a footer cut short by the end of the file starts
    start_note: str | None  # why there is no copy at offset 0
    problems: list[LayoutProblem]

    @property
    def data_end(self) -> int:
        """Where the data ends: the footer at the end (or its cut-off start) begins here."""
        if self.end is not None:
            return self.end.offset
        return self.file_size if self.cut_at is None else self.cut_at

    def problem(self, code: str) -> LayoutProblem | None:
        return next((p for p in self.problems if p.code == code), None)


def _footer_at_end(source: FileSource, size: int) -> tuple[FooterCopy | None, int | None]:
    """The footer at the end (512 or 511 bytes), or where a cut-off one starts."""
    for length in (VHD_FOOTER_SIZE, VHD_OLD_FOOTER_SIZE):
        if size >= length and source.read(size - length, 8) == VHD_FOOTER_COOKIE:
            data = source.read_exact(size - length, length, "VHD footer")
            return FooterCopy.from_bytes("end", size - length, data), None
    # A footer cut short: its cookie within the last 510 bytes.
    tail_len = min(size, VHD_FOOTER_SIZE)
    tail = source.read(size - tail_len, tail_len)
    pos = tail.rfind(VHD_FOOTER_COOKIE, max(0, tail_len - (VHD_OLD_FOOTER_SIZE - 1)))
    return None, (size - tail_len + pos if pos >= 0 else None)


def _footer_at_start(
    source: FileSource, size: int, end: FooterCopy | None
) -> tuple[FooterCopy | None, str | None]:
    """The copy at offset 0, or why there is none."""
    if size < VHD_FOOTER_SIZE or source.read(0, 8) != VHD_FOOTER_COOKIE:
        return None, "missing: no 'conectix' cookie at offset 0"
    if end is not None and end.offset == 0:
        return None, None  # the footer at the end is at offset 0
    start = FooterCopy.from_bytes("start", 0, source.read_exact(0, VHD_FOOTER_SIZE, "VHD footer"))
    if not start.sparse:
        return None, "a 'conectix' cookie at offset 0 of a non-sparse disk is disk data"
    return start, None


def read_footers(source: FileSource) -> Footers:
    """Both footer copies of a VHD and what is wrong with each (spec "Hard Disk
    Footer Format"; DESIGN.md "Copies").
    """
    size = source.size
    end, cut_at = _footer_at_end(source, size)
    start, start_note = _footer_at_start(source, size, end)
    problems = [p for p in (c.checksum_problem() for c in (end, start) if c) if p]
    name = _FOOTER_NAMES["end"]
    if end is not None and end.length == VHD_OLD_FOOTER_SIZE:
        message = "511-byte footer (made before Virtual PC 2004)"
        problems.append(LayoutProblem("footer.old", name, message, end.offset))
    elif cut_at is not None:
        message = f"truncated: the file ends {size - cut_at} bytes into it"
        problems.append(LayoutProblem("footer.truncated", name, message, cut_at))
    elif end is None:
        message = "missing: no 'conectix' cookie in the last 512 bytes"
        at = max(0, size - VHD_FOOTER_SIZE)
        problems.append(LayoutProblem("footer.missing", name, message, at, "Cookie"))
    return Footers(size, end, start, cut_at, start_note, problems)


# --- dynamic header and parent locators --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocatorEntry:
    """A parent locator entry in use (spec "Dynamic Disk Header Format"), with its data
    (None, and ``problem`` set, when outside the data area or above 64 KiB).
    """

    index: int
    entry_offset: int
    platform_code: str
    data_space: int
    data_length: int
    data_offset: int
    data: bytes | None
    problem: LayoutProblem | None

    @property
    def path(self) -> str | None:
        encoding = LOCATOR_ENCODINGS.get(self.platform_code)
        if self.data is None or encoding is None:
            return None
        return self.data.decode(encoding, errors="replace").rstrip("\0")

    @property
    def reserved_length(self) -> int:
        """Bytes the entry reserves, a sector multiple (Platform Data Space is in sectors
        per the spec, in bytes as Windows writes it: below 512 it is taken as sectors).
        """
        space = self.data_space
        space_bytes = space * VHD_SECTOR_SIZE if space < VHD_SECTOR_SIZE else space
        return -(-max(self.data_length, space_bytes) // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE

    @property
    def room(self) -> int:
        """Bytes a new path may take in place (SPEC-NOTES 23: the space, if in bytes)."""
        return self.data_space if self.data_space >= self.data_length else self.data_length

    def to_dict(self) -> dict[str, Any]:
        """As ``info`` shows it (kebab-case keys)."""
        keys = ("index", "platform_code", "data_space", "data_length", "data_offset", "path")
        return kebab_fields(self, *keys)


@dataclasses.dataclass(frozen=True)
class DynamicHeader(_Checksummed):
    """The dynamic disk header as found, its locators and its defects (spec "Dynamic
    Disk Header Format").
    """

    offset: int
    raw: bytes
    fields: Any  # the parsed VHDDynamicHeader (parsed even with a bad cookie)
    stored_checksum: int
    computed_checksum: int
    locators: list[LocatorEntry]
    problems: list[LayoutProblem]

    @property
    def cookie_ok(self) -> bool:
        return self.raw[:8] == VHD_DYNAMIC_COOKIE

    block_size = _IntField()
    table_offset = _IntField()
    max_table_entries = _IntField()

    @property
    def parent_name(self) -> str:
        return utf16be_name(bytes(self.fields.parent_unicode_name))

    def field_offset(self, name: str) -> int:
        return self.offset + HEADER_FIELDS[name]


def _header_problems(
    offset: int, raw: bytes, h: Any, computed: int, virtual_size: int, data_end: int
) -> Iterator[LayoutProblem]:
    """Defects of the fields, then of the block size and the BAT's place in the file;
    nothing is checked after a cookie, block size or BAT offset that is wrong.
    """

    def bad(code: str, message: str, field: str) -> LayoutProblem:
        return LayoutProblem(
            f"header.{code}", "VHD dynamic header", message, offset + HEADER_FIELDS[field], field
        )

    if raw[:8] != VHD_DYNAMIC_COOKIE:
        yield bad("cookie", f"cookie is {raw[:8]!r}, not {VHD_DYNAMIC_COOKIE!r}", "Cookie")
        return
    if h.checksum != computed:
        message = f"bad checksum: stored {h.checksum:#010x}, computed {computed:#010x}"
        yield bad("checksum", message, "Checksum")
    if h.header_version != VERSION_1_0:
        message = f"unexpected header version {h.header_version:#010x} (spec: 0x00010000)"
        yield bad("version", message, "HeaderVersion")
    if h.data_offset != VHD_FIXED_DATA_OFFSET:
        message = (
            f"DataOffset is {h.data_offset:#x}; the spec and Microsoft tools expect "
            "0xffffffffffffffff (SPEC-NOTES pitfall 20)"
        )
        yield bad("data-offset", message, "DataOffset")
    bs = int(h.block_size)
    if bs < VHD_MIN_BLOCK_SIZE or bs > VHD_MAX_BLOCK_SIZE or bs & (bs - 1):
        message = f"block size {bs} is not a power of two of at least {VHD_MIN_BLOCK_SIZE} bytes"
        yield bad("block-size", message, "BlockSize")
        return
    table, entries = int(h.table_offset), int(h.max_table_entries)
    if table < VHD_FOOTER_SIZE or table >= data_end:
        message = (
            f"BAT offset {table:#x} is outside the data area [{VHD_FOOTER_SIZE:#x}, {data_end:#x})"
        )
        yield bad("table-offset", message, "TableOffset")
        return
    needed = -(-virtual_size // bs)
    if entries < needed:
        message = (
            f"BAT has {entries} entries; CurrentSize {virtual_size} needs {needed} blocks of "
            f"{bs} bytes"
        )
        yield bad("entries-too-few", message, "MaxTableEntries")
    if table + 4 * entries > data_end:
        message = (
            f"BAT of {entries} entries ({4 * entries} bytes at {table:#x}) does not fit in "
            f"the file's data area, which ends at {data_end:#x}"
        )
        yield bad("bat-past-end", message, "MaxTableEntries")
    if table < offset + VHD_DYNAMIC_HEADER_SIZE and table + 4 * entries > offset:
        message = f"BAT ({table:#x}+{4 * entries:#x}) overlaps the dynamic header at {offset:#x}"
        yield bad("bat-overlaps-header", message, "TableOffset")


def _read_locator(
    source: FileSource, index: int, entry_offset: int, entry: Any, data_end: int
) -> LocatorEntry | None:
    code = bytes(entry.platform_code)
    space = int(entry.platform_data_space)
    length = int(entry.platform_data_length)
    offset = int(entry.platform_data_offset)
    if code == b"\0\0\0\0" and not (space or length or offset):
        return None
    name = fourcc(code)
    data: bytes | None = None
    problem: LayoutProblem | None = None
    if length > MAX_LOCATOR_DATA or offset < VHD_FOOTER_SIZE or offset + length > data_end:
        problem = LayoutProblem(
            "locator.outside",
            "VHD parent locator",
            f"entry {index} ({name}): {length} bytes at {offset:#x} lie outside the data area "
            f"[{VHD_FOOTER_SIZE:#x}, {data_end:#x}) or exceed 64 KiB",
            entry_offset + _LOCATOR_FIELDS["PlatformDataOffset"],
            "PlatformDataOffset",
        )
    else:
        data = source.read_exact(offset, length, "VHD parent locator data")
    return LocatorEntry(index, entry_offset, name, space, length, offset, data, problem)


def read_dynamic_header(
    source: FileSource, offset: int, *, virtual_size: int, data_end: int
) -> DynamicHeader:
    """The dynamic header at ``offset``, its locator entries and data (spec "Dynamic
    Disk Header Format").
    """
    name = "VHD dynamic header"
    raw = source.read_exact(offset, VHD_DYNAMIC_HEADER_SIZE, name)
    # Parsed with the cookie put right, so that a damaged header still shows its fields.
    h = parse(VHDDynamicHeader, VHD_DYNAMIC_COOKIE + raw[8:], structure=name, offset=offset)
    computed = vhd_checksum(raw, DYNAMIC_HEADER_CHECKSUM_OFFSET)
    problems = list(_header_problems(offset, raw, h, computed, virtual_size, data_end))
    locators = []
    base = offset + HEADER_FIELDS["ParentLocatorEntries"]
    for i, entry in enumerate(h.parent_locator_entries):
        loc = _read_locator(source, i, base + _LOCATOR_ENTRY_SIZE * i, entry, data_end)
        if loc is not None:
            locators.append(loc)
    return DynamicHeader(offset, raw, h, int(h.checksum), computed, locators, problems)


def header_offset_problem(footer: FooterCopy, data_end: int) -> LayoutProblem | None:
    """The footer's Data Offset does not leave room for a dynamic header in the data area."""
    hdr_off = int(footer.fields.data_offset)
    if VHD_FOOTER_SIZE <= hdr_off <= data_end - VHD_DYNAMIC_HEADER_SIZE:
        return None
    return LayoutProblem(
        "footer.data-offset",
        footer.name,
        f"dynamic header offset {hdr_off:#x} is not between the footer copy at 0 and the end "
        f"of data {data_end:#x}",
        footer.field_offset("DataOffset"),
        "DataOffset",
    )


def bat_chunks(
    source: FileSource, table_offset: int, count: int, *, strict: bool = True
) -> Iterator[tuple[int, npt.NDArray[np.uint32]]]:
    """``(first entry, raw entries)`` of the BAT (spec "Block Allocation Table"), a chunk
    at a time; a BAT cut short raises TruncatedImageError if ``strict``.
    """
    for first in range(0, count, _BAT_CHUNK_ENTRIES):
        n = min(_BAT_CHUNK_ENTRIES, count - first)
        at = table_offset + 4 * first
        data = source.read_exact(at, 4 * n, "VHD BAT") if strict else source.read(at, 4 * n)
        yield first, np.frombuffer(data, dtype=">u4", count=len(data) // 4)


# --- builders -------------------------------------------------------------------------


def _creator_version() -> int:
    """pyvhdx's version as the footer's Creator Version (major << 16 | minor)."""
    parts = [*_pyvhdx_version.split("."), "0", "0"][:2]
    major, minor = (int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)
    return (major & 0xFFFF) << 16 | (minor & 0xFFFF)


def with_checksum(raw: bytes | bytearray, field_offset: int) -> bytes:
    """``raw`` with its one's-complement checksum stored at ``field_offset``."""
    out = bytearray(raw)
    out[field_offset : field_offset + 4] = vhd_checksum(out, field_offset).to_bytes(4, "big")
    return bytes(out)


def vhd_footer(
    size: int,
    disk_type: DiskType,
    *,
    unique_id: uuid.UUID | None = None,
    time_stamp: int | None = None,
    geometry: CHSGeometry | None = None,
) -> bytes:
    """A 512-byte VHD footer with its checksum (spec "Hard Disk Footer Format"; the
    geometry defaults to the spec appendix's for ``size``, pitfall 19).
    """
    fixed = disk_type is DiskType.FIXED
    if geometry is None:
        geometry = chs_geometry(size // VHD_SECTOR_SIZE)
    raw = VHDFooter.build(
        dict(
            features=_FEATURES_RESERVED,
            data_offset=VHD_FIXED_DATA_OFFSET if fixed else VHD_FOOTER_SIZE,
            time_stamp=vhd_time_stamp() if time_stamp is None else time_stamp,
            creator_application=VHD_CREATOR_APPLICATION,
            creator_version=_creator_version(),
            creator_host_os=VHD_CREATOR_HOST_OS,
            original_size=size,
            current_size=size,
            disk_geometry=geometry._asdict(),
            disk_type=VHDDiskType[disk_type.name],
            unique_id=uuid.uuid4() if unique_id is None else unique_id,
            saved_state=0,
        )
    )
    return with_checksum(raw, FOOTER_CHECKSUM_OFFSET)


def _locator_entry(code: bytes, space: int, length: int, offset: int) -> dict[str, Any]:
    return dict(
        platform_code=code,
        platform_data_space=space,
        platform_data_length=length,
        platform_data_offset=offset,
    )


def vhd_dynamic_header(
    max_table_entries: int,
    block_size: int,
    *,
    parent_unique_id: uuid.UUID = _NIL,
    parent_time_stamp: int = 0,
    parent_unicode_name: str = "",
    parent_locators: Sequence[tuple[bytes, int, int, int]] = (),
) -> bytes:
    """A 1024-byte dynamic disk header with its checksum (spec "Dynamic Disk Header
    Format"; the BAT at 1536, pitfall 20); a differencing disk's names its parent and
    up to eight locators ``(platform code, data space, data length, data offset)``.
    """
    if len(parent_locators) > PARENT_LOCATOR_COUNT:
        raise InvalidArgumentError(f"at most {PARENT_LOCATOR_COUNT} parent locators")
    locators = [_locator_entry(*entry) for entry in parent_locators]
    locators += [_locator_entry(bytes(4), 0, 0, 0)] * (PARENT_LOCATOR_COUNT - len(locators))
    raw = VHDDynamicHeader.build(
        dict(
            table_offset=VHD_BAT_OFFSET,
            max_table_entries=max_table_entries,
            block_size=block_size,
            parent_unique_id=parent_unique_id,
            parent_time_stamp=parent_time_stamp,
            parent_unicode_name=encode_parent_name(parent_unicode_name),
            parent_locator_entries=locators,
        )
    )
    return with_checksum(raw, DYNAMIC_HEADER_CHECKSUM_OFFSET)


def encode_parent_name(name: str) -> bytes:
    """Parent Unicode Name as stored: UTF-16BE, at most 512 bytes, NUL padded."""
    return name.encode("utf-16-be", errors="surrogatepass")[:512].ljust(512, b"\0")


def with_parent(
    header: bytes,
    *,
    unique_id: uuid.UUID,
    time_stamp: int,
    name: str,
    lengths: dict[int, int],
) -> bytes:
    """``header`` naming another parent, with the new Platform Data Length of the
    locators ``lengths`` (by index), checksum recomputed (spec "Dynamic Disk Header").
    """
    raw = bytearray(header)
    for index, length in lengths.items():
        entry = HEADER_FIELDS["ParentLocatorEntries"] + _LOCATOR_ENTRY_SIZE * index
        at = entry + _LOCATOR_FIELDS["PlatformDataLength"]
        raw[at : at + 4] = length.to_bytes(4, "big")
    for field, value in (
        ("ParentUniqueId", unique_id.bytes),
        ("ParentTimeStamp", time_stamp.to_bytes(4, "big")),
        ("ParentUnicodeName", encode_parent_name(name)),
    ):
        raw[HEADER_FIELDS[field] : HEADER_FIELDS[field] + len(value)] = value
    return with_checksum(raw, DYNAMIC_HEADER_CHECKSUM_OFFSET)
