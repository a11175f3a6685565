"""Images in object storage: fsspec URLs (``s3://``, ``az://``, ``abfs://``,
``http(s)://``, ...) read with ranged requests (the ``remote`` extra).

:class:`RemoteFile` is the seekable binary file :func:`pyvhdx.open` reads: a read
fetches the 1 MiB blocks it needs that are not cached yet, contiguous ones in one
ranged request (a sequential read takes a growing window ahead with it, up to 64
MiB, and has the next window fetched in the background), and keeps them in a
bounded LRU cache, so metadata and BAT chunks are fetched once.
Unallocated ranges are never read by pyvhdx, so they are never fetched.
``requests`` and ``bytes_fetched`` count what went over the wire.

A differencing child's parent is looked up beside it, in the same bucket and
folder, with the confinement rules of a local chain (:func:`attach_remote_parent`,
which :func:`pyvhdx.open` calls for a remote child: the search of
:func:`pyvhdx.chain.attach_parent` over the objects beside it): a relative locator
that stays inside the child's folder, else the locator's base name there.
An error of the storage service is a :class:`RemoteError` naming the URL.
"""

from __future__ import annotations

import functools
import io
import os
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

from .errors import InvalidArgumentError, PyvhdxError

if TYPE_CHECKING:
    from .chain import ParentOpener, Place
    from .image import DiskImage

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "RemoteError",
    "RemoteFile",
    "attach_remote_parent",
    "filesystem",
    "is_url",
    "open_remote",
    "options_for",
]

BLOCK: Final = 1 << 20
#: Bytes of fetched blocks kept by default (128 blocks of 1 MiB), read-ahead included.
DEFAULT_CACHE_BYTES: Final = 128 << 20
_MAX_REQUEST: Final = 64 << 20  # one ranged request fetches at most this
# The Azure SDK fetches a range over its max_single_get_size (32 MiB) as one GET of
# 32 MiB, then 4 MiB ones: from Azurite, 260 MiB in 64 MiB requests took 1.0-1.2 s,
# in 32 MiB ones 0.55-0.7 s (and the plain cat 1.2-1.3 s).
_MAX_REQUEST_BY_PROTOCOL: Final = {"az": 32 << 20, "abfs": 32 << 20, "abfss": 32 << 20}
_FIRST_WINDOW: Final = 4  # blocks a first read fetches: header area, log, metadata, BAT
_GROWTH: Final = 4  # a sequential read's window grows so many times with each fetch


_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(file: object) -> bool:
    """A string naming a remote object (``scheme://``; ``file://`` counts too)."""
    return isinstance(file, str) and _URL.match(file) is not None


class RemoteError(PyvhdxError, OSError):
    """The storage service refused or failed a request (the message names the URL)."""


def _call(url: str, request: Callable[[], Any]) -> Any:
    """``request()``, its SDK's errors as :class:`RemoteError` naming ``url`` (a missing
    object stays FileNotFoundError, a refused one PermissionError, both naming it)."""
    try:
        return request()
    except PyvhdxError:
        raise
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: no such object") from exc
    except PermissionError as exc:
        raise PermissionError(f"{url}: access denied ({exc})") from exc
    except Exception as exc:  # botocore, azure-core, aiohttp...: whatever the backend raises
        raise RemoteError(f"{url}: {type(exc).__name__}: {exc}") from exc


