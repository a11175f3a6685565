"""Small in-place edits of a VHDX's metadata, each through one log entry (MS-VHDX 2.3):
the sector patcher the resize, compact and Set-VHD operations share, and the
rewrite of one fixed-size metadata item (2.6.2)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from .. import constants as K
from ..errors import InvalidImageError

if TYPE_CHECKING:
    from .file import VHDXFile

__all__ = ["SectorPatch", "set_item"]


class SectorPatch:
    """Byte changes gathered into whole 4 KiB sectors, as a log entry carries them
    (MS-VHDX 2.3.1.3: data descriptors name 4 KiB sectors)."""

    def __init__(self, f: VHDXFile) -> None:
        self.f = f
        self.sectors: dict[int, bytearray] = {}

    def patch(self, at: int, data: bytes, what: str) -> None:
        """``data`` at file offset ``at`` (``what`` names the structure in errors)."""
        self.f._patch(self.sectors, at, data, what)

    def apply(self) -> None:
        """Write the sectors through one log entry, then in place (2.3)."""
        self.f._log_and_apply({k: bytes(v) for k, v in self.sectors.items()})


def set_item(f: VHDXFile, guid: uuid.UUID, value: bytes) -> None:
    """Overwrite the start of metadata item ``guid`` with ``value``, through the log.

    Only the FileWriteGuid changes (the disk's data does not). Raises
    InvalidImageError when the item is missing or shorter than ``value``.
    """
    item = f.metadata.get(guid)
    name = K.KNOWN_METADATA.get(guid, str(guid))
    region = f.regions[K.REGION_METADATA]
    if item is None or item.length < len(value):
        raise InvalidImageError(
            f"metadata item {name} is missing or shorter than {len(value)} bytes",
            structure="metadata table",
            field=name,
            offset=region.file_offset,
        )
    f._begin_session(data=False)
    patch = SectorPatch(f)
    patch.patch(region.file_offset + item.offset, value, "metadata region")
    patch.apply()
