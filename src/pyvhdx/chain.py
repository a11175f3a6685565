"""Differencing disks: find, confine and verify a child's parent (DESIGN.md "Parents").

Resolution order: an explicit parent from the caller; then the locator paths in
the order the spec gives (VHDX: relative_path, volume_path, absolute_win32_path,
MS-VHDX 2.6.2.6; VHD: W2ru, W2ku, then the parent name). An image is untrusted,
so by default a locator is never opened where it points: each candidate is
re-rooted to the child's directory (a relative path that stays inside it, else
the path's base name beside the child). The parent's identity is verified
against the child's linkage (VHDX DataWriteGuid, VHD unique id) before use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["MAX_CHAIN_DEPTH", "candidate_paths"]

MAX_CHAIN_DEPTH = 64  # deeper chains are refused (Hyper-V's own limit is far lower)

_DEVICE_PREFIX = re.compile(r"^(\\\\[?.]\\)", re.IGNORECASE)


def _parts(path: str) -> tuple[bool, list[str]]:
    """(is_absolute, components) of a Windows or POSIX locator path."""
    text = path.replace("\0", "")
    device = _DEVICE_PREFIX.match(text) is not None  # \\?\C:\..., \\?\Volume{...}\...
    text = _DEVICE_PREFIX.sub("", text)
    if "\\" in text or re.match(r"^[A-Za-z]:", text):
        win = PureWindowsPath(text)
        absolute = device or bool(win.drive) or text.startswith("\\")
        parts = [p for p in win.parts if p not in (win.anchor, "\\", "/")]
    else:
        posix = PurePosixPath(text)
        absolute = device or posix.is_absolute()
        parts = [p for p in posix.parts if p != "/"]
    return absolute, parts


def candidate_paths(child_dir: Path, locators: list[tuple[str, str]]) -> list[Path]:
    """Where to look for the parent, confined to ``child_dir``, in order, no duplicates.

    A relative locator whose components stay inside ``child_dir`` is tried as
    it is; every locator is also tried as its base name beside the child.
    Nothing outside ``child_dir`` is ever returned.
    """
    out: list[Path] = []
    root = child_dir.resolve()

    def add(p: Path) -> None:
        try:
            resolved = p.resolve()
        except (OSError, RuntimeError, ValueError):  # ValueError: unencodable (lone surrogate)
            return
        inside = resolved == root or root in resolved.parents
        if inside and resolved not in out:
            out.append(resolved)

    for _name, path in locators:
        if not path or len(path) > 32768:
            continue
        absolute, parts = _parts(path)
        parts = [p for p in parts if p not in ("", ".")]
        if not parts:
            continue
        if not absolute and ".." not in parts and all(_safe_component(p) for p in parts):
            add(child_dir.joinpath(*parts))
        base = parts[-1]
        if _safe_component(base):
            add(child_dir / base)
    return out


def _safe_component(name: str) -> bool:
    return name not in ("..", ".") and os.sep not in name and "/" not in name and len(name) < 4096
