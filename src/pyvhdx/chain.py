"""Differencing disks: find, confine and verify a child's parent (DESIGN.md "Parents").

Resolution order: an explicit parent from the caller; then the locator paths in
the order the spec gives (VHDX: relative_path, volume_path, absolute_win32_path,
MS-VHDX 2.6.2.6; VHD: W2ru, W2ku, then the parent name). An image is untrusted,
so by default a locator is never opened where it points: each candidate is
re-rooted to the child's directory (a relative path that stays inside it, else
the path's base name beside the child). The parent's identity is verified
against the child's linkage (VHDX DataWriteGuid, VHD unique id) before use.

:func:`attach_parent` runs the search. It opens no file itself: the caller
injects an ``opener`` (as pyelftools' ``stream_loader``), which
:func:`pyvhdx.image.open_image` makes with the child's options (read-only,
``force_share`` inherited, the chain seen so far to catch loops).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, BinaryIO

from .errors import ParentError
from .journal import MergeRecord, read_record, records_naming_parent
from .problems import Problem

if TYPE_CHECKING:
    from .base import FormatHandler
    from .image import DiskImage

__all__ = [
    "MAX_CHAIN_DEPTH",
    "ParentOpener",
    "Place",
    "attach_parent",
    "candidate_paths",
    "image_path",
    "local_place",
    "locator_parts",
    "merge_problems",
]

ParentOpener = Callable[["Path | BinaryIO", frozenset[Path]], "DiskImage"]
"""Opens a candidate parent (a path, or a remote object beside a remote child; the
chain's paths so far) with its own chain."""

Place = tuple[str, Callable[[], "Path | BinaryIO"]]
"""A candidate parent: its name (in ``tried`` and messages) and what gives the opener
its path or file object (whose resolved path, :func:`image_path`, is its key in the
chain's loop check), or raises FileNotFoundError if there is none."""

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

    for parts in locator_parts(locators):
        add(child_dir.joinpath(*parts))
    return out


def locator_parts(locators: list[tuple[str, str]]) -> Iterator[tuple[str, ...]]:
    """The components of each place to try below the child's folder, in order: a
    relative locator that stays inside it as it is, then every locator's base name
    (:func:`candidate_paths`; remote children use it too, :mod:`pyvhdx.remote`)."""
    for _name, path in locators:
        if not path or len(path) > 32768:
            continue
        absolute, parts = _parts(path)
        parts = [p for p in parts if p not in ("", ".")]
        if not parts:
            continue
        if not absolute and ".." not in parts and all(_safe_component(p) for p in parts):
            yield tuple(parts)
        if _safe_component(parts[-1]):
            yield (parts[-1],)


def _safe_component(name: str) -> bool:
    return name not in ("..", ".") and os.sep not in name and "/" not in name and len(name) < 4096


# -- the search ---------------------------------------------------------------------


def image_path(file: str | os.PathLike[str] | BinaryIO) -> Path:
    """The resolved path of an image given as a path or a file object (its ``name``)."""
    if isinstance(file, (str, os.PathLike)):
        return Path(file).resolve()
    name = getattr(file, "name", None)
    return Path(name).resolve() if isinstance(name, str) else Path.cwd() / "<file object>"


class _Verifier:
    """Decides whether an open image is the child's parent (identity or merge record)."""

    def __init__(self, child: DiskImage, here: Path, verify: bool, *, journal: bool) -> None:
        self.handler = child.handler
        self.here = here
        self.verify = verify
        # an interrupted merge of this disk into its parent (a local disk's journal)
        self.record = read_record(here) if journal else None

    def mismatch(self, parent: DiskImage, where: str) -> str | None:
        """Why ``parent`` is not the child's parent, or None when it is."""
        h = self.handler
        ok, why = h.parent_identity_matches(parent.handler)
        record = self.record
        merging = record is not None and _merge_accepts(record, self.here, h, parent)
        if not (ok or merging or not self.verify):
            return f"{where}: identity mismatch ({why})"
        if record is not None and merging:
            h.problems.append(
                Problem(
                    "merge",
                    f"a merge of {self.here.name} into {record.parent} is in progress "
                    f"(interrupted?): the chain reads as before it; "
                    f"'pyvhdx merge {self.here.name}' finishes it",
                )
            )
        return None


def attach_parent(
    img: DiskImage,
    file: str | os.PathLike[str] | BinaryIO,
    explicit: str | os.PathLike[str] | DiskImage | None,
    *,
    opener: ParentOpener,
    allow_missing: bool = False,
    verify: bool = True,
    seen: frozenset[Path] = frozenset(),
    places: list[Place] | None = None,
) -> None:
    """Find, open and verify the parent of the differencing disk ``img``; attach it.

    Args:
        img: the open child.
        file: what the child was opened from (its folder is where parents are looked up).
        explicit: a parent given by the caller: an open image (used as it is,
            not owned) or a path (the only candidate).
        opener: opens a candidate, given the chain's paths so far.
        allow_missing: a missing parent is a problem of ``img`` (its data reads
            as zeros), not an error.
        verify: check the parent's identity against the child's linkage.
        seen: the paths of the chain's children so far (loop and depth checks).
        places: the candidates, in order, instead of the paths on disk beside
            ``file`` (or ``explicit``); no merge journal is read then (a remote
            child: :func:`pyvhdx.remote.attach_remote_parent`).

    Raises:
        ParentError: the parent is missing, not the child's, or the chain loops
            or is deeper than :data:`MAX_CHAIN_DEPTH`.
    """
    here = image_path(file)
    seen = seen | {here}
    if len(seen) > MAX_CHAIN_DEPTH:
        raise ParentError(
            f"differencing chain deeper than {MAX_CHAIN_DEPTH} images", tried=[str(here)]
        )
    verifier = _Verifier(img, here, verify, journal=places is None)
    if explicit is not None and not isinstance(explicit, (str, os.PathLike)):
        bad = verifier.mismatch(explicit, explicit.name)
        if bad:
            raise ParentError(
                f"the given parent is not this disk's parent: {bad}", tried=[explicit.name]
            )
        img.attach_parent(explicit, owned=False)
        return
    if places is None:
        if explicit is not None:
            paths = [Path(explicit)]
        else:
            paths = candidate_paths(here.parent, img.handler.parent_locations())
        places = [local_place(path) for path in paths]
    tried: list[str] = []
    reasons = _Reasons(given=explicit is not None)
    for place in places:
        tried.append(place[0])
        parent = _open_candidate(place, seen, opener, verifier, reasons, tried)
        if parent is not None:
            img.attach_parent(parent, owned=True)
            return
    _parent_missing(img, tried, reasons, allow_missing)


def local_place(path: Path) -> Place:
    """The candidate file ``path`` (a directory, a FIFO... is not found)."""

    def where() -> Path:
        if not path.is_file():
            raise FileNotFoundError(path)
        return path

    return str(path), where


class _Reasons(list[str]):
    """Why each candidate was not the parent. A path the caller gave (``given``) that
    is not the parent is an error at once."""

    def __init__(self, *, given: bool) -> None:
        super().__init__()
        self.given = given


def _open_candidate(
    place: Place,
    seen: frozenset[Path],
    opener: ParentOpener,
    verifier: _Verifier,
    reasons: _Reasons,
    tried: list[str],
) -> DiskImage | None:
    """The image at ``place`` if it is the parent; else None, with the reason appended."""
    name, where = place
    try:
        target = where()
    except FileNotFoundError:
        reasons.append(f"{name}: not found")
        return None
    except OSError as exc:  # a name the file system refuses (too long, no access)
        reasons.append(f"{name}: {exc.strerror or exc}")
        return None
    if image_path(target) in seen:
        raise ParentError(f"differencing chain loops back to {name}", tried=tried)
    try:
        parent = opener(target, seen)
    except OSError as exc:  # there but unreadable: a parent that cannot be used
        reasons.append(f"{name}: cannot be read ({exc.strerror or exc})")
        return None
    bad = verifier.mismatch(parent, name)
    if bad:
        parent.close()
        if reasons.given:
            raise ParentError(f"the given parent is not this disk's parent: {bad}", tried=tried)
        reasons.append(bad)
        return None
    return parent


def _parent_missing(img: DiskImage, tried: list[str], reasons: list[str], allow: bool) -> None:
    """No candidate was the parent: a problem of ``img`` (``allow``), else ParentError.

    Both name the paths the image records (a parent moved to another folder is
    not looked for there) and how to give the parent instead.
    """
    message = "parent disk not found" if not reasons else "; ".join(reasons)
    if not tried:
        message = "the image names no parent path that can be looked up beside it"
    recorded = _recorded_paths(img.handler.parent_locations())
    if not allow:
        raise ParentError(
            f"{message} (tried: {', '.join(tried) or 'nothing'}){recorded}; give the parent "
            "with --parent PATH (pyvhdx command line) or parent= (pyvhdx.open)",
            tried=tried,
        )
    img.missing_parent = True
    img.handler.problems.append(
        Problem(
            "parent",
            f"{message}{recorded}; data stored in the parent reads as zeros "
            "(--parent PATH or parent= names it)",
        )
    )


def _recorded_paths(locators: list[tuple[str, str]]) -> str:
    """``; the image records the parent as PATH (entry), ...``: the locator paths (relative
    and absolute, MS-VHDX 2.6.2.6; VHD W2ru, W2ku) made printable, or ``""`` if none."""
    shown: list[str] = []
    for name, path in locators:
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path[:300])
        if text and f"{text} ({name})" not in shown:
            shown.append(f"{text} ({name})")
    if not shown:
        return ""
    return (
        f"; the image records the parent as {', '.join(shown)} "
        "(a parent is looked up in the child's folder only)"
    )


