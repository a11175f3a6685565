"""VHD images: fixed, dynamic and differencing (Virtual Hard Disk Image Format
Specification, 2006; SPEC-NOTES.md "VHD" and pitfalls 14-20).

:class:`VHDFile` opens a VHD read-only, chooses a footer copy (the one at the end
of the file, or the copy at offset 0 of a dynamic or differencing disk when the
end copy is missing or damaged), validates every field it uses against the file
size and the spec's limits, and reduces the image to a
:class:`~pyvhdx.bat.BlockTable` whose entries are read lazily from the BAT.
Opening costs a few small reads whatever the disk size.

Opened writable, fixed, dynamic and differencing disks take writes: in place,
or into blocks allocated where the footer stands, written in an order that
leaves a valid image after a crash at any point (:meth:`VHDFile.write_at`; for
differencing disks, with per-sector bitmaps, :meth:`VHDFile._write_differencing`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import uuid
import warnings
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from .base import FormatHandler
from .bat import CODE_PARTIAL, I64, BlockTable, decode_vhd_bat, shared_space
from .checksum import vhd_checksum
from .constants import (
    VHD_BAT_UNUSED,
    VHD_DYNAMIC_COOKIE,
    VHD_DYNAMIC_HEADER_SIZE,
    VHD_FOOTER_COOKIE,
    VHD_FOOTER_SIZE,
    VHD_MAX_SIZE,
    VHD_OLD_FOOTER_SIZE,
    VHD_SECTOR_SIZE,
    VHD_TIMESTAMP_EPOCH,
    DiskType,
    ImageFormat,
    KiB,
    VHDDiskType,
)
from .errors import (
    ChecksumError,
    InvalidArgumentError,
    InvalidImageError,
    PyvhdxError,
    PyvhdxWarning,
    TruncatedImageError,
    UnsupportedFeatureError,
)
from .info import Problem
from .raw import linear_table
from .source import FileSource
from .structures import parse
from .structures.vhd import (
    DYNAMIC_HEADER_CHECKSUM_OFFSET,
    FOOTER_CHECKSUM_OFFSET,
    VHDDynamicHeader,
    VHDFooter,
)

__all__ = [
    "VHD_MAX_BLOCK_SIZE",
    "VHD_MAX_CHS_SECTORS",
    "VHD_MIN_BLOCK_SIZE",
    "CHSGeometry",
    "ParentLocator",
    "VHDFile",
    "chs_geometry",
    "vhd_bitmap_size",
]

#: Smallest block: one sector (QEMU vpc_open rejects a block size below 512 or
#: not a power of two; the spec's default is 2 MiB, Hyper-V also makes 512 KiB).
VHD_MIN_BLOCK_SIZE: Final = VHD_SECTOR_SIZE
#: Largest block: the largest power of two the u32 Block Size field can hold.
VHD_MAX_BLOCK_SIZE: Final = 1 << 31
#: The largest CHS geometry, 65535 x 16 x 255 sectors (spec appendix).
VHD_MAX_CHS_SECTORS: Final = 65535 * 16 * 255
#: Upper bound on the parent locator data we read: a Windows path holds at most
#: 32767 UTF-16 code units.
_MAX_LOCATOR_DATA: Final = 64 * KiB
_VERSION_1_0: Final = 0x00010000  # File Format Version and Header Version
_FEATURE_TEMPORARY: Final = 0x1
_VHD_EPOCH: Final = datetime.datetime.fromtimestamp(VHD_TIMESTAMP_EPOCH, datetime.timezone.utc)

# Field offsets, for error messages (spec "Hard Disk Footer Format" and
# "Dynamic Disk Header Format").
_FOOTER_FIELD_OFFSETS: Final = {
    "DataOffset": 16,
    "CurrentSize": 48,
    "DiskType": 60,
    "Checksum": FOOTER_CHECKSUM_OFFSET,
}
_HEADER_FIELD_OFFSETS: Final = {
    "Cookie": 0,
    "TableOffset": 16,
    "MaxTableEntries": 28,
    "BlockSize": 32,
    "Checksum": DYNAMIC_HEADER_CHECKSUM_OFFSET,
}

# Locator platform codes whose data is a path, and its encoding (spec "Dynamic
# Disk Header Format", Platform Code; SPEC-NOTES "Parent locator entry").
_LOCATOR_ENCODINGS: Final = {
    b"W2ku": "utf-16-le",
    b"W2ru": "utf-16-le",
    b"Wi2k": "ascii",
    b"Wi2r": "ascii",
    b"MacX": "utf-8",
}


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
    """The CHS geometry the VHD spec appendix assigns to ``total_sectors``.

    Sectors per track 17, then 31, then 63 with 4 to 16 heads; 255 sectors and
    16 heads from 65535 x 16 x 63 sectors on; capped at 65535 x 16 x 255. This is
    the algorithm of QEMU ``calculate_geometry``. The capacity it gives may be
    smaller than ``total_sectors``.
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


# --- helpers ----------------------------------------------------------------------------


def _warn(message: str) -> None:
    """Warn, attributing the warning to the first caller outside pyvhdx."""
    package_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package_dir
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, PyvhdxWarning, stacklevel=level)


def _timestamp(seconds: int) -> str:
    """A VHD time stamp (seconds since 2000-01-01 00:00:00 UTC) as ISO 8601 UTC."""
    moment = _VHD_EPOCH + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _fourcc(raw: bytes) -> str:
    """A four-character code as text, spaces kept (``"win "``), NULs and other
    control characters dropped (``b"tap\\0"`` gives ``"tap"``).
    """
    return "".join(ch for ch in raw.decode("latin-1") if ch.isprintable())


def _version(value: int) -> str:
    return f"{value >> 16}.{value & 0xFFFF}"


def _utf16be_name(raw: bytes) -> str:
    """Parent Unicode Name: UTF-16BE up to the first NUL code unit."""
    end = len(raw) - len(raw) % 2
    for i in range(0, end, 2):
        if raw[i] == 0 and raw[i + 1] == 0:
            end = i
            break
    return raw[:end].decode("utf-16-be", errors="replace")


@dataclasses.dataclass(frozen=True)
class _FooterCopy:
    """One copy of the footer as found in the file, before it is trusted."""

    where: str  # "end" or "start"
    offset: int
    length: int  # 512, or 511 for files older than Virtual PC 2004
    raw: bytes  # always 512 bytes (a 511-byte footer is padded with a zero)
    stored_checksum: int
    computed_checksum: int

    @classmethod
    def from_bytes(cls, where: str, offset: int, data: bytes) -> _FooterCopy:
        raw = data + bytes(VHD_FOOTER_SIZE - len(data))
        c = FOOTER_CHECKSUM_OFFSET
        stored = int.from_bytes(raw[c : c + 4], "big")
        return cls(where, offset, len(data), raw, stored, vhd_checksum(raw, c))

    @property
    def checksum_ok(self) -> bool:
        return self.stored_checksum == self.computed_checksum

    @property
    def disk_type(self) -> int:
        return int.from_bytes(self.raw[60:64], "big")

    @property
    def name(self) -> str:
        if self.where == "end":
            return "footer at end of file"
        return "footer copy at offset 0"