class _Ahead:
    """One read-ahead request in flight: blocks ``first..last`` fetched by a thread of
    its own; :meth:`wait` joins it and returns the data or raises its error."""

    def __init__(self, owner: RemoteFile, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(owner,), name="pyvhdx-read-ahead", daemon=True
        )
        self.thread.start()

    def _run(self, owner: RemoteFile) -> None:
        try:
            self.data = owner._request(self.first, self.last)
        except BaseException as exc:  # raised again in the reader's thread by wait()
            self.error = exc

    def wait(self) -> bytes:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a remote object through fsspec.

    ``name`` is its URL (``url`` if given, else the file system's own spelling).

    A read fetches the blocks it needs that are not cached. A read that goes on
    where the last fetch ended is sequential: it fetches a window ahead of it that
    grows fourfold with each such fetch (4 blocks, then 16, 64, up to half of
    ``cache_bytes`` and at most 64 MiB, 32 MiB from Azure, whose SDK cuts larger
    ranges into 4 MiB requests), and the window after it is requested at
    once by a thread (one read-ahead request in flight), so that the store's cost
    per request and the transfer overlap with the reader's own work and with the
    next request (fewer, larger requests: against moto, which reads the whole
    object for every ranged GET, 6 instead of 11 for a 260 MiB image). A read
    elsewhere (a random read) fetches 4 blocks and nothing in the background. The
    read-ahead stops at the end of the object.

    Memory: the cached blocks and the window in flight together never exceed
    ``cache_bytes`` (default 128 MiB: a window being read and the next one in
    flight, 64 MiB each), unless a single read asks for more than that. An error
    of a read-ahead request is raised by the read that needs its blocks (the same
    :class:`RemoteError`, naming the URL); :meth:`close` waits for the request in
    flight (joins its thread).
    """

    def __init__(
        self, fs: Any, path: str, *, url: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.ahead: _Ahead | None = None  # the read-ahead request in flight
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        self.fs, self.path = fs, path
        self.name = url or str(fs.unstrip_protocol(path))
        self.size = int(_call(self.name, lambda: fs.size(path)))
        self.pos = 0
        self.max_blocks = max(1, cache_bytes // BLOCK)
        protocols = getattr(fs, "protocol", ())
        protocols = (protocols,) if isinstance(protocols, str) else protocols
        self.max_request = min(_MAX_REQUEST_BY_PROTOCOL.get(p, _MAX_REQUEST) for p in protocols)
        self.max_window = max(1, min(self.max_request // BLOCK, self.max_blocks // 2))
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
        if self.closed:
            raise ValueError(f"{self.name}: I/O operation on a closed file")
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
                mv[pos - self.pos : pos - self.pos + n] = memoryview(data)[lo : lo + n]
                pos += n
        done = end - self.pos
        self.pos = end
        return done

    def close(self) -> None:
        """Close, after the read-ahead request in flight, if any, is over."""
        with self.lock:
            self._drop_ahead()
            self.cache.clear()
        super().close()

    # -- fetching -----------------------------------------------------------------

    def _fetch(self, first: int, last: int) -> None:
        """Blocks ``first..last`` into the cache, missing runs one request each; a read
        that goes on from the last fetch takes a growing window of blocks ahead with
        it, and has the next window fetched in the background."""
        keep = range(first, last + 1)  # the read's own blocks stay cached
        while (ahead := self.ahead) is not None and ahead.first <= last and first <= ahead.last:
            self._collect(ahead, keep)  # the read-ahead is needed: wait for it
        first = next((b for b in keep if b not in self.cache), -1)
        if first < 0:
            return
        if self.ahead is not None and len(keep) + self._in_flight() > self.max_blocks:
            self._drop_ahead()  # this read's blocks beside the window in flight: over the bound
        sequential = first == self.next_block
        grown = min(self.window * _GROWTH, self.max_window)
        self.window = grown if sequential else min(_FIRST_WINDOW, self.max_blocks)
        eof = (self.size - 1) // BLOCK
        stop = min(eof, first + self.window - 1)
        if self.ahead is not None and self.ahead.first > last:
            stop = min(stop, self.ahead.first - 1)
        stop = next((b - 1 for b in range(last + 1, stop + 1) if b in self.cache), stop)
        if sequential:  # the next window is requested first: both are in flight at once
            self._read_ahead(max(last, stop) + 1, range(keep.start, max(last, stop) + 1))
        self._fetch_missing(first, max(last, stop), keep)

    def _fetch_missing(self, first: int, last: int, keep: range) -> None:
        missing = [b for b in range(first, last + 1) if b not in self.cache]
        run: list[int] = []
        for b in missing:
            if run and (b != run[-1] + 1 or (len(run) + 1) * BLOCK > self.max_request):
                self._install(run[0], run[-1], self._request(run[0], run[-1]), keep)
                run = []
            run.append(b)
        if run:
            self._install(run[0], run[-1], self._request(run[0], run[-1]), keep)

    def _read_ahead(self, first: int, keep: range) -> None:
        """Request the next window from block ``first`` in the background, once
        the cache has room for it beside the blocks of the read (``keep``)."""
        eof = (self.size - 1) // BLOCK
        count = min(self.window * _GROWTH, self.max_window, self.max_blocks - len(keep))
        if first > eof or first in self.cache or count <= 0:
            return
        if self.ahead is not None:
            if self.ahead.first == first:
                return
            self._drop_ahead()  # another stream's: one request in flight at most
        last = min(eof, first + count - 1)
        last = next((b - 1 for b in range(first, last + 1) if b in self.cache), last)
        self._evict(self.max_blocks - (last + 1 - first), keep)
        self.window = last + 1 - first
        self.ahead = _Ahead(self, first, last)

    def _collect(self, ahead: _Ahead, keep: range) -> None:
        """Wait for the read-ahead request ``ahead``, cache its blocks and request
        the window after them (the read goes on there); ``keep``: the read's blocks."""
        self.ahead = None
        both = range(min(keep.start, ahead.first), max(keep.stop, ahead.last + 1))
        self._install(ahead.first, ahead.last, ahead.wait(), both)
        self._read_ahead(ahead.last + 1, both)

    def _drop_ahead(self) -> None:
        """Wait for the read-ahead request in flight, if any, count and forget it."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.thread.join()
            if ahead.data is not None:
                self.requests += 1
                self.bytes_fetched += len(ahead.data)

    def _request(self, first: int, last: int) -> bytes:
        """Blocks ``first..last`` in one ranged request (any thread: touches no state).
        (Cut into 4 MiB requests sent at once, a 32 MiB window read 0.3x to 0.4x as
        fast from moto and Azurite as in one: benchmarks/remotebench.py.)"""
        start, stop = first * BLOCK, min(self.size, (last + 1) * BLOCK)
        data = _call(self.name, lambda: self.fs.cat_file(self.path, start=start, end=stop))
        if len(data) != stop - start and len(data) == self.size:
            raise RemoteError(
                f"{self.name}: the server sent the whole object ({self.size} bytes) for a "
                f"byte range: it ignores HTTP Range requests, which pyvhdx reads remote "
                "images with; serve it from a server that takes them, or download it"
            )
        if len(data) != stop - start:
            raise RemoteError(
                f"{self.name}: {len(data)} bytes at {start} instead of {stop - start} "
                "(the object changed?)"
            )
        return bytes(data)

    def _install(self, first: int, last: int, data: bytes, keep: range) -> None:
        """Count and cache the blocks ``first..last`` fetched as ``data``, and make
        room beside the request in flight (never dropping ``keep``)."""
        self.next_block = last + 1
        self.requests += 1
        self.bytes_fetched += len(data)
        for b in range(first, last + 1):
            k = b - first
            self.cache[b] = data[k * BLOCK : (k + 1) * BLOCK]
            self.cache.move_to_end(b)
        self._evict(self.max_blocks - self._in_flight(), keep)

    def _in_flight(self) -> int:
        return 0 if self.ahead is None else self.ahead.last + 1 - self.ahead.first

    def _evict(self, room: int, keep: range) -> None:
        """Drop least recently used blocks, not those in ``keep``, down to ``room``."""
        for b in list(self.cache):
            if len(self.cache) <= room:
                break
            if b not in keep:
                del self.cache[b]

    def sibling(self, parts: tuple[str, ...]) -> RemoteFile:
        """The object ``parts`` below this one's folder, in the same store, with its
        URL spelled as this one's (FileNotFoundError if there is none)."""
        path = posixpath.join(posixpath.dirname(self.path), *parts)
        head = self.name[: len(self.name) - len(self.path)] if self.name.endswith(self.path) else ""
        return RemoteFile(self.fs, path, url=head + path if head else None)


def attach_remote_parent(
    img: DiskImage,
    child: RemoteFile,
    explicit: str | os.PathLike[str] | DiskImage | None,
    *,
    opener: ParentOpener,
    allow_missing: bool,
    verify: bool,
    seen: frozenset[Path],
) -> None:
    """Find, open and attach the parent of ``img``, a differencing disk read from
    ``child``: :func:`pyvhdx.chain.attach_parent`, with remote candidates.

    The candidates are the objects beside the child that its locators name
    (:func:`pyvhdx.chain.locator_parts`: nothing outside the child's folder), or
    ``explicit``: an open image, a URL in the child's store, or a local path. A
    merge journal is a local file, so none is looked for.
    """
    from .chain import attach_parent, local_place, locator_parts

    def beside(parts: tuple[str, ...]) -> BinaryIO:
        return cast(BinaryIO, child.sibling(parts))

    def given(url: str) -> BinaryIO:
        return cast(BinaryIO, RemoteFile(child.fs, child.fs._strip_protocol(url), url=url))

    places: list[Place] = []
    if isinstance(explicit, (str, os.PathLike)):
        name = os.fspath(explicit)
        places.append(
            (name, functools.partial(given, name)) if is_url(name) else local_place(Path(name))
        )
    elif explicit is None:
        folder = posixpath.dirname(child.name)
        found = {
            posixpath.join(folder, *p): p for p in locator_parts(img.handler.parent_locations())
        }
        places = [(name, functools.partial(beside, parts)) for name, parts in found.items()]
    attach_parent(
        img,
        cast(BinaryIO, child),
        explicit,
        opener=opener,
        allow_missing=allow_missing,
        verify=verify,
        seen=seen,
        places=places,
    )


def options_for(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """fsspec's options for ``url`` out of ``storage_options``.

    As fsspec reads the options of a chained URL, a key that names a protocol
    fsspec knows (``"s3"``, ``"az"``, ``"abfs"``, ``"gcs"``, ``"http"``...) and
    holds a mapping gives options for URLs of that protocol only, over the
    others; the other keys go to every store. So one ``storage_options`` serves a
    copy between two stores: ``{"s3": {"endpoint_url": ...}, "az":
    {"connection_string": ...}}``.

    Raises:
        InvalidArgumentError: a key that names a protocol holds no mapping.
    """
    from fsspec.registry import known_implementations

    scheme = url.split("://", 1)[0].lower() if is_url(url) else "file"
    shared: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in (storage_options or {}).items():
        if key not in known_implementations:
            shared[key] = value
        elif not isinstance(value, Mapping):
            raise InvalidArgumentError(
                f"the storage option {key!r} names a protocol: give it that store's "
                f"options as a mapping (a JSON object on the command line), not {value!r}"
            )
        elif key == scheme:
            own.update(value)
    return {**shared, **own}


def filesystem(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """fsspec's file system and path of ``url`` (:func:`options_for` the URL).

    Raises:
        InvalidArgumentError: fsspec is not installed (the ``remote`` extra), it knows
            no file system for the URL's scheme (or lacks that file system's package),
            or the options do not suit it.
    """
    try:
        import fsspec
    except ImportError as exc:
        raise InvalidArgumentError(
            f"{url}: remote images need the 'remote' extra (pip install 'pyvhdx[remote]')"
        ) from exc
    try:
        fs, path = fsspec.core.url_to_fs(url, **options_for(url, storage_options))
    except (ImportError, ValueError, TypeError) as exc:
        # ValueError: adlfs given no account or credentials; TypeError: an option it lacks
        raise InvalidArgumentError(f"{url}: {exc}") from exc
    return fs, path


def open_remote(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> RemoteFile:
    """The object ``url`` as a :class:`RemoteFile` (``storage_options`` go to fsspec,
    :func:`options_for` the URL).

    Raises:
        InvalidArgumentError: fsspec is not installed (the ``remote`` extra), or it
            knows no file system for the URL's scheme.
        FileNotFoundError: no such object.
    """
    fs, path = filesystem(url, storage_options)
    split = getattr(fs, "split_path", None)  # object stores: (bucket, key, version)
    if url.endswith("/") or not path.strip("/") or (split is not None and not split(path)[1]):
        raise InvalidArgumentError(f"{url}: names a folder or bucket, not an object")
    return RemoteFile(fs, path, url=url, cache_bytes=cache_bytes)
