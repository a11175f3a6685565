"""``DiskImage``: the format-independent block-I/O layer (DESIGN.md "Layers").

All reads go through :meth:`DiskImage.readinto_at` or :meth:`DiskImage.read_at`.
A read inside one block takes a short scalar path (one table lookup, one
positional read; ``read_at`` returns that read's ``bytes`` without a copy). A larger read
maps the whole range to coalesced runs in one vectorized step
(:meth:`pyvhdx.bat.BlockTable.map`) and issues one positional read per run
straight into the caller's buffer; zero runs are filled in place.
"""

from __future__ import annotations

import operator
import os
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, NamedTuple, TypeVar, overload

import numpy as np

from .base import FormatHandler
from .bat import (
    CODE_UNMAPPED,
    CODE_ZERO,
    LOAD_CHUNK_MASK,
    LOAD_CHUNK_SHIFT,
    BlockTable,
    merge_zero_runs,
)
from .chain import attach_parent, merge_problems
from .constants import DiskType, ImageFormat, RunKind
from .errors import (
    InvalidArgumentError,
    PyvhdxError,
    ReadOnlyError,
    TruncatedImageError,
    UnsupportedFeatureError,
)
from .info import AllocationSummary, ImageInfo
from .problems import Problem, Severity
from .source import FileSource

if TYPE_CHECKING:
    from .bat import Runs
    from .stream import DiskStream

_HAS_PREADV = hasattr(os, "preadv")

__all__ = [
    "NO_SIGNATURE",
    "ChainExtent",
    "DiskImage",
    "Extent",
    "detect_format",
    "no_signature_problem",
    "open_image",
]


class Extent(NamedTuple):
    """A run of the virtual disk: ``[start, start + length)`` reads as ``kind``.

    ``file_offset`` is where DATA runs are stored in the image file, else None.
    """

    start: int
    length: int
    kind: RunKind
    file_offset: int | None

    @property
    def data(self) -> bool:
        return self.kind in (RunKind.DATA, RunKind.PARENT)

    @property
    def zero(self) -> bool:
        return self.kind in (RunKind.ZERO, RunKind.UNMAPPED)


class ChainExtent(NamedTuple):
    """An :class:`Extent` of a differencing chain, with the image that holds it."""

    start: int
    length: int
    kind: RunKind
    file_offset: int | None
    depth: int  # 0: the image opened; 1: its parent; ...
    image: str


def _zero_fill(mv: memoryview) -> None:
    np.frombuffer(mv, dtype=np.uint8)[:] = 0


# Zero ``bytes`` objects of the lengths read_at returned last: bytes are immutable,
# so one object serves every read of a zero range of that length (no allocation).
_ZERO_BYTES: dict[int, bytes] = {}
_ZERO_BYTES_MAX = 256 * 1024  # longer ones are made for each read
_ZERO_BYTES_LENGTHS = 8  # lengths kept


def _zero_bytes(n: int) -> bytes:
    """``bytes(n)``, kept for the next read of that length if it is small."""
    zeros = bytes(n)
    if n <= _ZERO_BYTES_MAX:
        if len(_ZERO_BYTES) >= _ZERO_BYTES_LENGTHS:
            _ZERO_BYTES.clear()
        _ZERO_BYTES[n] = zeros
    return zeros


def _zero_into(buffer: Any, n: int) -> int:
    """Zero the first ``n`` bytes of a ``bytearray`` or a writable byte ``memoryview``
    and return ``n``; 0 (nothing done) for any other memoryview."""
    if type(buffer) is bytearray or (
        buffer.format == "B" and buffer.ndim == 1 and not buffer.readonly
    ):
        buffer[:n] = _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)
        return n
    return 0


# Source of small zero fills on the fast path (a slice assignment beats numpy there).
_ZEROS = memoryview(bytes(128 * 1024))

# A larger read_at that is one run returns one pread's bytes (mapping the range
# first costs less than copying the buffer only from this size on).
_DIRECT_READ = 256 * 1024


_T = TypeVar("_T")


