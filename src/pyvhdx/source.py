"""Positional access to the bytes of an image file.

:class:`FileSource` wraps a path or a binary file object and offers positional
reads (``os.preadv`` when there is a file descriptor). It can carry an in-memory
overlay of file sectors, which is how a pending VHDX log is replayed for a
read-only open without touching the file (MS-VHDX 2.3.3; DESIGN.md "Log").
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from typing import BinaryIO

from .errors import InvalidArgumentError, ReadOnlyError, TruncatedImageError
from .locking import lock_image

if sys.platform != "win32":
    import fcntl

__all__ = ["FileSource", "SectorOverlay", "data_spans"]

_HAS_PREADV = hasattr(os, "preadv")
_ZEROS = bytes(1 << 20)
_MAX_FILE_OFFSET = (1 << 63) - 1  # the largest file offset (off_t) any system has


def _fill_zero(mv: memoryview) -> None:
    """Set every byte of ``mv`` to zero without allocating more than 1 MiB."""
    n = len(mv)
    step = len(_ZEROS)
    for i in range(0, n, step):
        j = min(n, i + step)
        mv[i:j] = _ZEROS[: j - i]


def data_spans(fd: int | None, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``(begin, end)`` of the parts of file range ``[start, end)`` that may hold data.

    Holes of a sparse file are left out, as ``SEEK_DATA``/``SEEK_HOLE``
    (lseek(2)) report them. Where they cannot tell (no descriptor, a system
    without them, or any error but ENXIO, such as EINVAL from a file system that
    does not support them) the rest of the range counts as data: reading a hole
    only costs time. ENXIO means there is no data after the offset.
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if fd is None or seek_data is None or seek_hole is None:
        if start < end:
            yield start, end
        return
    pos = start
    while pos < end:
        try:
            begin = os.lseek(fd, pos, seek_data)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                yield pos, end  # SEEK_DATA unsupported here: the rest is data
            return
        if begin >= end:
            return
        try:
            stop = min(end, os.lseek(fd, begin, seek_hole))
        except OSError:
            stop = end
        if stop <= begin:  # pragma: no cover - a file changing under us
            stop = end
        yield begin, stop
        pos = stop


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int | None, offset: int, length: int) -> bool:
    """Give the file system back the blocks of ``[offset, offset + length)``, which then
    read as zeros (fallocate(2) PUNCH_HOLE, size kept). False where it cannot (no
    descriptor, not Linux, a file system without it); the bytes are then unchanged.
    """
    if fd is None or length <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return bool(fallocate(fd, mode, offset, length) == 0)


def _file_kind(mode: int) -> str | None:
    """What a file that is neither a regular file nor a block device is, else None."""
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _open_image_file(name: str, flags: int) -> int:
    """Open ``name`` without blocking; refuse what is not a regular file or block device.

    ``O_NONBLOCK`` keeps the open of a FIFO from waiting for a writer; it is
    cleared again before the descriptor is used.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(name, flags | nonblock | getattr(os, "O_BINARY", 0))
    except OSError:  # a directory opened for writing, a socket: say what it is
        try:
            kind = _file_kind(os.stat(name).st_mode)
        except OSError:
            kind = None
        if kind is None:
            raise
        raise InvalidArgumentError(f"{name} is {kind}, not an image file") from None
    try:
        kind = _file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise InvalidArgumentError(f"{name} is {kind}, not an image file")
        if nonblock:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~nonblock)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fd_size(fd: int) -> int:
    """Size of an open file or block device (whose ``st_size`` is 0)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


class SectorOverlay:
    """Bytes that replace a file's own: whole data sectors and ranges of zeros.

    This is how a pending VHDX log is replayed for a read-only open (MS-VHDX
    2.3.3): the result of the replay is kept in memory, the file is untouched.
    Built once, then read-only. Applying it to a read costs O(log n) plus the
    number of items touching the range.

    Args:
        sectors: file offset -> replacement bytes; each offset a multiple of
            ``sector_size`` and each value exactly ``sector_size`` bytes.
        zero_ranges: ``(start, end)`` byte ranges that read as zeros; they may
            touch or overlap each other but must not overlap a data sector.
        size: the file size the overlay implies; raised to the end of the last
            item if smaller. Bytes past the physical end of the file and below
            ``size`` read as zeros unless an item covers them.
        sector_size: size of a data sector (4 KiB, the VHDX log sector).

    Raises:
        InvalidArgumentError: an item is misaligned, negative or overlapping.
    """

    def __init__(
        self,
        sectors: Mapping[int, bytes],
        zero_ranges: Iterable[tuple[int, int]],
        size: int,
        *,
        sector_size: int = 4096,
    ) -> None:
        if sector_size <= 0:
            raise InvalidArgumentError(f"sector_size must be positive, not {sector_size}")
        self.sector_size = sector_size
        offsets = sorted(sectors)
        for off in offsets:
            if off < 0 or off % sector_size or len(sectors[off]) != sector_size:
                raise InvalidArgumentError(
                    f"overlay sector at {off:#x} is not {sector_size} aligned bytes", offset=off
                )
        self._offsets: list[int] = offsets
        self._data: list[bytes] = [bytes(sectors[off]) for off in offsets]
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(zero_ranges):
            if start < 0 or end < start:
                raise InvalidArgumentError(
                    f"bad overlay zero range {start:#x}..{end:#x}", offset=start
                )
            if end == start:
                continue
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self._zero_starts = starts
        self._zero_ends = ends
        for off in offsets:
            i = bisect_right(ends, off)
            if i < len(starts) and starts[i] < off + sector_size:
                raise InvalidArgumentError(
                    f"overlay sector at {off:#x} overlaps a zero range", offset=off
                )
        last = max(ends[-1] if ends else 0, offsets[-1] + sector_size if offsets else 0)
        self.size = max(size, last)

    @property
    def sector_offsets(self) -> list[int]:
        """File offsets of the data sectors, ascending (a copy)."""
        return list(self._offsets)

    @property
    def zero_ranges(self) -> list[tuple[int, int]]:
        """Disjoint ``(start, end)`` zero ranges, ascending (a copy)."""
        return list(zip(self._zero_starts, self._zero_ends, strict=True))

    def sector(self, offset: int) -> bytes | None:
        """The replacement bytes of the data sector at ``offset``, if any."""
        i = bisect_left(self._offsets, offset)
        if i < len(self._offsets) and self._offsets[i] == offset:
            return self._data[i]
        return None

    def apply(self, buf: memoryview, offset: int) -> None:
        """Overwrite ``buf`` (file bytes read at ``offset``) with the overlay's bytes."""
        end = offset + len(buf)
        starts, ends = self._zero_starts, self._zero_ends
        i = bisect_right(ends, offset)
        while i < len(starts) and starts[i] < end:
            lo = max(starts[i], offset)
            hi = min(ends[i], end)
            _fill_zero(buf[lo - offset : hi - offset])
            i += 1
        ss = self.sector_size
        offsets, data = self._offsets, self._data
        j = bisect_right(offsets, offset - ss)
        while j < len(offsets) and offsets[j] < end:
            sector = offsets[j]
            lo = max(sector, offset)
            hi = min(sector + ss, end)
            buf[lo - offset : hi - offset] = data[j][lo - sector : hi - sector]
            j += 1


