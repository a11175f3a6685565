"""Images in object storage (issue 18, first part): ``pyvhdx.open(url,
storage_options=...)`` over S3, against moto's S3 server started here on
127.0.0.1. The remote hash equals the local one; what went over the wire is
counted by :class:`pyvhdx.remote.RemoteFile`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.hashing import hash_image
from pyvhdx.inspect import inspect_image
from pyvhdx.remote import RemoteError, RemoteFile, open_remote
from tests.conftest import free_port, moto_server, require

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1, a bucket, and the fsspec options to reach it."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        require("moto[server] and s3fs", "the remote tests run against moto's S3 server")
    with moto_server() as options:
        yield {"fs": s3fs.S3FileSystem(**options), "options": options}


def _digest(img: pyvhdx.DiskImage) -> str:
    h = hashlib.sha256()
    size = img.get_size()
    for off in range(0, size, 4 * MiB):
        h.update(img.read_at(off, min(4 * MiB, size - off)))
    return h.hexdigest()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Fixed, dynamic and differencing VHDX and VHD images with data, and the sha256
    of each read locally: ``{name: (path, digest)}``, all in one folder."""
    folder = tmp_path_factory.mktemp("set")
    rng = random.Random(18)
    made: dict[str, tuple[Path, str]] = {}

    def make(name: str, parent: str | None = None, **options: Any) -> None:
        path = folder / name
        if parent is None:
            pyvhdx.create(path, 8 * MiB, **options)
        else:
            pyvhdx.create(path, parent=folder / parent)
        with pyvhdx.open(path, "r+") as img:
            for off in (rng.randrange(0, 7 * MiB) // 512 * 512 for _ in range(3)):
                img.write_at(off, rng.randbytes(300 * 1024))
        made[name] = (path, "")

    make("f.vhdx", disk_type="fixed")
    make("d.vhdx", block_size=MiB)
    make("base.vhdx", block_size=MiB)
    make("mid.avhdx", "base.vhdx")
    make("top.avhdx", "mid.avhdx")
    make("f.vhd", disk_type="fixed")
    make("d.vhd")
    make("base.vhd", block_size=512 * 1024)
    make("child.vhd", "base.vhd")
    return {name: (path, hash_image(path)["sha256"]) for name, (path, _) in made.items()}


@pytest.fixture(params=["s3", "az"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Moto's S3 or Azurite's blob service: the URL of the bucket or container
    ``images``, the storage options, and ``put(local path, key)``."""
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        return {"url": "s3://images", "options": server["options"], "put": server["fs"].put_file}
    azurite = request.getfixturevalue("azurite")
    container = azurite["service"].get_container_client("images")

    def put(local: str, key: str) -> None:
        with open(local, "rb") as f:
            container.upload_blob(key.removeprefix("images/"), f, overwrite=True)

    return {"url": "az://images", "options": azurite["options"], "put": put}


def test_remote_hashes_equal_local(
    images: dict[str, tuple[Path, str]], store: dict[str, Any], tmp_path: Path
) -> None:
    """Every image, read where it lies in the store (a child's parents beside it,
    found through its locators), hashes as it does on disk; check, inspect, map and
    convert take the URL too."""
    options = store["options"]
    for name, (path, _) in images.items():
        store["put"](str(path), f"images/set/{name}")
    for name, (_, digest) in images.items():
        url = f"{store['url']}/set/{name}"
        assert hash_image(url, storage_options=options)["sha256"] == digest, name
    top = f"{store['url']}/set/top.avhdx"
    with pyvhdx.open(top, storage_options=options) as img:
        assert img.name == top and img.parent is not None and img.parent.parent is not None
        assert img.parent.parent.name == f"{store['url']}/set/base.vhdx"
        with pyvhdx.open(images["top.avhdx"][0]) as local:
            assert list(img.extents()) == list(local.extents())
    report = check_image(top, storage_options=options)
    assert report.opened and not report.errors, report.findings
    seen = inspect_image(f"{store['url']}/set/child.vhd", storage_options=options)
    assert seen["format"] == "vhd" and seen["open"]["opens"], seen["open"]
    out = pyvhdx.convert(top, tmp_path / "flat.vhdx", storage_options=options).destination
    assert hash_image(out)["sha256"] == images["top.avhdx"][1]
    if importlib.util.find_spec("dask") is not None:  # fleets of URLs (the fleet extra)
        from pyvhdx.dask import scan

        urls = [top, f"{store['url']}/set/child.vhd", f"{store['url']}/set/none.vhd"]
        rows = scan(urls, storage_options=options).compute(scheduler="sync")
        assert [r["sha256"] for r in rows[:2]] == [images["top.avhdx"][1], images["child.vhd"][1]]
        assert "FileNotFoundError" in rows[2]["error"] and "set/none.vhd" in rows[2]["error"]


def test_remote_parents_stay_in_the_childs_folder(tmp_path: Path, s3: dict[str, Any]) -> None:
    """A child whose locator leads out of its folder (``../b/base.vhdx``) finds its
    parent only beside it, as on disk: never in the folder the locator names."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base, child = tmp_path / "b" / "base.vhdx", tmp_path / "a" / "child.avhdx"
    pyvhdx.create(base, 4 * MiB)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(0, b"base" * 1024)
    pyvhdx.create(child, parent=base)
    put = s3["fs"].put_file
    put(str(child), "images/conf/a/child.avhdx")
    put(str(base), "images/conf/b/base.vhdx")
    url = "s3://images/conf/a/child.avhdx"
    with pytest.raises(pyvhdx.ParentError) as caught:
        pyvhdx.open(url, storage_options=s3["options"])
    assert caught.value.tried == ["s3://images/conf/a/base.vhdx"], caught.value.tried
    put(str(base), "images/conf/a/base.vhdx")
    with pyvhdx.open(url, storage_options=s3["options"]) as img:
        assert img.read_at(0, 8) == b"basebase"


def test_bytes_fetched_follow_the_allocation(tmp_path: Path, s3: dict[str, Any]) -> None:
    """Hashing a half-allocated dynamic VHDX fetches its allocated blocks and metadata
    once (<= 1.05x), and a cold open of a 64 TiB image takes a handful of requests."""
    path = tmp_path / "half.vhdx"
    pyvhdx.create(path, 128 * MiB, block_size=MiB)
    data = random.Random(1).randbytes(MiB)
    with pyvhdx.open(path, "r+") as img:
        for block in range(0, 128, 2):
            img.write_at(block * MiB, data)
        allocated = sum(e.length for e in img.extents() if e.data)
        local = _digest(img)
    s3["fs"].put_file(str(path), "images/half.vhdx")
    remote = open_remote("s3://images/half.vhdx", s3["options"])
    with pyvhdx.open(remote) as img:  # type: ignore[arg-type]
        assert _digest(img) == local
    metadata = 4 * MiB  # header area, log, metadata region, BAT region
    assert remote.bytes_fetched <= 1.05 * allocated + metadata, (remote.bytes_fetched, allocated)
    assert remote.requests <= 16, remote.requests  # the file's data is one run: read ahead

    big = tmp_path / "big.vhdx"
    pyvhdx.create(big, 64 << 40)
    s3["fs"].put_file(str(big), "images/big.vhdx")
    cold = open_remote("s3://images/big.vhdx", s3["options"])
    with pyvhdx.open(cold) as img:  # type: ignore[arg-type]
        info = img.info()
    assert info.virtual_size == 64 << 40
    assert cold.requests <= 5, cold.requests


def test_remote_opens_read_only(s3: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "r.vhdx"
    pyvhdx.create(path, 8 * MiB)
    s3["fs"].put_file(str(path), "images/r.vhdx")
    with pytest.raises(pyvhdx.InvalidArgumentError, match="read-only"):
        pyvhdx.open("s3://images/r.vhdx", "r+", storage_options=s3["options"])
    assert isinstance(open_remote("s3://images/r.vhdx", s3["options"]), RemoteFile)


def _cli_options(options: dict[str, Any]) -> list[str]:
    """fsspec's ``options`` as the CLI takes them (``--storage-option KEY=VALUE``)."""
    return [
        f"--storage-option={k}={json.dumps(v) if isinstance(v, dict) else v}"
        for k, v in options.items()
    ]


def test_cli_reads_and_writes_urls(
    images: dict[str, tuple[Path, str]], s3: dict[str, Any], azurite: dict[str, Any], tmp_path: Path
) -> None:
    """``--storage-option KEY=VALUE`` (VALUE as JSON when it parses) reaches fsspec:
    ``pyvhdx hash`` of a chain in S3, ``pyvhdx convert`` into an Azure page blob."""
    digest = images["child.vhd"][1]
    for name in ("base.vhd", "child.vhd"):
        s3["fs"].put_file(str(images[name][0]), f"images/cli/{name}")
    url = "s3://images/cli/child.vhd"
    out = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "hash", url, "--json", *_cli_options(s3["options"])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["digests"]["sha256"] == digest
    connection = azurite["options"]["connection_string"]
    disk = tmp_path / "disk.vhdx"  # Azure takes 20 MiB at least
    pyvhdx.create(disk, 20 * MiB)
    command = [sys.executable, "-m", "pyvhdx", "convert", str(disk), "az://images/cli/disk.vhd"]
    done = subprocess.run(
        [*command, f"--storage-option=connection_string={connection}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    blob = azurite["service"].get_blob_client("images", "cli/disk.vhd")
    assert blob.get_blob_properties().size == 20 * MiB + 512


def test_cli_serves_a_url(images: dict[str, tuple[Path, str]], s3: dict[str, Any]) -> None:
    """``pyvhdx serve`` exports an image given as a URL (as a path, ``s3://`` had
    become ``s3:/``): qemu-img reads over NBD what the image holds."""
    if shutil.which("qemu-img") is None:
        require("qemu-img", "the served disk is read over NBD with qemu-img")
    local = images["d.vhdx"][0]
    s3["fs"].put_file(str(local), "images/serve/d.vhdx")
    url, port = "s3://images/serve/d.vhdx", free_port()
    command = [sys.executable, "-m", "pyvhdx", "serve", url, "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *_cli_options(s3["options"])],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith(f"serving {url} on "), line + proc.stderr.read()
        nbd = f"nbd://127.0.0.1:{port}"
        compare = subprocess.run(
            ["qemu-img", "compare", "-F", "vhdx", nbd, str(local)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert compare.returncode == 0, compare.stdout + compare.stderr
    finally:
        proc.terminate()
        proc.wait(30)


def _put_bytes(s3: dict[str, Any], key: str, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    s3["fs"].pipe_file(f"images/{key}", data)
    return data


def test_sequential_reads_read_ahead(s3: dict[str, Any]) -> None:
    """A sequential read has the next window fetched in the background: it returns
    the object's bytes, fetches each byte once and none past the end, in fewer
    requests than windows of 4 blocks would take, and the cached blocks with the
    window in flight stay within the cache."""
    data = _put_bytes(s3, "ra/seq", 40 * MiB + 12345)
    f = open_remote("s3://images/ra/seq", s3["options"], cache_bytes=16 * MiB)
    got, seen_ahead = bytearray(), 0
    try:
        while chunk := f.read(3 * MiB - 512):
            got += chunk
            ahead = f.ahead
            if ahead is not None:
                seen_ahead += 1
                assert ahead.last < (len(data) + MiB - 1) // MiB, (ahead.first, ahead.last)
                assert len(f.cache) + ahead.last + 1 - ahead.first <= f.max_blocks
            else:
                assert len(f.cache) <= f.max_blocks
    finally:
        f.close()
    assert bytes(got) == data
    assert seen_ahead > 0
    assert f.bytes_fetched == len(data), f.bytes_fetched
    assert f.requests <= 8, f.requests  # 4, 8, then windows of 8 blocks (half the cache)


def test_random_reads_do_not_read_ahead(s3: dict[str, Any]) -> None:
    """Reads here and there fetch one window each, and nothing in the background."""
    data = _put_bytes(s3, "ra/random", 40 * MiB)
    f = open_remote("s3://images/ra/random", s3["options"])
    try:
        for n, block in enumerate((30, 2, 17, 9, 25, 36), 1):
            f.seek(block * MiB + 1000)
            assert f.read(64 * 1024) == data[block * MiB + 1000 : block * MiB + 1000 + 64 * 1024]
            assert f.ahead is None and f.requests == n, (block, f.requests)
    finally:
        f.close()


def test_close_joins_the_read_ahead(s3: dict[str, Any]) -> None:
    """close() waits for the request in flight: no thread is left running, and the
    file reads no more."""
    _put_bytes(s3, "ra/close", 40 * MiB)
    f = open_remote("s3://images/ra/close", s3["options"])
    request = f._request

    def slow(first: int, last: int) -> bytes:
        if threading.current_thread().name == "pyvhdx-read-ahead":
            time.sleep(1)  # still in flight when close() is called
        return request(first, last)

    f._request = slow  # type: ignore[method-assign]
    f.read(4 * MiB)  # blocks 0-3
    f.read(MiB)  # goes on from there: sequential, the next window in flight
    ahead = f.ahead
    assert ahead is not None and ahead.thread.is_alive()
    f.close()
    assert f.ahead is None and not ahead.thread.is_alive() and not f.cache
    assert ahead.data is not None  # the request ended before close() returned
    with pytest.raises(ValueError, match="closed"):
        f.read(1)


def test_read_ahead_errors_reach_the_reader(s3: dict[str, Any]) -> None:
    """A background request that fails (here: the object shrank to 8 MiB after it
    was opened) raises its RemoteError, naming the URL, in the read that needs it."""
    data = _put_bytes(s3, "ra/shrinks", 32 * MiB)
    url = "s3://images/ra/shrinks"
    f = open_remote(url, s3["options"], cache_bytes=8 * MiB)  # windows of 4 blocks
    try:
        s3["fs"].pipe_file("images/ra/shrinks", data[: 8 * MiB])
        assert f.read(MiB) == data[:MiB]  # blocks 0-3
        f.seek(4 * MiB)
        assert f.read(MiB) == data[4 * MiB : 5 * MiB]  # blocks 4-7, 8-11 ahead
        ahead = f.ahead
        assert ahead is not None and (ahead.first, ahead.last) == (8, 11)
        f.seek(8 * MiB)
        with pytest.raises(RemoteError, match=url):
            f.read(MiB)
        assert f.ahead is None and not ahead.thread.is_alive()
    finally:
        f.close()


def test_read_ahead_windows_per_store(store: dict[str, Any], tmp_path: Path) -> None:
    """A sequential read grows its window 4 -> 16 -> 64 blocks, 32 from Azure (whose
    SDK cuts a larger range into 4 MiB requests): 80 MiB in 3 requests from S3, 4
    from Azure."""
    size = 80 * MiB
    local = tmp_path / "long"
    local.write_bytes(random.Random(80).randbytes(size))
    store["put"](str(local), "images/ra/long")
    f = open_remote(f"{store['url']}/ra/long", store["options"])
    try:
        assert f.read() == local.read_bytes()
    finally:
        f.close()
    assert f.bytes_fetched == size
    expected = {"s3://images": 3, "az://images": 4}[store["url"]]
    assert f.requests == expected, (f.requests, f.max_request)
