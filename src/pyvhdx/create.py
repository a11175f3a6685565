"""Create new, empty VHDX and VHD images.

VHDX layout written (MS-VHDX 2.1, every object 1 MiB aligned):

======== =========================================================
0        file type identifier (2.2.1)
64 KiB   header 1, 128 KiB header 2 (2.2.2), both valid
192 KiB  region table 1, 256 KiB region table 2 (2.2.3), identical
1 MiB    log (1 MiB, empty: LogGuid is zero) (2.3)
2 MiB    metadata region (1 MiB) (2.6)
3 MiB    BAT region, rounded up to 1 MiB (2.5)
...      payload blocks (fixed: all, in order; dynamic: none yet)
======== =========================================================

VHD layout written (Virtual Hard Disk Image Format Specification, 2006;
SPEC-NOTES.md "VHD"), as QEMU ``vpc`` and Hyper-V write it:

============ ==================================================================
fixed        the disk data (``size`` bytes, sparse), then the 512-byte footer
dynamic 0    footer copy (512 bytes)
dynamic 512  dynamic header (1024 bytes), DataOffset all ones (pitfall 20)
dynamic 1536 BAT: ceil(size / block) entries of 0xFFFFFFFF, padded with
             0xFFFFFFFF to a 512-byte multiple
dynamic end  footer (blocks are added before it as they are written)
============ ==================================================================

Differencing children (:func:`create_vhdx_child`, :func:`create_vhd_child`) take
their virtual size, sector sizes (VHDX) and geometry (VHD) from the parent and
record where the parent is and which image it is (DESIGN.md "Parents"):

* VHDX (MS-VHDX 2.6.2.1, 2.6.2.6, 2.5): HasParent set in the file parameters,
  the differencing BAT layout (a sector bitmap entry after every chunk), every
  entry NOT_PRESENT (read from the parent), and a parent locator item holding
  ``parent_linkage`` (the parent's current DataWriteGuid), ``relative_path`` and
  ``absolute_win32_path``.
* VHD (spec "Dynamic Disk Header Format"): footer Disk Type 4, Parent Unique ID
  (the parent's footer Unique Id), Parent Time Stamp (the parent file's
  modification time), Parent Unicode Name (its file name) and the W2ku and
  W2ru parent locators, whose UTF-16LE paths lie after the BAT; every BAT
  entry unused.

Every image is built under a temporary name beside the file and renamed into
place when complete (:mod:`pyvhdx.newfile`): an error, a full disk or a kill
leaves no file, or the old one with ``overwrite``. Only regular files are
made or replaced; devices, FIFOs, sockets and directories are refused.
"""

from __future__ import annotations

import contextlib
import operator
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import numpy as np

from . import constants as K
from ._version import __version__ as _version
from .bat import chunk_ratio, vhdx_bat_entry_count
from .constants import (
    VHD_DEFAULT_BLOCK_SIZE,
    VHD_FOOTER_SIZE,
    VHD_MAX_SIZE,
    VHD_SECTOR_SIZE,
    DiskType,
    GiB,
    ImageFormat,
    KiB,
    MiB,
    PayloadState,
    SectorBitmapState,
    TiB,
)
from .errors import InvalidArgumentError
from .image import DiskImage, open_image
from .newfile import new_file
from .sizes import parse_size
from .vhd import VHDFile
from .vhd.layout import (
    VHD_BAT_OFFSET,
    VHD_CREATOR_APPLICATION,
    VHD_CREATOR_HOST_OS,
    vhd_bat_bytes,
    vhd_bitmap_size,
    vhd_dynamic_header,
    vhd_footer,
    vhd_time_stamp,
)
from .vhdx.layout import (
    vhdx_file_identifier,
    vhdx_header,
    vhdx_metadata_region,
    vhdx_parent_locator,
    vhdx_region_table,
)

__all__ = [
    "AZURE_MAX_SIZE",
    "AZURE_MIN_SIZE",
    "VHDX_CHILD_BLOCK_SIZE",
    "VHD_CHILD_BLOCK_SIZE",
    "VHD_CREATOR_APPLICATION",
    "VHD_CREATOR_HOST_OS",
    "VHD_MAX_CREATE_BLOCK_SIZE",
    "VHD_MIN_CREATE_BLOCK_SIZE",
    "VHDXLayout",
    "azure_vhd_size",
    "create_azure_vhd",
    "create_vhd",
    "create_vhd_child",
    "create_vhdx",
    "create_vhdx_child",
    "parent_locator_paths",
    "size_argument",
    "vhd_dynamic_header",
    "vhd_footer",
    "vhdx_layout",
    "vhdx_parent_locator",
]

