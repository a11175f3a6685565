"""Fleets of images on Dask (issue 18): ``pyvhdx.dask.scan`` on a real
``distributed.LocalCluster`` started here on 127.0.0.1, and ``pyvhdx scan``.

Digests are checked against ``pyvhdx.hash_image``; a bad or missing image is a row
with ``error`` set, and the job still completes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.hashing import hash_image
from tests.conftest import require

MiB = 1 << 20


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import importlib

    try:
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        require("dask[distributed]", "the fleet tests run on a distributed.LocalCluster")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _fleet(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a.vhdx", tmp_path / "b.vhd"
    pyvhdx.create(a, 16 * MiB)
    with pyvhdx.open(a, "r+") as img:
        img.write_at(MiB, b"a" * 4096)
    pyvhdx.create(b, 8 * MiB, disk_type="fixed")
    child = tmp_path / "c.avhdx"
    pyvhdx.create(child, parent=a)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(2 * MiB, b"c" * 4096)
    broken = tmp_path / "broken.vhdx"
    raw = bytearray(a.read_bytes())
    raw[0x30000:0x40000] = b"\xff" * 0x10000  # both region tables gone
    raw[0x40000:0x50000] = b"\xff" * 0x10000
    broken.write_bytes(bytes(raw))
    return [a, b, child, broken, tmp_path / "missing.vhdx"]


def test_scan_on_a_local_cluster(tmp_path: Path, client: Any) -> None:
    from pyvhdx.dask import scan

    paths = _fleet(tmp_path)
    bag = scan(paths, algorithms=("sha256", "md5"))
    rows = {Path(r["path"]).name: r for r in bag.compute()}  # on the cluster's workers
    for name in ("a.vhdx", "b.vhd", "c.avhdx"):
        digests = hash_image(tmp_path / name, ("sha256", "md5"))
        assert (rows[name]["sha256"], rows[name]["md5"]) == (digests["sha256"], digests["md5"])
        assert rows[name]["error"] is None
    assert rows["c.avhdx"]["disk-type"] == "differencing"
    assert rows["broken.vhdx"]["error"] and rows["broken.vhdx"]["sha256"] is None
    assert "FileNotFoundError" in rows["missing.vhdx"]["error"]
    assert rows["missing.vhdx"]["virtual-size"] == 0
    frame = bag.to_dataframe().compute()
    assert len(frame) == 5
    assert {"path", "format", "virtual-size", "sha256", "md5", "problems", "error"} <= set(
        frame.columns
    )


def test_cli_scan(tmp_path: Path) -> None:
    paths = _fleet(tmp_path)[:3]
    out = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "scan", *map(str, paths), "--json", "--jobs", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [r["sha256"] for r in rows] == [hash_image(p)["sha256"] for p in paths]
