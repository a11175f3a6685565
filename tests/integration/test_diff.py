"""diff and apply (issue 16): changed runs between two disks, and deltas.

Oracles: qemu-io makes the changes (into a copy of BASE, in several patterns);
qemu-img converts both disks to raw and a brute-force sector comparison of the
raw files gives the expected runs; libvhdi reads BASE + DELTA; pyvhdx compare
checks the applied copy. A hypothesis property compares the runs with brute
force over small images written at random.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyvhdx
from pyvhdx.compare import compare_images
from pyvhdx.diff import SECTOR, diff_images, write_delta, write_raw_delta
from pyvhdx.merge import merge_image
from tests.conftest import import_pyvhdi, qemu_to_raw
from tests.killlib import _default_signals

MiB = 1 << 20
SIZE = 48 * MiB


def _runs_of(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """Brute force: the runs of 512-byte sectors in which ``a`` and ``b`` differ."""
    x = np.frombuffer(a, np.uint8).reshape(-1, SECTOR)
    y = np.frombuffer(b, np.uint8).reshape(-1, SECTOR)
    mask = (x != y).any(axis=1).view(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask, [0]))))
    pairs = zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
    return [(s * SECTOR, (e - s) * SECTOR) for s, e in pairs]


def _base(tmp_path: Path, ext: str) -> Path:
    path = tmp_path / f"base{ext}"
    pyvhdx.create(path, SIZE)
    rng = random.Random(2)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, rng.randbytes(12 * MiB))
        img.write_at(20 * MiB, b"\xab" * (2 * MiB))  # rewritten with the same bytes below
    return path


QEMU_WRITES = [
    "write -P 0x11 512 512",  # a single sector
    "write -P 0x22 5000 70000",  # an unaligned range (qemu-io writes whole sectors)
    "write -P 0x33 8M 2M",  # whole blocks
    "write -z 1M 256k",  # zeros over data
    "write -P 0xab 20M 2M",  # the bytes that were there
    "write -P 0x44 47M 4096",  # near the end, where BASE is empty
]


@pytest.mark.oracle
@pytest.mark.parametrize(("ext", "fmt"), [(".vhdx", "vhdx"), (".vhd", "vpc")])
def test_diff_and_delta_against_qemu_and_libvhdi(tmp_path: Path, ext: str, fmt: str) -> None:
    base = _base(tmp_path, ext)
    new = tmp_path / f"new{ext}"
    shutil.copyfile(base, new)
    args = [a for w in QEMU_WRITES for a in ("-c", w)]
    subprocess.run(["qemu-io", "-f", fmt, *args, str(new)], check=True, capture_output=True)
    raw_base = qemu_to_raw(base, tmp_path / "base.raw", fmt).read_bytes()
    raw_new = qemu_to_raw(new, tmp_path / "new.raw", fmt).read_bytes()
    expected = _runs_of(raw_base, raw_new)
    result = diff_images(base, new)
    assert result.method == "compare"
    assert result.runs == expected
    assert not any(s <= 20 * MiB < s + n for s, n in result.runs)  # same bytes: no change

    delta = tmp_path / f"delta.a{ext[1:]}"
    write_delta(base, new, delta, result)
    assert compare_images(delta, new) is None
    if ext == ".vhdx":  # libvhdi misreads VHD children's bitmaps (SPEC-NOTES pitfall 22)
        h, p = import_pyvhdi().file(), import_pyvhdi().file()
        p.open(str(base))
        h.open(str(delta))
        try:
            h.set_parent(p)
            assert h.read_buffer_at_offset(SIZE, 0) == raw_new
        finally:
            h.close()
            p.close()
    else:  # held to the model instead: the raw qemu-img made of NEW
        with pyvhdx.open(delta) as img:
            assert img.read_at(0, SIZE) == raw_new
    # size: the blocks the runs touch, plus what an empty delta already holds
    empty = tmp_path / f"empty.a{ext[1:]}"
    pyvhdx.create(empty, parent=base)
    with pyvhdx.open(delta) as img:
        bs = img.block_size
    assert bs is not None
    per_block = bs + (0 if ext == ".vhdx" else 512)  # a VHD block's sector bitmap
    touched = {b for s, n in result.runs for b in range(s // bs, (s + n - 1) // bs + 1)}
    assert delta.stat().st_size <= empty.stat().st_size + len(touched) * per_block

    copy = tmp_path / f"copy{ext}"
    shutil.copyfile(base, copy)
    r = subprocess.run(
        ["python", "-m", "pyvhdx", "apply", str(copy), str(delta)], capture_output=True
    )
    assert r.returncode == 0, r.stderr
    assert compare_images(copy, new) is None
    assert delta.exists()  # a backup is not consumed


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_chain_path_reads_no_data_and_exact_compares(tmp_path: Path, ext: str) -> None:
    base = _base(tmp_path, ext)
    mon, tue = tmp_path / f"mon.a{ext[1:]}", tmp_path / f"tue.a{ext[1:]}"
    pyvhdx.create(mon, parent=base)
    with pyvhdx.open(mon, "r+") as img:
        img.write_at(3 * MiB + 512, b"\x01" * 1024)
    pyvhdx.create(tue, parent=mon)
    with pyvhdx.open(tue, "r+") as img:
        img.write_at(30 * MiB, b"\x02" * 4096)
        img.write_at(0, img.read_at(0, 4096))  # the same bytes again
    with pyvhdx.open(base) as b, pyvhdx.open(tue) as t:
        expected = _runs_of(b.read_at(0, SIZE), t.read_at(0, SIZE))
    stored = diff_images(base, tue)
    assert stored.method == "chain"
    covered = np.zeros(SIZE // SECTOR, bool)
    for s, n in stored.runs:
        covered[s // SECTOR : (s + n) // SECTOR] = True
    assert all(covered[s // SECTOR : (s + n) // SECTOR].all() for s, n in expected)
    assert covered[0]  # stored, though unchanged: counted without --exact
    exact = diff_images(base, tue, exact=True)
    assert (exact.method, exact.runs) == ("chain", expected)
    assert diff_images(base, tue, method="compare").runs == expected
    assert diff_images(mon, tue).runs != stored.runs  # between two checkpoints of one chain


def test_a_chain_of_deltas_reads_as_the_last_day(tmp_path: Path) -> None:
    full = _base(tmp_path, ".vhdx")
    days: list[tuple[Path, Path]] = []
    rng = random.Random(3)
    for day in range(3):
        image = tmp_path / f"day{day}.vhdx"
        shutil.copyfile(days[-1][0] if days else full, image)
        with pyvhdx.open(image, "r+") as img:
            for _ in range(5):
                img.write_at(
                    rng.randrange(0, SIZE - MiB, 512), rng.randbytes(rng.randrange(1, MiB))
                )
        parent = days[-1][1] if days else full
        delta = tmp_path / f"delta{day}.avhdx"
        write_delta(parent, image, delta)
        days.append((image, delta))
    assert compare_images(days[-1][1], days[-1][0]) is None  # full <- d0 <- d1 <- d2
    restored = tmp_path / "restored.vhdx"
    shutil.copyfile(full, restored)  # the first delta applied onto a copy of the full one
    merge_image(days[0][1], parent=restored, keep_child=True, reparent=False)
    assert compare_images(restored, days[0][0]) is None
    assert all(d.exists() for _, d in days)
    assert compare_images(days[-1][1], days[-1][0]) is None  # other deltas untouched


def test_raw_delta_and_json(tmp_path: Path) -> None:
    base = _base(tmp_path, ".vhdx")
    new = tmp_path / "new.vhdx"
    shutil.copyfile(base, new)
    with pyvhdx.open(new, "r+") as img:
        img.write_at(7 * MiB + 100, b"z" * 3000)
    result = diff_images(base, new)
    runs_file = write_raw_delta(new, tmp_path / "delta.raw", result)
    data = json.loads(runs_file.read_text())
    assert [(r["start"], r["length"]) for r in data["runs"]] == result.runs == [(7 * MiB, 3584)]
    raw = (tmp_path / "delta.raw").read_bytes()
    with pyvhdx.open(new) as img:
        assert raw[7 * MiB : 7 * MiB + 3584] == img.read_at(7 * MiB, 3584)
        first = img.read_at(7 * MiB, 512)
    where = data["runs"][0]  # where NEW holds the run's first sector, in its own file
    assert Path(where["image"]).name == "new.vhdx"
    with open(new, "rb") as f:
        f.seek(where["file-offset"])
        assert f.read(512) == first
    assert (tmp_path / "delta.raw").stat().st_blocks * 512 < 1 * MiB  # sparse


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(0, 4 * MiB - 1), st.integers(1, 200_000), st.integers(0, 255)),
        max_size=8,
    )
)
def test_runs_equal_brute_force(tmp_path: Path, writes: list[tuple[int, int, int]]) -> None:
    """Property: after any writes (byte ranges, fill values, zeros and same bytes
    included), the runs are exactly the sectors that differ."""
    base = tmp_path / "b.vhdx"
    new = tmp_path / "n.vhdx"
    for p in (base, new):
        p.unlink(missing_ok=True)
    pyvhdx.create(base, 4 * MiB, block_size=MiB)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(MiB, b"\x07" * MiB)
    shutil.copyfile(base, new)
    with pyvhdx.open(new, "r+") as img:
        for start, length, value in writes:
            img.write_at(start, bytes([value]) * min(length, 4 * MiB - start))
    with pyvhdx.open(base) as b, pyvhdx.open(new) as n:
        expected = _runs_of(b.read_at(0, 4 * MiB), n.read_at(0, 4 * MiB))
    assert diff_images(base, new).runs == expected


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_diff_leaves_no_partial_delta(tmp_path: Path, sig: signal.Signals) -> None:
    """``pyvhdx diff -o DELTA`` stopped at random points: DELTA is absent or whole (BASE
    + DELTA reads as NEW), and the next run finishes it and removes a killed run's
    temporary file."""
    base = _base(tmp_path, ".vhdx")
    new = tmp_path / "new.vhdx"
    shutil.copyfile(base, new)
    rng = random.Random(6)
    with pyvhdx.open(new, "r+") as img:
        for k in range(0, SIZE, 2 * MiB):
            img.write_at(k, rng.randbytes(MiB))
    cmd = [sys.executable, "-m", "pyvhdx", "diff", str(base), str(new), "-o"]
    t0 = time.monotonic()
    subprocess.run([*cmd, str(tmp_path / "timing.avhdx")], capture_output=True, check=False)
    total = time.monotonic() - t0
    delta = tmp_path / "delta.avhdx"
    for k in range(4):
        proc = subprocess.Popen(
            [*cmd, str(delta)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_default_signals,
        )
        time.sleep(total * (0.3 + 0.15 * k))
        proc.send_signal(sig)
        proc.wait(60)
        if delta.exists():  # finished before the signal: whole
            assert compare_images(delta, new) is None
            delta.unlink()
        if sig == signal.SIGINT:  # an interrupted run cleans up after itself
            assert not [p for p in tmp_path.iterdir() if "pyvhdx-tmp" in p.name]
    r = subprocess.run([*cmd, str(delta)], capture_output=True, text=True, check=False)
    assert r.returncode == 1, r.stderr  # 1: the disks differ; the delta is written
    assert compare_images(delta, new) is None
    assert not [p for p in tmp_path.iterdir() if "pyvhdx-tmp" in p.name]


@pytest.mark.parametrize(
    ("target", "extra"),
    [("base", []), ("new", []), ("base", ["--raw-delta"]), ("new", ["--raw-delta"]), ("link", [])],
)
def test_delta_never_replaces_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, extra: list[str]
) -> None:
    """``diff BASE NEW -o BASE --force`` replaced BASE with a delta whose parent was
    itself: every input, a parent of one, and a link to one are refused, untouched."""
    from pyvhdx.cli import main

    base = _base(tmp_path, ".vhdx")
    mid = tmp_path / "mid.vhdx"
    shutil.copyfile(base, mid)
    new = tmp_path / "new.vhdx"
    pyvhdx.create(new, parent=mid)  # NEW's chain: new <- mid (BASE is a copy of mid)
    with pyvhdx.open(new, "r+") as img:
        img.write_at(3 * MiB, b"n" * 4096)
    (tmp_path / "link.vhdx").symlink_to(mid)
    out = {"base": base, "new": new, "link": tmp_path / "link.vhdx"}[target]
    before = {p: p.read_bytes() for p in (base, mid, new)}
    status = main(["diff", str(base), str(new), "-o", str(out), "--force", *extra])
    assert status == 1
    err = capsys.readouterr().err
    assert "cannot write the delta" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in (base, mid, new)} == before


def test_raw_delta_never_pairs_with_stale_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw delta rewritten over an older one, crashed (an exception at the runs
    file's creation, as a kill there) after the raw file went in place: the runs of
    the older delta are gone, not left beside the new raw file; the runs file is
    never partial; the same call then finishes."""
    from pyvhdx.newfile import new_file as real

    base = _base(tmp_path, ".vhdx")
    new = tmp_path / "new.vhdx"
    shutil.copyfile(base, new)
    delta = tmp_path / "delta.raw"
    with pyvhdx.open(new, "r+") as img:
        img.write_at(2 * MiB, b"a" * 512)
    write_raw_delta(new, delta, diff_images(base, new))  # the older pair
    with pyvhdx.open(new, "r+") as img:
        img.write_at(9 * MiB, b"b" * 512)
    result = diff_images(base, new)

    def crash_at_runs(path: Any, **kw: Any) -> Any:
        if str(path).endswith(".json"):
            raise KeyboardInterrupt("killed")
        return real(path, **kw)

    monkeypatch.setattr("pyvhdx.diff.new_file", crash_at_runs)
    with pytest.raises(KeyboardInterrupt):
        write_raw_delta(new, delta, result)
    assert not (tmp_path / "delta.raw.json").exists()
    with pyvhdx.open(new) as img:
        assert delta.read_bytes()[9 * MiB : 9 * MiB + 512] == img.read_at(9 * MiB, 512)
    monkeypatch.setattr("pyvhdx.diff.new_file", real)
    runs_file = write_raw_delta(new, delta, result)
    runs = [(r["start"], r["length"]) for r in json.loads(runs_file.read_text())["runs"]]
    assert runs == result.runs and any(s <= 9 * MiB < s + n for s, n in runs)
    assert [p.name for p in tmp_path.iterdir() if "pyvhdx" in p.name] == []  # no temp left
