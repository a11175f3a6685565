"""pyvhdx serve (issue 17): an NBD server, tested with real clients on 127.0.0.1.

Clients: qemu-img (compare, map, convert), qemu-io (writes), nbdinfo (libnbd);
and a small socket client of our own for what the real ones never send
(garbage, oversized requests, reads past the end, a write to a read-only export).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.nbd import NBDServer, ServeOptions
from tests.conftest import decompress_realworld, load_expected, require, sha256_of_file

MiB = 1 << 20
pytestmark = pytest.mark.oracle


def _qemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, check=False)


class Running:
    def __init__(self, options: ServeOptions, **kw: object) -> None:
        self.server = NBDServer(options, port=0, **kw)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"nbd://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.stop()


def _serve(started: list[Running], image: Path, **kw: object) -> Running:
    r = Running(ServeOptions(image, **kw))  # type: ignore[arg-type]
    started.append(r)
    return r


def _image(tmp_path: Path, name: str, kind: str, **kw: object) -> Path:
    path = tmp_path / name
    pyvhdx.create(path, 40 * MiB, disk_type=kind, **kw)  # type: ignore[arg-type]
    rng = random.Random(len(name))
    with pyvhdx.open(path, "r+") as img:
        for off in (0, 7 * MiB + 512, 30 * MiB):
            img.write_at(off, rng.randbytes(MiB + 1000))
    return path


@pytest.mark.parametrize(
    ("name", "kind"),
    [("d.vhdx", "dynamic"), ("f.vhdx", "fixed"), ("d.vhd", "dynamic"), ("f.vhd", "fixed")],
)
def test_qemu_img_compare_over_nbd(
    tmp_path: Path, running: list[Running], name: str, kind: str
) -> None:
    path = _image(tmp_path, name, kind)
    r = _serve(running, path)
    fmt = "vhdx" if name.endswith("vhdx") else "vpc"
    out = _qemu("qemu-img", "compare", "-F", fmt, r.url, str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_three_level_chain_and_qemu_map(tmp_path: Path, running: list[Running]) -> None:
    base = _image(tmp_path, "base.vhdx", "dynamic")
    mid, top = tmp_path / "mid.avhdx", tmp_path / "top.avhdx"
    pyvhdx.create(mid, parent=base)
    with pyvhdx.open(mid, "r+") as img:
        img.write_at(12 * MiB, b"m" * (3 * MiB))
    pyvhdx.create(top, parent=mid)
    with pyvhdx.open(top, "r+") as img:
        img.write_at(20 * MiB + 4096, b"t" * 5000)
        content = img.read_at(0, 40 * MiB)
    r = _serve(running, top)
    raw = tmp_path / "out.raw"
    out = _qemu("qemu-img", "convert", "-f", "raw", "-O", "raw", r.url, str(raw))
    assert out.returncode == 0, out.stderr
    assert raw.read_bytes() == content  # qemu itself cannot read VHDX chains
    qmap = json.loads(_qemu("qemu-img", "map", "--output=json", r.url).stdout)
    pmap = json.loads(
        subprocess.run(
            [sys.executable, "-m", "pyvhdx", "map", "--json", str(top)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )

    def runs(entries: list[dict[str, object]]) -> list[tuple[int, int, bool, bool]]:
        out: list[tuple[int, int, bool, bool]] = []
        for e in entries:
            key = (bool(e["zero"]), bool(e["data"]))
            start, length = int(e["start"]), int(e["length"])  # type: ignore[call-overload]
            if out and out[-1][2:] == key and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + length, *key)
            else:
                out.append((start, length, *key))
        return out

    assert runs(qmap) == runs(pmap)


def test_a_dirty_log_image_is_served_replayed(tmp_path: Path, running: list[Running]) -> None:
    entry = next(
        (e for e in load_expected() if e["file"] == "DiscUtils/vhdx-log-replay.vhdx.gz"), None
    )
    if entry is None:
        require("realworld", "../shared/realworld/ holds DiscUtils/vhdx-log-replay.vhdx.gz")
    assert entry is not None
    path = decompress_realworld(entry, tmp_path)
    before = sha256_of_file(path)
    r = _serve(running, path)
    raw = tmp_path / "out.raw"
    out = _qemu("qemu-img", "convert", "-f", "raw", "-O", "raw", r.url, str(raw))
    assert out.returncode == 0, out.stderr
    assert sha256_of_file(raw) == entry["content_sha256"]
    assert sha256_of_file(path) == before  # replayed in memory: the file is not touched


def test_overlay_keeps_the_original_and_holds_the_writes(
    tmp_path: Path, running: list[Running]
) -> None:
    path = _image(tmp_path, "o.vhdx", "dynamic")
    before = sha256_of_file(path)
    overlay = tmp_path / "o-overlay.avhdx"
    r = _serve(running, path, overlay=overlay)
    out = _qemu(
        "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "write -z 30M 4k", r.url
    )
    assert out.returncode == 0, out.stdout + out.stderr
    r.stop()
    running.remove(r)
    assert sha256_of_file(path) == before
    with pyvhdx.open(overlay) as img:
        assert img.read_at(MiB, 65536) == b"\x5a" * 65536
        assert img.read_at(30 * MiB, 4096) == bytes(4096)
    with pyvhdx.open(path) as img:
        assert img.read_at(MiB, 65536) != b"\x5a" * 65536


def test_nbdinfo_lists_the_export(tmp_path: Path, running: list[Running]) -> None:
    if shutil.which("nbdinfo") is None:
        require("nbdinfo", "nbdinfo (Debian libnbd-bin) lists NBD exports")
    path = _image(tmp_path, "l.vhdx", "dynamic")
    r = _serve(running, path, name="disk1")
    out = _qemu("nbdinfo", "--list", "--json", r.url)
    assert out.returncode == 0, out.stderr
    exports = json.loads(out.stdout)["exports"]
    assert [(e["export-name"], e["export-size"]) for e in exports] == [("disk1", 40 * MiB)]
    assert exports[0]["is_read_only"] is True


# -- our own client: what real clients never send -----------------------------------------


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert s.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    return s


def _go(s: socket.socket) -> int:
    """EXPORT_NAME "" (simple replies); the export size."""
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 0))
    size, _flags = struct.unpack(">QH", s.recv(10, socket.MSG_WAITALL))
    return int(size)


def _request(s: socket.socket, kind: int, offset: int, length: int, data: bytes = b"") -> int:
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, kind, 7, offset, length) + data)
    magic, error, handle = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
    assert (magic, handle) == (0x67446698, 7)
    if kind == 0 and not error:
        s.recv(length, socket.MSG_WAITALL)
    return int(error)


def test_hostile_clients_do_not_stop_the_server(tmp_path: Path, running: list[Running]) -> None:
    path = _image(tmp_path, "h.vhdx", "dynamic")
    r = _serve(running, path)
    port = r.server.port
    s = socket.create_connection(("127.0.0.1", port))  # garbage instead of a handshake
    s.recv(18)
    s.sendall(b"\xff" * 64)
    s.close()
    s = _connect(port)  # an option far too large
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 99, 1 << 30))
    s.close()
    s = _connect(port)
    size = _go(s)
    assert size == 40 * MiB
    assert _request(s, 0, size - 512, 1024) == 22  # a read past the end: EINVAL
    assert _request(s, 0, 0, 1 << 30) == 22  # oversized
    assert _request(s, 1, 0, 4, b"abcd") == 1  # a write to a read-only export: EPERM
    assert _request(s, 0, 4096, 4096) == 0  # and the connection still works
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 8, 0, 4096)[:20])  # cut mid-request
    s.close()
    out = _qemu("qemu-img", "compare", "-F", "vhdx", r.url, str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_unix_socket_and_parallel_clients(tmp_path: Path, running: list[Running]) -> None:
    path = _image(tmp_path, "u.vhdx", "dynamic")
    sock = tmp_path / "nbd.sock"
    r = Running(ServeOptions(path), unix_socket=sock)
    running.append(r)
    url = f"nbd+unix:///?socket={sock}"
    procs = [
        subprocess.Popen(
            ["qemu-img", "compare", "-F", "vhdx", url, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]


def test_cli_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = _image(tmp_path, "w.vhdx", "dynamic")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyvhdx", "serve", str(path), "--port", str(port), "--writable"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "serving" in proc.stderr.readline()
        out = _qemu("qemu-io", "-f", "raw", "-c", "write -P 0x42 2M 8k", f"nbd://127.0.0.1:{port}")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    with pyvhdx.open(path) as img:  # written through, flushed, the image valid
        assert img.read_at(2 * MiB, 8192) == b"\x42" * 8192
    assert check_image(path).ok
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    time.sleep(0.1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # nothing writes on


def test_trim_unmaps_whole_blocks_of_a_writable_export(
    tmp_path: Path, running: list[Running]
) -> None:
    path = _image(tmp_path, "t.vhdx", "dynamic", block_size=MiB)
    with pyvhdx.open(path) as img:
        stored = img.allocation_summary().data_blocks
    r = _serve(running, path, writable=True)
    out = _qemu("qemu-io", "-f", "raw", "-c", "discard 512 10M", r.url)
    assert out.returncode == 0, out.stdout + out.stderr
    r.stop()
    running.remove(r)
    with pyvhdx.open(path) as img:
        assert img.read_at(512, 10 * MiB) == bytes(10 * MiB)
        assert img.allocation_summary().data_blocks < stored  # unmapped, not zero-filled
    assert check_image(path).ok
