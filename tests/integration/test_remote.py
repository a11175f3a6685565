"""Images in object storage (issue 18, first part): ``pyvhdx.open(url,
storage_options=...)`` over S3, against moto's S3 server started here on
127.0.0.1. The remote hash equals the local one; what went over the wire is
counted by :class:`pyvhdx.remote.RemoteFile`.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.remote import RemoteFile, open_remote
from tests.conftest import require

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1, a bucket, and the fsspec options to reach it."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError:
        require("moto[server] and s3fs", "the remote tests run against moto's S3 server")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "skip_instance_cache": True,
    }
    import boto3
    import s3fs as s3fs_mod

    boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="images")
    fs = s3fs_mod.S3FileSystem(**options)
    try:
        yield {"fs": fs, "options": options}
    finally:
        server.stop()


def _digest(img: pyvhdx.DiskImage) -> str:
    h = hashlib.sha256()
    size = img.get_size()
    for off in range(0, size, 4 * MiB):
        h.update(img.read_at(off, min(4 * MiB, size - off)))
    return h.hexdigest()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("d.vhdx", "dynamic"), ("f.vhdx", "fixed"), ("d.vhd", "dynamic"), ("f.vhd", "fixed")],
)
def test_remote_hash_equals_local(tmp_path: Path, s3: dict[str, Any], name: str, kind: str) -> None:
    path = tmp_path / name
    pyvhdx.create(path, 48 * MiB, disk_type=kind)
    rng = random.Random(len(name))
    with pyvhdx.open(path, "r+") as img:
        for off in (0, 9 * MiB + 512, 40 * MiB):
            img.write_at(off, rng.randbytes(3 * MiB))
        local = _digest(img)
    s3["fs"].put_file(str(path), f"images/{name}")
    with pyvhdx.open(f"s3://images/{name}", storage_options=s3["options"]) as img:
        assert img.get_size() == 48 * MiB
        assert _digest(img) == local


def test_bytes_fetched_follow_the_allocation(tmp_path: Path, s3: dict[str, Any]) -> None:
    """Hashing a half-allocated dynamic VHDX fetches its allocated blocks and metadata
    once (<= 1.05x), and a cold open of a 64 TiB image takes a handful of requests."""
    path = tmp_path / "half.vhdx"
    pyvhdx.create(path, 256 * MiB, block_size=MiB)
    data = random.Random(1).randbytes(MiB)
    with pyvhdx.open(path, "r+") as img:
        for block in range(0, 256, 2):
            img.write_at(block * MiB, data)
        allocated = sum(e.length for e in img.extents() if e.data)
    s3["fs"].put_file(str(path), "images/half.vhdx")
    remote = open_remote("s3://images/half.vhdx", s3["options"])
    with pyvhdx.open(remote) as img:  # type: ignore[arg-type]
        _digest(img)
    metadata = 4 * MiB  # header area, log, metadata region, BAT region
    assert remote.bytes_fetched <= 1.05 * allocated + metadata, (remote.bytes_fetched, allocated)
    assert remote.requests < 300

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
