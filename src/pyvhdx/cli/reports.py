"""The human (and qemu-style JSON) reports of the subcommands, from library results.

Each function takes what the library returned (``ImageInfo``, a check report,
allocation runs, an inspect report, a ``MergeResult``) and returns rows or lines
for :mod:`pyvhdx.cli.render`; none parses arguments or opens images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from ..constants import DiskType, RunKind
from ..info import ImageInfo
from .render import INDENT, Row, cell, format_size, key_label, printable, render_fields

if TYPE_CHECKING:
    from ..image import DiskImage
    from ..merge import MergeResult

_IDENTIFIER_LABELS = {"vhdx": "page 83 id", "vhd": "unique id"}


def _size(size: int | None) -> str | None:
    return None if size is None else format_size(size)


def _present(rows: list[tuple[str, Any]]) -> list[Row]:
    """The rows whose value is not None (fields the image does not have are left out)."""
    return [(label, value) for label, value in rows if value is not None]


def backing_chain(img: DiskImage) -> list[DiskImage]:
    """``img`` and its open parents, child first (``qemu-img info --backing-chain``)."""
    chain = [img]
    while chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    return chain


def backing_keys(img: DiskImage) -> dict[str, Any]:
    """qemu-img info's keys for the parent of a differencing disk: ``backing-filename``
    (the parent's file as opened; when it is not found, the first path the image
    records), ``full-backing-filename`` and ``backing-filename-format``. Empty for a
    disk without a parent."""
    parent = img.parent
    if parent is not None:
        from ..remote import is_url

        name = parent.name  # a URL as it is (abspath made s3://b/x a path under the cwd)
        return {
            "backing-filename": name,
            "full-backing-filename": name if is_url(name) else os.path.abspath(name),
            "backing-filename-format": parent.format.value,
        }
    if img.disk_type is not DiskType.DIFFERENCING:
        return {}
    recorded = [path for _, path in img.handler.parent_locations() if path]
    return {"backing-filename": recorded[0]} if recorded else {}


def info_json(
    img: DiskImage, info: ImageInfo | None = None, *, backing_image: bool = True
) -> dict[str, Any]:
    """``pyvhdx info --json`` of an open image, in qemu-img's ``ImageInfo`` shape:
    :meth:`ImageInfo.to_dict`, with the parent's record (its locator, as the image
    holds it) under ``parent``, the :func:`backing_keys` and, with ``backing_image``,
    ``backing-image``: the parent's own info, recursively (its parent's inside)."""
    info = img.info() if info is None else info
    data = info.to_dict()
    record = data.pop("backing-image", None)  # ImageInfo.to_dict's: the parent locator
    specific = data.pop("format-specific", None)
    if record is not None:
        data["parent"] = record
    data.update(backing_keys(img))
    if backing_image and img.parent is not None:
        data["backing-image"] = info_json(img.parent)
    if specific is not None:
        data["format-specific"] = specific
    return data


def info_rows(info: ImageInfo, backing: Mapping[str, Any] | None = None) -> list[Row]:
    """The human ``pyvhdx info`` report as rows for :func:`render_fields`; ``backing``:
    the image's :func:`backing_keys` (a parent not opened is shown as not found)."""
    identifier = None if info.identifier is None else str(info.identifier)
    backing = backing or {}
    backing_file = backing.get("backing-filename")
    if backing_file is not None:
        full = backing.get("full-backing-filename")
        where = "not found" if full is None else f"actual path: {full}"
        backing_file = f"{backing_file} ({where})" if full != backing_file else backing_file
    return _present(
        [
            ("image", info.filename),
            ("file format", info.format),
            ("disk type", info.disk_type),
            ("virtual size", format_size(info.virtual_size)),
            ("file size", format_size(info.file_size)),
            ("allocated on storage", _size(info.allocated_size)),
            ("minimum size", _size(info.minimum_size)),
            ("block size", _size(info.block_size)),
            ("logical sector size", format_size(info.logical_sector_size)),
            ("physical sector size", format_size(info.physical_sector_size)),
            ("creator", info.creator),
            (_IDENTIFIER_LABELS.get(info.format, "identifier"), identifier),
            ("log replayed", info.log_replayed),
            ("header copy", info.header_copy),
            ("region table copy", info.region_table_copy),
            ("failed copies", [str(c) for c in info.failed_copies]),
            ("problems", [str(p) for p in info.problems]),
            ("allocation", None if info.allocation is None else info.allocation.to_dict()),
            ("backing file", backing_file),
            ("backing file format", backing.get("backing-filename-format")),
            ("parent", info.parent),
            ("format specific information", info.format_specific or None),
        ]
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def check_lines(report: Any) -> list[str]:
    """The human ``pyvhdx check`` report: one line per finding, then a summary."""
    lines = [f"{report.filename}: {report.format} {report.disk_type or ''}".rstrip()]
    for f in report.findings:
        where = f" at {f.offset:#x}" if f.offset is not None else ""
        field = f" ({f.field})" if f.field else ""
        lines.append(f"{f.severity.value}: {f.structure}{where}{field}: {printable(f.message)}")
        if f.repair:
            lines.append(f"{INDENT}repair: {f.repair}")
    errors, warns = len(report.errors), len(report.warnings)
    summary = _count(errors, "error") if errors else "No errors were found on the image."
    if warns:
        summary += (", " if errors else " ") + _count(warns, "warning")
    if report.total_blocks is not None and report.allocated_blocks is not None:
        unit = "" if report.block_size is None else f" of {report.block_size} bytes"
        summary += f"\n{report.allocated_blocks}/{report.total_blocks} blocks{unit} allocated"
    if report.image_end_offset is not None:
        summary += f"\nImage end offset: {report.image_end_offset}"
    if not report.opened:
        summary += "\nThe image cannot be opened for reading."
    lines.append(summary)
    return lines


_MAP_KINDS = {
    RunKind.DATA: "data",
    RunKind.ZERO: "zero",
    RunKind.UNMAPPED: "unallocated",
    RunKind.PARENT: "parent (not open)",
}


def map_entry(run: Any) -> dict[str, Any]:
    """A ``qemu-img map --output=json`` entry (qapi ``MapEntry``) for one run.

    ``offset`` is present for data only (qemu also gives it for raw holes).
    Ranges a missing parent should supply are ``depth`` one further down and
    neither present, zero nor data.
    """
    missing = run.kind is RunKind.PARENT
    data = run.kind is RunKind.DATA
    entry = {
        "start": run.start,
        "length": run.length,
        "depth": run.depth + 1 if missing else run.depth,
        "present": not missing,
        "zero": run.reads_zero and not missing,
        "data": data,
    }
    if data:
        entry["offset"] = run.file_offset
    return entry


def merged_map_entries(runs: Iterable[Any]) -> Iterable[dict[str, Any]]:
    """Map entries, adjacent ones with equal flags (and contiguous data) merged, as qemu."""
    pending: dict[str, Any] | None = None
    for run in runs:
        e = map_entry(run)
        if (
            pending is not None
            and all(pending[k] == e[k] for k in ("depth", "present", "zero", "data"))
            and (not e["data"] or e["offset"] == pending["offset"] + pending["length"])
        ):
            pending["length"] += e["length"]
            continue
        if pending is not None:
            yield pending
        pending = e
    if pending is not None:
        yield pending


def _json_entry(e: Mapping[str, Any]) -> str:
    """One entry in qemu-img's layout: ``{ "start": 0, ..., "offset": 5}``."""
    return "{ " + ", ".join(f'"{k}": {json.dumps(v)}' for k, v in e.items()) + "}"


def map_json(runs: Iterable[Any]) -> str:
    """The entries of ``qemu-img map --output=json`` (merged as qemu merges them), as
    the whole text: built before anything is printed, so that an image error met
    half-way prints no JSON at all (the merged runs of a disk are few)."""
    return "[" + ",\n".join(_json_entry(e) for e in merged_map_entries(runs)) + "]\n"


def map_table(out: TextIO, runs: Iterable[Any], *, chain: bool) -> None:
    """Write the human map: one line per run, as it is streamed.

    ``chain`` (a differencing disk): every run names the image that holds it
    (``depth`` 0 is the image mapped, 1 its parent, ...), zero runs included,
    since a child's ZERO block hides its parent's data. A range whose parent is
    not open names no file and is one level deeper, as in the JSON map.
    """
    kind_width = 18 if chain else 14
    head = f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}{'Kind':<{kind_width}}"
    out.write(head + (f"{'Depth':<7}" if chain else "") + "File\n")
    for run in runs:
        data = run.kind is RunKind.DATA
        kind = _MAP_KINDS[run.kind] + (" (hole)" if run.hole else "")
        mapped = f"{run.file_offset:#x}" if data else "-"
        line = f"{run.start:<#16x}{run.length:<#16x}{mapped:<16}{kind:<{kind_width}}"
        if chain:
            missing = run.kind is RunKind.PARENT
            line += f"{run.depth + 1 if missing else run.depth:<7}"
            name = "-" if missing else printable(run.filename)
        else:
            name = printable(run.filename) if data else ""
        out.write(f"{line}{name}".rstrip() + "\n")


