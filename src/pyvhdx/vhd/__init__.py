"""VHD images (Virtual Hard Disk Image Format Specification, 2006).

One layout model (DESIGN.md "One layout model per format"):
:mod:`~pyvhdx.vhd.layout` reads every on-disk copy of every structure and builds
them, :mod:`~pyvhdx.vhd.file` decides which copy to trust and what is fatal
(:class:`VHDFile`), :mod:`~pyvhdx.vhd.writer` writes.
"""

from __future__ import annotations

from .file import VHDFile
from .layout import (
    VHD_MAX_BLOCK_SIZE,
    VHD_MAX_CHS_SECTORS,
    VHD_MIN_BLOCK_SIZE,
    CHSGeometry,
    chs_geometry,
    vhd_bitmap_size,
)

__all__ = [
    "VHD_MAX_BLOCK_SIZE",
    "VHD_MAX_CHS_SECTORS",
    "VHD_MIN_BLOCK_SIZE",
    "CHSGeometry",
    "VHDFile",
    "chs_geometry",
    "vhd_bitmap_size",
]