class _HandlerAttribute(Generic[_T]):
    """A read-only attribute of a :class:`DiskImage` that is its handler's
    attribute (of the same name unless ``name`` is given)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    @overload
    def __get__(self, image: None, owner: type) -> _HandlerAttribute[_T]: ...
    @overload
    def __get__(self, image: DiskImage, owner: type) -> _T: ...
    def __get__(self, image: DiskImage | None, owner: type) -> _T | _HandlerAttribute[_T]:
        if image is None:
            return self
        assert self.name is not None
        value: _T = getattr(image._h, self.name)
        return value

    def __set__(self, image: DiskImage, value: object) -> None:
        raise AttributeError(f"{self.name} is read-only")


class DiskImage:
    """An open virtual disk image of any format.

    Obtain one with :func:`pyvhdx.open`. It is a context manager; closing it
    closes the file if pyvhdx opened it.
    """

    def __init__(self, handler: FormatHandler, *, mode: str = "r") -> None:
        self._h = handler
        self._table: BlockTable = handler.table
        self._source = handler.source
        self.mode = mode
        # hot-path constants (the handler and its table are fixed once opened)
        self._size = handler.virtual_size
        self._shift = self._table.block_shift
        self._mask = self._table.block_mask
        self._chunks = self._table._chunks
        self._linear_base: int | None = self._table.linear_base
        # positional reads straight on the descriptor when no log overlay applies
        src = self._source
        self._fd: int | None = src.fd if (src.overlay is None and _HAS_PREADV) else None
        self._stop_fast: Callable[[], None] | None = None
        # the fast paths (and a large read_at reading the file itself), unless a
        # subclass or a test has replaced readinto_at: the general read_at reads
        # through it; nor read_at itself where that is replaced
        self._direct: bool = self._fd is not None and type(self).readinto_at is _GENERAL_READINTO
        if self._direct:
            fast = self._fast_reader()
            self.readinto_at = fast  # type: ignore[method-assign, assignment]
            if type(self).read_at is _GENERAL_READ_AT:
                self.read_at = fast  # type: ignore[method-assign, assignment]
        self.parent: DiskImage | None = None
        self._owns_parent = False
        self.missing_parent = False  # opened with allow_missing_parent and not found
        self._closed = False

    # -- properties ------------------------------------------------------------

    @property
    def handler(self) -> FormatHandler:
        """The format object (``VHDXFile``, ``VHDFile`` or ``RawFile``)."""
        return self._h

    # The handler's facts, read-only (FormatHandler documents them).
    format = _HandlerAttribute[ImageFormat]()
    disk_type = _HandlerAttribute[DiskType]()
    virtual_size = _HandlerAttribute[int]()
    #: Alias of :attr:`virtual_size` (for dfvfs/pytsk3-style callers).
    size = _HandlerAttribute[int]("virtual_size")
    block_size = _HandlerAttribute["int | None"]()
    logical_sector_size = _HandlerAttribute[int]()
    physical_sector_size = _HandlerAttribute[int]()

    @property
    def name(self) -> str:
        return self._source.name

    @property
    def closed(self) -> bool:
        return self._closed

    def get_size(self) -> int:
        """The virtual size (pytsk3 ``Img_Info`` convention)."""
        return self._h.virtual_size

    # -- reads -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed image")

    def read_at(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at virtual ``offset``; short only at the disk's end.

        (Images read straight from a descriptor replace this method, per
        instance, by a closure from :meth:`_fast_reader`, which falls back here.)
        """
        if length < 0:
            raise InvalidArgumentError(f"negative read length {length}")
        if offset < 0:
            raise InvalidArgumentError(f"negative offset {offset}")
        length = max(0, min(length, self._h.virtual_size - offset))
        fd = self._fd if self._direct else None
        if length >= _DIRECT_READ and fd is not None and not self._closed:
            # one stored run (contiguous in the file) or one run of zeros: no buffer to copy
            runs = self._table.map(offset, length)
            if len(runs) == 1:
                kind = int(runs.kind[0])
                if kind == RunKind.DATA:
                    data = os.pread(fd, length, int(runs.file_offset[0]))
                    if len(data) == length:
                        return data
                elif kind in (RunKind.ZERO, RunKind.UNMAPPED):
                    return bytes(length)
            buf = bytearray(length)
            self._read_runs(offset, memoryview(buf), runs)  # mapped already: not again
            return bytes(buf)
        buf = bytearray(length)
        n = self.readinto_at(offset, buf)
        if n != length:  # pragma: no cover - readinto_at fills fully or raises
            del buf[n:]
        return bytes(buf)

    def _fast_reader(self) -> Callable[[int, Any], Any]:
        """Build this image's ``readinto_at`` and ``read_at`` for the common case.

        Random small reads are dominated by interpreter overhead, not by the
        system call, so the hot path is one closure that keeps every constant in
        a cell: a read that stays inside one block costs one table lookup (none
        for the data block read last, which read-only images remember) and one
        ``preadv`` into a ``bytearray`` or ``memoryview``, or, for ``read_at``
        (its second argument an ``int``: the length), one ``os.pread`` whose
        ``bytes`` are returned as they are; ZERO/UNMAPPED blocks are a zero fill
        or a zero ``bytes`` object kept for reads of that length
        (:func:`_zero_bytes`). Everything else (short reads, unloaded table
        chunks, buffers ``preadv`` refuses, every error) goes to the general
        :meth:`DiskImage.readinto_at` or :meth:`DiskImage.read_at`, which read
        again from the start.
        """
        fd = self._fd
        assert fd is not None  # only built for descriptor-backed images
        size = self._size
        shift = self._shift
        mask = self._mask
        chunks = self._chunks
        linear = self._linear_base
        chunk_shift = shift + LOAD_CHUNK_SHIFT
        chunk_mask = LOAD_CHUNK_MASK
        general: Callable[[int, Any], int] = types.MethodType(DiskImage.readinto_at, self)
        slow: Callable[[int, Any], Any] = types.MethodType(_general_read, self)
        preadv = os.preadv
        pread = os.pread
        zero_codes = (CODE_UNMAPPED, CODE_ZERO)
        zero_bytes = _ZERO_BYTES.get
        live = True
        # The data block read last and its file offset, for runs of reads in one
        # block; only read-only images keep it (a writer or compact may move blocks).
        keep_hot = self.mode == "r"
        hot_block = -1
        hot_pos = 0

        def stop() -> None:
            nonlocal live
            live = False

        self._stop_fast = stop

        def fast(offset: int, target: Any) -> Any:
            nonlocal hot_block, hot_pos
            t = type(target)
            # the bytes to read; 0 (the general path) for other buffer types
            n = (
                target
                if t is int
                else len(target)
                if t is bytearray
                else target.nbytes
                if t is memoryview
                else 0
            )
            block = offset >> shift
            last = offset + n - 1
            pos = -1
            if live and n > 0 and offset >= 0 and last < size and last >> shift == block:
                if block == hot_block:
                    pos = hot_pos + (offset & mask)
                elif linear is not None:
                    pos = linear + offset
                elif (arr := chunks.get(offset >> chunk_shift)) is not None:
                    code = arr.item(block & chunk_mask)
                    if code >= 0:
                        if keep_hot:
                            hot_block, hot_pos = block, code
                        pos = code + (offset & mask)
                    elif code in zero_codes:
                        zeros = (
                            (zero_bytes(n) or _zero_bytes(n)) if t is int else _zero_into(target, n)
                        )
                        return zeros or general(offset, target)
            if pos < 0:
                pass
            elif t is int:
                data = pread(fd, n, pos)
                if len(data) == n:
                    return data
            else:
                try:
                    if preadv(fd, [target], pos) == n:
                        return n
                except BufferError:  # read-only or not contiguous: the general path decides
                    pass
            return slow(offset, target)

        return fast

    def readinto_at(self, offset: int, buffer: Any) -> int:
        """Read into ``buffer`` (any writable buffer) from virtual ``offset``.

        (Images read straight from a descriptor replace this method, per
        instance, by the closure from :meth:`_fast_reader`, which falls back here.)

        Returns the number of bytes read: ``len(buffer)``, or less at the end of
        the disk, 0 at or past it.

        Raises:
            InvalidArgumentError: a negative offset or a read-only buffer.
            UnsupportedFeatureError: the image cannot be read (yet).
            TruncatedImageError: the file ends inside a block the image uses.
        """
        if self._closed:
            self._check_open()
        mv = buffer if type(buffer) is memoryview else memoryview(buffer)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        if mv.readonly:
            raise InvalidArgumentError("buffer is read-only")
        if offset < 0:
            raise InvalidArgumentError(f"negative offset {offset}")
        size = self._size
        n = len(mv)
        if offset + n > size:
            if offset >= size:
                return 0
            n = size - offset
            mv = mv[:n]
        if n == 0:
            return 0
        shift = self._shift
        block = offset >> shift
        if (offset + n - 1) >> shift == block:
            # Scalar path: the read stays inside one block: one lookup, one pread.
            linear = self._linear_base
            if linear is not None:
                code = linear + (block << shift)
            else:
                arr = self._chunks.get(block >> LOAD_CHUNK_SHIFT)
                code = self._table.code(block) if arr is None else arr.item(block & LOAD_CHUNK_MASK)
            if code >= 0:
                pos = code + (offset & self._mask)
                fd = self._fd
                if fd is None or os.preadv(fd, [mv], pos) != n:
                    self._read_data(mv, pos)
                return n
            if code in (CODE_ZERO, CODE_UNMAPPED):
                _zero_fill(mv)
                return n
        self._read_runs(offset, mv)
        return n

    def _read_data(self, mv: memoryview, pos: int) -> None:
        """Fill ``mv`` from file offset ``pos`` (a data run); the file must hold it all.

        Raises:
            TruncatedImageError: the file ends first (with ``salvage``, the
                missing bytes read as zeros instead).
        """
        got = self._source.readinto(mv, pos)
        if got == len(mv):
            return
        if self._h.salvage:
            _zero_fill(mv[got:])
            return
        raise TruncatedImageError(
            f"file ends inside data at {pos:#x} ({got} of {len(mv)} bytes)",
            structure="data block",
            offset=pos,
        )

    def _read_runs(self, offset: int, mv: memoryview, runs: Runs | None = None) -> None:
        """General path: map the range to runs (unless given) and serve each one."""
        if runs is None:
            runs = self._table.map(offset, len(mv))
        for start, length, kind, foff in runs.rows():
            sub = mv[start - offset : start - offset + length]
            if kind == RunKind.DATA:
                self._read_data(sub, foff)
            elif kind == RunKind.PARENT:
                if self.parent is not None:
                    self.parent.readinto_at(start, sub)
                elif self.missing_parent:
                    _zero_fill(sub)
                else:
                    raise UnsupportedFeatureError(
                        "this range is stored in the parent disk, which is not open",
                        offset=start,
                    )
            else:
                _zero_fill(sub)

    # -- allocation map --------------------------------------------------------

    def extents(
        self, offset: int = 0, length: int | None = None, *, merge_zero: bool = False
    ) -> Iterator[Extent]:
        """Yield the allocation map of ``[offset, offset + length)`` as merged runs.

        Works window by window, so memory stays bounded for any disk size; runs
        are mapped and merged with numpy (:meth:`BlockTable.map`), so the Python
        cost is per run yielded, not per block. With ``merge_zero``, ZERO and
        UNMAPPED runs next to each other (both read as zeros) are one run, ZERO
        if any part of it is (:func:`pyvhdx.bat.merge_zero_runs`).
        """
        self._check_open()
        size = self._h.virtual_size
        if offset < 0:
            raise InvalidArgumentError(f"negative offset {offset}")
        end = size if length is None else min(size, offset + length)
        window = self._table.block_size << (LOAD_CHUNK_SHIFT + _EXTENT_WINDOW_SHIFT)
        pending: list[Any] | None = None
        pos = offset
        while pos < end:
            stop = min(end, (pos // window + 1) * window)
            runs = self._table.map(pos, stop - pos)
            if merge_zero:
                runs = merge_zero_runs(runs)
            rows = runs.rows()
            if pending is not None:  # the first run may continue the last window's
                s, ln, k, f = next(rows)
                if _continues(pending, k, f, merge_zero):
                    pending[1] += ln
                    if k == RunKind.ZERO:
                        pending[2] = k
                else:
                    yield _extent(pending)
                    pending = [s, ln, k, f]
            for row in rows:
                if pending is not None:
                    yield _extent(pending)
                pending = list(row)
            pos = stop
        if pending is not None:
            yield _extent(pending)

    def chain_extents(
        self, offset: int = 0, length: int | None = None, *, _depth: int = 0
    ) -> Iterator[ChainExtent]:
        """The allocation map through the whole differencing chain.

        Runs this image sends to its parent are replaced by the parent's own runs,
        so each run names the image that holds it (``depth`` 0 is this image) and
        an examiner sees exactly what a checkpoint changed.
        """
        for ext in self.extents(offset, length):
            if ext.kind == RunKind.PARENT and self.parent is not None:
                yield from self.parent.chain_extents(ext.start, ext.length, _depth=_depth + 1)
            else:
                yield ChainExtent(*ext, depth=_depth, image=self.name)

    def allocation_summary(self) -> AllocationSummary:
        """Count blocks by what they map to (decodes the whole table)."""
        self._check_open()
        t = self._table
        counts = np.zeros(5, dtype=np.int64)  # data, unmapped, zero, parent, partial
        back = unaligned = 0  # stored blocks before their predecessor; off 4 KiB
        last = -1
        for _first, codes in t.iter_chunks():
            counts += np.bincount(np.where(codes >= 0, 0, -codes), minlength=5)[:5]
            stored = codes[codes >= 0]
            if stored.size:
                back += int(np.count_nonzero(np.diff(stored) < 0)) + int(stored[0] < last)
                unaligned += int(np.count_nonzero(stored % 4096))
                last = int(stored[-1])
        return AllocationSummary(
            block_count=t.block_count,
            data_blocks=int(counts[0]),
            zero_blocks=int(counts[-CODE_ZERO]),
            unmapped_blocks=int(counts[-CODE_UNMAPPED]),
            parent_blocks=int(counts[3]),
            partial_blocks=int(counts[4]),
            fragmentation_percentage=round(100 * back / max(1, int(counts[0]))),
            alignment=int(unaligned == 0),
        )

    # -- writes ----------------------------------------------------------------

    def write_at(self, offset: int, data: Any) -> int:
        """Write ``data`` (any bytes-like object) at virtual ``offset``.

        Only for images opened with ``mode="r+"``. The write lies wholly inside
        the disk or nothing is written.

        Returns:
            ``len(data)``.

        Raises:
            ReadOnlyError: the image is open read-only.
            InvalidArgumentError: a negative offset, or a range past the virtual size.
        """
        self._check_open()
        if self.mode == "r":
            raise ReadOnlyError("image is open read-only", offset=offset)
        mv = data if type(data) is memoryview else memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        n = len(mv)
        if offset < 0:
            raise InvalidArgumentError(f"negative offset {offset}")
        if offset + n > self._h.virtual_size:
            raise InvalidArgumentError(
                f"write of {n} bytes at {offset:#x} ends past the virtual size "
                f"{self._h.virtual_size:#x}",
                offset=offset,
            )
        if n:
            self._h.write_at(offset, mv)
        return n

    def flush(self) -> None:
        """Make every write so far durable (no-op for a read-only image)."""
        self._check_open()
        if self.mode != "r":
            self._h.flush()

    # -- views -----------------------------------------------------------------

    def stream(self) -> DiskStream:
        """A file-like view (``io.RawIOBase``) of the virtual disk."""
        from .stream import DiskStream

        self._check_open()
        return DiskStream(self)

    def info(self) -> ImageInfo:
        """Summarize the image (what ``pyvhdx info`` prints)."""
        self._check_open()
        h = self._h
        allocation: AllocationSummary | None
        try:
            allocation = self.allocation_summary()
        except PyvhdxError:
            allocation = None
        return ImageInfo(
            filename=self.name,
            format=h.format.value,
            disk_type=h.disk_type.value,
            virtual_size=h.virtual_size,
            file_size=self._source.physical_size,
            allocated_size=_allocated_size(self._source),
            minimum_size=self._partitions_end(),
            block_size=h.block_size,
            logical_sector_size=h.logical_sector_size,
            physical_sector_size=h.physical_sector_size,
            creator=h.creator,
            identifier=h.identifier,
            log_replayed=h.log_replayed,
            header_copy=h.header_copy,
            region_table_copy=h.region_table_copy,
            failed_copies=list(h.failed_copies),
            allocation=allocation,
            parent=h.parent_info(),
            problems=list(h.problems) + merge_problems(self),
            format_specific=h.format_specific(),
        )

    def _partitions_end(self) -> int | None:
        """Where the partitions end (Get-VHD's MinimumSize), if there is a table."""
        from .partitions import read_partition_table

        try:
            table = read_partition_table(self.read_at, self._size, self._h.logical_sector_size)
        except (PyvhdxError, OSError):
            return None
        return None if table is None else table.end

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close the image (and its parent chain, if pyvhdx opened it)."""
        if self._closed:
            return
        self._closed = True
        if self._stop_fast is not None:
            self._stop_fast()
        self._fd = None
        if self.parent is not None and self._owns_parent:
            self.parent.close()
        self._h.close()

    def attach_parent(self, parent: DiskImage, *, owned: bool) -> None:
        """Use ``parent`` for the ranges this differencing disk does not store."""
        if parent.virtual_size < self.virtual_size:
            from .errors import ParentError

            raise ParentError(
                f"parent {parent.name} ({parent.virtual_size} bytes) is smaller than "
                f"the child ({self.virtual_size} bytes)",
                tried=[parent.name],
            )
        self.parent = parent
        self._owns_parent = owned
        self._h.parent_reader = parent.readinto_at

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<DiskImage {self.name!r} {self.format.value} {self.disk_type.value} "
            f"{self.virtual_size} bytes>"
        )


_GENERAL_READINTO = DiskImage.readinto_at
_GENERAL_READ_AT = DiskImage.read_at


def _general_read(image: DiskImage, offset: int, target: Any) -> Any:
    """The general method for a read the fast path leaves: :meth:`DiskImage.read_at`
    when ``target`` is a length (any integer), else :meth:`DiskImage.readinto_at`."""
    try:
        length = operator.index(target)
    except TypeError:
        return _GENERAL_READINTO(image, offset, target)
    return _GENERAL_READ_AT(image, offset, length)


def _allocated_size(source: FileSource) -> int | None:
    """Bytes the image file occupies on storage (``qemu-img info`` "actual-size")."""
    if source.fd is None:
        return None
    blocks = getattr(os.fstat(source.fd), "st_blocks", None)
    return None if blocks is None else blocks * 512


# extents() maps this many table chunks (LOAD_CHUNK_SHIFT) per numpy step, as a shift
_EXTENT_WINDOW_SHIFT = 3


def _continues(pending: list[Any], kind: int, file_offset: int, merge_zero: bool) -> bool:
    """A run of ``kind`` at ``file_offset`` extends the run ``pending`` (start, length,
    kind, file offset) that ends where it starts."""
    if pending[2] == kind:
        return kind != RunKind.DATA or pending[3] + pending[1] == file_offset
    zeros = (RunKind.ZERO, RunKind.UNMAPPED)
    return merge_zero and pending[2] in zeros and kind in zeros


def _extent(p: list[Any]) -> Extent:
    kind = RunKind(p[2])
    return Extent(p[0], p[1], kind, p[3] if kind == RunKind.DATA else None)


# -- opening -----------------------------------------------------------------------


#: The code of the problem an image detected as raw carries (``info().problems``,
#: ``check``): no VHD or VHDX signature was found, so the format is a guess.
NO_SIGNATURE = "format.no-signature"


def no_signature_problem(source: FileSource) -> Problem:
    """The problem of a file read as raw because no VHD or VHDX signature was found
    in it (:func:`detect_format`): random bytes or an empty file look the same.

    An error, so ``check`` fails; ``format="raw"`` says the file is raw and
    leaves it out.
    """
    what = "the file is empty" if source.size == 0 else "it reads as a raw disk image"
    return Problem(
        "format",
        f"no VHD or VHDX signature was found ('vhdxfile' at 0, 'head' at 64 or 128 KiB, "
        f"'conectix' at the end or at 0): {what}; give the format 'raw' if it is one",
        severity=Severity.ERROR,
        code=NO_SIGNATURE,
    )


def detect_format(source: FileSource) -> ImageFormat:
    """Tell the format of an image by its content, never by its name.

    VHDX: the file identifier ``vhdxfile`` at 0, or a ``head`` signature at one
    of the header offsets (MS-VHDX 2.2). VHD: a ``conectix`` footer at the end
    (512 or 511 bytes) or, for dynamic disks, at offset 0. Otherwise raw.
    """
    from .constants import (
        VHD_FOOTER_COOKIE,
        VHDX_HEADER_OFFSETS,
        VHDX_HEADER_SIGNATURE,
        VHDX_SIGNATURE,
    )

    if source.read(0, 8) == VHDX_SIGNATURE or any(
        source.read(off, 4) == VHDX_HEADER_SIGNATURE for off in VHDX_HEADER_OFFSETS
    ):
        return ImageFormat.VHDX
    footers = [source.size - tail for tail in (512, 511) if source.size >= tail]
    if any(source.read(at, 8) == VHD_FOOTER_COOKIE for at in (*footers, 0)):
        return ImageFormat.VHD
    return ImageFormat.RAW


#: A path (``str``, ``bytes`` or path-like) or a binary file object.
ImageFile = str | bytes | os.PathLike[str] | os.PathLike[bytes] | BinaryIO

# The modes open_image takes, with Python's "b" spellings (an image is always binary).
_MODES = {"r": "r", "rb": "r", "r+": "r+", "r+b": "r+", "rb+": "r+"}


def _path_or_object(file: ImageFile) -> str | os.PathLike[str] | BinaryIO:
    """``file`` with a bytes path (or a path-like giving bytes) decoded as ``os.fsdecode`` does."""
    if isinstance(file, bytes) or (
        isinstance(file, os.PathLike) and isinstance(os.fspath(file), bytes)
    ):
        return os.fsdecode(file)
    return file  # type: ignore[return-value]  # a str path, a str path-like, a file object


def _check_mode(mode: str) -> str:
    """``mode`` as ``"r"`` or ``"r+"`` (``"rb"``, ``"r+b"`` and ``"rb+"`` are the same)."""
    normal = _MODES.get(mode) if isinstance(mode, str) else None
    if normal is None:
        raise InvalidArgumentError(
            f"mode must be 'r' or 'r+' (or 'rb', 'r+b'), not {mode!r}", field="mode"
        )
    return normal


def _refuse_read_only_object(file: BinaryIO) -> None:
    """Refuse, at open, a file object that cannot be written for ``mode="r+"`` (a file
    opened ``"rb"`` would fail with EBADF only at the first write or flush)."""
    name = str(getattr(file, "name", "<file object>"))
    writable = getattr(file, "writable", None)
    try:
        if callable(writable):
            ok = bool(writable())
        else:
            its_mode = getattr(file, "mode", None)
            ok = not isinstance(its_mode, str) or any(c in its_mode for c in "+wax")
    except ValueError as exc:  # a closed file
        raise InvalidArgumentError(f"{name}: {exc}") from None
    if not ok:
        raise InvalidArgumentError(
            f"{name}: the file object is open read-only "
            f"(mode {getattr(file, 'mode', 'unknown')!r}); mode 'r+' needs one open for "
            "reading and writing ('r+b'), or open the image by its path"
        )


def open_image(
    file: ImageFile,
    mode: str = "r",
    *,
    format: str | ImageFormat | None = None,
    strict: bool = False,
    parent: str | bytes | os.PathLike[str] | DiskImage | None = None,
    resolve_parent: bool = True,
    allow_missing_parent: bool = False,
    verify_parent: bool = True,
    salvage: bool = False,
    force_share: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> DiskImage:
    """Open a virtual disk image.

    Args:
        file: a path (``str``, ``bytes`` or path-like), a seekable binary file
            object with ``readinto`` (opened ``"r+b"`` for ``mode="r+"``), or an
            fsspec URL (``s3://``, ``az://``, ``http(s)://``...: read-only, the
            ``remote`` extra; :mod:`pyvhdx.remote`).
        mode: ``"r"`` (default; never writes to the file) or ``"r+"``; ``"rb"``
            and ``"r+b"`` mean the same.
        format: ``"vhdx"``, ``"vhd"`` or ``"raw"``; detected by content if None
            (a file with no VHD or VHDX signature then opens as raw, and
            ``info().problems`` says so: :data:`NO_SIGNATURE`).
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
        storage_options: for a URL, fsspec's options (credentials, endpoint).

    A path (not a file object, which is the caller's to lock) is locked as qemu
    locks images, until the image is closed: ``"r+"`` excludes every other
    user, pyvhdx or qemu; ``"r"`` excludes writers but not other readers. Every
    parent opened for the chain is opened read-only, with the child's
    ``force_share``, and locked in the same way.

    Raises:
        InvalidImageError: the image is malformed (subclasses name the defect).
        UnsupportedFeatureError: the image needs a feature pyvhdx lacks.
        ParentError: a differencing disk's parent is missing or not the right one.
        ImageLockedError: another process (pyvhdx or qemu) holds a conflicting lock.
        InvalidArgumentError: a bad mode or option (``force_share`` with ``"r+"``),
            the path is not a regular file or block device (a FIFO, a directory),
            or ``"r+"`` with a file object open read-only.
    """
    from .remote import RemoteFile, attach_remote_parent, is_url, open_remote

    mode = _check_mode(mode)
    file = _path_or_object(file)
    if isinstance(parent, bytes):
        parent = os.fsdecode(parent)
    if is_url(file):
        if mode != "r":
            raise InvalidArgumentError(f"{file}: a remote image opens read-only (mode 'r')")
        file = open_remote(str(file), storage_options)  # type: ignore[assignment]
    img = _open_file(
        file, mode, format=format, strict=strict, salvage=salvage, force_share=force_share
    )
    if img.disk_type is not DiskType.DIFFERENCING or not resolve_parent:
        return img

    def attach(
        child: DiskImage,
        where: str | os.PathLike[str] | BinaryIO,
        given: str | os.PathLike[str] | DiskImage | None,
        seen: frozenset[Path],
    ) -> DiskImage:
        options: dict[str, Any] = {"allow_missing": allow_missing_parent, "verify": verify_parent}
        try:
            if isinstance(where, RemoteFile):  # its parent is looked up beside it, in its store
                attach_remote_parent(child, where, given, opener=opener, seen=seen, **options)
            else:
                attach_parent(child, where, given, opener=opener, seen=seen, **options)
        except BaseException:
            child.close()
            raise
        return child

    def opener(path: Path | BinaryIO, seen: frozenset[Path]) -> DiskImage:
        # A parent opens read-only with the child's options (force_share too); a
        # remote child's parent is a RemoteFile beside it (pyvhdx.remote).
        found = _open_file(
            path, "r", format=None, strict=False, salvage=False, force_share=force_share
        )
        if found.disk_type is not DiskType.DIFFERENCING:
            return found
        return attach(found, path, None, seen)

    return attach(img, file, parent, frozenset())


def _open_file(
    file: str | os.PathLike[str] | BinaryIO,
    mode: str,
    *,
    format: str | ImageFormat | None,
    strict: bool,
    salvage: bool,
    force_share: bool,
) -> DiskImage:
    """One image, its parent not attached (see :func:`open_image`)."""
    mode = _check_mode(mode)
    writable = mode == "r+"
    if salvage and writable:
        raise InvalidArgumentError("salvage opens read-only: mode must be 'r'")
    if force_share and writable:
        raise InvalidArgumentError("force_share is for read-only opens: mode must be 'r'")
    if writable and not isinstance(file, (str, os.PathLike)):
        _refuse_read_only_object(file)
    source = FileSource(file, writable=writable, force_share=force_share)
    try:
        fmt = ImageFormat(format) if format is not None else detect_format(source)
        handler_cls: type[FormatHandler]
        if fmt is ImageFormat.VHDX:
            from .vhdx import VHDXFile as handler_cls
        elif fmt is ImageFormat.VHD:
            from .vhd import VHDFile as handler_cls
        else:
            from .raw import RawFile as handler_cls
        if writable and not handler_cls.supports_write:
            raise UnsupportedFeatureError(f"writing {fmt.value} images is not supported yet")
        options = {"writable": True} if writable else {}
        if salvage and fmt is not ImageFormat.RAW:  # every byte of a raw file is the disk
            options["salvage"] = True
        handler = handler_cls(source, strict=strict, **options)
        if format is None and fmt is ImageFormat.RAW:
            handler.problems.append(no_signature_problem(source))
    except BaseException:
        source.close()
        raise
    return DiskImage(handler, mode=mode)