#: Why create refuses a block device as its file (pyvhdx.newfile).
_NO_DEVICES: Final = "create makes image files; to put a disk onto a device, use convert -O raw"
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB
_WRITE_CHUNK: Final = 8 * MiB


class VHDXLayout:
    """Offsets of a VHDX that :func:`create_vhdx` writes."""

    def __init__(
        self, virtual_size: int, block_size: int, logical_sector_size: int, differencing: bool
    ) -> None:
        self.block_count = -(-virtual_size // block_size)
        self.chunk_ratio = chunk_ratio(logical_sector_size, block_size)
        self.bat_entries = vhdx_bat_entry_count(
            virtual_size, block_size, logical_sector_size, differencing
        )
        self.bat_length = max(MiB, -(-self.bat_entries * 8 // MiB) * MiB)
        self.data_offset = BAT_OFFSET + self.bat_length


def vhdx_layout(
    virtual_size: int, block_size: int, logical_sector_size: int, differencing: bool = False
) -> VHDXLayout:
    """The layout :func:`create_vhdx` uses for these parameters."""
    return VHDXLayout(virtual_size, block_size, logical_sector_size, differencing)


def _empty_disk_type(disk_type: DiskType | str, what: str, child_function: str) -> DiskType:
    """``disk_type`` as a DiskType, dynamic or fixed (children are made from their parent)."""
    try:
        disk_type = DiskType(disk_type)
    except ValueError:
        raise InvalidArgumentError(
            f"disk type must be 'dynamic' or 'fixed', not {disk_type!r}"
        ) from None
    if disk_type is DiskType.DIFFERENCING:
        raise InvalidArgumentError(
            f"differencing {what} are created from their parent ({child_function})"
        )
    return disk_type


#: A size as the library takes it: bytes, or a string as people write them ("64G").
Size = int | str


def size_argument(value: object, what: str = "size") -> int:
    """A size given to the library, in bytes: an ``int`` (or any integer type), or a
    string such as ``"64G"`` or ``"1.5GiB"`` (:func:`pyvhdx.sizes.parse_size`).

    Raises:
        InvalidArgumentError: a string that is not a size, or anything else (a
            float, None, a bool, a list), naming ``what``.
    """
    if isinstance(value, str):
        try:
            return parse_size(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{what}: {exc}", field=what) from None
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # type: ignore[arg-type]  # an integer or a TypeError
        except TypeError:
            pass
    raise InvalidArgumentError(
        f"{what} must be a whole number of bytes (an int, or a string such as '64G' or "
        f"'1.5GiB'), not {type(value).__name__} {value!r}",
        field=what,
    )


def _block_size_argument(value: object, default: int) -> int:
    return default if value is None else size_argument(value, "block size")


def _is_power_of_two_in(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


def _check_vhdx_args(
    size: int, block_size: int, logical_sector_size: int, physical_sector_size: int
) -> None:
    for kind, value in (("logical", logical_sector_size), ("physical", physical_sector_size)):
        if value not in K.VHDX_SECTOR_SIZES:
            raise InvalidArgumentError(f"{kind} sector size must be 512 or 4096, not {value}")
    if not _is_power_of_two_in(block_size, K.VHDX_MIN_BLOCK_SIZE, K.VHDX_MAX_BLOCK_SIZE):
        raise InvalidArgumentError(
            f"block size must be a power of two from 1 MiB to 256 MiB, not {block_size}"
        )
    if not 0 < size <= K.VHDX_MAX_VIRTUAL_SIZE or size % logical_sector_size:
        raise InvalidArgumentError(
            f"size must be a multiple of the {logical_sector_size}-byte sector "
            f"from one sector to 64 TiB, not {size}"
        )


def create_vhdx(
    path: str | os.PathLike[str],
    size: Size,
    *,
    disk_type: DiskType | str = DiskType.DYNAMIC,
    block_size: Size | None = None,
    logical_sector_size: Size = 512,
    physical_sector_size: Size = 4096,
    overwrite: bool = False,
    preallocate: bool = False,
) -> Path:
    """Create an empty fixed or dynamic VHDX.

    Args:
        path: the new file.
        size: virtual size in bytes (a multiple of the logical sector, ≤ 64 TiB);
            this and the other sizes may be strings such as ``"64G"``
            (:func:`size_argument`).
        disk_type: ``"dynamic"`` (blocks allocated on write) or ``"fixed"`` (every
            block allocated now, FULLY_PRESENT; the file is sparse unless
            ``preallocate``).
        block_size: 1 MiB to 256 MiB, a power of two; default 32 MiB as Hyper-V.
        logical_sector_size, physical_sector_size: 512 or 4096.
        overwrite: replace an existing file (otherwise it is an error).
        preallocate: write out the data area of a fixed image.

    Raises:
        InvalidArgumentError: a parameter out of the spec's limits.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    disk_type = _empty_disk_type(disk_type, "images", "create_vhdx_child")
    size = size_argument(size)
    block_size = _block_size_argument(block_size, K.VHDX_DEFAULT_BLOCK_SIZE)
    logical_sector_size = size_argument(logical_sector_size, "logical sector size")
    physical_sector_size = size_argument(physical_sector_size, "physical sector size")
    _check_vhdx_args(size, block_size, logical_sector_size, physical_sector_size)
    layout = vhdx_layout(size, block_size, logical_sector_size)
    fixed = disk_type is DiskType.FIXED

    bat: np.ndarray | None = None
    end = layout.data_offset
    if fixed:
        bat = np.zeros(layout.bat_length // 8, dtype="<u8")
        blocks = np.arange(layout.block_count, dtype=np.uint64)
        offsets = np.uint64(layout.data_offset) + blocks * np.uint64(block_size)
        bat[blocks + blocks // np.uint64(layout.chunk_ratio)] = offsets | np.uint64(
            PayloadState.FULLY_PRESENT
        )
        end = layout.data_offset + layout.block_count * block_size

    items = _vhdx_base_items(
        size, block_size, logical_sector_size, physical_sector_size, int(fixed)
    )
    return _write_vhdx(
        Path(path),
        layout,
        items,
        overwrite=overwrite,
        bat=None if bat is None else bat.tobytes(),
        end=end,
        preallocate_from=layout.data_offset if preallocate and fixed else None,
    )


def _vhdx_base_items(
    size: int, block_size: int, logical_sector_size: int, physical_sector_size: int, flags: int
) -> list[tuple[uuid.UUID, bytes, int]]:
    """The metadata items every VHDX has (MS-VHDX 2.6.2.1-2.6.2.5), flags as Hyper-V sets
    them: File Parameters IsRequired; the others IsVirtualDisk and IsRequired.

    ``flags`` is the File Parameters flags word: bit 0 LeaveBlockAllocated, bit 1
    HasParent.
    """
    return [
        (
            K.META_FILE_PARAMETERS,
            block_size.to_bytes(4, "little") + flags.to_bytes(4, "little"),
            4,  # IsRequired
        ),
        (K.META_VIRTUAL_DISK_SIZE, size.to_bytes(8, "little"), 6),  # IsVirtualDisk|IsRequired
        (K.META_LOGICAL_SECTOR_SIZE, logical_sector_size.to_bytes(4, "little"), 6),
        (K.META_PHYSICAL_SECTOR_SIZE, physical_sector_size.to_bytes(4, "little"), 6),
        (K.META_PAGE83_DATA, uuid.uuid4().bytes_le, 6),
    ]


def _write_fill(fd: int, byte: int, start: int, end: int) -> None:
    """Write ``byte`` over ``[start, end)`` in bounded chunks."""
    chunk = bytes([byte]) * min(_WRITE_CHUNK, max(0, end - start))
    pos = start
    while pos < end:
        pos += os.pwrite(fd, chunk[: min(len(chunk), end - pos)], pos)


def _write_vhdx(
    target: Path,
    layout: VHDXLayout,
    items: list[tuple[uuid.UUID, bytes, int]],
    *,
    overwrite: bool,
    bat: bytes | None,
    end: int,
    preallocate_from: int | None = None,
) -> Path:
    """Write a new VHDX: header area, metadata, BAT (zeros unless ``bat``), size ``end``.

    Built under a temporary name and renamed into place (:func:`pyvhdx.newfile.new_file`):
    a failure leaves no file, or the old one.
    """
    regions = [
        (K.REGION_BAT, BAT_OFFSET, layout.bat_length, True),
        (K.REGION_METADATA, METADATA_OFFSET, METADATA_LENGTH, True),
    ]
    file_write_guid, data_write_guid = uuid.uuid4(), uuid.uuid4()
    head = bytearray(1 * MiB)
    head[0:520] = vhdx_file_identifier(f"pyvhdx {_version}")
    for i, off in enumerate(K.VHDX_HEADER_OFFSETS):
        head[off : off + K.VHDX_HEADER_SIZE] = vhdx_header(
            i, file_write_guid=file_write_guid, data_write_guid=data_write_guid
        )
    for off in K.VHDX_REGION_TABLE_OFFSETS:
        head[off : off + K.VHDX_REGION_TABLE_SIZE] = vhdx_region_table(regions)

    with new_file(target, overwrite=overwrite, block_device_hint=_NO_DEVICES) as out:
        fd = out.fd
        os.pwrite(fd, head, 0)
        os.pwrite(fd, vhdx_metadata_region(items), METADATA_OFFSET)
        if bat is not None:  # otherwise all zeros (NOT_PRESENT): the truncate below makes it
            os.pwrite(fd, bat, BAT_OFFSET)
        if preallocate_from is not None:
            _write_fill(fd, 0, preallocate_from, end)
        os.ftruncate(fd, end)
    return target


# --- differencing children (DESIGN.md "Parents") --------------------------------------

#: Block size of a new VHDX child: 2 MiB, what Hyper-V gives the ``.avhdx`` of a
#: checkpoint (and ``New-VHD -Differencing``), whatever the parent's block size.
#: Small blocks keep a child small: each first write to a block copies the rest
#: of the block from the parent (see ``VHDXFile.write_at``).
VHDX_CHILD_BLOCK_SIZE: Final = 2 * MiB
#: Block size of a new VHD child: 2 MiB, the spec's default and what Windows
#: writes for differencing VHDs.
VHD_CHILD_BLOCK_SIZE: Final = VHD_DEFAULT_BLOCK_SIZE


@contextlib.contextmanager
def _open_parent(
    parent: str | os.PathLike[str] | DiskImage,
    child: str | os.PathLike[str],
    fmt: ImageFormat,
) -> Iterator[tuple[DiskImage, Path]]:
    """The parent image (opened read-only with its own chain, if given as a path).

    Raises:
        InvalidArgumentError: ``child`` is the parent or one of its ancestors
            (``overwrite`` would destroy the chain the child is made from), or
            the parent is not of format ``fmt``.
    """
    with contextlib.ExitStack() as stack:
        if isinstance(parent, DiskImage):
            img, parent_path = parent, Path(parent.name)
        else:
            img, parent_path = stack.enter_context(open_image(parent)), Path(parent)
        target = Path(os.path.realpath(child))  # Path.resolve raised RuntimeError on a link loop
        ancestor: DiskImage | None = img
        while ancestor is not None:
            if Path(os.path.realpath(ancestor.name)) == target:
                raise InvalidArgumentError(
                    f"cannot create {child}: it is the parent or one of its ancestors "
                    f"({ancestor.name})"
                )
            ancestor = ancestor.parent
        if img.format is not fmt:
            kind = fmt.value.upper()
            raise InvalidArgumentError(
                f"a {kind} child needs a {kind} parent; {parent_path} is {img.format.value.upper()}"
            )
        yield img, parent_path


def parent_locator_paths(
    child: str | os.PathLike[str], parent: str | os.PathLike[str]
) -> tuple[str | None, str]:
    """``(relative, absolute)`` Windows-style paths of ``parent`` as seen from ``child``.

    The relative path starts at the child's directory, as Hyper-V writes it:
    ``.\\base.vhdx`` beside the child, ``..\\x\\base.vhdx`` elsewhere; None when
    there is none (another drive on Windows). The absolute path is the parent's
    absolute path; on Windows as Hyper-V stores it (``C:\\dir\\base.vhdx``, no
    ``\\?\\`` prefix), elsewhere the POSIX path with its separators turned into
    backslashes (``\\srv\\vm\\base.vhdx``): the locators are Windows paths
    (MS-VHDX 2.6.2.6.3; VHD W2ru/W2ku), and no reader should open an absolute
    path from an image blindly anyway (pyvhdx looks only beside the child,
    :func:`pyvhdx.chain.candidate_paths`).
    """
    parent_abs = os.path.abspath(parent)
    child_dir = os.path.dirname(os.path.abspath(child))
    relative: str | None
    try:
        relative = os.path.relpath(parent_abs, child_dir)
    except ValueError:  # another drive (Windows)
        relative = None
    absolute = parent_abs.replace(os.sep, "\\")
    if relative is not None:
        relative = relative.replace(os.sep, "\\")
        if os.altsep:
            relative = relative.replace(os.altsep, "\\")
        if relative != ".." and not relative.startswith("..\\"):
            relative = ".\\" + relative
    return relative, absolute


def create_vhdx_child(
    path: str | os.PathLike[str],
    parent: str | os.PathLike[str] | DiskImage,
    *,
    block_size: Size | None = None,
    overwrite: bool = False,
) -> Path:
    """Create an empty differencing VHDX whose parent is the VHDX ``parent``.

    The child has the parent's virtual size and logical and physical sector
    sizes; every payload block is NOT_PRESENT, so it reads as its parent
    (MS-VHDX 2.5.1.1). The BAT has the differencing layout, a sector bitmap
    entry after every chunk (2.5), and each chunk's sector bitmap block is
    allocated now, all zeros, and marked SB_BLOCK_PRESENT (2.5.1.2): the spec
    allows NOT_PRESENT until a block becomes PARTIALLY_PRESENT (Hyper-V
    allocates them lazily), but libvhdi (used by dfvfs and plaso) then reads
    file offset 0 as the chunk's bitmap and takes header bytes for "sector
    stored here", so every NOT_PRESENT block reads as garbage. The bitmaps
    are sparse zeros: 1 MiB of file length, not of storage, per chunk (4 GiB
    of virtual disk with 512-byte sectors, 32 GiB with 4096). The parent
    locator (2.6.2.6) holds
    ``parent_linkage``, the parent's current DataWriteGuid as ``{...}``:
    writing to the parent later gives it a new DataWriteGuid and breaks the
    child, as in Hyper-V (merge the child instead). It also holds
    ``relative_path`` and ``absolute_win32_path``
    (:func:`parent_locator_paths`); ``volume_path`` is left out (no volume GUID
    off Windows), as the spec allows when another path is present.

    Args:
        path: the new file.
        parent: the parent VHDX (a path, or an open image), itself any VHDX
            whose chain opens.
        block_size: 1 MiB to 256 MiB, a power of two; default
            :data:`VHDX_CHILD_BLOCK_SIZE` (2 MiB, as Hyper-V).
        overwrite: replace an existing file (otherwise it is an error).

    Raises:
        InvalidArgumentError: the parent is not a VHDX, or a bad block size.
        ParentError: the parent's own chain does not open.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    block_size = _block_size_argument(block_size, VHDX_CHILD_BLOCK_SIZE)
    with _open_parent(parent, path, ImageFormat.VHDX) as (pimg, parent_path):
        size = pimg.virtual_size
        logical, physical = pimg.logical_sector_size, pimg.physical_sector_size
        linkage = "{" + pimg.handler.identity_as_parent() + "}"
    _check_vhdx_args(size, block_size, logical, physical)
    relative, absolute = parent_locator_paths(path, parent_path)
    paths = {"relative_path": relative, "absolute_win32_path": absolute}
    keys = [("parent_linkage", linkage), *((k, v) for k, v in paths.items() if v is not None)]
    items = _vhdx_base_items(size, block_size, logical, physical, 2)  # HasParent
    items.append((K.META_PARENT_LOCATOR, vhdx_parent_locator(keys), 4))  # IsRequired
    layout = vhdx_layout(size, block_size, logical, differencing=True)
    # One zeroed sector bitmap block per chunk, SB_BLOCK_PRESENT (see the docstring).
    chunks = -(-layout.block_count // layout.chunk_ratio)
    bat = np.zeros(layout.bat_length // 8, dtype="<u8")
    index = (np.arange(chunks, dtype=np.uint64) + np.uint64(1)) * np.uint64(
        layout.chunk_ratio + 1
    ) - np.uint64(1)
    offsets = np.uint64(layout.data_offset) + np.arange(chunks, dtype=np.uint64) * np.uint64(MiB)
    bat[index] = offsets | np.uint64(SectorBitmapState.PRESENT)
    return _write_vhdx(
        Path(path),
        layout,
        items,
        overwrite=overwrite,
        bat=bat.tobytes(),  # payload entries NOT_PRESENT (0): read from the parent
        end=layout.data_offset + chunks * MiB,  # the bitmaps: zeros, sparse
    )


# --- VHD (Virtual Hard Disk Image Format Specification, 2006) ------------------------
# The structures are built by pyvhdx.vhd.layout (vhd_footer, vhd_dynamic_header);
# this part chooses the layout of a new file and writes it.

#: Block sizes :func:`create_vhd` accepts: powers of two in this range. Windows
#: itself makes 512 KiB and 2 MiB (the spec's default) blocks; every reader
#: known (QEMU, libvhdi, pyvhdx) takes any power of two of at least 512 bytes.
VHD_MIN_CREATE_BLOCK_SIZE: Final = 4 * KiB
VHD_MAX_CREATE_BLOCK_SIZE: Final = 256 * MiB
#: Azure's limits for an uploaded fixed VHD (virtual size; the file is 512 bytes
#: more): a whole number of MiB from 20 MiB to 32 TiB (SPEC-NOTES pitfall 19).
AZURE_MIN_SIZE: Final = 20 * MiB
AZURE_MAX_SIZE: Final = 32 * TiB

_VHD_MAX_SECTOR_NUMBER: Final = 0xFFFFFFFE  # BAT entries are u32; all ones is "unused"


def _check_vhd_args(size: int, disk_type: DiskType, block_size: int, max_size: int) -> None:
    if not 0 < size <= max_size or size % VHD_SECTOR_SIZE:
        raise InvalidArgumentError(
            f"size must be a multiple of {VHD_SECTOR_SIZE} bytes from {VHD_SECTOR_SIZE} "
            f"bytes to {max_size // GiB} GiB for a {disk_type.value} VHD, not {size}"
        )
    if disk_type is DiskType.FIXED:
        return
    if not _is_power_of_two_in(block_size, VHD_MIN_CREATE_BLOCK_SIZE, VHD_MAX_CREATE_BLOCK_SIZE):
        raise InvalidArgumentError(
            f"VHD block size must be a power of two from 4 KiB to 256 MiB, not {block_size}"
        )
    # Every block must stay addressable by a u32 sector number once the disk is full.
    entries = -(-size // block_size)
    stride = vhd_bitmap_size(block_size) + block_size
    last_block = VHD_BAT_OFFSET + vhd_bat_bytes(entries) + (entries - 1) * stride
    if last_block // VHD_SECTOR_SIZE > _VHD_MAX_SECTOR_NUMBER:
        raise InvalidArgumentError(
            f"a {size}-byte dynamic VHD with {block_size}-byte blocks would outgrow the "
            "2 TiB the BAT's sector numbers address; use a larger block size"
        )


def _write_sparse_vhd(
    path: str | os.PathLike[str],
    footer: bytes,
    header: bytes,
    entries: int,
    locator_data: Sequence[tuple[int, bytes]] = (),
    *,
    overwrite: bool,
) -> Path:
    """Write a dynamic or differencing VHD: the footer copy at 0, the dynamic header
    at 512, the BAT at 1536 with every entry unused, the parent locator data
    (``(offset, bytes)``) after it, then the footer.
    """
    bat_end = VHD_BAT_OFFSET + vhd_bat_bytes(entries)
    with new_file(path, overwrite=overwrite, block_device_hint=_NO_DEVICES) as out:
        fd = out.fd
        os.pwrite(fd, footer, 0)
        os.pwrite(fd, header, VHD_FOOTER_SIZE)
        _write_fill(fd, 0xFF, VHD_BAT_OFFSET, bat_end)
        end = bat_end
        for offset, raw in locator_data:
            os.pwrite(fd, raw, offset)
            end = max(end, offset + -(-len(raw) // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE)
        os.pwrite(fd, footer, end)
    return Path(path)


def create_vhd(
    path: str | os.PathLike[str],
    size: Size,
    *,
    disk_type: DiskType | str = DiskType.DYNAMIC,
    block_size: Size | None = None,
    overwrite: bool = False,
    preallocate: bool = False,
    azure: bool = False,
) -> Path:
    """Create an empty fixed or dynamic VHD and return its path.

    The virtual size is the footer's Current Size (DESIGN.md "VHD size"), exactly
    ``size``; the CHS geometry is the spec appendix's for it, and the creator
    application is :data:`VHD_CREATOR_APPLICATION`, so QEMU, libvhdi, Hyper-V
    and pyvhdx agree on the size.

    Args:
        path: the new file.
        size: virtual size in bytes: a multiple of 512, at most 2040 GiB (the
            spec's and QEMU's limit, ``VHD_MAX_SIZE``) for dynamic and fixed
            disks alike, so that every reader can open the image; this and
            ``block_size`` may be strings such as ``"64G"`` (:func:`size_argument`).
        disk_type: ``"dynamic"`` (footer copy, dynamic header and an empty BAT;
            blocks are allocated on write) or ``"fixed"`` (the data, then the
            footer; the data area is sparse unless ``preallocate``).
        block_size: a power of two from 4 KiB to 256 MiB, default 2 MiB (the
            spec's default; Windows makes 512 KiB and 2 MiB). A fixed disk has no
            blocks: ignored, as ``preallocate`` is for a dynamic disk.
        overwrite: replace an existing file (otherwise it is an error).
        preallocate: write out the zeros of a fixed disk's data area (ignored
            for dynamic disks, as by :func:`create_vhdx`).
        azure: make an image Azure accepts (see :func:`create_azure_vhd`):
            fixed, ``size`` rounded up to a whole MiB (:func:`azure_vhd_size`),
            20 MiB to 32 TiB.

    Returns:
        The path of the new image, as :func:`create_vhdx` returns it.

    Raises:
        InvalidArgumentError: a parameter outside these limits; the file is not
            touched.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    disk_type = _empty_disk_type(disk_type, "VHDs", "create_vhd_child")
    size = size_argument(size)
    max_size = VHD_MAX_SIZE
    if azure:
        if disk_type is not DiskType.FIXED:
            raise InvalidArgumentError("Azure takes fixed VHDs only")
        size = azure_vhd_size(size)
        max_size = AZURE_MAX_SIZE
    block_size = _block_size_argument(block_size, VHD_DEFAULT_BLOCK_SIZE)
    _check_vhd_args(size, disk_type, block_size, max_size)
    footer = vhd_footer(size, disk_type)
    if disk_type is not DiskType.FIXED:
        entries = -(-size // block_size)
        header = vhd_dynamic_header(entries, block_size)
        return _write_sparse_vhd(path, footer, header, entries, overwrite=overwrite)
    with new_file(path, overwrite=overwrite, block_device_hint=_NO_DEVICES) as out:
        if preallocate:
            _write_fill(out.fd, 0, 0, size)
        os.ftruncate(out.fd, size)
        os.pwrite(out.fd, footer, size)
    return Path(path)


def azure_vhd_size(size: Size) -> int:
    """``size`` (bytes, or a string such as ``"30G"``) rounded up to a whole MiB,
    checked against Azure's limits.

    Raises:
        InvalidArgumentError: not a size, or the rounded size is below 20 MiB or
            above 32 TiB (SPEC-NOTES pitfall 19).
    """
    size = size_argument(size)
    rounded = -(-size // MiB) * MiB
    if not AZURE_MIN_SIZE <= rounded <= AZURE_MAX_SIZE:
        raise InvalidArgumentError(
            f"Azure takes fixed VHDs of 20 MiB to 32 TiB; {size} bytes rounds to {rounded}"
        )
    return rounded


def create_azure_vhd(
    path: str | os.PathLike[str],
    size: Size,
    *,
    overwrite: bool = False,
    preallocate: bool = False,
) -> Path:
    """Create a fixed VHD that Azure accepts for upload, and return its path.

    Azure wants a fixed VHD whose virtual size is a whole number of MiB, 20 MiB to
    32 TiB (the file is 512 bytes more), read as the footer's Current Size
    (SPEC-NOTES pitfall 19). ``size`` is rounded up to a whole MiB
    (:func:`azure_vhd_size` tells the result: report it, it may differ from
    ``size``). The geometry is the
    spec's for the size, as Hyper-V writes it: the maximum 65535 x 16 x 255 only
    when the size exceeds what CHS can address (about 127 GiB); QEMU's
    ``force_size`` writes the maximum always, and marks the image ``qem2`` so
    that QEMU reads Current Size. pyvhdx's creator code has the same effect
    (:data:`VHD_CREATOR_APPLICATION`), and Azure reads Current Size anyway.
    Images above 2040 GiB are valid for Azure, but QEMU refuses to open them.

    Raises:
        InvalidArgumentError: the rounded size is outside Azure's limits.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    return create_vhd(
        path,
        size,
        disk_type=DiskType.FIXED,
        overwrite=overwrite,
        preallocate=preallocate,
        azure=True,
    )


def _vhd_time_stamp_of(path: Path) -> int:
    """A file's modification time as a VHD time stamp (seconds since 2000-01-01 UTC)."""
    return vhd_time_stamp(os.stat(path).st_mtime)


def create_vhd_child(
    path: str | os.PathLike[str],
    parent: str | os.PathLike[str] | DiskImage,
    *,
    block_size: Size | None = None,
    overwrite: bool = False,
) -> Path:
    """Create an empty differencing VHD whose parent is the VHD ``parent``.

    Layout (spec "Dynamic Disk Header Format"; the spec's "Differencing Hard
    Disk Image"): the footer copy at 0 and the dynamic header at 512, as for a
    dynamic disk, the BAT at 1536 with every entry unused (0xFFFFFFFF: read
    from the parent), then the parent locator data, then the footer. The footer
    has Disk Type 4, the parent's Current Size and CHS geometry. The header
    holds:

    * Parent Unique ID: the parent footer's Unique Id (which pyvhdx checks
      when it opens the child; it does not change when the parent is written);
    * Parent Time Stamp: the parent file's modification time;
    * Parent Unicode Name: the parent's file name (UTF-16BE);
    * locator entries W2ku (the absolute path) and W2ru (the relative path,
      omitted when there is none; see :func:`parent_locator_paths`), UTF-16LE
      without NUL, each in a 512-byte aligned area after the BAT. Their
      Platform Data Space is in bytes (the area's size, a multiple of 512):
      the spec says sectors, but Virtual PC, Hyper-V and DiscUtils write
      bytes (VirtualBox ``VHD.cpp`` notes it; the Windows-made
      ``dfvfs/fat-differential.vhd`` has 4096 and 65536 for paths of 84 and
      32 bytes), and readers use Platform Data Length only.

    Args:
        path: the new file.
        parent: the parent VHD (a path, or an open image; fixed, dynamic or
            differencing).
        block_size: a power of two from 4 KiB to 256 MiB; default
            :data:`VHD_CHILD_BLOCK_SIZE` (2 MiB).
        overwrite: replace an existing file (otherwise it is an error).

    Returns:
        The path of the new image (its virtual size is the parent's).

    Raises:
        InvalidArgumentError: the parent is not a VHD, or a bad block size.
        ParentError: the parent's own chain does not open.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    block_size = _block_size_argument(block_size, VHD_CHILD_BLOCK_SIZE)
    with _open_parent(parent, path, ImageFormat.VHD) as (pimg, parent_path):
        h = pimg.handler
        assert isinstance(h, VHDFile) and h.identifier is not None
        size, geometry, parent_id = h.virtual_size, h.geometry, h.identifier
    _check_vhd_args(size, DiskType.DIFFERENCING, block_size, VHD_MAX_SIZE)
    entries = -(-size // block_size)
    locators: list[tuple[bytes, int, int, int]] = []
    data: list[tuple[int, bytes]] = []
    pos = VHD_BAT_OFFSET + vhd_bat_bytes(entries)
    relative, absolute = parent_locator_paths(path, parent_path)
    for code, text in ((b"W2ku", absolute), (b"W2ru", relative)):
        if text is not None:
            raw = text.encode("utf-16-le", errors="surrogatepass")
            space = max(VHD_SECTOR_SIZE, -(-len(raw) // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE)
            locators.append((code, space, len(raw), pos))
            data.append((pos, raw))
            pos += space
    header = vhd_dynamic_header(
        entries,
        block_size,
        parent_unique_id=parent_id,
        parent_time_stamp=_vhd_time_stamp_of(parent_path),
        parent_unicode_name=os.path.basename(os.path.abspath(parent_path)),
        parent_locators=locators,
    )
    footer = vhd_footer(size, DiskType.DIFFERENCING, geometry=geometry)
    return _write_sparse_vhd(path, footer, header, entries, data, overwrite=overwrite)
