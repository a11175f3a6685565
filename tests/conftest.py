"""Shared fixtures and helpers for the pyvhdx test suite.

Helpers are plain functions so that test modules (and ``benchmarks/``) can import
them with ``from tests.conftest import make_raw``; the fixtures wrap them.

Outside oracles (``qemu-img``, ``pyvhdi`` from libvhdi-python) are skipped with a
clear reason when missing, except under ``CI=true``, where a missing oracle fails
the test: ``.ci/run`` installs both, so CI never skips an oracle test.

Real third-party images live in ``../shared/realworld`` beside the checkout and are
never copied into the repository; tests decompress them into a temporary directory.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, NoReturn

import numpy as np
import pytest

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

REPO_ROOT = Path(__file__).resolve().parents[1]
REALWORLD = Path(__file__).resolve().parents[2] / "shared" / "realworld"
EXPECTED_JSON = REALWORLD / "expected.json"
SAMPLE_IMAGES = REPO_ROOT / "sample_images"

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

_COPY_CHUNK = 1 * MiB


# --- skipping and failing -----------------------------------------------------


def require(what: str, reason: str) -> NoReturn:
    """Skip the current test because ``what`` is missing; fail instead under CI=true."""
    message = f"{what}: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: this test must not be skipped in CI)", pytrace=False)
    pytest.skip(message)


def find_qemu_img() -> str:
    """Return the path of ``qemu-img``, or skip (fail under CI) when it is missing."""
    path = shutil.which("qemu-img")
    if path is None:
        require("qemu-img not installed", "install Debian/Ubuntu package qemu-utils")
    return path


def import_pyvhdi() -> Any:
    """Return the ``pyvhdi`` module, or skip (fail under CI) when it is missing."""
    try:
        import pyvhdi
    except ImportError:
        require("pyvhdi not installed", "pip install libvhdi-python (the [test] extra)")
    return pyvhdi


@pytest.fixture(scope="session")
def qemu_img() -> str:
    """Path of the qemu-img binary (the oracle for fixed/dynamic VHD and VHDX)."""
    return find_qemu_img()


@pytest.fixture(scope="session")
def pyvhdi() -> Any:
    """The ``pyvhdi`` module from libvhdi-python (the oracle for differencing chains)."""
    return import_pyvhdi()


# --- hashing --------------------------------------------------------------------


def sha256_of_stream(fileobj: IO[bytes] | io.RawIOBase, chunk_size: int = _COPY_CHUNK) -> str:
    """SHA-256 hex digest of everything ``fileobj`` yields from its current position."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    readinto = getattr(fileobj, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                break
            digest.update(view[:n])
        else:
            data = fileobj.read(chunk_size)
            if not data:
                break
            digest.update(data)
    return digest.hexdigest()


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a whole file."""
    with open(path, "rb") as f:
        return sha256_of_stream(f)


def sha256_of_image(img: Any, chunk_size: int = 4 * MiB) -> str:
    """SHA-256 of an open pyvhdx image's whole virtual content, read with ``read_at``."""
    digest = hashlib.sha256()
    size = img.virtual_size
    offset = 0
    while offset < size:
        n = min(chunk_size, size - offset)
        data = img.read_at(offset, n)
        assert len(data) == n, f"short read at {offset:#x}: {len(data)} of {n} bytes"
        digest.update(data)
        offset += n
    return digest.hexdigest()


# --- deterministic raw disks ----------------------------------------------------


