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


def _fleet(tmp_path: Path, count: int = 50) -> list[Path]:
    """``count`` small images: VHDX and VHD, dynamic and fixed, each with its own
    bytes, a differencing child among them, and one corrupt VHDX (both region
    tables gone) in the middle."""
    paths = []
    for k in range(count - 2):
        path = tmp_path / f"img{k:02}.{('vhdx', 'vhd')[k % 2]}"
        pyvhdx.create(path, 2 * MiB, disk_type=("dynamic", "fixed")[k // 2 % 2])
        with pyvhdx.open(path, "r+") as img:
            img.write_at(k * 4096, bytes([k + 1]) * 4096)
        paths.append(path)
    child = tmp_path / "child.avhdx"
    pyvhdx.create(child, parent=paths[0])
    with pyvhdx.open(child, "r+") as img:
        img.write_at(MiB, b"c" * 4096)
    broken = tmp_path / "broken.vhdx"
    raw = bytearray(paths[0].read_bytes())
    raw[0x30000:0x50000] = b"\xff" * 0x20000  # both region tables
    broken.write_bytes(bytes(raw))
    return [*paths[: count // 2], broken, *paths[count // 2 :], child]


def test_scan_on_a_local_cluster(tmp_path: Path, client: Any) -> None:
    """50 images hashed on a LocalCluster of 2 workers give the table a serial loop
    gives; the corrupt one is one error row, and the job completes."""
    from pyvhdx.dask import describe, scan

    paths = _fleet(tmp_path)
    assert len(paths) == 50
    bag = scan(paths, algorithms=("sha256", "md5"))
    rows = bag.compute()  # on the cluster's workers
    assert set(client.run(lambda: 1)) and len(client.scheduler_info()["workers"]) == 2
    assert rows == [describe(p, ("sha256", "md5")) for p in paths]  # the serial loop
    errors = [r for r in rows if r["error"]]
    assert [Path(r["path"]).name for r in errors] == ["broken.vhdx"]
    assert errors[0]["sha256"] is None and errors[0]["virtual-size"] == 0
    by_name = {Path(r["path"]).name: r for r in rows}
    for name in ("img03.vhd", "child.avhdx"):
        digests = hash_image(tmp_path / name, ("sha256", "md5"))
        assert (by_name[name]["sha256"], by_name[name]["md5"]) == (
            digests["sha256"],
            digests["md5"],
        )
    assert by_name["child.avhdx"]["disk-type"] == "differencing"
    assert len({r["sha256"] for r in rows}) == 50  # every image its own content
    # a data frame (here of a few rows, in this process: importing pandas and pyarrow
    # in the workers would take longer than the scan)
    frame = (
        scan(paths[20:24], algorithms=("sha256", "md5")).to_dataframe().compute(scheduler="sync")
    )
    assert list(frame["sha256"]) == [r["sha256"] for r in rows[20:24]]
    assert {"path", "format", "virtual-size", "sha256", "md5", "problems", "error"} <= set(
        frame.columns
    )
    missing = describe(tmp_path / "missing.vhdx")
    assert "FileNotFoundError" in missing["error"] and missing["virtual-size"] == 0


def test_cli_scan(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 5)
    paths = [*fleet[:2], fleet[-1]]  # not the corrupt one
    out = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "scan", *map(str, paths), "--json", "--jobs", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [r["sha256"] for r in rows] == [hash_image(p)["sha256"] for p in paths]
