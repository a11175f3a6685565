"""Point a differencing disk at a parent (what Hyper-V's ``Set-VHD -ParentPath`` does).

The child's parent locator is rewritten (VHDX: ``parent_linkage`` and the
relative and absolute paths, MS-VHDX 2.6.2.6; VHD: Parent Unique ID, time
stamp, name and the W2ru/W2ku locator paths) crash-safely: a VHDX through one
log entry, a VHD in an order that leaves the old parent named until the last
write. The child's content and, for VHDX, its DataWriteGuid do not change, so
its own children stay linked to it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .constants import DiskType, ImageFormat
from .errors import InvalidArgumentError, ParentError
from .image import open_image

__all__ = ["set_disk_properties", "set_parent", "vhd_locator_paths"]

_KEYS_REPLACED = (
    "parent_linkage",
    "parent_linkage2",
    "relative_path",
    "volume_path",
    "absolute_win32_path",
)


def set_parent(
    child: str | os.PathLike[str],
    parent: str | os.PathLike[str],
    *,
    ignore_id_mismatch: bool = False,
) -> None:
    """Make ``parent`` the parent of the differencing disk ``child``.

    Args:
        child: a differencing VHDX or VHD.
        parent: the new parent, of the same format.
        ignore_id_mismatch: link even when ``parent``'s identity is not the one
            the child records (as ``Set-VHD -IgnoreIdMismatch``): the caller
            vouches that ``parent`` holds the content the child was made over.

    Raises:
        InvalidArgumentError: ``child`` is not differencing, formats differ, or
            the new paths do not fit.
        ParentError: ``parent`` is not the disk the child was made over (and
            ``ignore_id_mismatch`` is false).
    """
    from .create import _vhd_time_stamp_of, parent_locator_paths
    from .vhd import VHDFile
    from .vhdx import VHDXFile

    child_path, parent_path = Path(child), Path(parent)
    with open_image(parent_path, resolve_parent=False) as pimg:
        p = pimg.handler
        identity = p.identity_as_parent()
        pformat = pimg.format
        psize = pimg.virtual_size
    with open_image(child_path, "r+", resolve_parent=False) as cimg:
        h = cimg.handler
        if cimg.disk_type is not DiskType.DIFFERENCING:
            raise InvalidArgumentError(f"{child_path} is not a differencing disk")
        if pformat is not cimg.format:
            raise InvalidArgumentError(
                f"{child_path} is {cimg.format.value.upper()}; its parent must be too, "
                f"not {pformat.value.upper()}"
            )
        if psize < cimg.virtual_size:
            raise InvalidArgumentError(
                f"{parent_path} ({psize} bytes) is smaller than {child_path} "
                f"({cimg.virtual_size} bytes)"
            )
        ok, why = h.parent_identity_matches(p)
        if not ok and not ignore_id_mismatch:
            raise ParentError(
                f"{parent_path} is not the parent {child_path} was made over ({why}); "
                "pass ignore_id_mismatch to link it anyway",
                tried=[str(parent_path)],
            )
        relative, absolute = parent_locator_paths(child_path, parent_path)
        if cimg.format is ImageFormat.VHDX:
            assert isinstance(h, VHDXFile)
            kept = [(k, v) for k, v in (h.parent_locator or {}).items() if k not in _KEYS_REPLACED]
            entries = [("parent_linkage", "{" + identity + "}")]
            if relative is not None:
                entries.append(("relative_path", relative))
            entries.append(("absolute_win32_path", absolute))
            h.set_parent_locator(entries + kept)
        else:
            assert isinstance(h, VHDFile)
            h.set_parent(
                unique_id=uuid.UUID(identity),
                time_stamp=_vhd_time_stamp_of(parent_path),
                name=os.path.basename(os.path.abspath(parent_path)),
                paths=vhd_locator_paths(child_path, parent_path),
            )
        cimg.flush()


def vhd_locator_paths(child: Path, parent: Path) -> dict[str, str]:
    """The W2ku (absolute) and W2ru (relative, if any) paths of ``parent`` seen from ``child``."""
    from .create import parent_locator_paths

    relative, absolute = parent_locator_paths(child, parent)
    return {"W2ku": absolute} if relative is None else {"W2ku": absolute, "W2ru": relative}


def set_disk_properties(
    image: str | os.PathLike[str],
    *,
    reset_identifier: bool = False,
    physical_sector_size: int | None = None,
) -> uuid.UUID | None:
    """Set-VHD's other edits of a VHDX, each through one log entry (MS-VHDX 2.6.2):
    a new disk identifier (Page 83 Data, 2.6.2.5) and the physical sector size
    (2.6.2.4). The data and the DataWriteGuid do not change, so children stay
    linked. Returns the new identifier when ``reset_identifier``.

    Raises:
        InvalidArgumentError: not a VHDX, or a sector size other than 512 or 4096.
    """
    from .constants import META_PAGE83_DATA, META_PHYSICAL_SECTOR_SIZE
    from .vhdx import VHDXFile
    from .vhdx.edit import set_item

    if physical_sector_size not in (None, 512, 4096):
        raise InvalidArgumentError(
            f"physical sector size must be 512 or 4096, not {physical_sector_size}"
        )
    new_id = uuid.uuid4() if reset_identifier else None
    with open_image(image, "r+", resolve_parent=False) as img:
        h = img.handler
        if not isinstance(h, VHDXFile):
            raise InvalidArgumentError(
                f"{image} is {img.format.value.upper()}: only a VHDX has these properties"
            )
        if new_id is not None:
            set_item(h, META_PAGE83_DATA, new_id.bytes_le)
        if physical_sector_size is not None:
            set_item(h, META_PHYSICAL_SECTOR_SIZE, physical_sector_size.to_bytes(4, "little"))
    return new_id
