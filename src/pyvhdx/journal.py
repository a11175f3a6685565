"""The merge record: what makes an interrupted merge readable and resumable.

Merging a differencing disk writes its ranges into the parent. For a VHDX
parent the first write gives it a new DataWriteGuid (MS-VHDX 2.2.2), after which
the child's ``parent_linkage`` no longer names it and the chain would refuse to
open. So before the first write into the parent, ``merge_image`` (in the
``pyvhdx.merge`` module) records the merge durably in a small JSON file beside the child
(``CHILD.pyvhdx-merge``): the parent, its identity before the merge and the one
it gets (chosen in advance), and the children of CHILD to re-parent. While the
record is there:

* the chain opens: a parent whose identity is the recorded "after" one is
  accepted for the child whose linkage names the "before" one (reading the
  child over a partly merged parent gives the chain's content, since every
  range the merge writes is one the child overlays);
* ``info`` and ``check`` report the merge in progress, and ``pyvhdx merge CHILD``
  resumes and finishes it (every write of a merge is idempotent).

The record is removed last, after the child is deleted (a record whose child
is gone is left from a finished merge: readers ignore it, the next
``pyvhdx merge CHILD`` removes it). Reading a record never writes anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .newfile import fsync_dir, new_file

__all__ = [
    "RECORD_SUFFIX",
    "RESIZE_SUFFIX",
    "MergeRecord",
    "merge_notes",
    "read_record",
    "record_path",
    "records_naming_parent",
    "remove_record",
    "write_record",
]

RECORD_SUFFIX = ".pyvhdx-merge"
RESIZE_SUFFIX = ".pyvhdx-resize"
_VERSION = 1
_MAX_RECORD = 1 << 20  # a record is a few hundred bytes; refuse to parse anything huge


@dataclass(frozen=True)
class MergeRecord:
    """A merge of ``child`` into ``parent`` that has started and not finished.

    ``parent_before`` and ``parent_after`` are the parent's identity as a child
    links to it (VHDX DataWriteGuid, VHD Unique Id) before and after the merge
    (equal for VHD, whose writes keep the Unique Id). ``children`` are the file
    names (beside the child) of the child's own children, re-parented onto
    ``parent`` before the child is deleted.
    """

    child: str
    parent: str
    format: str
    parent_before: str
    parent_after: str
    children: tuple[str, ...] = field(default_factory=tuple)
    version: int = _VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["children"] = list(self.children)
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    def parent_path(self, child_path: Path) -> Path:
        """The parent's path (stored relative to the child's folder when inside it)."""
        return Path(os.path.realpath(child_path.parent / self.parent))

    def accepts(self, identity: str) -> bool:
        """Whether ``identity`` is the parent's identity before or after this merge."""
        return _norm(identity) in (_norm(self.parent_before), _norm(self.parent_after))


def _norm(identity: str) -> str:
    text = identity.strip().strip("{}").lower()
    with contextlib.suppress(ValueError):
        return str(uuid.UUID(text))
    return text


def record_path(child: str | os.PathLike[str]) -> Path:
    """Where the merge record of ``child`` lives: ``CHILD.pyvhdx-merge`` beside it."""
    p = Path(child)
    return p.with_name(p.name + RECORD_SUFFIX)


def read_record(child: str | os.PathLike[str]) -> MergeRecord | None:
    """The merge record of ``child``, or None when there is none or it is unusable.

    A record that does not parse (a torn write cannot happen: it is written
    under a temporary name and renamed) is treated as absent; ``check`` reports it.
    """
    path = record_path(child)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_RECORD + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    return parse_record(raw)


def parse_record(raw: bytes) -> MergeRecord | None:
    """A record from its JSON text, or None if it is not a valid version-1 record."""
    if len(raw) > _MAX_RECORD:
        return None
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or d.get("version") != _VERSION:
        return None
    strings = ("child", "parent", "format", "parent_before", "parent_after")
    if not all(isinstance(d.get(k), str) for k in strings):
        return None
    children = d.get("children", [])
    if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
        return None
    if any(os.sep in c or c in ("", ".", "..") for c in [d["child"], *children]):
        return None
    return MergeRecord(
        child=d["child"],
        parent=d["parent"],
        format=d["format"],
        parent_before=d["parent_before"],
        parent_after=d["parent_after"],
        children=tuple(children),
    )