def merge_problems(img: DiskImage) -> list[Problem]:
    """Merges in progress into this disk (the child side is reported when it opens)."""
    if img.handler.source.fd is None or not os.path.exists(img.name):
        return []
    return [
        Problem(
            "merge",
            f"a merge of {child.name} into this disk is in progress (interrupted?): "
            f"'pyvhdx merge {child.name}' finishes it",
        )
        for child, _rec in records_naming_parent(img.name)
    ]


class _IdentityBefore:
    """Stands in for a parent whose identity (as a child links to it) is ``identity``."""

    def __init__(self, identity: str) -> None:
        self._identity = identity

    def identity_as_parent(self) -> str:
        return self._identity


def _merge_accepts(record: MergeRecord, child: Path, h: FormatHandler, parent: DiskImage) -> bool:
    """Whether an interrupted merge (``record``) explains a linkage mismatch.

    The parent must be the recorded one and carry the identity the merge gives
    it, and the child's linkage must name the identity the parent had before.
    """
    if record.child != child.name or Path(parent.name).resolve() != record.parent_path(child):
        return False
    if not record.accepts(parent.handler.identity_as_parent()):
        return False
    before = _IdentityBefore(record.parent_before.strip("{}"))
    ok, _why = h.parent_identity_matches(before)  # type: ignore[arg-type]
    return ok
