"""Images over plain HTTP (issue 18: ``http(s)://`` URLs through fsspec), from HTTP
servers started here on 127.0.0.1: one that answers byte ranges (``Range:
bytes=a-b``, status 206) as web servers and object stores do, and Python's own
``http.server``, which ignores them and sends the whole file.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import os
import random
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.hashing import hash_image
from pyvhdx.remote import RemoteError
from tests.conftest import require


@pytest.fixture(autouse=True)
def _aiohttp() -> None:
    if importlib.util.find_spec("aiohttp") is None:
        require("aiohttp", "fsspec reads http(s) URLs with it (the remote extra)")


MiB = 1 << 20
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """GET with ``Range: bytes=a-b``: 206 and those bytes (RFC 9110 14.2)."""

    def do_GET(self) -> None:
        match = _RANGE.match(self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            super().do_GET()
            return
        size = path.stat().st_size
        start = int(match.group(1))
        end = min(size - 1, int(match.group(2))) if match.group(2) else size - 1
        if start >= size:
            self.send_error(416)
            return
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(end + 1 - start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _serve(folder: Path, handler: type[http.server.SimpleHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=os.fspath(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dynamic VHDX, a child of it beside it, and a dynamic VHD, with data: the
    sha256 of each read locally."""
    here = tmp_path_factory.mktemp("http")
    rng = random.Random(9)
    pyvhdx.create(here / "base.vhdx", 12 * MiB, block_size=MiB)
    with pyvhdx.open(here / "base.vhdx", "r+") as img:
        for off in (0, 3 * MiB + 512, 11 * MiB):
            img.write_at(off, rng.randbytes(MiB - 512))
    pyvhdx.create(here / "child.vhdx", parent=here / "base.vhdx")
    with pyvhdx.open(here / "child.vhdx", "r+") as img:
        img.write_at(5 * MiB, rng.randbytes(2 * MiB))
    pyvhdx.convert(here / "child.vhdx", here / "flat.vhd", progress=False)
    digests = {}
    for name in ("base.vhdx", "child.vhdx", "flat.vhd"):
        with pyvhdx.open(here / name) as img:
            digests[name] = hashlib.sha256(img.read_at(0, img.virtual_size)).hexdigest()
    return {"path": here, "digests": digests}


def test_images_read_over_http_with_ranges(folder: dict[str, Any]) -> None:
    """The hash over HTTP equals the local one, for a chain whose parent is found
    beside the child on the server too."""
    with _serve(folder["path"], _RangeHandler) as base:
        for name, digest in folder["digests"].items():
            got = hash_image(f"{base}/{name}", ("sha256",))
            assert got["sha256"] == digest, name
        with pyvhdx.open(f"{base}/child.vhdx") as img:
            assert img.parent is not None and img.parent.name == f"{base}/base.vhdx"


def test_a_server_that_ignores_ranges_is_named(folder: dict[str, Any], tmp_path: Path) -> None:
    """Python's http.server sends the whole file for a byte range: a read would get
    the wrong bytes, so the open fails, saying so and naming the URL."""
    shutil.copy(folder["path"] / "flat.vhd", tmp_path / "flat.vhd")
    with _serve(tmp_path, _QuietHandler) as base:
        url = f"{base}/flat.vhd"
        with pytest.raises(RemoteError, match=rf"^{re.escape(url)}: .*ignores HTTP Range"):
            hash_image(url, ("sha256",))