def write_record(child: str | os.PathLike[str], record: MergeRecord) -> Path:
    """Write ``record`` beside ``child`` durably, under a temporary name renamed into
    place (:func:`pyvhdx.newfile.new_file`: fsync, rename, fsync of the folder)."""
    path = record_path(child)
    data = memoryview(record.to_json().encode("utf-8"))
    with new_file(path, overwrite=True) as out:
        done = 0
        while done < len(data):
            done += os.write(out.fd, data[done:])
    return path


def remove_record(child: str | os.PathLike[str]) -> None:
    """Remove the merge record of ``child`` (if any), durably."""
    _remove(record_path(child))


def _remove(path: Path) -> None:
    """Unlink ``path`` if it is there, and make that durable (fsync of the folder)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def records_naming_parent(parent: str | os.PathLike[str]) -> list[tuple[Path, MergeRecord]]:
    """Merge records in ``parent``'s folder whose merge writes into ``parent``."""
    target = Path(os.path.realpath(parent))
    out: list[tuple[Path, MergeRecord]] = []
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return out
    for name in names:
        if not name.endswith(RECORD_SUFFIX) or name.startswith("."):
            continue
        child = target.parent / name[: -len(RECORD_SUFFIX)]
        rec = read_record(child)
        if rec is not None and child.exists() and rec.parent_path(child) == target:
            out.append((child, rec))
    return out


def merge_notes(image: str | os.PathLike[str]) -> list[str]:
    """What ``info`` and ``check`` say about merges in progress that involve ``image``."""
    path = Path(os.path.realpath(image))
    notes = []
    rec = read_record(path)
    if rec is not None and not path.exists():
        notes.append(f"{record_path(path).name} is left from a finished merge")
    elif rec is not None:
        notes.append(
            f"a merge of {path.name} into {rec.parent} is in progress (interrupted?): "
            f"'pyvhdx merge {path.name}' finishes it"
        )
    elif record_path(path).exists():
        notes.append(f"{record_path(path).name} is not a merge record pyvhdx can read")
    for child, _rec in records_naming_parent(path):
        notes.append(
            f"a merge of {child.name} into this disk is in progress (interrupted?): "
            f"'pyvhdx merge {child.name}' finishes it"
        )
    return notes


# -- resize records: a VHD's two footer copies cannot change at once ----------------------


def _resize_path(image: str | os.PathLike[str]) -> Path:
    p = Path(os.path.realpath(image))
    return p.with_name(p.name + RESIZE_SUFFIX)


def write_resize_record(image: str | os.PathLike[str], old_size: int, new_size: int) -> None:
    """Record, durably, that ``image`` is being resized (``IMAGE.pyvhdx-resize``)."""
    text = json.dumps({"version": _VERSION, "old_size": old_size, "new_size": new_size})
    with new_file(_resize_path(image), overwrite=True) as out:
        os.write(out.fd, text.encode("utf-8"))


def read_resize_record(image: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(old size, new size)`` of a resize of ``image`` in progress, if recorded."""
    try:
        with open(_resize_path(image), "rb") as f:
            d = json.loads(f.read(_MAX_RECORD).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    sizes = (d.get("old_size"), d.get("new_size")) if isinstance(d, dict) else (None, None)
    if not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    return sizes  # type: ignore[return-value]


def remove_resize_record(image: str | os.PathLike[str]) -> None:
    """Remove the resize record of ``image`` (if any), durably."""
    _remove(_resize_path(image))


def resize_notes(image: str | os.PathLike[str]) -> list[str]:
    """What ``check`` says about a resize of ``image`` in progress."""
    sizes = read_resize_record(image)
    if sizes is None:
        return []
    return [
        f"a resize of {Path(image).name} from {sizes[0]} to {sizes[1]} bytes is in progress "
        f"(interrupted?): 'pyvhdx resize {Path(image).name} {sizes[1]}' finishes it"
    ]