@dataclasses.dataclass(frozen=True)
class ParentLocator:
    """A parent locator entry of the dynamic header, with its decoded path.

    ``path`` is None when the platform code holds no path (``Mac `` alias) or the
    data lies outside the file.
    """

    index: int
    platform_code: str
    data_space: int
    data_length: int
    data_offset: int
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "platform-code": self.platform_code,
            "data-space": self.data_space,
            "data-length": self.data_length,
            "data-offset": self.data_offset,
            "path": self.path,
        }


# --- the format handler -------------------------------------------------------------


class VHDFile(FormatHandler):
    """A VHD image (fixed, dynamic or differencing), read-only or writable.

    Args:
        source: the image file.
        strict: make a bad checksum in the footer or dynamic header that is used
            fatal (:class:`ChecksumError`) instead of a reported problem.
        writable: open for writing (see :meth:`write_at` for the order of
            writes). A differencing disk needs its parent attached
            (``parent_reader``) for writes that do not cover whole sectors.

    Raises:
        InvalidImageError: no footer, an unknown disk type, or a field out of
            bounds (the error names the structure, field and offset).
        TruncatedImageError: the file ends before the data it declares.
        ChecksumError: with ``strict=True``, the footer or dynamic header in use
            has a bad checksum.
    """

    supports_write = True

    def __init__(
        self,
        source: FileSource,
        *,
        strict: bool = False,
        writable: bool = False,
        salvage: bool = False,
    ) -> None:
        super().__init__()
        self.salvage = salvage
        self.source = source
        self.strict = strict
        self.writable = writable
        #: Skip the flushes that order writes for crash consistency (for a
        #: temporary file, as ``convert`` writes); close still flushes.
        self.bulk = False
        self._alloc_end: int | None = None  # where the next new block goes
        self._full_bitmaps: set[int] = set()  # blocks whose sector bitmap is all ones
        self._layout_checked = False  # block layout verified for writing (first write)
        self.format = ImageFormat.VHD
        self.logical_sector_size = VHD_SECTOR_SIZE
        self.physical_sector_size = VHD_SECTOR_SIZE
        self.read_error: PyvhdxError | None = None

        self.footer: Any = None
        self.footer_raw = b""  # the footer in use, 512 bytes, as read
        self.footer_copy = "end"
        self.footer_offset = 0
        self.footer_size = VHD_FOOTER_SIZE
        self.footer_checksum_ok = True
        self.data_end = source.size  # end of data: the EOF footer starts here
        self.dynamic_header: Any = None
        self.dynamic_header_offset: int | None = None
        self.dynamic_header_checksum_ok: bool | None = None
        self.table_offset: int | None = None
        self.max_table_entries: int | None = None
        self.bitmap_size: int | None = None
        self.parent_unique_id: uuid.UUID | None = None
        self.parent_name: str | None = None
        self.parent_time_stamp: int | None = None
        self.parent_locators: list[ParentLocator] = []
        self._differencing = False

        footer = self._open_footer()
        self.vhd_disk_type = VHDDiskType(footer.disk_type)
        self.virtual_size = int(footer.current_size)
        self.identifier = footer.unique_id
        self.creator = (
            f"{_fourcc(footer.creator_application).strip()} "
            f"{_version(footer.creator_version)} ({_fourcc(footer.creator_host_os).strip()})"
        )
        geom = footer.disk_geometry
        self.geometry = CHSGeometry(geom.cylinders, geom.heads, geom.sectors_per_track)
        self._check_sizes()
        if self.vhd_disk_type is VHDDiskType.FIXED:
            self.disk_type = DiskType.FIXED
            self.block_size = None
            self._open_fixed()
        else:
            differencing = self.vhd_disk_type is VHDDiskType.DIFFERENCING
            self.disk_type = DiskType.DIFFERENCING if differencing else DiskType.DYNAMIC
            self._open_dynamic(differencing)

    # -- problems ----------------------------------------------------------------

    def _report(self, problem: Problem, *, warn: bool = False) -> None:
        self.problems.append(problem)
        if warn:
            _warn(f"{self.source.name}: {problem}")

    def _bad_checksum(self, structure: str, offset: int, stored: int, computed: int) -> None:
        """A structure in use has a bad checksum: fatal if strict, else reported."""
        message = f"bad checksum: stored {stored:#010x}, computed {computed:#010x}"
        if self.strict:
            raise ChecksumError(message, structure=structure, field="Checksum", offset=offset)
        self._report(Problem(structure, message, offset, "Checksum"), warn=True)

    # -- footer (spec "Hard Disk Footer Format"; DESIGN.md "Copies") -------------

    def _footer_at_end(self) -> tuple[_FooterCopy | None, int | None]:
        """The footer at the end (512 or 511 bytes), or where a cut-off one starts."""
        src = self.source
        size = src.size
        for length in (VHD_FOOTER_SIZE, VHD_OLD_FOOTER_SIZE):
            if size >= length and src.read(size - length, 8) == VHD_FOOTER_COOKIE:
                data = src.read_exact(size - length, length, "VHD footer")
                return _FooterCopy.from_bytes("end", size - length, data), None
        # A footer cut short: its cookie within the last 510 bytes.
        tail_len = min(size, VHD_FOOTER_SIZE)
        tail = src.read(size - tail_len, tail_len)
        pos = tail.rfind(VHD_FOOTER_COOKIE, max(0, tail_len - (VHD_OLD_FOOTER_SIZE - 1)))
        if pos >= 0:
            return None, size - tail_len + pos
        return None, None

    def _footer_at_start(self) -> _FooterCopy | None:
        src = self.source
        if src.size >= VHD_FOOTER_SIZE and src.read(0, 8) == VHD_FOOTER_COOKIE:
            data = src.read_exact(0, VHD_FOOTER_SIZE, "VHD footer copy")
            return _FooterCopy.from_bytes("start", 0, data)
        return None

    def _open_footer(self) -> Any:
        """Choose the footer copy to trust, record what is wrong with the others,
        and return the parsed footer.
        """
        size = self.source.size
        end, cut_at = self._footer_at_end()
        start = self._footer_at_start()
        # Only dynamic and differencing disks have a copy at offset 0; a fixed
        # disk's offset 0 is disk data.
        if start is not None and (
            start.disk_type not in (VHDDiskType.DYNAMIC, VHDDiskType.DIFFERENCING)
            or (end is not None and end.offset == 0)
        ):
            start = None
        if end is not None:
            self.data_end = end.offset
        elif cut_at is not None:
            self.data_end = cut_at
        else:
            self.data_end = size

        if end is not None and end.checksum_ok:
            chosen = end
        elif start is not None and start.checksum_ok:
            chosen = start
        elif end is not None:
            chosen = end
        elif start is not None:
            chosen = start
        elif cut_at is not None:
            raise TruncatedImageError(
                f"the file ends {size - cut_at} bytes into the {VHD_FOOTER_SIZE}-byte footer "
                "and there is no footer copy at offset 0",
                structure="VHD footer",
                offset=cut_at,
            )
        else:
            raise InvalidImageError(
                "no VHD footer (cookie 'conectix') at the end of the file or at offset 0",
                structure="VHD footer",
                field="Cookie",
                offset=max(0, size - VHD_FOOTER_SIZE),
            )

        self.footer_copy = chosen.where
        self.footer_offset = chosen.offset
        self.footer_size = chosen.length
        self.footer_checksum_ok = chosen.checksum_ok
        self.footer_raw = chosen.raw
        self.footer = parse(VHDFooter, chosen.raw, structure="VHD footer", offset=chosen.offset)
        other = start if chosen is end else end

        if chosen is start:
            # The end copy is missing, cut off or damaged.
            if end is not None:
                why = (
                    f"bad checksum: stored {end.stored_checksum:#010x}, "
                    f"computed {end.computed_checksum:#010x}"
                )
                problem = Problem(
                    end.name, why + "; using the copy at offset 0", end.offset, "Checksum"
                )
            elif cut_at is not None:
                problem = Problem(
                    "footer at end of file",
                    f"truncated: the file ends {size - cut_at} bytes into it; "
                    "using the copy at offset 0",
                    cut_at,
                )
            else:
                problem = Problem(
                    "footer at end of file",
                    "missing (no 'conectix' cookie); using the copy at offset 0",
                    max(0, size - VHD_FOOTER_SIZE),
                    "Cookie",
                )
            self.failed_copies.append("footer at end of file")
            self._report(problem, warn=True)
        elif chosen.disk_type in (VHDDiskType.DYNAMIC, VHDDiskType.DIFFERENCING):
            if other is None:
                self.failed_copies.append("footer copy at offset 0")
                self._report(Problem("footer copy at offset 0", "missing", 0, "Cookie"))
            elif not other.checksum_ok:
                self.failed_copies.append(other.name)
                self._report(
                    Problem(
                        other.name,
                        f"bad checksum: stored {other.stored_checksum:#010x}, "
                        f"computed {other.computed_checksum:#010x}",
                        other.offset,
                        "Checksum",
                    ),
                    warn=True,
                )
        if other is not None and other.checksum_ok and chosen.checksum_ok:
            differ = _differing_fields(chosen.raw, other.raw)
            if differ:
                self._report(
                    Problem(
                        "VHD footer",
                        f"the footer copies differ in {', '.join(differ)}; using the {chosen.name}",
                        other.offset,
                    ),
                    warn=True,
                )
        if not chosen.checksum_ok:
            self._bad_checksum(
                f"VHD {chosen.name}",
                chosen.offset + FOOTER_CHECKSUM_OFFSET,
                chosen.stored_checksum,
                chosen.computed_checksum,
            )
        if self.footer.disk_type not in (
            VHDDiskType.FIXED,
            VHDDiskType.DYNAMIC,
            VHDDiskType.DIFFERENCING,
        ):
            raise InvalidImageError(
                f"unknown disk type {self.footer.disk_type} (2 fixed, 3 dynamic, 4 differencing)",
                structure="VHD footer",
                field="DiskType",
                offset=self._footer_field("DiskType"),
            )
        return self.footer

    def _footer_field(self, name: str) -> int:
        return self.footer_offset + _FOOTER_FIELD_OFFSETS[name]

    def _check_sizes(self) -> None:
        footer = self.footer
        if footer.file_format_version != _VERSION_1_0:
            self._report(
                Problem(
                    "VHD footer",
                    f"unexpected file format version {footer.file_format_version:#010x} "
                    "(spec: 0x00010000)",
                    self.footer_offset + 12,
                    "FileFormatVersion",
                )
            )
        if self.virtual_size % VHD_SECTOR_SIZE:
            self._report(
                Problem(
                    "VHD footer",
                    f"CurrentSize {self.virtual_size} is not a multiple of {VHD_SECTOR_SIZE}",
                    self._footer_field("CurrentSize"),
                    "CurrentSize",
                )
            )
        if self.virtual_size > VHD_MAX_SIZE:
            # QEMU refuses these; fixed VHDs above 2040 GiB exist (Azure takes
            # fixed VHDs up to 32 TiB, SPEC-NOTES pitfall 19), so report only.
            self._report(
                Problem(
                    "VHD footer",
                    f"CurrentSize {self.virtual_size} exceeds the spec's 2040 GiB limit",
                    self._footer_field("CurrentSize"),
                    "CurrentSize",
                )
            )

    # -- fixed disks (spec "Fixed Hard Disk Image") ------------------------------

    def _open_fixed(self) -> None:
        if self.footer_copy != "end":  # pragma: no cover - _open_footer never picks it
            raise InvalidImageError(
                "a fixed disk has its footer at the end only",
                structure="VHD footer",
                field="DiskType",
            )
        size = self.virtual_size
        if self.data_end < size:
            raise TruncatedImageError(
                f"the fixed disk's data ends at {self.data_end:#x}, {size - self.data_end} "
                f"bytes short of CurrentSize {size}",
                structure="VHD footer",
                field="CurrentSize",
                offset=self._footer_field("CurrentSize"),
            )
        if self.data_end > size:
            self._report(
                Problem(
                    "VHD footer",
                    f"{self.data_end - size} bytes between the end of the disk data "
                    f"({size:#x}) and the footer are not part of the disk",
                    self._footer_field("CurrentSize"),
                    "CurrentSize",
                )
            )
        self.table = linear_table(size, 0)

    # -- dynamic and differencing disks (spec "Dynamic Disk Header Format") ------

    def _header_field(self, name: str) -> int:
        assert self.dynamic_header_offset is not None
        return self.dynamic_header_offset + _HEADER_FIELD_OFFSETS[name]

    def _open_dynamic(self, differencing: bool) -> None:
        data_end = self.data_end
        hdr_off = int(self.footer.data_offset)
        if hdr_off < VHD_FOOTER_SIZE or hdr_off > data_end - VHD_DYNAMIC_HEADER_SIZE:
            raise InvalidImageError(
                f"dynamic header offset {hdr_off:#x} is not between the footer copy at 0 and "
                f"the end of data {data_end:#x}",
                structure="VHD footer",
                field="DataOffset",
                offset=self._footer_field("DataOffset"),
            )
        self.dynamic_header_offset = hdr_off
        raw = self.source.read_exact(hdr_off, VHD_DYNAMIC_HEADER_SIZE, "VHD dynamic header")
        if raw[:8] != VHD_DYNAMIC_COOKIE:
            raise InvalidImageError(
                f"dynamic header cookie is {raw[:8]!r}, not {VHD_DYNAMIC_COOKIE!r}",
                structure="VHD dynamic header",
                field="Cookie",
                offset=hdr_off,
            )
        hdr = parse(VHDDynamicHeader, raw, structure="VHD dynamic header", offset=hdr_off)
        self.dynamic_header = hdr
        computed = vhd_checksum(raw, DYNAMIC_HEADER_CHECKSUM_OFFSET)
        self.dynamic_header_checksum_ok = hdr.checksum == computed
        if not self.dynamic_header_checksum_ok:
            self._bad_checksum(
                "VHD dynamic header", self._header_field("Checksum"), hdr.checksum, computed
            )
        if hdr.header_version != _VERSION_1_0:
            self._report(
                Problem(
                    "VHD dynamic header",
                    f"unexpected header version {hdr.header_version:#010x} (spec: 0x00010000)",
                    hdr_off + 24,
                    "HeaderVersion",
                )
            )

        block_size = int(hdr.block_size)
        if (
            block_size < VHD_MIN_BLOCK_SIZE
            or block_size > VHD_MAX_BLOCK_SIZE
            or block_size & (block_size - 1)
        ):
            raise InvalidImageError(
                f"block size {block_size} is not a power of two of at least "
                f"{VHD_MIN_BLOCK_SIZE} bytes",
                structure="VHD dynamic header",
                field="BlockSize",
                offset=self._header_field("BlockSize"),
            )
        table_offset = int(hdr.table_offset)
        entries = int(hdr.max_table_entries)
        if table_offset < VHD_FOOTER_SIZE or table_offset >= data_end:
            raise InvalidImageError(
                f"BAT offset {table_offset:#x} is outside the data area "
                f"[{VHD_FOOTER_SIZE:#x}, {data_end:#x})",
                structure="VHD dynamic header",
                field="TableOffset",
                offset=self._header_field("TableOffset"),
            )
        needed = -(-self.virtual_size // block_size)
        if entries < needed:
            raise InvalidImageError(
                f"BAT has {entries} entries; CurrentSize {self.virtual_size} needs {needed} "
                f"blocks of {block_size} bytes",
                structure="VHD dynamic header",
                field="MaxTableEntries",
                offset=self._header_field("MaxTableEntries"),
            )
        if table_offset + 4 * entries > data_end:
            raise InvalidImageError(
                f"BAT of {entries} entries ({4 * entries} bytes at {table_offset:#x}) does not "
                f"fit in the file's data area, which ends at {data_end:#x}",
                structure="VHD dynamic header",
                field="MaxTableEntries",
                offset=self._header_field("MaxTableEntries"),
            )
        if (
            table_offset < hdr_off + VHD_DYNAMIC_HEADER_SIZE
            and table_offset + 4 * entries > hdr_off
        ):
            raise InvalidImageError(
                f"BAT ({table_offset:#x}+{4 * entries:#x}) overlaps the dynamic header at "
                f"{hdr_off:#x}",
                structure="VHD dynamic header",
                field="TableOffset",
                offset=self._header_field("TableOffset"),
            )

        self.block_size = block_size
        self.table_offset = table_offset
        self.max_table_entries = entries
        self.bitmap_size = vhd_bitmap_size(block_size)
        self.parent_unique_id = hdr.parent_unique_id
        self.parent_time_stamp = int(hdr.parent_time_stamp)
        self.parent_name = _utf16be_name(hdr.parent_unicode_name)
        self.parent_locators = self._read_locators(hdr)
        self._differencing = differencing
        self.table = BlockTable(self.virtual_size, block_size, self._load_bat, sector_size=512)
        if differencing:
            self.table.set_partial_reader(self._sector_bitmap, self._block_data_offset)
        elif self.salvage:
            self.table.load_all()  # every lost block is listed at open

    # -- differencing (spec "Block Allocation Table and Data Blocks", sector bitmap) --

    def _bat_entry(self, block: int) -> int:
        assert self.table_offset is not None
        off = self.table_offset + 4 * block
        return int.from_bytes(self.source.read_exact(off, 4, "VHD BAT"), "big")

    def _block_data_offset(self, block: int) -> int:
        """File offset of an allocated block's data (after its padded bitmap)."""
        assert self.bitmap_size is not None
        return self._bat_entry(block) * 512 + self.bitmap_size

    def _sector_bitmap(self, block: int) -> npt.NDArray[np.bool_]:
        """One bool per sector of ``block``: True if this file holds it (MSB first)."""
        assert self.bitmap_size is not None and self.block_size is not None
        raw = self.source.read_exact(self._bat_entry(block) * 512, self.bitmap_size, "VHD bitmap")
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="big")
        return bits[: self.block_size // 512].astype(bool)

    def parent_locations(self) -> list[tuple[str, str]]:
        """W2ru, then W2ku, then the parent name (VHD spec, Parent Locator Entries)."""
        out: list[tuple[str, str]] = []
        for code in ("W2ru", "W2ku", "Wi2r", "Wi2k"):
            out += [
                (code, loc.path)
                for loc in self.parent_locators
                if loc.platform_code == code and loc.path
            ]
        if self.parent_name:
            out.append(("parent name", self.parent_name))
        return out

    def identity_as_parent(self) -> str:
        return str(self.identifier)

    def parent_identity_matches(self, parent: FormatHandler) -> tuple[bool, str]:
        """The child's Parent Unique ID must be the parent's footer Unique Id."""
        want = str(self.parent_unique_id)
        have = parent.identity_as_parent()
        if have == want:
            return True, ""
        return False, f"Parent Unique ID {want} != parent Unique Id {have}"

    def _load_bat(self, first_block: int, count: int) -> I64:
        """Read and decode BAT entries ``first_block`` .. ``first_block + count``."""
        assert self.table_offset is not None and self.block_size is not None
        assert self.bitmap_size is not None
        data = self.source.read_exact(self.table_offset + 4 * first_block, 4 * count, "VHD BAT")
        raw = np.frombuffer(data, dtype=">u4")
        codes = decode_vhd_bat(
            raw,
            first_block=first_block,
            bat_offset=self.table_offset,
            block_size=self.block_size,
            bitmap_size=self.bitmap_size,
            virtual_size=self.virtual_size,
            file_size=self.data_end,
            differencing=self._differencing,
            allow_past_eof=not self._differencing,
        )
        table_offset = self.table_offset
        self._note_lost(codes, first_block, self.data_end, lambda b: table_offset + 4 * b)
        return codes

    def _lost_totals(self, file_size: int) -> tuple[int, int]:
        from .bat import lost_ranges

        assert self.table_offset is not None and self.block_size is not None
        assert self.bitmap_size is not None
        total = count = 0
        step = 1 << 16
        for first in range(0, self.table.block_count, step):
            n = min(step, self.table.block_count - first)
            data = self.source.read_exact(self.table_offset + 4 * first, 4 * n, "VHD BAT")
            codes = decode_vhd_bat(
                np.frombuffer(data, dtype=">u4"),
                first_block=first,
                bat_offset=self.table_offset,
                block_size=self.block_size,
                bitmap_size=self.bitmap_size,
                virtual_size=self.virtual_size,
                file_size=file_size,
                differencing=False,
                allow_past_eof=True,
            )
            lost = lost_ranges(
                codes,
                first_block=first,
                block_size=self.block_size,
                virtual_size=self.virtual_size,
                file_size=file_size,
            )
            total += sum(x[1] for x in lost)
            count += len(lost)
        return total, count

    def _read_locators(self, hdr: Any) -> list[ParentLocator]:
        """Decode the parent locator entries in use, reading path data inside the file."""
        assert self.dynamic_header_offset is not None
        out: list[ParentLocator] = []
        for i, entry in enumerate(hdr.parent_locator_entries):
            code = bytes(entry.platform_code)
            space = int(entry.platform_data_space)
            length = int(entry.platform_data_length)
            offset = int(entry.platform_data_offset)
            if code == b"\0\0\0\0" and not (space or length or offset):
                continue
            entry_off = self.dynamic_header_offset + 576 + 24 * i
            path: str | None = None
            encoding = _LOCATOR_ENCODINGS.get(code)
            if encoding is not None:
                if length > _MAX_LOCATOR_DATA or offset + length > self.data_end:
                    self._report(
                        Problem(
                            "VHD parent locator",
                            f"entry {i} ({_fourcc(code)}): {length} bytes at {offset:#x} lie "
                            "outside the file or exceed 64 KiB",
                            entry_off,
                            "PlatformDataOffset",
                        )
                    )
                else:
                    data = self.source.read_exact(offset, length, "VHD parent locator data")
                    path = data.decode(encoding, errors="replace").rstrip("\0")
            out.append(ParentLocator(i, _fourcc(code), space, length, offset, path))
        return out

    # -- writes (spec "Block Allocation Table and Data Blocks") -----------------

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at virtual ``offset`` (checked by ``DiskImage`` to lie
        inside the disk).

        A fixed disk is written in place. In a dynamic disk, a write into an
        allocated block goes in place, after which the written sectors' bits of
        the block's sector bitmap are set if they were not. Unallocated blocks
        touched by the write are allocated where the footer stands (or after the
        last block, if that is further), in this order, so that a crash at any
        point leaves an image every reader opens with each sector old or new:

        1. the footer, unchanged, at the new end of the file; flush. The old
           footer still stands, so the file ends with a valid footer throughout;
        2. each new block's sector bitmap, all ones as QEMU writes it (right for
           a dynamic disk, SPEC-NOTES pitfall 18), the first one over the old
           footer; then the data, the rest of each new block reading as zeros
           (it lies past the old end of the file); flush;
        3. the BAT entries of the new blocks, one read-modify-write per BAT
           sector. Until then the new blocks are unreferenced space that
           readers (QEMU included) skip; the footer copy at offset 0 never
           changes.

        A write whose new blocks' BAT entries share one 512-byte BAT sector, and
        that touches no allocated block, is all-or-nothing; others are so per
        block.

        A differencing disk keeps its sector bitmaps exact and its parent's data
        under partial sectors: see :meth:`_write_differencing`.
        """
        if self.disk_type is DiskType.FIXED:
            self.source.pwrite(data, offset)
            return
        if not self._layout_checked:
            self._check_layout_for_writing()
        if self.disk_type is DiskType.DIFFERENCING:
            self._write_differencing(offset, data)
            return
        assert self.block_size is not None and self.bitmap_size is not None
        table = self.table
        shift = table.block_shift
        end = offset + len(data)
        first = offset >> shift
        codes = table.codes(first, ((end - 1) >> shift) + 1).copy()
        new_blocks = [first + i for i, code in enumerate(codes.tolist()) if code < 0]
        placed: dict[int, int] = {}
        if new_blocks:
            placed = self._place(new_blocks)  # step 1
            ones = b"\xff" * self.bitmap_size
            for block, pos in placed.items():
                self.source.pwrite(ones, pos)
                codes[block - first] = pos + self.bitmap_size
        pos = offset
        while pos < end:
            block = pos >> shift
            stop = min(end, (block + 1) << shift)
            data_offset = int(codes[block - first])
            self.source.pwrite(
                data[pos - offset : stop - offset], data_offset + (pos & table.block_mask)
            )
            if block not in placed:
                self._set_bitmap_bits(
                    block, data_offset, pos & table.block_mask, stop - (block << shift)
                )
            pos = stop
        if placed:
            self._sync()
            self._write_bat_entries(placed)  # step 3
            for block, pos in placed.items():
                table.set_code(block, pos + self.bitmap_size)
                self._full_bitmaps.add(block)

    def _check_layout_for_writing(self) -> None:
        """Refuse to write into an image whose blocks share file space.

        Reading such an image is allowed (``check`` reports it), but a write into
        a block that overlaps another block or the metadata (the footer copy at
        offset 0, the dynamic header, the BAT, parent locator data, the footer)
        would change that too. Run once, before the first write of a session,
        over the raw BAT entries (block bitmap plus the part of the data inside
        the disk).

        Raises:
            InvalidImageError: naming the BAT entry of the first such block.
        """
        assert self.table_offset is not None and self.block_size is not None
        assert self.bitmap_size is not None and self.dynamic_header_offset is not None
        assert self.max_table_entries is not None
        count = self.table.block_count
        parts_i: list[np.ndarray] = []
        parts_s: list[np.ndarray] = []
        step = 1 << 16
        for first in range(0, count, step):
            n = min(step, count - first)
            data = self.source.read_exact(self.table_offset + 4 * first, 4 * n, "VHD BAT")
            raw = np.frombuffer(data, dtype=">u4")
            idx = np.flatnonzero(raw != np.uint32(VHD_BAT_UNUSED))
            parts_i.append(idx.astype(np.int64) + first)
            parts_s.append(raw[idx].astype(np.int64) * VHD_SECTOR_SIZE)
        blocks = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
        starts = np.concatenate(parts_s) if parts_s else np.zeros(0, np.int64)
        inside = np.minimum(self.block_size, self.virtual_size - blocks * self.block_size)
        ends = starts + self.bitmap_size + np.maximum(inside, 0)
        reserved = [
            (self.dynamic_header_offset, VHD_DYNAMIC_HEADER_SIZE, "dynamic header"),
            (self.table_offset, 4 * self.max_table_entries, "BAT"),
            (self.data_end, VHD_SECTOR_SIZE, "footer"),
            (0, VHD_SECTOR_SIZE, "footer copy"),
        ]
        for loc in self.parent_locators:
            if loc.data_length:
                reserved.append((loc.data_offset, loc.data_length, "parent locator data"))

        found = shared_space(starts, ends, reserved, file_end=self.data_end)
        if found is not None:
            i, mate, what = found
            if mate is not None:
                what = f"block {int(blocks[mate])} at {int(starts[mate]):#x}"
            block = int(blocks[i])
            raise InvalidImageError(
                f"block {block} at {int(starts[i]):#x} shares file space with {what}; "
                "writing into this image would change both (pyvhdx check reports it)",
                structure="VHD BAT",
                field=f"BAT[{block}]",
                offset=self.table_offset + 4 * block,
            )
        self._layout_checked = True

    def _sync(self) -> None:
        if not self.bulk:
            self.source.flush()

    def _place(self, blocks: list[int]) -> dict[int, int]:
        """Choose where ``blocks`` go, move the footer past them (flushed) and
        return each block's file offset (of its bitmap).

        Raises:
            UnsupportedFeatureError: the blocks would lie beyond the 2 TiB that
                the BAT's u32 sector numbers address.
        """
        assert self.block_size is not None and self.bitmap_size is not None
        if self._alloc_end is None:
            # After the footer, the BAT, and every block (a last block may reach
            # past the footer, its tail being outside the disk).
            assert self.table_offset is not None and self.max_table_entries is not None
            assert self.dynamic_header_offset is not None
            last = 0
            if self._differencing:
                last = self._blocks_end()
            for _first, codes in self.table.iter_chunks():
                used = codes[codes >= 0]
                if used.size:
                    last = max(last, int(used.max()) + self.block_size)
            self._alloc_end = max(
                self.data_end,
                last,
                self.table_offset + 4 * self.max_table_entries,
                self.dynamic_header_offset + VHD_DYNAMIC_HEADER_SIZE,
            )
        start = -(-self._alloc_end // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE
        stride = self.bitmap_size + self.block_size
        new_end = start + len(blocks) * stride
        if (new_end - stride) // VHD_SECTOR_SIZE >= VHD_BAT_UNUSED:
            raise UnsupportedFeatureError(
                f"a new block at {new_end - stride:#x} would lie beyond the 2 TiB that VHD "
                "BAT entries (u32 sector numbers) address",
                structure="VHD BAT",
                offset=self.table_offset,
            )
        self.source.pwrite(self.footer_raw, new_end)
        self._sync()
        self.data_end = new_end
        self.footer_offset = new_end
        self.footer_copy = "end"
        self._alloc_end = new_end
        return {block: start + k * stride for k, block in enumerate(blocks)}

    def _blocks_end(self) -> int:
        """End of the furthest block the BAT points at (bitmap and data), from the
        raw entries: a differencing disk's block codes do not hold offsets.
        """
        assert self.table_offset is not None and self.block_size is not None
        assert self.bitmap_size is not None
        last = 0
        count = self.table.block_count
        step = 1 << 16
        for first in range(0, count, step):
            n = min(step, count - first)
            data = self.source.read_exact(self.table_offset + 4 * first, 4 * n, "VHD BAT")
            raw = np.frombuffer(data, dtype=">u4")
            used = raw[raw != np.uint32(VHD_BAT_UNUSED)]
            if used.size:
                end = int(used.max()) * VHD_SECTOR_SIZE + self.bitmap_size + self.block_size
                last = max(last, end)
        return last

    # -- differencing writes (spec "Block Allocation Table and Data Blocks",
    #    sector bitmap; SPEC-NOTES pitfalls 17 and 18) ------------------------------

    def _write_differencing(self, offset: int, data: memoryview) -> None:
        """Write into a differencing disk: each sector written is stored here and its
        bit set in its block's sector bitmap (1 = this file, 0 = the parent; MSB
        first, spec "Block Allocation Table and Data Blocks").

        * Only the sectors a write touches are marked; the rest of a block keeps
          reading from the parent.
        * A new block is allocated as in a dynamic disk (at the end, the footer
          moved first), but its bitmap is all zeros except the written sectors:
          all ones, as QEMU writes for dynamic disks, would hide the parent
          under zeros (SPEC-NOTES pitfall 18).
        * A write that starts or ends inside a 512-byte sector not yet stored
          here first takes the rest of that sector from the parent
          (read-modify-write), so the whole sector can be marked present.
        * Zeros are stored like any data, so zeros written over the parent's
          data read as zeros (pitfall 18, dosbox-x#4545).

        Order, so that a crash at any point leaves an image that opens with each
        sector old or new:

        1. new blocks: the footer, unchanged, at the new end of the file;
           flush (:meth:`_place`, as for dynamic disks);
        2. the data: in place into allocated blocks (a sector already marked
           present changes in place; one not marked is invisible until its bit
           is set) and into the new blocks, with each new block's bitmap (which
           nothing references yet); flush;
        3. the new bits of the allocated blocks' bitmaps (a byte range of one
           bitmap each): now the data they expose is durable;
        4. the BAT entries of the new blocks (:meth:`_write_bat_entries`).

        Steps 3 and 4 touch different blocks, so their order does not matter;
        neither is reached before the data it exposes was flushed. A write
        that stays in one allocated block, or whose new blocks' BAT entries
        share one BAT sector and that touches no allocated block, is
        all-or-nothing; others are so per block.

        Raises:
            UnsupportedFeatureError: a partial-sector write over a sector this
                file does not hold, with no parent attached.
        """
        assert self.block_size is not None and self.bitmap_size is not None
        assert self.table_offset is not None
        shift = self.table.block_shift
        block_size = self.block_size
        sectors_per_block = block_size // VHD_SECTOR_SIZE
        end = offset + len(data)
        first, last = offset >> shift, (end - 1) >> shift
        raw = self.source.read_exact(
            self.table_offset + 4 * first, 4 * (last - first + 1), "VHD BAT"
        )
        entries = np.frombuffer(raw, dtype=">u4").astype(np.int64).tolist()
        new_blocks = [first + i for i, e in enumerate(entries) if e == VHD_BAT_UNUSED]
        placed = self._place(new_blocks) if new_blocks else {}  # step 1
        bitmap_updates: list[tuple[int, bytes]] = []
        full: list[int] = []
        for block in range(first, last + 1):
            base = block << shift
            lo, hi = max(offset, base), min(end, base + block_size)
            s0, s1 = (lo - base) // VHD_SECTOR_SIZE, -(-(hi - base) // VHD_SECTOR_SIZE)
            bits: npt.NDArray[np.bool_] | None
            if block in placed:
                bitmap_offset = placed[block]
                bits = np.zeros(sectors_per_block, dtype=bool)
            else:
                bitmap_offset = entries[block - first] * VHD_SECTOR_SIZE
                bits = None if block in self._full_bitmaps else self._read_bits(bitmap_offset)
            data_offset = bitmap_offset + self.bitmap_size
            piece = data[lo - offset : hi - offset]
            head = lo - base - s0 * VHD_SECTOR_SIZE
            tail = s1 * VHD_SECTOR_SIZE - (hi - base)
            if head or tail:  # whole sectors, the rest of the boundary ones as they read now
                buf = bytearray((s1 - s0) * VHD_SECTOR_SIZE)
                edges = {s0} if head else set()
                if tail:
                    edges.add(s1 - 1)
                for s in edges:
                    self._read_sector(block, s, data_offset, bits, buf, s - s0)
                buf[head : head + len(piece)] = piece
                self.source.pwrite(buf, data_offset + s0 * VHD_SECTOR_SIZE)  # step 2
            else:
                self.source.pwrite(piece, data_offset + (lo - base))  # step 2
            if bits is None:
                continue  # every sector of the block is stored here already
            if block in placed:
                bits[s0:s1] = True
                self.source.pwrite(self._pack_bits(bits), bitmap_offset)  # step 2
            elif not bits[s0:s1].all():
                bits[s0:s1] = True
                b0, b1 = s0 // 8, (s1 - 1) // 8 + 1
                packed = np.packbits(bits[8 * b0 : 8 * b1], bitorder="big").tobytes()
                bitmap_updates.append((bitmap_offset + b0, packed))
            if bits.all():
                full.append(block)
        if not placed and not bitmap_updates:
            return  # in place only: nothing to expose
        self._sync()  # end of step 2
        for pos, packed in bitmap_updates:  # step 3
            self.source.pwrite(packed, pos)
        if placed:
            self._write_bat_entries(placed)  # step 4
            for block in placed:
                self.table.set_code(block, CODE_PARTIAL)
        self._full_bitmaps.update(full)

    def _read_bits(self, bitmap_offset: int) -> npt.NDArray[np.bool_]:
        """The sector bitmap at ``bitmap_offset``: one bool per sector (MSB first)."""
        assert self.block_size is not None
        count = self.block_size // VHD_SECTOR_SIZE
        raw = self.source.read_exact(bitmap_offset, -(-count // 8), "VHD sector bitmap")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="big")
        return bits[:count].astype(bool)

    def _pack_bits(self, bits: npt.NDArray[np.bool_]) -> bytes:
        """A whole sector bitmap (MSB first), padded with zeros to its 512-byte size."""
        assert self.bitmap_size is not None
        packed = np.packbits(bits, bitorder="big").tobytes()
        return packed + bytes(self.bitmap_size - len(packed))

    def _read_sector(
        self,
        block: int,
        sector: int,
        data_offset: int,
        bits: npt.NDArray[np.bool_] | None,
        buf: bytearray,
        index: int,
    ) -> None:
        """Read sector ``sector`` of ``block`` as the disk reads it now into sector
        ``index`` of ``buf``: from this file if its bit is set, else from the parent.
        """
        out = memoryview(buf)[index * VHD_SECTOR_SIZE : (index + 1) * VHD_SECTOR_SIZE]
        if bits is None or bits[sector]:
            got = self.source.readinto(out, data_offset + sector * VHD_SECTOR_SIZE)
            if got != VHD_SECTOR_SIZE:
                raise TruncatedImageError(
                    f"file ends inside sector {sector} of block {block}",
                    structure="data block",
                    offset=data_offset + sector * VHD_SECTOR_SIZE,
                )
            return
        if self.parent_reader is None:
            raise UnsupportedFeatureError(
                "a write that covers part of a sector stored in the parent needs the parent open",
                structure="VHD dynamic header",
                field="ParentUniqueId",
            )
        assert self.block_size is not None
        self.parent_reader((block << self.table.block_shift) + sector * VHD_SECTOR_SIZE, out)

    def _write_bat_entries(self, placed: dict[int, int]) -> None:
        """Point the BAT entries of ``placed`` blocks at them: one write per 512-byte
        BAT sector, each covering only the entries it changes.
        """
        assert self.table_offset is not None
        by_sector: dict[int, list[tuple[int, int]]] = {}
        for block, pos in sorted(placed.items()):
            entry = self.table_offset + 4 * block
            by_sector.setdefault(entry // VHD_SECTOR_SIZE, []).append(
                (entry, pos // VHD_SECTOR_SIZE)
            )
        for entries in by_sector.values():
            lo, hi = entries[0][0], entries[-1][0] + 4
            span = bytearray(self.source.read_exact(lo, hi - lo, "VHD BAT"))
            for entry, sector in entries:
                span[entry - lo : entry - lo + 4] = sector.to_bytes(4, "big")
            self.source.pwrite(span, lo)

    def _set_bitmap_bits(self, block: int, data_offset: int, lo: int, hi: int) -> None:
        """Mark the sectors of ``[lo, hi)`` (bytes into ``block``) as holding data in
        the block's sector bitmap (MSB first, SPEC-NOTES pitfall 17), if they were not.

        Blocks pyvhdx allocated, and blocks found all ones, are remembered and not
        read again.
        """
        if block in self._full_bitmaps:
            return
        assert self.block_size is not None and self.bitmap_size is not None
        bitmap_offset = data_offset - self.bitmap_size
        nbytes = -(-(self.block_size // VHD_SECTOR_SIZE) // 8)
        raw = self.source.read_exact(bitmap_offset, nbytes, "VHD sector bitmap")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
        s0, s1 = lo // VHD_SECTOR_SIZE, -(-hi // VHD_SECTOR_SIZE)
        if not bits[s0:s1].all():
            bits[s0:s1] = 1
            b0, b1 = s0 // 8, (s1 - 1) // 8 + 1
            self.source.pwrite(np.packbits(bits[8 * b0 : 8 * b1]).tobytes(), bitmap_offset + b0)
        if bits.all():
            self._full_bitmaps.add(block)

    def set_parent(
        self, *, unique_id: uuid.UUID, time_stamp: int, name: str, paths: dict[str, str]
    ) -> None:
        """Point this differencing VHD at another parent (spec "Dynamic Disk Header").

        ``paths`` maps locator codes (``W2ru``, ``W2ku``) to the new paths; each
        replaces the path of the existing entry with that code, in the space
        that entry reserves (no locator is added or moved). Order: the locator
        data first (flush), then the header in one write (flush). Until the
        header is written it still names the old parent (Parent Unique ID and
        Parent Unicode Name), which a reader finds by name while it exists.

        Raises:
            InvalidArgumentError: not a writable differencing disk, or a new
                path longer than its entry's reserved space (checked before
                anything is written).
        """
        if not self.writable or self.disk_type is not DiskType.DIFFERENCING:
            raise InvalidArgumentError(f"{self.source.name} is not a writable differencing VHD")
        assert self.dynamic_header_offset is not None
        hdr_off = self.dynamic_header_offset
        updates: list[tuple[ParentLocator, bytes, int]] = []
        for loc in self.parent_locators:
            text = paths.get(loc.platform_code)
            encoding = _LOCATOR_ENCODINGS.get(loc.platform_code.encode("latin-1"))
            if text is None or encoding is None:
                continue
            raw = text.encode(encoding, errors="surrogatepass")
            # Platform Data Space is in bytes in the images seen (SPEC-NOTES 23); an
            # older image may count sectors: then only the old length is sure to be ours.
            room = loc.data_space if loc.data_space >= loc.data_length else loc.data_length
            room = min(room, max(0, self.data_end - loc.data_offset))
            if len(raw) > room:
                raise InvalidArgumentError(
                    f"{self.source.name}: the new parent path ({len(raw)} bytes) does not fit "
                    f"in the {room} bytes locator entry {loc.index} ({loc.platform_code}) "
                    "reserves",
                    offset=hdr_off + 576 + 24 * loc.index,
                )
            updates.append((loc, raw, room))
        header = bytearray(
            self.source.read_exact(hdr_off, VHD_DYNAMIC_HEADER_SIZE, "VHD dynamic header")
        )
        for loc, raw, room in updates:
            self.source.pwrite(raw + bytes(room - len(raw)), loc.data_offset)
            entry = 576 + 24 * loc.index
            header[entry + 8 : entry + 12] = len(raw).to_bytes(4, "big")
        self.source.flush()
        header[40:56] = unique_id.bytes
        header[56:60] = time_stamp.to_bytes(4, "big")
        header[64:576] = name.encode("utf-16-be", errors="surrogatepass")[:512].ljust(512, b"\0")
        header[36:40] = vhd_checksum(header, DYNAMIC_HEADER_CHECKSUM_OFFSET).to_bytes(4, "big")
        self.source.pwrite(bytes(header), hdr_off)
        self.source.flush()
        self.parent_unique_id = unique_id
        self.parent_name = name
        changed = {loc.index: (raw, paths[loc.platform_code]) for loc, raw, _room in updates}
        self.parent_locators = [
            dataclasses.replace(
                loc, data_length=len(changed[loc.index][0]), path=changed[loc.index][1]
            )
            if loc.index in changed
            else loc
            for loc in self.parent_locators
        ]

    def flush(self) -> None:
        """Make every write so far durable."""
        self.source.flush()

    def close(self) -> None:
        """Flush (when writable) and release the file."""
        try:
            if self.writable:
                self.source.flush()
        finally:
            self.source.close()

    # -- reporting -----------------------------------------------------------------

    def parent_info(self) -> dict[str, Any] | None:
        """Parent name, unique id, time stamp and locators of a differencing disk."""
        if self.disk_type is not DiskType.DIFFERENCING:
            return None
        assert self.parent_time_stamp is not None
        return {
            "parent-name": self.parent_name,
            "parent-unique-id": self.parent_unique_id,
            "parent-timestamp": _timestamp(self.parent_time_stamp),
            "locators": [loc.to_dict() for loc in self.parent_locators],
        }

    def format_specific(self) -> dict[str, Any]:
        """VHD footer fields, and for sparse disks the dynamic header (spec names)."""
        f = self.footer
        d: dict[str, Any] = {
            "disk-type": self.disk_type.value,
            "disk-type-code": int(f.disk_type),
            "footer-copy": self.footer_copy,
            "footer-offset": self.footer_offset,
            "footer-size": self.footer_size,
            "features": int(f.features),
            "temporary": bool(f.features & _FEATURE_TEMPORARY),
            "file-format-version": _version(f.file_format_version),
            "data-offset": int(f.data_offset),
            "timestamp": _timestamp(f.time_stamp),
            "creator-application": _fourcc(f.creator_application),
            "creator-version": _version(f.creator_version),
            "creator-host-os": _fourcc(f.creator_host_os),
            "original-size": int(f.original_size),
            "current-size": int(f.current_size),
            "chs": list(self.geometry),
            "chs-capacity": self.geometry.capacity,
            "checksum": int(f.checksum),
            "checksum-valid": self.footer_checksum_ok,
            "unique-id": f.unique_id,
            "saved-state": int(f.saved_state),
        }
        h = self.dynamic_header
        if h is not None:
            assert self.parent_time_stamp is not None
            d["dynamic-header"] = {
                "offset": self.dynamic_header_offset,
                "data-offset": int(h.data_offset),
                "table-offset": int(h.table_offset),
                "header-version": _version(h.header_version),
                "max-table-entries": int(h.max_table_entries),
                "block-size": int(h.block_size),
                "bitmap-size": self.bitmap_size,
                "checksum": int(h.checksum),
                "checksum-valid": self.dynamic_header_checksum_ok,
            }
            d["parent-unique-id"] = self.parent_unique_id
            d["parent-timestamp"] = _timestamp(self.parent_time_stamp)
            d["parent-name"] = self.parent_name
            d["parent-locators"] = [loc.to_dict() for loc in self.parent_locators]
        return d


def _differing_fields(a: bytes, b: bytes) -> list[str]:
    """Names of the footer fields in which two footers differ."""
    fa = VHDFooter.parse(a)
    fb = VHDFooter.parse(b)
    return [k for k in fa if not k.startswith("_") and fa[k] != fb[k]]
