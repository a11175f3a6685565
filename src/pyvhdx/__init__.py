"""pyvhdx: read, write, create, convert and inspect VHDX and VHD disk images.

>>> import pyvhdx
>>> with pyvhdx.open("disk.vhdx") as img:          # doctest: +SKIP
...     mbr = img.read_at(0, 512)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

# Submodules named like public functions (create, convert, merge) are imported
# before those functions are defined, so the functions, not the modules, are the
# package's attributes (a later import of a cached submodule does not rebind
# them). So no attribute path leads through them to a function of those modules:
# texts name such a function as ``from pyvhdx.create import create_vhd`` does
# (tests/unit/test_dotted_names.py checks every dotted name they mention).
from . import convert as _convert_module
from . import create as _create_module
from . import merge as _merge_module
from ._version import __version__
from .constants import DiskType, ImageFormat, RunKind
from .errors import (
    ChecksumError,
    ImageLockedError,
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
from .progress import Progress
from .suffix import format_from_suffix

__all__ = [
    "ChecksumError",
    "DiskImage",
    "DiskType",
    "Extent",
    "ImageFormat",
    "ImageInfo",
    "ImageLockedError",
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
    salvage: bool = False,
    force_share: bool = False,
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
        salvage: read a truncated image (read-only): blocks past the end of the
            file read as zeros and are listed in ``info().problems``.
        force_share: take and check no lock (qemu's ``force-share``, ``-U``), to
            read an image another process is writing; read-only opens only.

    A path (not a file object, which is the caller's to lock) is locked as qemu
    locks images, until the image is closed: ``"r+"`` excludes every other
    user, pyvhdx or qemu; ``"r"`` excludes writers but not other readers.

    Raises:
        InvalidImageError: the image is malformed (subclasses name the defect).
        UnsupportedFeatureError: the image needs a feature pyvhdx lacks.
        ParentError: a differencing disk's parent is missing or not the right one.
        ImageLockedError: another process (pyvhdx or qemu) holds a conflicting lock.
        InvalidArgumentError: a bad mode or option (``force_share`` with ``"r+"``),
            or the path is not a regular file or block device (a FIFO, a directory).
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
        salvage=salvage,
        force_share=force_share,
    )


def create(
    path: str | os.PathLike[str],
    size: int | None = None,
    *,
    format: str | ImageFormat | None = None,
    disk_type: str | DiskType | None = None,
    block_size: int | None = None,
    logical_sector_size: int | None = None,
    physical_sector_size: int | None = None,
    overwrite: bool = False,
    preallocate: bool = False,
    azure: bool = False,
    parent: str | os.PathLike[str] | DiskImage | None = None,
) -> int:
    """Create an empty VHDX or VHD image; the format from ``format`` or the file name.

    VHD images have 512-byte sectors (``physical_sector_size`` is not stored
    and is ignored); ``azure=True`` makes an Azure-ready fixed VHD, its size
    rounded up to a whole MiB (see ``create_azure_vhd`` in the ``pyvhdx.create``
    module: ``from pyvhdx.create import create_azure_vhd``).

    With ``parent``, the new image is a differencing child of it (a Hyper-V
    checkpoint disk; see ``create_vhdx_child`` and ``create_vhd_child`` in
    the ``pyvhdx.create`` module): a VHDX child of a VHDX parent or
    a VHD child of a VHD parent. Its virtual size, sector sizes and (VHD)
    geometry are the parent's, so ``size`` may be left out; the format is
    ``format``, else the name's (``.vhdx``/``.avhdx``, ``.vhd``/``.avhd``),
    else the parent's. Defaults: dynamic, 512-byte logical and 4096-byte
    physical sectors (VHDX); a child's block size is 2 MiB.

    Returns:
        The virtual size of the new image (with ``azure``, the rounded size).

    Raises:
        InvalidArgumentError: a parameter outside the format's limits; with
            ``parent``, a ``size``, sector size or format that differs from the
            parent's, or a disk type other than differencing.
        FileExistsError: the file exists and ``overwrite`` is false.
        UnsupportedFeatureError: a format pyvhdx cannot create (raw).
        ParentError: ``parent``'s own chain does not open.
    """
    if parent is not None:
        return _create_child(
            path,
            parent,
            size=size,
            format=format,
            disk_type=disk_type,
            block_size=block_size,
            logical_sector_size=logical_sector_size,
            physical_sector_size=physical_sector_size,
            overwrite=overwrite,
            preallocate=preallocate,
            azure=azure,
        )
    if size is None:
        raise InvalidArgumentError("a size is needed (or a parent to take it from)")
    disk_type = DiskType.DYNAMIC if disk_type is None else disk_type
    logical_sector_size = 512 if logical_sector_size is None else logical_sector_size
    physical_sector_size = 4096 if physical_sector_size is None else physical_sector_size
    fmt = ImageFormat(format) if format is not None else format_from_suffix(path)
    fmt = ImageFormat.VHDX if fmt is None else fmt  # an unknown name makes a VHDX
    if fmt is ImageFormat.VHD:
        if logical_sector_size != 512:
            raise InvalidArgumentError(f"VHD sectors are 512 bytes, not {logical_sector_size}")
        _create_module.create_vhd(
            path,
            size,
            disk_type=disk_type,
            block_size=block_size,
            overwrite=overwrite,
            preallocate=preallocate,
            azure=azure,
        )
        return _create_module.azure_vhd_size(size) if azure else size
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


def _create_child(
    path: str | os.PathLike[str],
    parent: str | os.PathLike[str] | DiskImage,
    *,
    size: int | None,
    format: str | ImageFormat | None,
    disk_type: str | DiskType | None,
    block_size: int | None,
    logical_sector_size: int | None,
    physical_sector_size: int | None,
    overwrite: bool,
    preallocate: bool,
    azure: bool,
) -> int:
    """The ``parent=`` branch of :func:`create`: check the arguments against the parent."""
    if disk_type is not None and DiskType(disk_type) is not DiskType.DIFFERENCING:
        raise InvalidArgumentError(
            f"a child of a parent is a differencing disk, not {DiskType(disk_type).value}"
        )
    if azure or preallocate:
        raise InvalidArgumentError(
            f"{'azure' if azure else 'preallocate'} is for fixed disks, not differencing ones"
        )
    with _open_parent_image(parent) as pimg:
        pfmt = pimg.format
        checks = [("size", size, pimg.virtual_size)]
        if pfmt is ImageFormat.VHDX:
            checks += [
                ("logical sector size", logical_sector_size, pimg.logical_sector_size),
                ("physical sector size", physical_sector_size, pimg.physical_sector_size),
            ]
        else:
            for given in (logical_sector_size, physical_sector_size):
                if given not in (None, 512):
                    raise InvalidArgumentError(f"VHD sectors are 512 bytes, not {given}")
        for what, given, theirs in checks:
            if given is not None and given != theirs:
                raise InvalidArgumentError(
                    f"a child has its parent's {what} ({theirs}), not {given}"
                )
        fmt = ImageFormat(format) if format is not None else format_from_suffix(path)
        if fmt is None or (format is None and fmt is ImageFormat.RAW):
            fmt = pfmt  # the name names no image format: the parent's
        if fmt is not pfmt or fmt is ImageFormat.RAW:
            raise InvalidArgumentError(
                f"a {fmt.value.upper()} child cannot have a {pfmt.value.upper()} parent "
                "(VHDX children have VHDX parents, VHD children VHD parents)"
            )
        make = (
            _create_module.create_vhd_child
            if fmt is ImageFormat.VHD
            else _create_module.create_vhdx_child
        )
        make(path, pimg, block_size=block_size, overwrite=overwrite)
        return pimg.virtual_size


@contextlib.contextmanager
def _open_parent_image(parent: str | os.PathLike[str] | DiskImage) -> Iterator[DiskImage]:
    """``parent`` as an open image (read-only, with its chain); closed after if opened here."""
    if isinstance(parent, DiskImage):
        yield parent
        return
    with open_image(parent) as img:
        yield img


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
    progress: Progress = None,
    sync: bool = True,
) -> _convert_module.ConvertResult:
    """Convert ``src`` (raw, VHD or VHDX) into a new ``dst`` image.

    See ``convert_image`` in the ``pyvhdx.convert`` module; the destination
    format comes from ``format`` or the destination's extension (``.vhdx``,
    ``.vhd``, else raw).
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
    progress: Callable[[int], None] | None = None,
) -> _merge_module.MergeResult:
    """Merge a differencing disk into its parent (as Merge-VHD), or finish an
    interrupted merge of it; its children beside it are re-parented. See
    ``merge_image`` in the ``pyvhdx.merge`` module."""
    return _merge_module.merge_image(child, parent=parent, keep_child=keep_child, progress=progress)
