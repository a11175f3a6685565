"""Fixed VHDs into Azure page blobs: :func:`pyvhdx.convert` to an ``az://`` (or
``abfs://``) URL, through adlfs and azure-storage-blob (the ``remote`` extra).

The blob is what Azure takes for a managed disk or an image: a fixed VHD whose
virtual size is the source's rounded up to a whole MiB (20 MiB to 32 TiB), the
data then the 512-byte footer (``azure_vhd_size`` of the create module, SPEC-NOTES
pitfall 19), as a page blob. Only the non-zero 512-byte sectors are uploaded (Put
Page, at most 4 MiB a request, several in flight; zero gaps under 64 KiB inside a
run go with it): a page blob reads as zeros where nothing was written, and Azure
stores and bills only the pages written.

No blob that looks complete is left by a failed or killed upload: the pages, then
the footer, go to a temporary blob beside the destination
(``NAME.pyvhdx-partial-XXXXXXXX``), which is copied onto the destination name by
the service (Copy Blob keeps a page blob's ranges) only once complete, then
deleted. An error deletes the temporary blob; a kill leaves it under its partial
name, and the destination as it was.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from .constants import DiskType, ImageFormat
from .errors import InvalidArgumentError
from .image import DiskImage, open_image
from .progress import Progress, reporting
from .remote import RemoteError, _call, filesystem
from .transfer import CHUNK, ConvertResult, destination_sector_sizes, read_ahead

__all__ = ["MAX_PAGE_WRITE", "AzureResult", "convert_to_azure", "sector_runs"]

PAGE: Final = 512
#: The most one Put Page request writes (the service's limit).
MAX_PAGE_WRITE: Final = 4 << 20
_GAP: Final = 64 << 10  # zero gaps at least this long split a run into two requests
_IN_FLIGHT: Final = 8  # Put Page requests under way at once


@dataclass(frozen=True)
class AzureResult(ConvertResult):
    """What :func:`convert_to_azure` did: ``destination`` is the blob's path in the
    account (``container/name``), ``url`` the URL given, ``requests`` the Put Page
    requests sent."""

    url: str
    requests: int


def sector_runs(data: memoryview, min_gap: int = _GAP) -> Iterator[tuple[int, int]]:
    """``(begin, end)`` in ``data`` of the runs of non-zero 512-byte sectors (the last
    one may be partial); runs closer than ``min_gap`` bytes are one run."""
    n = len(data)
    whole = n - n % PAGE
    nonzero = np.frombuffer(data[:whole], np.uint8).reshape(-1, PAGE).any(axis=1)
    if whole < n:
        nonzero = np.append(nonzero, any(data[whole:]))
    idx = np.flatnonzero(nonzero)
    if not idx.size:
        return
    cut = np.flatnonzero(np.diff(idx) > min_gap // PAGE)
    for a, b in zip(np.r_[idx[0], idx[cut + 1]], np.r_[idx[cut], idx[-1]] + 1, strict=True):
        yield int(a) * PAGE, min(n, int(b) * PAGE)


def _blob_clients(url: str, options: Mapping[str, Any]) -> tuple[Any, Any, str, str]:
    """(file system, its container client, container, blob name) of an Azure URL."""
    fs, path = filesystem(url, options)
    if not hasattr(fs, "service_client"):
        raise InvalidArgumentError(
            f"{url}: convert writes to Azure Blob Storage only (az:// or abfs:// URLs)"
        )
    container, blob, _version = fs.split_path(path)
    if not container or not blob:
        raise InvalidArgumentError(f"{url}: give a container and a blob name")
    return fs, fs.service_client.get_container_client(container), container, blob


def convert_to_azure(
    src: str | os.PathLike[str],
    url: str,
    format: ImageFormat | str | None = None,
    src_format: ImageFormat | str | None = None,
    logical_sector_size: int | None = None,
    force: bool = False,
    progress: Progress = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    source_options: Mapping[str, Any] | None = None,
) -> AzureResult:
    """Upload ``src`` as an Azure-ready fixed VHD page blob at ``url`` (see the module doc).

    ``storage_options`` go to adlfs (``connection_string``, ``account_name`` and
    ``account_key``, ``sas_token``, ``credential``...; else its environment
    variables) and, for a URL source, to fsspec. ``source_options`` are more
    keyword arguments of :func:`pyvhdx.open` for the source (``parent``,
    ``salvage``, ``allow_missing_parent``, ``strict``), as for a file destination.

    Raises:
        InvalidArgumentError: not an Azure URL, a format other than VHD, or a size
            Azure does not take.
        FileExistsError: the blob exists and ``force`` is false.
        RemoteError: the service failed a request (the message names the URL).
    """
    from .create import azure_vhd_size
    from .vhd.layout import vhd_footer

    if format is not None and ImageFormat(format) is not ImageFormat.VHD:
        raise InvalidArgumentError(
            f"{url}: Azure takes fixed VHDs, not {ImageFormat(format).value}"
        )
    options = dict(storage_options or {})
    fs, container, _name, blob = _blob_clients(url, options)

    def run(coro: Any) -> Any:
        return _call(url, lambda: asyncio.run_coroutine_threadsafe(coro, fs.loop).result())

    final = container.get_blob_client(blob)
    if not force and run(final.exists()):
        raise FileExistsError(f"{url}: exists (force replaces it)")

    def opener() -> DiskImage:
        return open_image(src, format=src_format, storage_options=options, **(source_options or {}))

    with opener() as img:
        destination_sector_sizes(img, ImageFormat.VHD, logical_sector_size, None)
        try:
            size = azure_vhd_size(img.virtual_size)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{url}: {exc}") from exc
        temp = container.get_blob_client(f"{blob}.pyvhdx-partial-{uuid.uuid4().hex[:8]}")
        run(temp.create_page_blob(size + PAGE))
        try:
            with reporting(progress, img.virtual_size, desc="uploading") as update:
                read, written, requests = _upload(img, temp, fs.loop, url, update, opener)
            run(temp.upload_page(vhd_footer(size, DiskType.FIXED), offset=size, length=PAGE))
            run(final.start_copy_from_url(temp.url))
            while (status := run(final.get_blob_properties()).copy.status) == "pending":
                time.sleep(0.5)
            if status != "success":
                raise RemoteError(f"{url}: the service's copy of the upload ended {status}")
        finally:  # the upload is copied or failed: its temporary blob goes
            with contextlib.suppress(Exception):
                run(temp.delete_blob())
    path = Path(f"{container.container_name}/{blob}")
    return AzureResult(path, ImageFormat.VHD, DiskType.FIXED, size, read, written, url, requests)


def _upload(
    img: DiskImage, blob: Any, loop: Any, url: str, update: Any, opener: Any
) -> tuple[int, int, int]:
    """Put the non-zero sectors of ``img`` into the page blob; (read, written, requests)."""
    stats = {"read": 0}
    pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
    written = requests = done = 0
    try:
        for start, chunk, _ in read_ahead(img, CHUNK, stats, opener):
            for a, b in sector_runs(chunk):
                for off in range(start + a, start + b, MAX_PAGE_WRITE):
                    data = _pages(img, chunk, start, off, min(start + b, off + MAX_PAGE_WRITE))
                    coro = blob.upload_page(data, offset=off - off % PAGE, length=len(data))
                    pending.append(asyncio.run_coroutine_threadsafe(coro, loop))
                    written += len(data)
                    requests += 1
                    while len(pending) >= _IN_FLIGHT:
                        _call(url, pending.popleft().result)
            update(start + len(chunk) - done)
            done = start + len(chunk)
        while pending:
            _call(url, pending.popleft().result)
    finally:
        for future in pending:
            future.cancel()
    if img.virtual_size > done:
        update(img.virtual_size - done)
    return stats["read"], written, requests


def _pages(img: DiskImage, chunk: memoryview, start: int, begin: int, end: int) -> bytes:
    """The bytes of ``[begin, end)`` widened to whole 512-byte pages (zeros past the disk)."""
    lo, hi = begin - begin % PAGE, -(-end // PAGE) * PAGE
    if lo >= start and hi <= start + len(chunk):
        return bytes(chunk[lo - start : hi - start])
    data = img.read_at(lo, hi - lo)  # a source not cut at sectors (a raw file's odd tail)
    return data + bytes(hi - lo - len(data))