class FileSource:
    """Positional reads (and, when writable, writes) on an image file.

    A path is opened here and locked as qemu locks images (:mod:`pyvhdx.locking`):
    writable, it excludes every other user; read-only, it excludes writers. The
    lock lasts until :meth:`close`. A file object the caller opened is not
    locked (the caller owns it and its locking). A path that names something
    other than a regular file or a block device (a FIFO, socket, character
    device or directory) is refused at once, without waiting on it.

    Args:
        file: a path, or an open binary file object with ``seek`` and
            ``readinto`` (its position is not preserved; it is not closed).
        writable: open a path for reading and writing.
        force_share: take and check no lock (qemu's ``force-share``, ``-U``);
            for read-only opens only.

    Raises:
        ImageLockedError: another process (pyvhdx or qemu) holds a conflicting
            lock on the file.
        InvalidArgumentError: the path is not a regular file or block device,
            or ``force_share`` with ``writable``.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        writable: bool = False,
        force_share: bool = False,
    ) -> None:
        self.writable = writable
        # False for a scratch file whose durability the caller handles (convert
        # builds a temporary file and syncs it once, or not, before renaming).
        self.sync_writes = True
        self.name: str
        self._owns = False
        self._fileobj: BinaryIO | None = None
        self.fd: int | None = None
        # Whether this object holds qemu's image lock on the file (pyvhdx.locking).
        self.locked = False
        if force_share and writable:
            raise InvalidArgumentError(
                "force-share is for read-only opens: an image open for writing is never shared"
            )
        if isinstance(file, (str, os.PathLike)):
            self.name = os.fspath(file)
            flags = os.O_RDWR if writable else os.O_RDONLY
            own = _open_image_file(self.name, flags)
            try:
                if not force_share:
                    self.locked = lock_image(own, self.name, writable=writable)
                self._size = _fd_size(own)
            except BaseException:
                os.close(own)  # also releases any lock byte taken
                raise
            self.fd = own
            self._owns = True
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
            if fd is not None and isinstance(
                file, (io.FileIO, io.BufferedReader, io.BufferedRandom)
            ):
                if isinstance(file, io.BufferedRandom):
                    file.flush()
                self.fd = fd
            file.seek(0, os.SEEK_END)
            self._size = file.tell()
        self.overlay: SectorOverlay | None = None

    # -- size ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size of the file as read (with an overlay: as extended by it)."""
        if self.overlay is not None:
            return max(self._size, self.overlay.size)
        return self._size

    @property
    def physical_size(self) -> int:
        """Size of the file on storage, ignoring any overlay."""
        return self._size

    @property
    def data_size(self) -> int:
        """End of the bytes the file or its overlay's data sectors hold.

        An overlay may extend the file with zeros up to a LastFileOffset read from
        the image (up to 2**63): structures whose size is work, such as regions,
        are checked against this instead, so that work stays bounded by the
        bytes the file and its log hold.
        """
        overlay = self.overlay
        if overlay is None or not overlay._offsets:
            return self._size
        return max(self._size, overlay._offsets[-1] + overlay.sector_size)

    def refresh_size(self) -> int:
        """Re-read the file size from storage."""
        if self.fd is not None:
            self._size = _fd_size(self.fd)
        elif self._fileobj is not None:
            self._fileobj.seek(0, os.SEEK_END)
            self._size = self._fileobj.tell()
        return self._size

    # -- reads --------------------------------------------------------------

    def readinto_raw(self, buf: memoryview, offset: int) -> int:
        """Read from storage (no overlay) into ``buf`` at ``offset``; return bytes read."""
        want = len(buf)
        if offset + want > _MAX_FILE_OFFSET:  # no file reaches there (off_t): end of file
            want = max(0, _MAX_FILE_OFFSET - offset)
        done = 0
        while done < want:
            if self.fd is not None:
                if _HAS_PREADV:
                    n = os.preadv(self.fd, [buf[done:want]], offset + done)
                else:  # pragma: no cover - Windows
                    data = os.pread(self.fd, want - done, offset + done)
                    n = len(data)
                    buf[done : done + n] = data
            else:
                assert self._fileobj is not None
                self._fileobj.seek(offset + done)
                n = self._fileobj.readinto(buf[done:want]) or 0  # type: ignore[attr-defined]
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
        overlay = self.overlay
        if overlay is None:
            return n
        if n < len(buf) and overlay.size > offset + n:
            stop = min(offset + len(buf), overlay.size)
            _fill_zero(buf[n : stop - offset])
            n = stop - offset
        if n:
            overlay.apply(buf[:n], offset)
        return n

    def set_overlay(self, overlay: SectorOverlay | None) -> None:
        """Install ``overlay`` over the file's bytes (None removes it).

        Every later :meth:`readinto`, :meth:`read` and :meth:`read_exact` sees
        the overlay; :meth:`readinto_raw` never does. Nothing is written.
        """
        if overlay is not None and not isinstance(overlay, SectorOverlay):
            raise InvalidArgumentError("overlay must be a SectorOverlay or None")
        self.overlay = overlay

    @property
    def overlay_size(self) -> int | None:
        """Size of the file as extended by the overlay, or None without one."""
        return None if self.overlay is None else self.overlay.size

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
                raise OSError(
                    f"write of {len(mv) - done} bytes at {offset + done:#x} made no progress"
                )
            done += n
        self._size = max(self._size, offset + len(mv))

    def truncate(self, size: int) -> None:
        """Set the file's length (writable sources only); new bytes read as zeros."""
        if not self.writable:
            raise ReadOnlyError("image is open read-only", offset=size)
        if self.fd is not None:
            os.ftruncate(self.fd, size)
        else:
            assert self._fileobj is not None
            self._fileobj.truncate(size)
        self._size = size

    def flush(self) -> None:
        """Flush writes to stable storage (only to the OS when ``sync_writes`` is off)."""
        if not self.writable:
            return
        if self._fileobj is not None:
            self._fileobj.flush()
        if self.fd is not None and self.sync_writes:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the file if this object opened it (which releases its lock)."""
        if self._owns and self.fd is not None:
            os.close(self.fd)
            self.locked = False
        self.fd = None
        self._fileobj = None
