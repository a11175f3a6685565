"""Azure (issue 18): ``pyvhdx.convert(src, "az://...")`` uploads an Azure-ready fixed
VHD as a page blob, against Azurite's blob service started on 127.0.0.1 (the
``azurite`` fixture). The service lists the page ranges written; qemu-img reads
the blob downloaded back.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.azure import AzureResult
from pyvhdx.remote import RemoteError

MiB = 1 << 20

# Non-zero data of the source: a lone sector, a run, a run across a 4 MiB chunk
# boundary that takes two Put Page requests, and the disk's last sector.
SIZE = 24 * MiB + 3 * 512  # an Azure blob is a whole number of MiB: 25 MiB
ISLANDS = [(5 * MiB, 512), (9 * MiB + 512, 1536 * 1024), (14 * MiB, 6 * MiB), (SIZE - 512, 512)]
AZURE_SIZE = 25 * MiB


def _source(tmp_path: Path) -> tuple[Path, str]:
    """A dynamic VHDX with ISLANDS of random bytes (no zero sector in them); the
    sha256 of its content padded with zeros to AZURE_SIZE."""
    path = tmp_path / "disk.vhdx"
    pyvhdx.create(path, SIZE, block_size=MiB)
    rng = random.Random(18)
    content = bytearray(AZURE_SIZE)
    with pyvhdx.open(path, "r+") as img:
        for off, length in ISLANDS:
            data = bytes(rng.randrange(1, 256) for _ in range(512)) * (length // 512)
            img.write_at(off, data)
            content[off : off + length] = data
    return path, hashlib.sha256(content).hexdigest()


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def test_convert_to_a_page_blob(tmp_path: Path, azurite: dict[str, Any], qemu_img: str) -> None:
    src, digest = _source(tmp_path)
    url = "az://images/sub/disk.vhd"
    result = pyvhdx.convert(src, url, storage_options=azurite["options"])
    assert isinstance(result, AzureResult)
    assert (result.virtual_size, result.url) == (AZURE_SIZE, url)
    assert result.disk_type is pyvhdx.DiskType.FIXED
    assert result.requests == 5  # the 6 MiB run is cut at 16 MiB: two requests of <= 4 MiB

    container = azurite["service"].get_container_client("images")
    names = [b.name for b in container.list_blobs(name_starts_with="sub/")]
    assert names == ["sub/disk.vhd"]  # no partial blob left
    blob = container.get_blob_client("sub/disk.vhd")
    props = blob.get_blob_properties()
    assert props.blob_type == "PageBlob" and props.size == AZURE_SIZE + 512
    pages = [(r.start, r.end + 1) for r in blob.list_page_ranges() if not r.cleared]
    written = [(off, off + n) for off, n in ISLANDS] + [(AZURE_SIZE, AZURE_SIZE + 512)]
    assert _merged(pages) == _merged(written)

    local = tmp_path / "back.vhd"
    local.write_bytes(blob.download_blob().readall())
    info = json.loads(
        subprocess.run(
            [qemu_img, "info", "-f", "vpc", "--output=json", str(local)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["virtual-size"] == AZURE_SIZE
    raw = tmp_path / "back.raw"
    subprocess.run(
        [qemu_img, "convert", "-f", "vpc", "-O", "raw", str(local), str(raw)], check=True
    )
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == digest
    with pyvhdx.open(local) as img:
        assert img.disk_type.value == "fixed" and img.virtual_size == AZURE_SIZE

    # The destination exists now: refused without force.
    with pytest.raises(FileExistsError, match=r"images/sub/disk\.vhd"):
        pyvhdx.convert(src, url, storage_options=azurite["options"])


def test_an_interrupted_upload_leaves_no_blob(tmp_path: Path, azurite: dict[str, Any]) -> None:
    """Stopped midway (here by the progress callback), the upload leaves neither the
    destination nor its temporary blob; an existing destination stays as it was."""
    src, _ = _source(tmp_path)
    container = azurite["service"].get_container_client("images")
    container.upload_blob("kept.vhd", b"old")

    class Stop(Exception):
        pass

    def stop(n: int) -> None:
        if n:
            raise Stop

    for name in ("new.vhd", "kept.vhd"):
        with pytest.raises(Stop):
            pyvhdx.convert(
                src,
                f"az://images/{name}",
                storage_options=azurite["options"],
                progress=stop,
                force=True,
            )
    names = [b.name for b in container.list_blobs()]
    assert "new.vhd" not in names and not any("partial" in n for n in names), names
    assert container.get_blob_client("kept.vhd").download_blob().readall() == b"old"


def test_azure_refusals(tmp_path: Path, azurite: dict[str, Any]) -> None:
    small = tmp_path / "small.vhdx"
    pyvhdx.create(small, 8 * MiB)
    with pytest.raises(pyvhdx.InvalidArgumentError, match=r"az://images/small.vhd: .*20 MiB"):
        pyvhdx.convert(small, "az://images/small.vhd", storage_options=azurite["options"])
    with pytest.raises(pyvhdx.InvalidArgumentError, match="fixed VHDs"):
        pyvhdx.convert(
            small, "az://images/x.vhdx", format="vhdx", storage_options=azurite["options"]
        )
    src, _ = _source(tmp_path)
    with pytest.raises(RemoteError, match=r"az://nocontainer/x\.vhd"):
        pyvhdx.convert(src, "az://nocontainer/x.vhd", storage_options=azurite["options"])


_KILLED = """
import sys, time, pyvhdx
def hold(n):
    print("uploading", flush=True)
    time.sleep(60)
