"""``ImageInfo``: what ``pyvhdx info`` shows, shared by the API and the CLI.

Keys of :meth:`ImageInfo.to_dict` follow ``qemu-img info --output=json`` where a
counterpart exists (``virtual-size``, ``actual-size``, ``format``,
``cluster-size``, ``dirty-flag``, ``format-specific``; DESIGN.md "Command line").
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from .problems import Problem

__all__ = ["AllocationSummary", "ImageInfo", "Problem", "json_fields", "kebab_fields"]


@dataclasses.dataclass(frozen=True)
class AllocationSummary:
    """How the blocks of the disk are mapped."""

    block_count: int
    data_blocks: int
    zero_blocks: int
    unmapped_blocks: int
    parent_blocks: int
    partial_blocks: int
    #: Get-VHD's FragmentationPercentage: stored blocks that lie in the file before
    #: the block stored before them in disk order, in percent of the stored blocks.
    fragmentation_percentage: int = 0
    #: Get-VHD's Alignment: 1 when every stored block starts on a 4 KiB boundary of
    #: the file (a VHD's blocks follow their 512-byte sector bitmaps), else 0.
    alignment: int = 1

    def to_dict(self) -> dict[str, int]:
        names = [f.name for f in dataclasses.fields(self)]
        return kebab_fields(self, *names)


def kebab_fields(obj: object, *names: str) -> dict[str, Any]:
    """The attributes ``names`` of ``obj`` keyed as JSON output keys them: the
    field name in kebab case (``disk_type`` -> ``disk-type``)."""
    return {name.replace("_", "-"): getattr(obj, name) for name in names}


#: The JSON keys that are not a field's name in kebab case: qemu-img's names
#: (``qemu-img info`` and ``check --output=json``, DESIGN.md "Command line").
_QEMU_KEYS = {
    "block_size": "cluster-size",
    "allocated_size": "actual-size",
    "dirty": "dirty-flag",
    "parent": "backing-image",
    "total_blocks": "total-clusters",
    "allocated_blocks": "allocated-clusters",
}


def json_fields(obj: object, *names: str) -> dict[str, Any]:
    """The attributes ``names`` of ``obj`` as ``--json`` prints them: keyed by qemu-img's
    name where it has one, else in kebab case; values made JSON-ready; None (absent)
    left out."""
    out = {}
    for name in names:
        value = _jsonable(getattr(obj, name))
        if value is not None:
            out[_QEMU_KEYS.get(name, name.replace("_", "-"))] = value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        if to_dict is not None:
            return to_dict()
    return value


@dataclasses.dataclass
class ImageInfo:
    """Summary of an opened image, format independent plus ``format_specific``."""

    filename: str
    format: str
    disk_type: str
    virtual_size: int
    file_size: int
    block_size: int | None
    logical_sector_size: int
    physical_sector_size: int
    creator: str | None = None
    identifier: uuid.UUID | None = None  # VHDX Page 83 id, VHD unique id
    log_replayed: bool = False
    header_copy: int | None = None  # 1 or 2 (VHDX), which copy was used
    region_table_copy: int | None = None
    failed_copies: list[str] = dataclasses.field(default_factory=list)
    allocation: AllocationSummary | None = None
    parent: dict[str, Any] | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)
    allocated_size: int | None = None  # bytes the file occupies on storage (st_blocks)
    #: Get-VHD's MinimumSize: the end of the last partition (the GPT backup header
    #: included), None without a partition table (pyvhdx.resize.minimum_size then
    #: looks for the last non-zero byte).
    minimum_size: int | None = None
    format_specific: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def dirty(self) -> bool:
        """qemu's ``dirty-flag``: the image had a pending log (replayed in memory
        when read-only); the same fact as :attr:`log_replayed`."""
        return self.log_replayed

    @property
    def page83_id(self) -> uuid.UUID | None:
        """The VHDX Page 83 "virtual disk id" (MS-VHDX 2.6.2.3), if VHDX."""
        return self.identifier if self.format == "vhdx" else None

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict, as ``pyvhdx info --json`` prints it."""
        return {
            **json_fields(self, "filename", "format", "disk_type", "virtual_size", "file_size"),
            **json_fields(self, "allocated_size", "minimum_size", "block_size"),
            **json_fields(self, "logical_sector_size", "physical_sector_size", "creator"),
            **json_fields(self, "identifier", "dirty", "log_replayed", "header_copy"),
            **json_fields(self, "region_table_copy", "failed_copies", "problems", "allocation"),
            **json_fields(self, "parent"),
            "format-specific": {"type": self.format, "data": _jsonable(self.format_specific)},
        }
