"""The interface each format module implements below ``DiskImage``.

A format opens one file, validates it, and reduces its allocation table to a
:class:`~pyvhdx.bat.BlockTable` (the block-map protocol of DESIGN.md "Layers").
``DiskImage`` does all I/O from that table.
"""

from __future__ import annotations

import uuid
from typing import Any

from .bat import BlockTable
from .constants import DiskType, ImageFormat
from .errors import UnsupportedFeatureError
from .info import Problem
from .source import FileSource

__all__ = ["FormatHandler"]


class FormatHandler:
    """Base of ``VHDXFile``, ``VHDFile`` and ``RawFile``.

    Subclasses set every attribute in their constructor.
    """

    format: ImageFormat
    disk_type: DiskType
    virtual_size: int
    block_size: int | None
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    source: FileSource
    table: BlockTable
    creator: str | None = None
    identifier: uuid.UUID | None = None
    log_replayed: bool = False
    header_copy: int | None = None
    region_table_copy: int | None = None
    supports_write: bool = False  # the constructor takes writable=True
    parent_reader: Any = None  # the parent DiskImage's readinto_at (differencing disks)

    def __init__(
        self,
        source: FileSource | None = None,
        *,
        strict: bool = False,
        writable: bool = False,
        salvage: bool = False,
    ) -> None:
        """Record the options every format takes (``source`` if given)."""
        self.problems: list[Problem] = []
        self.failed_copies: list[str] = []
        if source is not None:
            self.source = source
        self.strict = strict
        self.writable = writable
        self.salvage = salvage
        self._load()

    def _load(self) -> None:
        """Read the image's structures, the options set (a format's handler may
        do it here instead of after calling this constructor)."""

    def _note_lost(self, codes: Any, first: int, file_size: int, bat_entry: Any) -> None:
        """Blocks whose data lies past the end of the file (a truncated image).

        With ``salvage`` each lost range becomes a problem (it reads as zeros);
        without it the open fails, naming how much of the image is missing.
        """
        from .bat import lost_ranges
        from .errors import TruncatedImageError

        assert self.block_size is not None
        lost = lost_ranges(
            codes,
            first_block=first,
            block_size=self.block_size,
            virtual_size=self.virtual_size,
            file_size=file_size,
        )
        if not lost:
            return
        if not self.salvage:
            total, count = self._lost_totals(file_size)
            voff, _, foff = lost[0]
            raise TruncatedImageError(
                f"the file ends at {file_size:#x}, before the data of {count} block(s): "
                f"{total} bytes ({total:#x}) of the disk are missing; open with "
                "salvage=True to read the rest (the missing bytes read as zeros)",
                structure="BAT",
                field="FileOffsetMB"
                if self.format is ImageFormat.VHDX
                else f"BAT[{voff // self.block_size}]",
                offset=bat_entry(voff // self.block_size),
            )
        for voff, length, foff in lost:
            block = voff // self.block_size
            self.problems.append(
                Problem(
                    f"block {block}",
                    f"lost: disk bytes {voff:#x}+{length:#x} would be at file offset "
                    f"{foff:#x}, past the end of the file ({file_size:#x}); they read as zeros",
                    foff,
                    "FileOffsetMB" if self.format is ImageFormat.VHDX else f"BAT[{block}]",
                )
            )

    def _lost_totals(self, file_size: int) -> tuple[int, int]:
        """(bytes, blocks) of data past the end of the file, over the whole BAT."""
        return 0, 0

    def parent_info(self) -> dict[str, Any] | None:
        """Parent identity and locators of a differencing disk, else None."""
        return None

    # -- differencing disks (DESIGN.md "Parents") ---------------------------------

    def parent_locations(self) -> list[tuple[str, str]]:
        """``(locator name, path)`` of the parent, in the order the spec tries them."""
        return []

    def parent_identity_matches(self, parent: FormatHandler) -> tuple[bool, str]:
        """Whether ``parent`` is the image this child was made from, and why not."""
        return True, ""

    def identity_as_parent(self) -> str:
        """What a child records of this image (VHDX DataWriteGuid, VHD unique id)."""
        return str(self.identifier)

    def format_specific(self) -> dict[str, Any]:
        """Format-specific fields for ``info`` (``format-specific`` in JSON)."""
        return {}

    # -- writes (handlers that support them override these) -------------------

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at virtual ``offset`` (already checked to lie inside the disk)."""
        raise UnsupportedFeatureError(f"writing {self.format.value} images is not supported yet")

    def flush(self) -> None:
        """Make every write so far durable."""
        self.source.flush()

    def close(self) -> None:
        """Finish pending work (a writable handler leaves a clean image) and release the file."""
        self.source.close()
