"""VHD images: fixed, dynamic and differencing (Virtual Hard Disk Image Format
Specification, 2006; SPEC-NOTES.md "VHD", pitfalls 14-20): the footer copy to trust,
which defects :mod:`pyvhdx.vhd.layout` found are fatal, and a lazily read BAT.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
import warnings
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..base import FormatHandler
from ..bat import I64, BlockTable, decode_vhd_bat, lost_totals
from ..constants import (
    VHD_FOOTER_SIZE,
    VHD_SECTOR_SIZE,
    DiskType,
    ImageFormat,
    VHDDiskType,
)
from ..errors import (
    ChecksumError,
    InvalidImageError,
    PyvhdxWarning,
    TruncatedImageError,
)
from ..info import Problem
from ..raw import linear_table
from ..source import FileSource
from .layout import (
    FEATURE_TEMPORARY,
    CHSGeometry,
    DynamicHeader,
    FooterCopy,
    Footers,
    LayoutProblem,
    LocatorEntry,
    bat_chunks,
    fixed_size_problem,
    footer_field_problems,
    fourcc,
    header_offset_problem,
    read_dynamic_header,
    read_footers,
    timestamp_text,
    version_text,
    vhd_bitmap_size,
)
from .writer import VHDWriter

__all__ = ["FooterChoice", "VHDFile", "choose_footer"]

#: Defects of the dynamic header that a reader reports and goes on with.
_TOLERATED: Final = {"header.version", "locator.outside"}
#: Defects no reader cares about (``check`` reports them).
_IGNORED: Final = {"header.data-offset"}
#: Defects of the footer in use that a reader reports (others it ignores).
_FOOTER_REPORTED: Final = {"footer.version", "footer.size-unaligned", "footer.size-above-limit"}


def _warn(message: str) -> None:
    """Warn, attributing the warning to the first caller outside pyvhdx."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package_dir
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, PyvhdxWarning, stacklevel=level)


# --- the footer decision (DESIGN.md "Copies") -------------------------------------------

_START_MISSING: Final = LayoutProblem(
    "footer.start-missing",
    "footer copy at offset 0",
    "missing: a dynamic disk keeps a copy of the footer at offset 0",
    0,
    "Cookie",
)


@dataclasses.dataclass(frozen=True)
class FooterChoice:
    """The footer copy readers use, and what that means for the other copy."""

    footers: Footers
    chosen: FooterCopy

    def failed(self) -> list[tuple[LayoutProblem, int | None]]:
        """The copies not used that should be there: each defect and the copy's offset
        (None when missing or cut off) (DESIGN.md "Copies").
        """
        f = self.footers
        if self.chosen is f.start:
            end = f.end
            if end is not None:
                found = end.checksum_problem()
                assert found is not None  # the copy at 0 is used only if the end one is bad
                return [(found, end.offset)]
            gone = f.problem("footer.truncated") or f.problem("footer.missing")
            assert gone is not None
            return [(gone, None)]
        if not self.chosen.sparse:
            return []
        if f.start is None:
            return [(_START_MISSING, None)]
        bad = f.start.checksum_problem()
        return [] if bad is None else [(bad, 0)]

    def differ(self) -> LayoutProblem | None:
        """Both copies valid but different (then the footer at the end is used)."""
        end, start = self.footers.end, self.footers.start
        if end is None or start is None or not (end.checksum_ok and start.checksum_ok):
            return None
        fields = end.differing_fields(start)
        if not fields:
            return None
        return LayoutProblem(
            "footer.copies-differ",
            "footer copy at offset 0",
            f"differs from the footer at the end in {', '.join(fields)}; readers use the "
            "footer at the end",
            0,
        )


def choose_footer(footers: Footers) -> FooterChoice:
    """The footer copy to trust: the end one if its checksum is right, else a valid copy
    at offset 0, else either (DESIGN.md "Copies"). Raises Truncated/InvalidImageError
    without a copy.
    """
    found = [c for c in (footers.end, footers.start) if c is not None]
    good = [c for c in found if c.checksum_ok]
    if found:
        return FooterChoice(footers, (good or found)[0])
    size = footers.file_size
    if footers.cut_at is not None:
        raise TruncatedImageError(
            f"the file ends {size - footers.cut_at} bytes into the {VHD_FOOTER_SIZE}-byte "
            "footer and there is no footer copy at offset 0",
            structure="VHD footer",
            offset=footers.cut_at,
        )
    raise InvalidImageError(
        "no VHD footer (cookie 'conectix') at the end of the file or at offset 0",
        structure="VHD footer",
        field="Cookie",
        offset=max(0, size - VHD_FOOTER_SIZE),
    )


# --- the format handler -------------------------------------------------------------


