"""Images in object storage: fsspec URLs (``s3://``, ``az://``, ``abfs://``,
``http(s)://``, ...) read with ranged requests (the ``remote`` extra).

:class:`RemoteFile` is the seekable binary file :func:`pyvhdx.open` reads: a read
fetches the 1 MiB blocks it needs that are not cached yet, contiguous ones in one
ranged request (so a large sequential read is one request per run), and keeps
them in a bounded LRU cache, so metadata and BAT chunks are fetched once.
Unallocated ranges are never read by pyvhdx, so they are never fetched.
``requests`` and ``bytes_fetched`` count what went over the wire.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

from .errors import InvalidArgumentError

__all__ = ["DEFAULT_CACHE_BYTES", "RemoteFile", "is_url", "open_remote"]

BLOCK: Final = 1 << 20
#: Bytes of fetched blocks kept by default (64 blocks of 1 MiB).
DEFAULT_CACHE_BYTES: Final = 64 << 20
_MAX_REQUEST: Final = 16 << 20  # one ranged request fetches at most this
_FIRST_WINDOW: Final = 4  # blocks a first read fetches: header area, log, metadata, BAT


_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(file: object) -> bool:
    """A string naming a remote object (``scheme://``; ``file://`` counts too)."""
    return isinstance(file, str) and _URL.match(file) is not None


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a remote object through fsspec."""

    def __init__(self, fs: Any, path: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__()
        self.fs, self.path = fs, path
        self.size = int(fs.size(path))
        self.name = path
        self.pos = 0
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        self.max_blocks = max(1, cache_bytes // BLOCK)
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes_fetched = 0
        self.next_block = -1  # the block after the last fetch (sequential reads)
        self.window = _FIRST_WINDOW  # blocks fetched ahead of a sequential read

    # -- io.RawIOBase -------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        mv = memoryview(buffer).cast("B")
        end = min(self.size, self.pos + len(mv))
        if end <= self.pos:
            return 0
        with self.lock:
            self._fetch(self.pos // BLOCK, (end - 1) // BLOCK)
            pos = self.pos
            while pos < end:
                block = pos // BLOCK
                data = self.cache[block]
                self.cache.move_to_end(block)
                lo = pos - block * BLOCK
                n = min(end - pos, len(data) - lo)
                mv[pos - self.pos : pos - self.pos + n] = data[lo : lo + n]
                pos += n
        done = end - self.pos
        self.pos = end
        return done

    # -- fetching -----------------------------------------------------------------

    def _fetch(self, first: int, last: int) -> None:
        """Blocks ``first..last`` into the cache, missing runs one request each; a read
        that goes on from the last fetch takes a doubling window of blocks ahead with
        it (a BAT read chunk by chunk, a sequential read), up to 16 MiB a request."""
        first = next((b for b in range(first, last + 1) if b not in self.cache), -1)
        if first < 0:
            return
        if first == self.next_block:
            self.window = min(self.window * 2, _MAX_REQUEST // BLOCK)
        else:
            self.window = _FIRST_WINDOW
        eof = (self.size - 1) // BLOCK
        ahead = min(eof, first + self.window - 1)
        while ahead > last and any(b in self.cache for b in range(last + 1, ahead + 1)):
            ahead -= 1
        self._fetch_missing(first, max(last, ahead))

    def _fetch_missing(self, first: int, last: int) -> None:
        missing = [b for b in range(first, last + 1) if b not in self.cache]
        run: list[int] = []
        for b in missing:
            if run and (b != run[-1] + 1 or (len(run) + 1) * BLOCK > _MAX_REQUEST):
                self._get(run)
                run = []
            run.append(b)
        if run:
            self._get(run)

    def _get(self, blocks: list[int]) -> None:
        start = blocks[0] * BLOCK
        stop = min(self.size, (blocks[-1] + 1) * BLOCK)
        data = self.fs.cat_file(self.path, start=start, end=stop)
        self.next_block = blocks[-1] + 1
        self.requests += 1
        self.bytes_fetched += len(data)
        for k, b in enumerate(blocks):
            self.cache[b] = data[k * BLOCK : (k + 1) * BLOCK]
            self.cache.move_to_end(b)
        while len(self.cache) > max(self.max_blocks, len(blocks)):
            self.cache.popitem(last=False)


def open_remote(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> RemoteFile:
    """The object ``url`` as a :class:`RemoteFile` (``storage_options`` go to fsspec).

    Raises:
        InvalidArgumentError: fsspec is not installed (the ``remote`` extra), or it
            knows no file system for the URL's scheme.
        FileNotFoundError: no such object.
    """
    try:
        import fsspec
    except ImportError as exc:
        raise InvalidArgumentError(
            f"{url}: remote images need the 'remote' extra (pip install 'pyvhdx[remote]')"
        ) from exc
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise InvalidArgumentError(f"{url}: {exc}") from exc
    return RemoteFile(fs, path, cache_bytes=cache_bytes)
