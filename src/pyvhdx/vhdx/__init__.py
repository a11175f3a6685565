"""VHDX (MS-VHDX): the layout model, the reader and the writer.

:mod:`.layout` reads and builds every structure, :mod:`.file` decides which
copy counts and maps the BAT (:class:`VHDXFile`), :mod:`.writer` writes.
"""

from __future__ import annotations

from .file import VHDXFile
from .layout import HeaderCopy, MetadataItem, RegionEntry, RegionTableCopy

__all__ = ["HeaderCopy", "MetadataItem", "RegionEntry", "RegionTableCopy", "VHDXFile"]