def _raw_runs(
    size: int, rng: np.random.Generator, pattern: str, run_size: int
) -> Iterator[tuple[int, str]]:
    """Yield ``(length, kind)`` runs covering ``size`` bytes; kind is data, fill or zero."""
    if pattern == "random":
        yield size, "data"
    elif pattern == "zeros":
        yield size, "zero"
    elif pattern == "half":
        # Exactly half of the run_size runs hold random data, the rest are zeros.
        count = -(-size // run_size)
        kinds = np.zeros(count, dtype=bool)
        kinds[: count // 2] = True
        rng.shuffle(kinds)
        for i, is_data in enumerate(kinds):
            yield min(run_size, size - i * run_size), "data" if is_data else "zero"
    elif pattern == "mixed":
        # Runs of random length (whole sectors, up to 3 run_size), so that data and
        # zero regions start and end inside blocks as well as on block boundaries.
        done = 0
        max_sectors = max(1, 3 * run_size // 512)
        while done < size:
            n = min(size - done, 512 * int(rng.integers(1, max_sectors + 1)))
            kind = ("data", "data", "fill", "zero", "zero")[int(rng.integers(0, 5))]
            yield n, kind
            done += n
    else:
        raise ValueError(f"unknown pattern {pattern!r}")


def make_raw(
    path: str | os.PathLike[str],
    size: int,
    seed: int = 0,
    pattern: str = "mixed",
    run_size: int = 1 * MiB,
) -> Path:
    """Write a deterministic raw disk image of ``size`` bytes and return its path.

    Args:
        path: file to create (overwritten).
        size: size in bytes.
        seed: seed of ``numpy.random.default_rng``; same seed, same bytes.
        pattern: ``"mixed"`` (random data, constant fill and zero runs of random
            sector-multiple lengths; first and last 4 KiB always hold data),
            ``"half"`` (half of the ``run_size`` runs random, half zeros),
            ``"random"`` or ``"zeros"``.
        run_size: the run length for ``"half"``, the scale of runs for ``"mixed"``.

    Zero runs are left as holes (the file is sparse where the file system allows).
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for length, kind in _raw_runs(size, rng, pattern, run_size):
            if kind == "zero":
                f.seek(length, os.SEEK_CUR)
                continue
            remaining = length
            while remaining:
                n = min(remaining, 16 * MiB)
                if kind == "data":
                    f.write(rng.bytes(n))
                else:
                    f.write(bytes([int(rng.integers(1, 256))]) * n)
                remaining -= n
        f.truncate(size)
        if pattern == "mixed" and size:
            edge = min(4 * KiB, size)
            f.seek(0)
            f.write(rng.bytes(edge))
            f.seek(size - edge)
            f.write(rng.bytes(edge))
    return path


def random_reads(
    size: int, count: int, seed: int, max_length: int = 3 * MiB, boundaries: int = 0
) -> list[tuple[int, int]]:
    """Return ``count`` seeded ``(offset, length)`` pairs inside ``[0, size)``.

    Lengths mix tiny (1..600), sector-ish (up to 64 KiB) and large (up to
    ``max_length``) reads; offsets are arbitrary bytes. When ``boundaries`` is a
    block size, a third of the reads start just before a multiple of it, so that
    they cross block boundaries.
    """
    rng = np.random.default_rng(seed)
    reads = []
    for i in range(count):
        offset = int(rng.integers(0, size))
        if boundaries and i % 3 == 0 and size > boundaries:
            block = int(rng.integers(1, -(-size // boundaries)))
            offset = max(0, min(size - 1, block * boundaries - int(rng.integers(1, 4096))))
        kind = i % 3
        if kind == 0:
            length = int(rng.integers(1, 600))
        elif kind == 1:
            length = int(rng.integers(1, 64 * KiB))
        else:
            length = int(rng.integers(1, max_length))
        reads.append((offset, min(length, size - offset)))
    return reads


# --- qemu-img -------------------------------------------------------------------


def _qemu_options(options: Mapping[str, object] | None) -> list[str]:
    if not options:
        return []
    parts = []
    for key, value in options.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{key}={value}")
    return ["-o", ",".join(parts)]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(
            f"{' '.join(args)} failed with {exc.returncode}: {exc.stderr.strip()}"
        ) from exc


def qemu_convert(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str,
    options: Mapping[str, object] | None = None,
    src_fmt: str = "raw",
) -> Path:
    """``qemu-img convert -f raw -O <fmt> -o k=v,... raw out``; returns ``out``.

    ``fmt`` is a qemu format name: ``vhdx``, ``vpc`` (VHD) or ``raw``. Boolean
    option values become ``on``/``off``. VHDX options: subformat=dynamic|fixed,
    block_size, block_state_zero, log_size. VPC options: subformat=dynamic|fixed,
    force_size.
    """
    qemu = find_qemu_img()
    _run(
        [
            qemu,
            "convert",
            "-q",
            "-f",
            src_fmt,
            "-O",
            fmt,
            *_qemu_options(options),
            str(raw),
            str(out),
        ]
    )
    return Path(out)


def qemu_create(
    path: str | os.PathLike[str],
    fmt: str,
    size: int | str,
    options: Mapping[str, object] | None = None,
) -> Path:
    """``qemu-img create -f <fmt> -o k=v,... path size``; returns ``path``."""
    qemu = find_qemu_img()
    _run([qemu, "create", "-q", "-f", fmt, *_qemu_options(options), str(path), str(size)])
    return Path(path)


def qemu_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``qemu-img info --output=json path`` as a dict (keys like ``virtual-size``)."""
    qemu = find_qemu_img()
    result: dict[str, Any] = json.loads(_run([qemu, "info", "--output=json", str(path)]).stdout)
    return result


def qemu_to_raw(
    image: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str | None = None
) -> Path:
    """qemu's view of an image's content: ``qemu-img convert -O raw``; returns ``out``."""
    qemu = find_qemu_img()
    src_fmt = ["-f", fmt] if fmt else []
    _run([qemu, "convert", "-q", *src_fmt, "-O", "raw", str(image), str(out)])
    return Path(out)


# --- real-world images ----------------------------------------------------------


def load_expected() -> list[dict[str, Any]]:
    """Entries of ``../shared/realworld/expected.json``, or ``[]`` when it is missing."""
    if not EXPECTED_JSON.is_file():
        return []
    with open(EXPECTED_JSON, encoding="utf-8") as f:
        images: list[dict[str, Any]] = json.load(f)["images"]
    return images


def require_realworld() -> Path:
    """Return the realworld directory, or skip (fail under CI=true) if it is missing."""
    if not EXPECTED_JSON.is_file():
        require(
            "real-world images missing",
            f"{REALWORLD} not found (the shared/ directory must sit beside the checkout)",
        )
    return REALWORLD


def realworld_name(entry: Mapping[str, Any]) -> str:
    """File name of an entry once decompressed (``fixed.vhdx.gz`` -> ``fixed.vhdx``)."""
    name = Path(entry["file"]).name
    compression = entry.get("compression")
    if compression == "zip":
        return str(entry["zip_member"])
    if compression == "gzip" and name.endswith(".gz"):
        return name[: -len(".gz")]
    if compression == "bzip2" and name.endswith(".bz2"):
        return name[: -len(".bz2")]
    if compression is not None and compression not in {"gzip", "bzip2"}:
        raise ValueError(f"unknown compression {compression!r} for {entry['file']}")
    return name


def _copy_sparse(src: IO[bytes], dst: BinaryIO) -> None:
    """``shutil.copyfileobj`` that leaves holes for all-zero 1 MiB chunks."""
    zero = bytes(_COPY_CHUNK)
    length = 0
    while True:
        chunk = src.read(_COPY_CHUNK)
        if not chunk:
            break
        if len(chunk) == _COPY_CHUNK and chunk == zero:
            dst.seek(len(chunk), os.SEEK_CUR)
        else:
            dst.write(chunk)
        length += len(chunk)
    dst.truncate(length)


def decompress_realworld(entry: Mapping[str, Any], tmp_dir: str | os.PathLike[str]) -> Path:
    """Decompress (or copy) one expected.json entry into ``tmp_dir``; return its path.

    The output keeps the entry's sub-directory (``<tmp_dir>/dfvfs/image.vhd``) so
    that a differencing child and its parent land side by side. The source file's
    ``file_sha256`` is checked first, so a damaged shared copy fails loudly.
    """
    source = require_realworld() / entry["file"]
    expected_sha = entry.get("file_sha256")
    if expected_sha is not None:
        actual = sha256_of_file(source)
        assert actual == expected_sha, f"{source} is damaged: sha256 {actual}"
    out_dir = Path(tmp_dir) / Path(entry["file"]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / realworld_name(entry)
    compression = entry.get("compression")
    with open(out, "wb") as dst:
        if compression == "gzip":
            with gzip.open(source, "rb") as src:
                _copy_sparse(src, dst)
        elif compression == "bzip2":
            with bz2.open(source, "rb") as src:
                _copy_sparse(src, dst)
        elif compression == "zip":
            with zipfile.ZipFile(source) as zf, zf.open(entry["zip_member"]) as src:
                _copy_sparse(src, dst)
        elif compression is None:
            with open(source, "rb") as src:
                _copy_sparse(src, dst)
        else:
            raise ValueError(f"unknown compression {compression!r} for {entry['file']}")
    return out


@pytest.fixture(scope="session")
def expected_images() -> list[dict[str, Any]]:
    """All entries of expected.json (skips, or fails under CI, if it is missing)."""
    require_realworld()
    return load_expected()


@pytest.fixture(scope="session")
def realworld_image(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``realworld_image(entry) -> Path``: decompressed once per session and cached.

    Parents named by ``parent_file`` are decompressed beside their child.
    """
    root = tmp_path_factory.mktemp("realworld")
    cache: dict[str, Path] = {}
    by_file = {e["file"]: e for e in load_expected()}

    def get(entry: Mapping[str, Any]) -> Path:
        key = entry["file"]
        if key not in cache:
            parent = entry.get("parent_file")
            if parent is not None:
                get(by_file[parent])
            cache[key] = decompress_realworld(entry, root)
        return cache[key]

    return get


# --- object storage servers (issue 18) -------------------------------------------

#: Azurite's account and key: the fixed development credentials it documents.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_azurite() -> str:
    """Path of Azurite's blob server (``npm install -g azurite``; ``.ci/run`` installs
    it), or skip (fail under CI=true) when it is missing."""
    path = shutil.which("azurite-blob")
    if path is None:
        require("azurite not installed", "npm install -g azurite (the Azure Blob emulator)")
    return path


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    """Return once something listens on 127.0.0.1:``port``; raise when ``proc`` (the
    server ``name``, started to listen there) exits first or ``timeout`` seconds pass."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"{name} exited with {proc.returncode}: {out[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@contextlib.contextmanager
def azurite_server(exe: str, folder: Path) -> Iterator[str]:
    """Azurite's blob service on 127.0.0.1 (a free port, ``folder`` for its data, no
    telemetry) while the block runs; yields its connection string."""
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            *("--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder)),
            *("--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, 60, "azurite")
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, Any]]:
    """Moto's S3 server on 127.0.0.1 while the block runs, with a bucket ``images``;
    yields the fsspec storage options that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="images")
        yield {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Azurite's blob service, started once a session (:func:`azurite_server`), with a
    container ``images``: ``options`` are the fsspec/adlfs storage options that
    reach it (a connection string), ``service`` an ``azure.storage.blob``
    ``BlobServiceClient``."""
    try:
        import adlfs  # noqa: F401
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        require("adlfs and azure-storage-blob", "pip install 'pyvhdx[remote]'")
    exe = find_azurite()
    with azurite_server(exe, tmp_path_factory.mktemp("azurite")) as connection:
        service = BlobServiceClient.from_connection_string(connection)
        service.create_container("images")
        yield {"options": {"connection_string": connection}, "service": service}