class VHDFile(VHDWriter, FormatHandler):
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
        super().__init__(source, strict=strict, writable=writable, salvage=salvage)
        self._init_writes()
        self.format = ImageFormat.VHD
        self.logical_sector_size = VHD_SECTOR_SIZE
        self.physical_sector_size = VHD_SECTOR_SIZE
        self.dynamic_header: Any = None
        self.header: DynamicHeader | None = None
        self.dynamic_header_offset: int | None = None
        self.table_offset: int | None = None
        self.max_table_entries: int | None = None
        self.bitmap_size: int | None = None
        self.parent_unique_id: uuid.UUID | None = None
        self.parent_name: str | None = None
        self.parent_time_stamp: int | None = None
        self.parent_locators: list[LocatorEntry] = []
        self._differencing = False

        chosen = self._open_footer()
        self._check_footer_fields(chosen)
        footer = chosen.fields
        self.virtual_size = int(footer.current_size)
        self.identifier = footer.unique_id
        self.creator = (
            f"{fourcc(footer.creator_application).strip()} "
            f"{version_text(footer.creator_version)} ({fourcc(footer.creator_host_os).strip()})"
        )
        geom = footer.disk_geometry
        self.geometry = CHSGeometry(geom.cylinders, geom.heads, geom.sectors_per_track)
        self.disk_type = DiskType[VHDDiskType(chosen.disk_type).name]
        if self.disk_type is DiskType.FIXED:
            self.block_size = None
            self._open_fixed(chosen)
        else:
            self._open_dynamic(chosen, self.disk_type is DiskType.DIFFERENCING)

    # -- problems ----------------------------------------------------------------

    def _report(self, problem: Problem, *, warn: bool = False) -> None:
        self.problems.append(problem)
        if warn:
            _warn(f"{self.source.name}: {problem}")

    def _bad_checksum(self, structure: str, offset: int, message: str) -> None:
        """A structure in use has a bad checksum: fatal if strict, else reported."""
        if self.strict:
            raise ChecksumError(message, structure=structure, field="Checksum", offset=offset)
        self._report(Problem(structure, message, offset, "Checksum"), warn=True)

    # -- footer (spec "Hard Disk Footer Format"; DESIGN.md "Copies") -------------

    def _open_footer(self) -> FooterCopy:
        """Choose the footer copy to trust, record what is wrong with the others."""
        footers = read_footers(self.source)
        choice = choose_footer(footers)
        chosen = choice.chosen
        self.data_end = footers.data_end  # end of data: the EOF footer starts here
        self.footer = chosen.fields
        self.footer_raw = chosen.raw  # the footer in use, 512 bytes, as read
        self.footer_copy = chosen.where
        self.footer_offset = chosen.offset
        self.footer_size = chosen.length
        self.footer_checksum_ok = chosen.checksum_ok
        using = "; using the copy at offset 0" if chosen.where == "start" else ""
        for problem, copy_offset in choice.failed():
            self.failed_copies.append(problem.structure)
            quiet = problem.code == "footer.start-missing"
            self._report(problem.problem(using, offset=copy_offset), warn=not quiet)
        if (differ := choice.differ()) is not None:
            self._report(differ.problem(), warn=True)
        if not chosen.checksum_ok:
            at = chosen.field_offset("Checksum")
            self._bad_checksum(f"VHD {chosen.name}", at, chosen.checksum_message)
        return chosen

    def _check_footer_fields(self, chosen: FooterCopy) -> None:
        """An unknown disk type is fatal; other defects of the footer are reported."""
        for problem in footer_field_problems(chosen):
            if problem.code == "footer.disk-type":
                raise problem.error(structure="VHD footer")
            if problem.code in _FOOTER_REPORTED:
                self._report(problem.problem(structure="VHD footer"))

    # -- fixed disks (spec "Fixed Hard Disk Image") ------------------------------

    def _open_fixed(self, chosen: FooterCopy) -> None:
        wrong = fixed_size_problem(chosen, self.data_end)
        if wrong is not None and wrong.code == "fixed.short":
            raise wrong.error(TruncatedImageError, structure="VHD footer")
        if wrong is not None:
            self._report(wrong.problem(structure="VHD footer"))
        self.table = linear_table(self.virtual_size, 0)

    # -- dynamic and differencing disks (spec "Dynamic Disk Header Format") ------

    def _open_dynamic(self, chosen: FooterCopy, differencing: bool) -> None:
        if (wrong := header_offset_problem(chosen, self.data_end)) is not None:
            raise wrong.error(structure="VHD footer")
        hdr = read_dynamic_header(
            self.source,
            int(chosen.fields.data_offset),
            virtual_size=self.virtual_size,
            data_end=self.data_end,
        )
        for problem in hdr.problems:
            self._header_problem(hdr, problem)
        for loc in hdr.locators:
            if loc.problem is not None:
                self._report(loc.problem.problem())
        self.header = hdr
        self.dynamic_header = hdr.fields
        self.dynamic_header_offset = hdr.offset
        self.block_size = hdr.block_size
        self.table_offset = hdr.table_offset
        self.max_table_entries = hdr.max_table_entries
        self.bitmap_size = vhd_bitmap_size(hdr.block_size)
        self.parent_unique_id = hdr.fields.parent_unique_id
        self.parent_time_stamp = int(hdr.fields.parent_time_stamp)
        self.parent_name = hdr.parent_name
        self.parent_locators = hdr.locators
        self._differencing = differencing
        self.table = BlockTable(
            self.virtual_size, hdr.block_size, self._load_bat, sector_size=VHD_SECTOR_SIZE
        )
        if differencing:
            self.table.set_partial_reader(self._sector_bitmap, self._block_data_offset)
        elif self.salvage:
            self.table.load_all()  # every lost block is listed at open

    def _header_problem(self, hdr: DynamicHeader, problem: LayoutProblem) -> None:
        """What a defect of the dynamic header means to a reader."""
        if problem.code == "header.checksum":
            assert problem.offset is not None
            self._bad_checksum(problem.structure, problem.offset, hdr.checksum_message)
        elif problem.code in _TOLERATED:
            self._report(problem.problem())
        elif problem.code not in _IGNORED:
            raise problem.error()

    # -- differencing (spec "Block Allocation Table and Data Blocks", sector bitmap) --

    def _bat_entry(self, block: int) -> int:
        assert self.table_offset is not None
        raw = self.source.read_exact(self.table_offset + 4 * block, 4, "VHD BAT")
        return int.from_bytes(raw, "big")

    def _block_data_offset(self, block: int) -> int:
        """File offset of an allocated block's data (after its padded bitmap)."""
        assert self.bitmap_size is not None
        return self._bat_entry(block) * VHD_SECTOR_SIZE + self.bitmap_size

    def _sector_bitmap(self, block: int) -> npt.NDArray[np.bool_]:
        """One bool per sector of ``block``: True if this file holds it (MSB first)."""
        return self._read_bits(self._bat_entry(block) * VHD_SECTOR_SIZE)

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

    def _decode(self, first: int, raw: npt.NDArray[np.uint32], *, lenient: bool) -> I64:
        """Block codes of BAT entries ``raw`` from ``first`` (``lenient``: past-EOF kept)."""
        assert self.table_offset is not None and self.block_size is not None
        assert self.bitmap_size is not None
        return decode_vhd_bat(
            raw,
            first_block=first,
            bat_offset=self.table_offset,
            block_size=self.block_size,
            bitmap_size=self.bitmap_size,
            virtual_size=self.virtual_size,
            file_size=self.data_end,
            differencing=self._differencing and not lenient,
            allow_past_eof=lenient or not self._differencing,
        )

    def _load_bat(self, first_block: int, count: int) -> I64:
        """Read and decode BAT entries ``first_block`` .. ``first_block + count``."""
        assert self.table_offset is not None
        data = self.source.read_exact(self.table_offset + 4 * first_block, 4 * count, "VHD BAT")
        codes = self._decode(first_block, np.frombuffer(data, dtype=">u4"), lenient=False)
        table_offset = self.table_offset
        self._note_lost(codes, first_block, self.data_end, lambda b: table_offset + 4 * b)
        return codes

    def _lost_totals(self, file_size: int) -> tuple[int, int]:
        assert self.block_size is not None and self.table_offset is not None
        raws = bat_chunks(self.source, self.table_offset, self.table.block_count)
        chunks = ((first, self._decode(first, raw, lenient=True)) for first, raw in raws)
        return lost_totals(
            chunks, block_size=self.block_size, virtual_size=self.virtual_size, file_size=file_size
        )

    # -- reporting -----------------------------------------------------------------

    def parent_info(self) -> dict[str, Any] | None:
        """Parent name, unique id, time stamp and locators of a differencing disk."""
        if self.disk_type is not DiskType.DIFFERENCING:
            return None
        assert self.parent_time_stamp is not None
        return {
            "parent-name": self.parent_name,
            "parent-unique-id": self.parent_unique_id,
            "parent-timestamp": timestamp_text(self.parent_time_stamp),
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
            "temporary": bool(f.features & FEATURE_TEMPORARY),
            "file-format-version": version_text(f.file_format_version),
            "data-offset": int(f.data_offset),
            "timestamp": timestamp_text(f.time_stamp),
            "creator-application": fourcc(f.creator_application),
            "creator-version": version_text(f.creator_version),
            "creator-host-os": fourcc(f.creator_host_os),
            "original-size": int(f.original_size),
            "current-size": int(f.current_size),
            "chs": list(self.geometry),
            "chs-capacity": self.geometry.capacity,
            "checksum": int(f.checksum),
            "checksum-valid": self.footer_checksum_ok,
            "unique-id": f.unique_id,
            "saved-state": int(f.saved_state),
        }
        hdr = self.header
        if hdr is not None:
            assert self.parent_time_stamp is not None
            h = hdr.fields
            d["dynamic-header"] = {
                "offset": hdr.offset,
                "data-offset": int(h.data_offset),
                "table-offset": int(h.table_offset),
                "header-version": version_text(h.header_version),
                "max-table-entries": int(h.max_table_entries),
                "block-size": int(h.block_size),
                "bitmap-size": self.bitmap_size,
                "checksum": int(h.checksum),
                "checksum-valid": hdr.checksum_ok,
            }
            d["parent-unique-id"] = self.parent_unique_id
            d["parent-timestamp"] = timestamp_text(self.parent_time_stamp)
            d["parent-name"] = self.parent_name
            d["parent-locators"] = [loc.to_dict() for loc in self.parent_locators]
        return d
