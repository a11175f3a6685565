"""Raw disk images: the file is the virtual disk, byte for byte."""

from __future__ import annotations

import numpy as np

from .base import FormatHandler
from .bat import BlockTable
from .constants import DiskType, ImageFormat
from .source import FileSource

__all__ = ["RawFile", "linear_table"]

_LINEAR_BLOCK = 1 << 30


def linear_table(virtual_size: int, data_offset: int = 0) -> BlockTable:
    """A table mapping the virtual disk linearly onto the file from ``data_offset``."""

    def load(first: int, count: int) -> np.ndarray:
        return data_offset + (np.arange(first, first + count, dtype=np.int64) << 30)

    table = BlockTable(virtual_size, _LINEAR_BLOCK, load)
    table.linear_base = data_offset
    return table


class RawFile(FormatHandler):
    """A raw image: virtual size = file size, every byte stored."""

    supports_write = True

    def __init__(self, source: FileSource, *, strict: bool = False, writable: bool = False) -> None:
        super().__init__()
        self.source = source
        self.format = ImageFormat.RAW
        self.disk_type = DiskType.FIXED
        self.virtual_size = source.size
        self.block_size = None
        self.table = linear_table(self.virtual_size)

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write in place: the file is the disk."""
        self.source.pwrite(data, offset)
