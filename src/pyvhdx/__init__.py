"""pyvhdx: read, write, create, convert and inspect VHDX and VHD disk images.

>>> import pyvhdx
>>> with pyvhdx.open("disk.vhdx") as img:          # doctest: +SKIP
...     mbr = img.read_at(0, 512)
"""

from __future__ import annotations

import os
from typing import BinaryIO

from .constants import DiskType, ImageFormat, RunKind
from .errors import (
    ChecksumError,
    InvalidArgumentError,
    InvalidImageError,
    LogReplayError,
    ParentError,
    PyvhdxError,
    ReadOnlyError,
    TruncatedImageError,
    UnsupportedFeatureError,
)
from .image import DiskImage, Extent, detect_format, open_image
from .info import ImageInfo

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "DiskImage",
    "DiskType",
    "Extent",
    "ImageFormat",
    "ImageInfo",
    "InvalidArgumentError",
    "InvalidImageError",
    "LogReplayError",
    "ParentError",
    "PyvhdxError",
    "ReadOnlyError",
    "RunKind",
    "TruncatedImageError",
    "UnsupportedFeatureError",
    "__version__",
    "detect_format",
    "open",
]


def open(  # noqa: A001 - the public name DESIGN.md fixes
    file: str | os.PathLike[str] | BinaryIO,
    mode: str = "r",
    *,
    format: str | ImageFormat | None = None,
    strict: bool = False,
) -> DiskImage:
    """Open a virtual disk image.

    Args:
        file: a path, or a seekable binary file object with ``readinto``.
        mode: ``"r"`` (default; never writes to the file) or ``"r+"``.
        format: ``"vhdx"``, ``"vhd"`` or ``"raw"``; detected by content if None.
        strict: refuse images with non-fatal defects (a bad VHD checksum).

    Raises:
        InvalidImageError: the image is malformed (subclasses name the defect).
        UnsupportedFeatureError: the image needs a feature pyvhdx lacks.
    """
    return open_image(file, mode, format=format, strict=strict)
