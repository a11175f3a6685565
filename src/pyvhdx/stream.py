"""``DiskStream``: the virtual disk as a seekable ``io.RawIOBase``.

``readinto``, ``read`` and ``write`` are implemented; ``readall`` comes from
the base class (Python ``io`` docs, RawIOBase). ``read`` returns the bytes of
:meth:`~pyvhdx.image.DiskImage.read_at` (the base class would read into a
buffer, then copy it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .image import DiskImage

__all__ = ["DiskStream"]


def _closed_read(offset: int, length: int) -> bytes:
    raise ValueError("I/O operation on closed stream")


class DiskStream(io.RawIOBase):
    """A file-like view of a :class:`~pyvhdx.image.DiskImage`.

    Closing the stream does not close the image.
    """

    def __init__(self, image: DiskImage) -> None:
        super().__init__()
        self._image = image
        # the image's fast path, looked up once; close() replaces it by a refusal
        self._read_at: Callable[[int, int], bytes] = image.read_at
        self._pos = 0

    @property
    def size(self) -> int:
        return self._image.virtual_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._image.mode != "r"

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        n = self._image.readinto_at(self._pos, buffer)
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._read_at(self._pos, size)  # raises once the stream is closed
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._read_at = _closed_read
        super().close()

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        if not self.writable():
            raise io.UnsupportedOperation("stream is read-only")
        n = self._image.write_at(self._pos, data)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._image.virtual_size + offset
        else:
            raise InvalidArgumentError(f"invalid whence {whence}")
        if pos < 0:
            raise InvalidArgumentError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("a virtual disk cannot be truncated")
