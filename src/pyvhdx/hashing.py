"""Digests of a disk image's virtual content (``pyvhdx hash``).

Several algorithms in one streaming pass: the content is read 4 MiB at a time
into two reusable buffers with :meth:`~pyvhdx.DiskImage.readinto_at`, and while
one buffer is hashed (one thread per algorithm; hashlib releases the GIL on
large updates) the next is read. Ranges the allocation map says read as zeros
(unallocated, or ZERO blocks) are not read from the file: a shared buffer of
zeros is fed instead. The digests equal those of the raw content, as
``qemu-img convert -O raw`` piped to ``sha256sum`` gives them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from .constants import ImageFormat
from .errors import InvalidArgumentError
from .image import DiskImage, open_image
from .progress import Progress, ProgressCallback, reporting

__all__ = ["CHUNK", "DEFAULT_ALGORITHMS", "hash_image", "normalize_algorithms"]

CHUNK = 4 << 20  # bytes read and hashed at a time
DEFAULT_ALGORITHMS = ("sha256",)

_ZEROS = memoryview(bytes(CHUNK))


def normalize_algorithms(algorithms: Iterable[str]) -> list[str]:
    """Lower-case hashlib names, duplicates removed, order kept.

    Raises:
        InvalidArgumentError: an unknown algorithm, or one with a variable-length
            digest (``shake_*``), which has no single hex digest.
    """
    out: list[str] = []
    for name in algorithms:
        text = name.strip().lower()
        # "sha-256" and "SHA256" name sha256; "sha3-256" names sha3_256.
        candidates = (text, text.replace("-", ""), text.replace("-", "_"))
        key = next((c for c in candidates if c in hashlib.algorithms_available), text)
        if key.startswith("shake"):
            raise InvalidArgumentError(f"hash algorithm {name!r} has no fixed-size digest")
        try:
            hashlib.new(key)
        except (ValueError, TypeError):
            available = sorted(a for a in hashlib.algorithms_available if "shake" not in a)
            raise InvalidArgumentError(
                f"unknown hash algorithm {name!r} (available: {', '.join(available)})"
            ) from None
        if key not in out:
            out.append(key)
    if not out:
        raise InvalidArgumentError("no hash algorithm given")
    return out


class _Hasher:
    """Feeds buffers to every digest, one thread each, overlapping with the next read."""

    def __init__(self, names: Sequence[str]) -> None:
        self.digests = [hashlib.new(n) for n in names]
        # Threads even for one digest: hashing then overlaps the next read.
        self._pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="pyvhdx-hash")
        self._pending: list[Future[None]] = []

    def wait(self) -> None:
        for f in self._pending:
            f.result()
        self._pending = []

    def feed(self, data: memoryview) -> None:
        """Start hashing ``data``; it must stay unchanged until the next :meth:`wait`."""
        self.wait()
        self._pending = [self._pool.submit(d.update, data) for d in self.digests]

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()


def _zero_runs(img: DiskImage, min_length: int) -> Iterable[tuple[int, int]]:
    """``(start, end)`` of ranges that read as zeros without a read, at least ``min_length``."""
    for ext in img.extents():
        if ext.zero and ext.length >= min_length:
            yield ext.start, ext.start + ext.length


def _hash_open(
    img: DiskImage, names: Sequence[str], update: ProgressCallback, chunk: int
) -> dict[str, str]:
    size = img.virtual_size
    buffers = [memoryview(bytearray(chunk)), memoryview(bytearray(chunk))]
    zeros = _ZEROS if chunk <= len(_ZEROS) else memoryview(bytes(chunk))
    hasher = _Hasher(names)
    turn = 0

    def read_range(start: int, end: int) -> None:
        nonlocal turn
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            buf = buffers[turn][:n]
            if n >= chunk:  # the buffer may still be hashed: alternate the two
                turn ^= 1
            else:
                hasher.wait()
            got = img.readinto_at(pos, buf)
            if got != n:  # pragma: no cover - readinto_at fills inside the disk
                raise InvalidArgumentError(f"short read at {pos:#x}: {got} of {n} bytes")
            hasher.feed(buf)
            update(n)
            pos += n

    def zero_range(start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            hasher.feed(zeros[:n])
            update(n)
            pos += n

    try:
        pos = 0
        for zs, ze in _zero_runs(img, chunk):
            read_range(pos, zs)
            zero_range(zs, ze)
            pos = ze
        read_range(pos, size)
        hasher.wait()
    finally:
        hasher.close()
    return {n: d.hexdigest() for n, d in zip(names, hasher.digests, strict=True)}


def hash_image(
    image: str | os.PathLike[str] | BinaryIO | DiskImage,
    algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
    *,
    progress: Progress = None,
    format: str | ImageFormat | None = None,
    chunk_size: int = CHUNK,
    **open_options: Any,
) -> dict[str, str]:
    """Hex digests of the whole virtual content of an image, in one pass.

    Args:
        image: an open :class:`~pyvhdx.DiskImage`, or a path or binary file
            object to open read-only (and close again).
        algorithms: hashlib names (``md5``, ``sha1``, ``sha256``, ...).
        progress: a callable given the bytes hashed in each step, True for a
            bar on stderr (:mod:`pyvhdx.progress`), None or False for none.
        format: the image format when ``image`` is not open yet (default: by
            content).
        chunk_size: bytes read and hashed at a time.
        open_options: more keyword arguments for :func:`pyvhdx.open`.

    Returns:
        ``{algorithm: hexdigest}`` in the order given.

    Raises:
        InvalidArgumentError: an unknown algorithm or a bad chunk size.
        PyvhdxError: the image cannot be opened or read.
    """
    names = normalize_algorithms(algorithms)
    if chunk_size <= 0 or chunk_size % 512:
        raise InvalidArgumentError(f"chunk size {chunk_size} is not a positive multiple of 512")
    own = not isinstance(image, DiskImage)
    img = (
        image if isinstance(image, DiskImage) else open_image(image, format=format, **open_options)
    )
    try:
        with reporting(progress, img.virtual_size, desc="hashing", leave=False) as update:
            return _hash_open(img, names, update, chunk_size)
    finally:
        if own:
            img.close()
