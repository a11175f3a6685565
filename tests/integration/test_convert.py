"""convert: content preserved across formats (qemu-img as the oracle), sparse
output, bounded memory, and nothing half-written left under the destination."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.compare import compare_images
from tests.conftest import find_qemu_img, make_raw, qemu_convert, sha256_of_stream

MiB = 1 << 20


def digest(path: Path) -> str:
    with pyvhdx.open(path) as img, img.stream() as stream:
        return sha256_of_stream(stream)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conv") / "src.raw"
    make_raw(path, 40 * MiB + 3 * 512, seed=3)
    return path


@pytest.mark.parametrize("block_size", [MiB, 2 * MiB, 32 * MiB])
@pytest.mark.parametrize("disk_type", ["dynamic", "fixed"])
def test_raw_vhdx_raw_round_trip(
    tmp_path: Path, source: Path, block_size: int, disk_type: str
) -> None:
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    vhdx = tmp_path / "a.vhdx"
    pyvhdx.convert(source, vhdx, disk_type=disk_type, block_size=block_size)
    assert digest(vhdx) == want
    qemu = find_qemu_img()
    subprocess.run([qemu, "check", str(vhdx)], check=True, capture_output=True)
    r = subprocess.run(
        [qemu, "compare", "-f", "raw", "-F", "vhdx", str(source), str(vhdx)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout
    back = tmp_path / "b.raw"
    pyvhdx.convert(vhdx, back)
    assert back.read_bytes() == source.read_bytes()
    with pyvhdx.open(vhdx) as img:
        assert img.block_size == block_size
        assert img.disk_type.value == disk_type


def test_qemu_made_source_and_sparse_raw_destination(tmp_path: Path, source: Path) -> None:
    vhdx = tmp_path / "q.vhdx"
    qemu_convert(source, vhdx, "vhdx", {"subformat": "dynamic", "block_size": "1M"})
    raw = tmp_path / "out.img"
    result = pyvhdx.convert(vhdx, raw)
    assert raw.read_bytes() == source.read_bytes()
    # only the blocks qemu allocated were read, and of those only what the VHDX
    # file stores (qemu leaves the zero parts of its blocks as holes); zeros
    # became holes
    with pyvhdx.open(vhdx) as img:
        allocated = sum(e.length for e in img.extents() if e.kind == pyvhdx.RunKind.DATA)
    data = source.read_bytes()
    pages = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    nonzero_pages = sum(len(p) for p in pages if p.count(0) != len(p))
    assert nonzero_pages <= result.bytes_read < allocated < raw.stat().st_size
    assert raw.stat().st_blocks * 512 <= result.bytes_written + MiB


def test_raw_source_holes_are_not_read(tmp_path: Path) -> None:
    raw = tmp_path / "sparse.img"
    with raw.open("wb") as f:
        f.truncate(1 << 40)  # 1 TiB of hole
        f.seek(512 * MiB)
        f.write(b"x" * 4096)
    out = tmp_path / "s.vhdx"
    result = pyvhdx.convert(raw, out, src_format="raw")
    assert result.bytes_read < 8 * MiB
    with pyvhdx.open(out) as img:
        assert img.virtual_size == 1 << 40
        assert img.read_at(512 * MiB, 4097) == b"x" * 4096 + b"\0"


def test_existing_destination_needs_force(tmp_path: Path, source: Path) -> None:
    dst = tmp_path / "exists.vhdx"
    dst.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        pyvhdx.convert(source, dst)
    assert dst.read_bytes() == b"keep me"
    pyvhdx.convert(source, dst, force=True)
    assert digest(dst) == hashlib.sha256(source.read_bytes()).hexdigest()


def test_failure_leaves_nothing_behind(tmp_path: Path, source: Path) -> None:
    dst = tmp_path / "half.vhdx"
    calls = []

    def boom(n: int) -> None:
        calls.append(n)
        if len(calls) > 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pyvhdx.convert(source, dst, block_size=MiB, progress=boom)
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["vhdx", "raw"])
def test_reader_thread_error_reaches_the_caller(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """An error in a reader thread is raised by convert; no thread or file is left."""
    vhdx = tmp_path / "src.vhdx"
    pyvhdx.convert(source, vhdx, block_size=MiB)
    original = pyvhdx.DiskImage.readinto_at
    failed = []

    def flaky(img: pyvhdx.DiskImage, offset: int, buffer: Any) -> int:
        if threading.current_thread().name.startswith("pyvhdx-convert") and offset >= 20 * MiB:
            failed.append(offset)
            raise pyvhdx.TruncatedImageError("injected", structure="data block", offset=offset)
        return original(img, offset, buffer)

    monkeypatch.setattr(pyvhdx.DiskImage, "readinto_at", flaky)
    before = set(threading.enumerate())
    out = tmp_path / "out" / f"dst.{fmt}"
    out.parent.mkdir()
    with pytest.raises(pyvhdx.TruncatedImageError, match="injected"):
        pyvhdx.convert(vhdx, out)
    assert failed  # the error came from a worker thread
    assert set(threading.enumerate()) == before
    assert list(out.parent.iterdir()) == []


def test_64_tib_sparse_source_bounded_memory(tmp_path: Path) -> None:
    src = tmp_path / "huge.vhdx"
    pyvhdx.create(src, 64 << 40)
    # VmHWM, not ru_maxrss: after fork+exec ru_maxrss still counts the parent's pages.
    code = (
        "import pyvhdx, re\n"
        f"r = pyvhdx.convert({str(src)!r}, {str(tmp_path / 'out.vhdx')!r})\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(r.bytes_read, hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    bytes_read, rss_kib = map(int, out.stdout.split())
    assert bytes_read == 0
    assert rss_kib < 100 * 1024, f"peak RSS {rss_kib} KiB"
    with pyvhdx.open(tmp_path / "out.vhdx") as img:
        assert img.virtual_size == 64 << 40


@pytest.mark.parametrize(
    "name",
    [
        "DiscUtils/vhdx-log-replay.vhdx.gz",
        "dissect.hypervisor/dynamic.vhd.gz",
        "dissect.hypervisor/fixed.vhdx.gz",
        "node-vhd/dynamic.vhd.gz",
    ],
)
def test_realworld_content_survives(
    tmp_path: Path, name: str, expected_images: list[dict[str, Any]], realworld_image: Any
) -> None:
    entry = next(e for e in expected_images if e["file"] == name)
    path = realworld_image(entry)
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns)
    out = tmp_path / "rw.vhdx"
    pyvhdx.convert(path, out)
    assert digest(out) == entry["content_sha256"]
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns) == before


# --- issue 5 acceptance: round trips, every realworld image, every format ------------


def _qemu_fmt(path: Path) -> str:
    return {".vhdx": "vhdx", ".vhd": "vpc"}.get(path.suffix, "raw")


def _no_zero_blocks(path: Path) -> None:
    """A dynamic destination stores no block that is entirely zero."""
    with pyvhdx.open(path) as img:
        bs = img.block_size
        assert bs is not None
        for ext in img.extents():
            if ext.kind != pyvhdx.RunKind.DATA:
                continue
            pos = ext.start
            while pos < ext.start + ext.length:
                n = min(bs - pos % bs, ext.start + ext.length - pos)
                assert any(img.read_at(pos, n)), f"{path.name}: all-zero block at {pos:#x}"
                pos += n


@pytest.mark.parametrize("disk_type", ["dynamic", "fixed"])
@pytest.mark.parametrize("block_size", [MiB, 2 * MiB, 8 * MiB])
def test_round_trip_through_every_format(
    tmp_path: Path, source: Path, disk_type: str, block_size: int
) -> None:
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    qemu = find_qemu_img()
    chain = [tmp_path / "a.vhdx", tmp_path / "b.vhd", tmp_path / "c.vhdx", tmp_path / "d.raw"]
    prev = source
    for dst in chain:
        pyvhdx.convert(prev, dst, disk_type=disk_type, block_size=block_size)
        assert digest(dst) == want, f"{prev.name} -> {dst.name}"
        if dst.suffix == ".vhdx":
            subprocess.run([qemu, "check", str(dst)], check=True, capture_output=True)
        r = subprocess.run(
            [qemu, "compare", "-f", "raw", "-F", _qemu_fmt(dst), str(source), str(dst)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        if disk_type == "dynamic" and dst.suffix != ".raw":
            _no_zero_blocks(dst)
        prev = dst
    assert chain[-1].read_bytes()[: source.stat().st_size] == source.read_bytes()


@pytest.mark.parametrize("fmt", ["vhdx", "vhd", "raw"])
def test_every_realworld_image_converts(
    tmp_path: Path, fmt: str, expected_images: list[dict[str, Any]], realworld_image: Any
) -> None:
    for entry in expected_images:
        if entry["expect"] != "ok":
            continue
        src = realworld_image(entry)
        dst = tmp_path / f"{Path(entry['file']).name}.{fmt}"
        pyvhdx.convert(src, dst, progress=False)
        # The source reads to content_sha256 (test_realworld); the copy must equal it.
        # compare skips ranges unallocated in both, so 10 GiB sparse disks stay quick.
        with pyvhdx.open(dst) as img:
            assert img.virtual_size >= entry["virtual_size"]
        assert compare_images(src, dst) is None, entry["file"]
        dst.unlink()


def test_cli_convert(tmp_path: Path, source: Path) -> None:
    from pyvhdx.cli import main

    out = tmp_path / "c.vhd"
    assert main(["convert", str(source), str(out), "--type", "fixed", "--no-progress"]) == 0
    with pyvhdx.open(out) as img:
        assert img.disk_type.value == "fixed"
    assert digest(out) == hashlib.sha256(source.read_bytes()).hexdigest()
    assert main(["convert", str(source), str(out)]) == 1  # exists
    assert main(["convert", str(source), str(out), "--force", "-O", "vhdx"]) == 0
    with pyvhdx.open(out) as img:
        assert img.format.value == "vhdx"
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x.vhdx")]) == 2
    assert main(["convert", str(source)]) == 2


def test_destination_gets_normal_permissions(tmp_path: Path, source: Path) -> None:
    mask = os.umask(0o022)
    try:
        out = tmp_path / "p.vhdx"
        pyvhdx.convert(source, out)
        assert out.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