_HEX_SHOWN = 64  # bytes of an item's hex shown by the human inspect report


def _metadata_row(item: Mapping[str, Any]) -> dict[str, Any]:
    """One metadata item as a table row: flags as letters, the value in a few words."""
    flags = "".join(
        c for c, k in (("U", "is-user"), ("V", "is-virtual-disk"), ("R", "is-required")) if item[k]
    )
    value = item.get("value")
    if isinstance(value, Mapping) and "values" in value:
        text = f"{len(value['values'])} keys (see parent locator)"
    elif isinstance(value, Mapping):
        text = ", ".join(f"{key_label(k)} {cell(k, v)}" for k, v in value.items() if k != "flags")
    elif value is not None:
        text = cell(str(item.get("name", "")), value)
    elif "data-hex" in item:
        text = item["data-hex"][:32] + ("..." if len(item["data-hex"]) > 32 else "")
    else:
        text = ""
    if "error" in item:
        text = f"error: {item['error']}" + (f"; {text}" if text else "")
    known = item["name"] not in ("user", "unknown")
    return {
        "item": item["name"] if known else f"{item['name']} {item['item-id']}",
        "file-offset": item["file-offset"],
        "length": item["length"],
        "flags": flags or "-",
        "value": text,
    }


def _human_view(value: Any) -> Any:
    """The inspect report trimmed for people: digests dropped, hex and reserved areas short."""
    if isinstance(value, Mapping) and "item-id" in value and "is-user" in value:
        return _metadata_row(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        log_entry = "zero-descriptors" in value and "data-descriptors" in value
        for k, v in value.items():
            if k in ("old-sha256", "new-sha256"):
                continue
            if log_entry and k in ("file-offset", "descriptor-count", "zero-descriptors"):
                continue
            if log_entry and k == "data-descriptors":
                k, v = "descriptors", f"{value['zero-descriptors']} zero, {v} data"
            if k == "data-hex" and isinstance(v, str) and len(v) > 2 * _HEX_SHOWN:
                v = v[: 2 * _HEX_SHOWN] + "..."
            elif k.startswith("reserved") and isinstance(v, Mapping) and "nonzero-bytes" in v:
                k, v = f"{k}-nonzero-bytes", v["nonzero-bytes"]
            out[k] = _human_view(v)
        return out
    if isinstance(value, list):
        return [_human_view(v) for v in value]
    return value


def inspect_lines(report: Mapping[str, Any]) -> list[str]:
    """The human ``pyvhdx inspect`` report."""
    view = dict(_human_view(report))
    metadata = view.get("metadata")
    if isinstance(metadata, dict) and "items" in metadata:
        metadata["item flags"] = "U user, V virtual disk, R required"
        metadata["items"] = metadata.pop("items")  # after the flags legend
    probe = view.pop("open", {})
    errors = [f"{e['section']}: {e['message']}" for e in view.pop("errors", [])]
    if probe.get("opens"):
        opens = "yes" + (", log replayed in memory" if probe.get("log-replayed") else "")
    else:  # the error of the open heads the errors, even when every structure decodes
        opens = "no (see errors)"
        errors.insert(0, f"open: {probe.get('error', 'unknown error')}")
    head: list[Row] = [
        ("image", view.pop("filename")),
        ("format", view.pop("format")),
        ("file size", format_size(view.pop("file-size"))),
        ("opens", opens),
    ]
    problems = [
        f"{p['structure']}{' at ' + hex(p['offset']) if 'offset' in p else ''}: {p['message']}"
        for p in probe.get("problems", [])
    ]
    if problems:
        head.append(("problems", problems))
    head.append(("errors", errors))
    lines = render_fields(head, tables=True)
    for key, value in view.items():
        lines.append("")
        lines.extend(render_fields([(key, value)], tables=True))
    return lines


def created_rows(
    info: ImageInfo, size: int, requested: int | None, parent: str | None
) -> list[Row]:
    """The human ``pyvhdx create`` report: what was made (``parent``: a child of it)."""
    base = parent is None
    return _present(
        [
            ("created", info.filename),
            ("file format", info.format),
            ("disk type", info.disk_type),
            ("parent", parent),
            ("virtual size", format_size(size)),
            ("requested size", _size(requested) if base and requested != size else None),
            ("block size", _size(info.block_size)),
            ("logical sector size", format_size(info.logical_sector_size)),
            ("physical sector size", format_size(info.physical_sector_size)),
            ("file size", format_size(info.file_size)),
            ("creator", info.creator if base else None),
            ("parent locator", None if base else info.parent),
        ]
    )


def merge_rows(result: MergeResult) -> list[Row]:
    """The human ``pyvhdx merge`` report."""
    kept = "kept (it no longer matches its parent)"
    resumed = "yes: an interrupted merge of this child was finished"
    return _present(
        [
            ("merged", str(result.child)),
            ("into", str(result.parent)),
            ("bytes merged", format_size(result.bytes_merged)),
            ("child", "deleted" if result.child_deleted else kept),
            ("resumed", resumed if result.resumed else None),
            ("re-parented", [str(p) for p in result.reparented] or None),
        ]
    )
