"""How large a converted image would be, without writing it (as ``qemu-img measure``).

``required``: the file :func:`pyvhdx.convert` makes from this source, when every
block the source stores holds data (convert leaves out blocks that read as
zeros, so the real file may be smaller); ``fully_allocated``: the fixed image of
the same disk. Both from the layouts :mod:`pyvhdx.create`
writes: VHDX (MS-VHDX 2.1: 1 MiB header area, log, metadata, BAT, then 1 MiB
aligned blocks), VHD (footer copy, dynamic header, BAT at 1536, blocks of bitmap
and data, footer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .constants import (
    VHD_DEFAULT_BLOCK_SIZE,
    VHD_FOOTER_SIZE,
    VHD_SECTOR_SIZE,
    VHDX_DEFAULT_BLOCK_SIZE,
    VHDX_MAX_BLOCK_SIZE,
    VHDX_MIN_BLOCK_SIZE,
    ImageFormat,
)
from .errors import InvalidArgumentError
from .image import open_image
from .transfer import data_ranges

__all__ = ["Measurement", "measure_image"]


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure_image` found (bytes)."""

    format: ImageFormat
    virtual_size: int
    block_size: int | None
    required: int
    fully_allocated: int

    def to_dict(self) -> dict[str, int]:
        """``qemu-img measure --output=json`` keys."""
        return {"required": self.required, "fully-allocated": self.fully_allocated}


def _block_size(block_size: int | None, default: int, low: int, high: int, what: str) -> int:
    """The block size convert would use: the default (None or 0), or one it accepts
    (a power of two from ``low`` to ``high``)."""
    if not block_size:
        return default
    if not (low <= block_size <= high and block_size & (block_size - 1) == 0):
        raise InvalidArgumentError(
            f"{what} block size must be a power of two from {low} to {high} bytes, "
            f"not {block_size}",
            field="block size",
        )
    return block_size


def _touched_blocks(src: str | os.PathLike[str], block_size: int) -> tuple[int, int]:
    """(virtual size, number of ``block_size`` blocks the source stores data in)."""
    touched: set[int] = set()
    with open_image(src) as img:
        size = img.get_size()
        for start, length in data_ranges(img):
            touched.update(range(start // block_size, (start + length - 1) // block_size + 1))
    return size, len(touched)


def measure_image(
    src: str | os.PathLike[str],
    *,
    format: ImageFormat | str = ImageFormat.VHDX,
    block_size: int | None = None,
    logical_sector_size: int = 512,
) -> Measurement:
    """Sizes of ``src`` converted to ``format`` (``"vhdx"``, ``"vhd"`` or ``"raw"``).

    Raises:
        InvalidArgumentError: an unknown format, or a block size convert refuses.
        PyvhdxError: the source is malformed.
    """
    from .create import VHD_MAX_CREATE_BLOCK_SIZE, VHD_MIN_CREATE_BLOCK_SIZE, vhdx_layout
    from .vhd.layout import vhd_bat_bytes, vhd_bitmap_size

    fmt = ImageFormat(format)
    if fmt is ImageFormat.RAW:
        size, _ = _touched_blocks(src, VHD_DEFAULT_BLOCK_SIZE)
        return Measurement(fmt, size, None, size, size)
    if fmt is ImageFormat.VHDX:
        bs = _block_size(
            block_size, VHDX_DEFAULT_BLOCK_SIZE, VHDX_MIN_BLOCK_SIZE, VHDX_MAX_BLOCK_SIZE, "VHDX"
        )
        size, used = _touched_blocks(src, bs)
        size = -(-size // logical_sector_size) * logical_sector_size
        layout = vhdx_layout(size, bs, logical_sector_size)
        count = layout.block_count
        return Measurement(
            fmt, size, bs, layout.data_offset + used * bs, layout.data_offset + count * bs
        )
    if fmt is ImageFormat.VHD:
        bs = _block_size(
            block_size,
            VHD_DEFAULT_BLOCK_SIZE,
            VHD_MIN_CREATE_BLOCK_SIZE,
            VHD_MAX_CREATE_BLOCK_SIZE,
            "VHD",
        )
        size, used = _touched_blocks(src, bs)
        size = -(-size // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE
        first = 3 * VHD_SECTOR_SIZE + vhd_bat_bytes(-(-size // bs))  # copy, header, BAT
        stride = vhd_bitmap_size(bs) + bs
        required = first + used * stride + VHD_FOOTER_SIZE
        return Measurement(fmt, size, bs, required, size + VHD_FOOTER_SIZE)
    raise InvalidArgumentError(f"cannot measure for format {fmt.value}")  # pragma: no cover
