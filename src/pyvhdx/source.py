"""Positional access to the bytes of an image file.

:class:`FileSource` wraps a path or a binary file object and offers positional
reads (``os.preadv`` when there is a file descriptor). It can carry an in-memory
overlay of file sectors, which is how a pending VHDX log is replayed for a
read-only open without touching the file (MS-VHDX 2.3.3; DESIGN.md "Log").
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

from .errors import InvalidArgumentError, ReadOnlyError, TruncatedImageError

__all__ = ["FileSource"]

_HAS_PREADV = hasattr(os, "preadv")


class FileSource:
    """Positional reads (and, when writable, writes) on an image file.

    Args:
        file: a path, or an open binary file object with ``seek`` and
            ``readinto`` (its position is not preserved; it is not closed).
        writable: open a path for reading and writing.
    """

    def __init__(self, file: str | os.PathLike[str] | BinaryIO, *, writable: bool = False) -> None:
        self.writable = writable
        self.name: str
        self._owns = False
        self._fileobj: BinaryIO | None = None
        self.fd: int | None = None
        if isinstance(file, (str, os.PathLike)):
            self.name = os.fspath(file)
            flags = os.O_RDWR if writable else os.O_RDONLY
            self.fd = os.open(self.name, flags | getattr(os, "O_BINARY", 0))
            self._owns = True
            self._size = os.fstat(self.fd).st_size
        else:
            if not (hasattr(file, "readinto") and hasattr(file, "seek")):
                raise InvalidArgumentError("file object must have readinto() and seek()")
            self._fileobj = file
            self.name = str(getattr(file, "name", "<file object>"))
            fd: int | None
            try:
                fd = file.fileno()
            except (AttributeError, OSError, io.UnsupportedOperation):
                fd = None
            # Only use the descriptor of a plain file (not of a buffered wrapper
            # with pending writes, nor of a pipe).
            if fd is not None and isinstance(file, (io.FileIO, io.BufferedReader, io.BufferedRandom)):
                if isinstance(file, io.BufferedRandom):
                    file.flush()
                self.fd = fd
            file.seek(0, os.SEEK_END)
            self._size = file.tell()
        self.overlay: dict[int, bytes] | None = None
        self.overlay_size: int | None = None

    # -- size ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size of the file as read (with an overlay: as extended by it)."""
        if self.overlay_size is not None:
            return max(self._size, self.overlay_size)
        return self._size

    @property
    def physical_size(self) -> int:
        """Size of the file on storage, ignoring any overlay."""
        return self._size

    def refresh_size(self) -> int:
        """Re-read the file size from storage."""
        if self.fd is not None:
            self._size = os.fstat(self.fd).st_size
        elif self._fileobj is not None:
            self._fileobj.seek(0, os.SEEK_END)
            self._size = self._fileobj.tell()
        return self._size

    # -- reads --------------------------------------------------------------

    def readinto_raw(self, buf: memoryview, offset: int) -> int:
        """Read from storage (no overlay) into ``buf`` at ``offset``; return bytes read."""
        want = len(buf)
        done = 0
        while done < want:
            if self.fd is not None:
                if _HAS_PREADV:
                    n = os.preadv(self.fd, [buf[done:]], offset + done)
                else:  # pragma: no cover - Windows
                    data = os.pread(self.fd, want - done, offset + done)
                    n = len(data)
                    buf[done : done + n] = data
            else:
                assert self._fileobj is not None
                self._fileobj.seek(offset + done)
                n = self._fileobj.readinto(buf[done:]) or 0
            if n <= 0:
                break
            done += n
        return done

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Read into ``buf`` at ``offset``, through the overlay; return bytes read.

        Bytes past the end of the file read as nothing (a short count), except
        where an overlay extends the file, where they read as zeros.
        """
        n = self.readinto_raw(buf, offset)
        if self.overlay is None:
            return n
        end = offset + len(buf)
        if n < len(buf) and self.overlay_size is not None and self.overlay_size > offset + n:
            stop = min(end, self.overlay_size)
            buf[n : stop - offset] = bytes(stop - offset - n)
            n = stop - offset
        self._apply_overlay(buf, offset)
        return n

    def _apply_overlay(self, buf: memoryview, offset: int) -> None:
        assert self.overlay is not None
        if not self.overlay:
            return
        end = offset + len(buf)
        first = offset & ~0xFFF
        for sector in range(first, end, 0x1000):
            data = self.overlay.get(sector)
            if data is None:
                continue
            lo = max(sector, offset)
            hi = min(sector + len(data), end)
            buf[lo - offset : hi - offset] = data[lo - sector : hi - sector]

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; a short result means end of file."""
        buf = bytearray(length)
        n = self.readinto(memoryview(buf), offset)
        del buf[n:]
        return bytes(buf)

    def read_exact(self, offset: int, length: int, structure: str) -> bytes:
        """Read exactly ``length`` bytes or raise :class:`TruncatedImageError`."""
        if offset < 0 or offset + length > self.size:
            raise TruncatedImageError(
                f"file ends at {self.size:#x}, before the end of {structure} "
                f"({offset:#x}+{length:#x})",
                structure=structure,
                offset=offset,
            )
        data = self.read(offset, length)
        if len(data) != length:
            raise TruncatedImageError(
                f"short read of {structure}: {len(data)} of {length} bytes",
                structure=structure,
                offset=offset,
            )
        return data

    # -- writes -------------------------------------------------------------

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` (writable sources only)."""
        if not self.writable:
            raise ReadOnlyError("image is open read-only", offset=offset)
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            if self.fd is not None:
                n = os.pwrite(self.fd, mv[done:], offset + done)
            else:
                assert self._fileobj is not None
                self._fileobj.seek(offset + done)
                n = self._fileobj.write(mv[done:]) or 0
            if n <= 0:
                raise OSError(f"write of {len(mv) - done} bytes at {offset + done:#x} made no progress")
            done += n
        self._size = max(self._size, offset + len(mv))

    def flush(self) -> None:
        """Flush writes to stable storage."""
        if not self.writable:
            return
        if self._fileobj is not None:
            self._fileobj.flush()
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the file if this object opened it."""
        if self._owns and self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self._fileobj = None