pyvhdx.convert(sys.argv[1], sys.argv[2], storage_options={"connection_string": sys.argv[3]},
               progress=hold)
"""


def test_a_killed_upload_leaves_the_destination_absent(
    tmp_path: Path, azurite: dict[str, Any]
) -> None:
    """SIGKILL midway: the pages went to the temporary blob, named as partial; no blob
    is under the destination name."""
    src, _ = _source(tmp_path)
    connection = azurite["options"]["connection_string"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(src), "az://images/killed/disk.vhd", connection],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "uploading\n"
    finally:
        proc.kill()
        proc.wait()
    container = azurite["service"].get_container_client("images")
    names = [b.name for b in container.list_blobs(name_starts_with="killed/")]
    assert len(names) == 1 and names[0].startswith("killed/disk.vhd.pyvhdx-partial-"), names


def test_a_chain_whose_parent_is_elsewhere_uploads_with_parent(
    tmp_path: Path, azurite: dict[str, Any], qemu_img: str
) -> None:
    """``pyvhdx convert child.vhdx az://... --parent BASE``: the source options
    (``--parent``) reach the source of an upload as of a file destination (they were
    refused); the blob holds the chain's content."""
    base, _ = _source(tmp_path)
    child = tmp_path / "elsewhere" / "child.vhdx"
    child.parent.mkdir()
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+", parent=base) as img:  # not in the child's folder
        img.write_at(3 * MiB, b"\x5a" * (2 * MiB))
    moved = tmp_path / "moved" / "base.vhdx"
    moved.parent.mkdir()
    base.rename(moved)  # the child's locators find nothing now
    with pyvhdx.open(child, parent=moved) as img:
        want = hashlib.sha256(img.read_at(0, SIZE) + bytes(AZURE_SIZE - SIZE)).hexdigest()

    connection = azurite["options"]["connection_string"]
    url = "az://images/chain.vhd"
    cmd = [sys.executable, "-m", "pyvhdx", "convert", str(child), url]
    cmd += ["--storage-option", f"connection_string={connection}", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and "parent" in proc.stderr, proc.stderr  # not found alone
    proc = subprocess.run([*cmd, "--parent", str(moved)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    blob = azurite["service"].get_container_client("images").get_blob_client("chain.vhd")
    local = tmp_path / "back.vhd"
    local.write_bytes(blob.download_blob().readall())
    raw = tmp_path / "back.raw"
    subprocess.run(
        [qemu_img, "convert", "-f", "vpc", "-O", "raw", str(local), str(raw)], check=True
    )
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == want


def test_one_storage_options_for_two_stores(
    tmp_path: Path, azurite: dict[str, Any], qemu_img: str
) -> None:
    """``convert s3://... az://...``: options keyed by protocol (as fsspec reads a
    chained URL's) go to their own store only; moto's S3 server and Azurite each get
    theirs, through one ``storage_options`` and through the command line."""
    import s3fs

    from tests.conftest import moto_server

    src, digest = _source(tmp_path)
    with moto_server() as s3_options:
        s3fs.S3FileSystem(**s3_options).put_file(str(src), "images/disk.vhdx")
        options = {"s3": s3_options, "az": azurite["options"]}
        pyvhdx.convert("s3://images/disk.vhdx", "az://images/from-s3.vhd", storage_options=options)
        cmd = [sys.executable, "-m", "pyvhdx", "convert", "--no-progress"]
        for proto, opts in options.items():
            cmd += ["--storage-option", f"{proto}={json.dumps(opts)}"]
        proc = subprocess.run(
            [*cmd, "s3://images/disk.vhdx", "az://images/cli.vhd"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        # either store given the other's options alone fails, naming the URL
        with pytest.raises(pyvhdx.InvalidArgumentError, match=r"^az://images/x\.vhd: .*account"):
            pyvhdx.convert("s3://images/disk.vhdx", "az://images/x.vhd", storage_options=s3_options)

    container = azurite["service"].get_container_client("images")
    for name in ("from-s3.vhd", "cli.vhd"):
        local = tmp_path / name
        local.write_bytes(container.get_blob_client(name).download_blob().readall())
        raw = tmp_path / f"{name}.raw"
        subprocess.run(
            [qemu_img, "convert", "-f", "vpc", "-O", "raw", str(local), str(raw)], check=True
        )
        assert hashlib.sha256(raw.read_bytes()).hexdigest() == digest, name
