"""Mutation fuzzing in the test suite (issue 8; DESIGN.md "Bad input").

The harness of ``tests/fuzzlib.py`` (shared with the campaign script
``tools/fuzz.py``), driven by hypothesis: each example picks a seed image
(VHDX dynamic/fixed with 512 and 4096-byte sectors, pending logs, differencing
chains with partially present blocks, VHD fixed/dynamic/differencing, raw),
mutates it (truncation, bit flips, structure fields set to edge values with
their checksums fixed, hostile locator paths, structures copied over others)
and runs every operation on it: opens, info, inspect, check, the allocation
map, a full read, random reads, a comparison with the unmutated seed and a
conversion. Only pyvhdx errors may escape; each case has a 10 s time bound
and 1 GiB of address space.

Deterministic (``derandomize``, no example database): CI runs the same cases
every time. A failure prints the mutation as JSON; ``tools/fuzz.py`` runs
many more cases (``python tools/fuzz.py --cases 100000``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzlib import (
    HypothesisChooser,
    Seed,
    Workspace,
    build_seeds,
    make_mutation,
    memory_bound,
)

GROUPS = {
    "vhdx": [
        "vhdx-dynamic-512",
        "vhdx-dynamic-4096",
        "vhdx-fixed",
        "vhdx-log-synthetic",
        "vhdx-log-crashed",
        "vhdx-log-wrapped",
    ],
    "vhdx-chain": [
        "vhdx-diff-partial-512",
        "vhdx-diff-partial-4096",
        "vhdx-chain3",
        "mixed-vhdx-on-vhd",
    ],
    "vhd": ["vhd-fixed", "vhd-dynamic", "vhd-diff"],
    "raw": ["raw"],
}
GROUPS["write"] = GROUPS["vhdx"] + GROUPS["vhdx-chain"] + GROUPS["vhd"]
EXAMPLES = {"vhdx": 180, "vhdx-chain": 120, "vhd": 150, "raw": 20, "write": 120}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("fuzz")
    # no qemu-img seeds: the same cases with or without qemu-img
    seeds: dict[str, Seed] = build_seeds(root / "seeds", qemu=False)
    yield Workspace(root / "work", seeds)


def _fuzz(workspace: Workspace, group: str, data: st.DataObject, *, write: bool = False) -> None:
    chooser = HypothesisChooser(data)
    name = chooser.choice(GROUPS[group])
    mutation = make_mutation(workspace.seeds, chooser, seed_name=name)
    rng_seed = chooser.randint(0, 1 << 16)
    with memory_bound(1 << 30):
        result = workspace.run(
            mutation, rng_seed=rng_seed, time_limit=10.0, light=True, write=write
        )
    assert result.status == "ok", (
        f"{result.status} for mutation {json.dumps(mutation)} (rng_seed {rng_seed}):\n"
        + "\n".join(e["traceback"] for e in result.escapes)
    )


def _settings(group: str) -> settings:
    return settings(
        max_examples=EXAMPLES[group],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@_settings("vhdx")
@given(data=st.data())
def test_fuzz_vhdx(workspace: Workspace, data: st.DataObject) -> None:
    _fuzz(workspace, "vhdx", data)


@_settings("vhdx-chain")
@given(data=st.data())
def test_fuzz_vhdx_chains(workspace: Workspace, data: st.DataObject) -> None:
    _fuzz(workspace, "vhdx-chain", data)


@_settings("vhd")
@given(data=st.data())
def test_fuzz_vhd(workspace: Workspace, data: st.DataObject) -> None:
    _fuzz(workspace, "vhd", data)


@_settings("raw")
@given(data=st.data())
def test_fuzz_raw(workspace: Workspace, data: st.DataObject) -> None:
    _fuzz(workspace, "raw", data)


@_settings("write")
@given(data=st.data())
def test_fuzz_writes(workspace: Workspace, data: st.DataObject) -> None:
    """The same, plus an r+ open of a copy: writes read back, refusals change nothing."""
    _fuzz(workspace, "write", data, write=True)


# -- the harness itself: it must see what it is meant to catch ---------------------------


def _one(workspace: Workspace) -> dict[str, object]:
    return {"seed": "vhd-dynamic", "file": "disk.vhd", "ops": []}


def test_harness_records_an_escape(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyvhdx.check

    def broken(*args: object, **kw: object) -> None:
        raise KeyError("not a pyvhdx error")

    monkeypatch.setattr(pyvhdx.check, "check_image", broken)
    result = workspace.run(_one(workspace), light=True)
    assert result.status == "escape"
    assert [e["op"] for e in result.escapes] == ["check"]
    assert result.escapes[0]["type"] == "KeyError"


def test_harness_bounds_time(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import pyvhdx.inspect

    monkeypatch.setattr(pyvhdx.inspect, "inspect_image", lambda *a, **k: time.sleep(30))
    result = workspace.run(_one(workspace), light=True, time_limit=0.5)
    assert result.status == "hang"
    assert result.seconds < 5


def test_harness_bounds_memory(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyvhdx.inspect

    monkeypatch.setattr(pyvhdx.inspect, "inspect_image", lambda *a, **k: bytearray(8 << 30))
    with memory_bound(1 << 30):
        result = workspace.run(_one(workspace), light=True)
    assert result.status == "memory"
    assert result.escapes[0]["type"] == "MemoryError"


def test_harness_catches_a_lost_write(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyvhdx

    monkeypatch.setattr(pyvhdx.DiskImage, "write_at", lambda self, offset, data: len(data))
    result = workspace.run(_one(workspace), light=True, write=True)
    assert result.status == "escape"
    assert [e["type"] for e in result.escapes] == ["WriteMismatch"]


def test_harness_catches_a_refused_open_that_wrote(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyvhdx

    real_open = pyvhdx.open

    def open_that_scribbles(path: object, mode: str = "r", **kw: object) -> object:
        if mode == "r+":
            with open(str(path), "r+b") as f:
                f.write(b"X")
            raise pyvhdx.InvalidImageError("refused", structure="test")
        return real_open(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pyvhdx, "open", open_that_scribbles)
    result = workspace.run(_one(workspace), light=True, write=True)
    assert result.status == "escape"
    assert "refused r+ open changed" in result.escapes[0]["message"]
