"""Every ``pyvhdx.a.b`` name the sources and the README mention resolves.

``pyvhdx.create``, ``pyvhdx.convert`` and ``pyvhdx.merge`` are the package's
functions, which shadow the submodules of those names as attributes: a dotted
name through them (``pyvhdx.create.create_vhd``) raises AttributeError, so no
text may use one. Import statements in the text (``from pyvhdx.create import
create_vhd``) must work as written.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import pyvhdx

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "pyvhdx"
DOTTED = re.compile(r"(?<![\w.])pyvhdx(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"from (pyvhdx(?:\.\w+)*) import (\w+(?:, \w+)*)")


def _texts() -> list[tuple[str, str]]:
    files = [*sorted(SRC.rglob("*.py")), ROOT / "README.md"]
    return [(str(f.relative_to(ROOT)), f.read_text(encoding="utf-8")) for f in files]


def _import_all_submodules() -> None:
    for info in pkgutil.walk_packages(pyvhdx.__path__, "pyvhdx."):
        if info.name != "pyvhdx.__main__":
            importlib.import_module(info.name)


def _resolve(dotted: str) -> object:
    obj: object = pyvhdx
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def test_every_dotted_name_resolves_by_attribute() -> None:
    _import_all_submodules()
    missing = []
    for where, text in _texts():
        for name in sorted(set(DOTTED.findall(text))):
            try:
                _resolve(name)
            except AttributeError:
                missing.append(f"{where}: {name}")
    assert missing == []


def test_import_statements_in_the_text_work() -> None:
    statements = {m.group(0) for _, text in _texts() for m in FROM_IMPORT.finditer(text)}
    assert statements  # the texts show such statements
    for statement in sorted(statements):
        exec(statement, {})


def test_shadowing_functions_stay_the_readme_api() -> None:
    """The README's pyvhdx.create/convert/merge are functions; their modules import."""
    for name in ("create", "convert", "merge"):
        assert callable(getattr(pyvhdx, name))
        assert importlib.import_module(f"pyvhdx.{name}").__name__ == f"pyvhdx.{name}"
    from pyvhdx.create import create_azure_vhd, create_vhd_child, create_vhdx_child

    assert all(callable(f) for f in (create_azure_vhd, create_vhd_child, create_vhdx_child))


@pytest.mark.parametrize("name", ["pyvhdx.create.create_vhd", "pyvhdx.merge.merge_image"])
def test_the_detector_catches_a_shadowed_path(name: str) -> None:
    _import_all_submodules()
    with pytest.raises(AttributeError):
        _resolve(name)
