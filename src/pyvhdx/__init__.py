"""pyvhdx: read, write, create, convert and inspect VHDX and VHD disk images.

>>> import pyvhdx
>>> with pyvhdx.open("disk.vhdx") as img:          # doctest: +SKIP
...     mbr = img.read_at(0, 512)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

# Submodules named like public functions (create) are imported before those
# functions are defined, so the functions, not the modules, are the package's
# attributes (a later import of a cached submodule does not rebind them).
from . import convert as _convert_module
from . import create as _create_module
from . import merge as _merge_module
from ._version import __version__
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
    "convert",
    "create",
    "detect_format",
    "merge",
    "open",
]


def open(
    file: str | os.PathLike[str] | BinaryIO,
    mode: str = "r",
    *,
    format: str | ImageFormat | None = None,
    strict: bool = False,
    parent: str | os.PathLike[str] | DiskImage | None = None,
    resolve_parent: bool = True,
    allow_missing_parent: bool = False,
    verify_parent: bool = True,
) -> DiskImage:
    """Open a virtual disk image.

    Args:
        file: a path, or a seekable binary file object with ``readinto``.
        mode: ``"r"`` (default; never writes to the file) or ``"r+"``.
        format: ``"vhdx"``, ``"vhd"`` or ``"raw"``; detected by content if None.
        strict: refuse images with non-fatal defects (a bad VHD checksum).
        parent: a differencing disk's parent (path or open image), tried before
            the locators the child records.
        resolve_parent: look for the parent at all (False: info only; reads of
            parent data raise).
        allow_missing_parent: read a child whose parent is not found, with the
            parent's data as zeros (reported in ``info().problems``).
        verify_parent: check the parent's identity against the child's linkage.

    Raises:
        InvalidImageError: the image is malformed (subclasses name the defect).
        UnsupportedFeatureError: the image needs a feature pyvhdx lacks.
        ParentError: a differencing disk's parent is missing or not the right one.
    """
    return open_image(
        file,
        mode,
        format=format,
        strict=strict,
        parent=parent,
        resolve_parent=resolve_parent,
        allow_missing_parent=allow_missing_parent,
        verify_parent=verify_parent,
    )


def create(
    path: str | os.PathLike[str],
    size: int,
    *,
    format: str | ImageFormat | None = None,
    disk_type: str | DiskType = DiskType.DYNAMIC,
    block_size: int | None = None,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    overwrite: bool = False,
    preallocate: bool = False,
    azure: bool = False,
) -> int:
    """Create an empty VHDX or VHD image; the format from ``format`` or the file name.

    VHD images have 512-byte sectors (``physical_sector_size`` is not stored
    and is ignored); ``azure=True`` makes an Azure-ready fixed VHD, its size
    rounded up to a whole MiB (see :func:`pyvhdx.create.create_azure_vhd`).

    Returns:
        The virtual size of the new image (with ``azure``, the rounded size).

    Raises:
        InvalidArgumentError: a parameter outside the format's limits.
        FileExistsError: the file exists and ``overwrite`` is false.
        UnsupportedFeatureError: a format pyvhdx cannot create (raw).
    """
    fmt = ImageFormat(format) if format is not None else _format_from_name(path)
    if fmt is ImageFormat.VHD:
        if logical_sector_size != 512:
            raise InvalidArgumentError(f"VHD sectors are 512 bytes, not {logical_sector_size}")
        return _create_module.create_vhd(
            path,
            size,
            disk_type=disk_type,
            block_size=block_size,
            overwrite=overwrite,
            preallocate=preallocate,
            azure=azure,
        )
    if fmt is not ImageFormat.VHDX:
        raise UnsupportedFeatureError(f"creating {fmt.value} images is not supported yet")
    if azure:
        raise InvalidArgumentError("Azure-ready images are fixed VHDs (format 'vhd')")
    _create_module.create_vhdx(
        path,
        size,
        disk_type=disk_type,
        block_size=block_size,
        logical_sector_size=logical_sector_size,
        physical_sector_size=physical_sector_size,
        overwrite=overwrite,
        preallocate=preallocate,
    )
    return size


def _format_from_name(path: str | os.PathLike[str]) -> ImageFormat:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    return {
        ".vhd": ImageFormat.VHD,
        ".avhd": ImageFormat.VHD,
        ".img": ImageFormat.RAW,
        ".raw": ImageFormat.RAW,
    }.get(suffix, ImageFormat.VHDX)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str | ImageFormat | None = None,
    disk_type: str | DiskType = DiskType.DYNAMIC,
    block_size: int | None = None,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    src_format: str | ImageFormat | None = None,
    force: bool = False,
    progress: bool | Callable[[int], None] | None = None,
    sync: bool = True,
) -> _convert_module.ConvertResult:
    """Convert ``src`` (raw, VHD or VHDX) into a new ``dst`` image.

    See :func:`pyvhdx.convert.convert_image`; the destination format comes from
    ``format`` or the destination's extension (``.vhdx``, ``.vhd``, else raw).
    """
    return _convert_module.convert_image(
        src,
        dst,
        format=format,
        disk_type=disk_type,
        block_size=block_size,
        logical_sector_size=logical_sector_size,
        physical_sector_size=physical_sector_size,
        src_format=src_format,
        force=force,
        progress=progress,
        sync=sync,
    )


def merge(
    child: str | os.PathLike[str],
    *,
    parent: str | os.PathLike[str] | None = None,
    keep_child: bool = False,
) -> None:
    """Merge a differencing disk into its parent (as Merge-VHD); see pyvhdx.merge."""
    _merge_module.merge_image(child, parent=parent, keep_child=keep_child)
