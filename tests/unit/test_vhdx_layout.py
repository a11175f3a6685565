"""The VHDX layout model: one parse of each structure, shared by the reader, check and inspect."""

from __future__ import annotations

from pathlib import Path

from pyvhdx.check import check_image
from pyvhdx.inspect import inspect_image
from pyvhdx.source import FileSource
from pyvhdx.vhdx import VHDXFile
from pyvhdx.vhdx.layout import parse_parent_locator, vhdx_parent_locator
from tests.vhdxbuild import build_vhdx

LONE = "\ud800"  # an unpaired surrogate: not valid UTF-16, but what the bytes say


def test_parent_locator_round_trips_unpaired_surrogates() -> None:
    item = vhdx_parent_locator([("parent_linkage", "{x}"), ("relative_path", f".\\b{LONE}.vhdx")])
    loc = parse_parent_locator(item, 0)
    assert loc.values["relative_path"] == f".\\b{LONE}.vhdx"
    assert not [d for d in loc.defects if d.code != "no-linkage"]


def test_reader_check_and_inspect_decode_the_locator_alike(tmp_path: Path) -> None:
    """Issue 14: check decoded locator text with errors="replace", the reader and
    inspect with "surrogatepass"; now all three use the layout model (surrogatepass)."""
    path = tmp_path / "child.vhdx"
    kv = {
        "parent_linkage": "{00000000-0000-0000-0000-000000000001}",
        "relative_path": f".\\p{LONE}.vhdx",
    }
    build_vhdx(path, bytes(1 << 20), disk_type="differencing", parent_locator=kv)
    report = inspect_image(path)
    assert report["parent-locator"] == kv
    child = VHDXFile(FileSource(path))
    try:
        assert child.parent_locator == kv
    finally:
        child.close()
    findings = check_image(path).findings
    assert not [f for f in findings if "parent_locator" in f.structure and f.severity == "error"]
