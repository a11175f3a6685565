"""Forensic inspection: every on-disk structure of a VHDX or VHD file, as found.

:func:`inspect_image` parses the structures itself, straight from the file
through a read-only :class:`~pyvhdx.source.FileSource`, so it also reports on
images that :func:`pyvhdx.open` refuses (a damaged copy, a differencing disk
without its parent, a truncated file). Each section that cannot be decoded
records its error and the others go on.

What it reports (issue 7):

* VHDX (MS-VHDX 2.2-2.6): the file identifier; both headers with every field,
  stored and computed CRC-32C and which is current; both region tables; the
  metadata table with every item (known items decoded, others as capped hex
  plus a SHA-256 of the whole item); the parent locator; the log (every entry
  found, the active sequence and what replaying it changes, including stale
  entries of earlier sessions); a BAT summary.
* VHD (VHD spec 2006): both footer copies with every field and checksum, the
  dynamic header, parent locators, time stamps as UTC, the CHS geometry and its
  capacity; a BAT summary.
* Unreferenced space: every file range outside the live structures, each with
  whether it holds non-zero bytes -- a place where old data hides. Reserved
  and unused space inside the formats' areas counts too, named by its place:
  the 1 MiB VHDX header section beyond the file identifier, the two 4 KiB
  headers and the region tables' entries; the metadata table's unused entries
  and the metadata region after the items; the BAT region after the entries;
  a VHD BAT's padding to its sector (expected 0xFF) and a parent locator's
  data space after its data.

Nothing is ever written. A pending VHDX log is replayed in memory only, on this
module's own source, so the metadata and BAT shown are what a reader sees.
Memory stays bounded: the BAT is decoded in chunks with numpy, the file is
scanned in 4 MiB pieces, and holes of sparse files are skipped with SEEK_DATA.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from . import constants as K
from .bat import chunk_ratio, vhdx_bat_entry_count
from .constants import (
    VHD_BAT_UNUSED,
    VHD_DYNAMIC_HEADER_SIZE,
    VHD_FOOTER_SIZE,
    VHD_SECTOR_SIZE,
    ImageFormat,
    PayloadState,
    SectorBitmapState,
    VHDDiskType,
)
from .errors import InvalidImageError, PyvhdxError, PyvhdxWarning
from .image import detect_format
from .info import kebab_fields
from .log import LogState, entry_checksum_ok, entry_headers, load_log, replay_in_memory
from .source import FileSource, data_spans
from .structures.vhdx import (
    FILE_IDENTIFIER,
    METADATA_ENTRY,
    METADATA_TABLE_HEADER,
    REGION_TABLE_ENTRY,
    REGION_TABLE_HEADER,
)
from .vhd import layout as vhd_layout
from .vhd.file import choose_footer
from .vhdx import layout as vhdx_layout
from .vhdx.layout import HeaderCopy, MetadataItem, RegionTableCopy

__all__ = ["HEX_LIMIT", "LIST_LIMIT", "inspect_image"]

I64 = npt.NDArray[np.int64]

#: Bytes of an item shown as hex in the report (the whole item is hashed).
HEX_LIMIT = 4096
#: Longest list in the report (file ranges, gaps, examples); the rest is counted.
LIST_LIMIT = 4096
_EXAMPLES = 16  # examples of each BAT anomaly
_SCAN_CHUNK = 4 << 20  # bytes read at once when scanning for non-zero bytes
_BAT_CHUNK = 1 << 20  # BAT entries decoded at once (8 MiB)
_LOG_SCAN_CRC_BUDGET = 256 << 20  # checksum work of the stale log entry scan
_NIL = uuid.UUID(int=0)
_PAYLOAD_STATE_NAMES = {
    0: "not-present",
    1: "undefined",
    2: "zero",
    3: "unmapped",
    4: "reserved-4",
    5: "unmapped-v0.95",
    6: "fully-present",
    7: "partially-present",
}
_SB_STATE_NAMES = {0: "not-present", 6: "present"}
# Known metadata items other than the parent locator: (bytes needed, parameter set).
_ITEM_LAYOUT: dict[uuid.UUID, tuple[int, str | None]] = {
    K.META_FILE_PARAMETERS: (8, None),
    K.META_VIRTUAL_DISK_SIZE: (8, "virtual-size"),
    K.META_PAGE83_DATA: (16, None),
    K.META_LOGICAL_SECTOR_SIZE: (4, "logical-sector-size"),
    K.META_PHYSICAL_SECTOR_SIZE: (4, None),
}
_VHD_DISK_TYPES = {0: "none", 1: "reserved (1)", 2: "fixed", 3: "dynamic", 4: "differencing"}


# -- small helpers ----------------------------------------------------------------------


def _hex_capped(
    data: bytes, limit: int = HEX_LIMIT, length: int | None = None, sha256: Any = None
) -> dict[str, Any]:
    """Raw bytes for the report: hex of the first ``limit`` bytes and a SHA-256 (``length``
    and ``sha256``: those of the whole item, when ``data`` is only its start)."""
    d: dict[str, Any] = {
        "data-hex": data[:limit].hex(),
        "data-sha256": (sha256 or hashlib.sha256(data)).hexdigest(),
    }
    if (len(data) if length is None else length) > limit:
        d["data-hex-truncated"] = True
    return d


def _reserved(data: bytes) -> dict[str, Any]:
    """A reserved area: all zero (as the spec asks), or how many bytes are not."""
    nonzero = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8)))
    d: dict[str, Any] = {"length": len(data), "nonzero-bytes": nonzero}
    if nonzero:
        d.update(_hex_capped(data, 256))
    return d


def _checksums(copy: Any) -> dict[str, Any]:
    """A structure's stored checksum, the one computed over it, and whether they match."""
    stored, computed = copy.stored_checksum, copy.computed_checksum
    return {"checksum": stored, "computed-checksum": computed, "checksum-valid": stored == computed}


def _limited(items: list[Any], key: str, out: dict[str, Any], total: int | None = None) -> None:
    """Store ``items`` under ``key``, at most LIST_LIMIT of them, counting the rest
    (``total``: how many there are, when ``items`` is already cut)."""
    total = len(items) if total is None else total
    out[key] = items[:LIST_LIMIT]
    if total > LIST_LIMIT:
        out[f"{key}-omitted"] = total - LIST_LIMIT


def _rows(out: list[dict[str, Any]], limit: int, **columns: Any) -> None:
    """Append rows of the equally long arrays ``columns`` (keys in kebab case) to ``out``,
    until it holds ``limit`` rows."""
    room = max(0, limit - len(out))
    keys = [k.replace("_", "-") for k in columns]
    values = [np.asarray(c)[:room].tolist() for c in columns.values()]
    out.extend(dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True))


def _section(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one section; a pyvhdx error is recorded in the report, not raised."""
    try:
        return fn()
    except PyvhdxError as exc:
        report.setdefault("errors", []).append({"section": name, "message": str(exc)})
        return None


def merge_intervals(starts: I64, ends: I64) -> tuple[I64, I64]:
    """Merge ``[start, end)`` intervals (overlapping or touching) into sorted disjoint ones."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.shape[0] == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    brk = np.empty(s.shape[0], dtype=bool)
    brk[0] = True
    np.greater(s[1:], reach[:-1], out=brk[1:])
    idx = np.flatnonzero(brk)
    last = np.append(idx[1:] - 1, s.shape[0] - 1)
    return s[idx], reach[last]


def _merge_parts(parts: list[tuple[I64, I64]], size: int) -> tuple[I64, I64]:
    """Merge several ``(starts, ends)`` interval arrays, clipped to ``[0, size]``, into one."""
    starts, ends = (np.clip(np.concatenate(c), 0, size) for c in zip(*parts, strict=True))
    return merge_intervals(starts, ends)


def _ranges(starts: I64, ends: I64) -> list[dict[str, Any]]:
    return [
        {"offset": s, "length": e - s} for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


# -- scanning the file for non-zero bytes ---------------------------------------------


def scan_nonzero(
    source: FileSource, start: int, end: int, buf: bytearray | None = None, fill: int = 0
) -> tuple[int, int | None, int | None]:
    """Count the non-zero bytes (the bytes other than ``fill``) of the file's own bytes
    in ``[start, end)``.

    Reads storage only (never a log replay overlay), 4 MiB at a time; holes of
    a sparse file are not read (with ``fill`` 0).

    Returns:
        ``(nonzero_bytes, first_nonzero_offset, uniform_byte)``: the offset is
        None when all bytes are ``fill``; ``uniform_byte`` is the value every
        byte has (0 for all zeros, 0xFF for the padding Windows writes), else None.
    """
    mv = memoryview(buf if buf is not None else bytearray(_SCAN_CHUNK))
    count = 0
    first: int | None = None
    values: set[int] = set()
    covered = 0
    # holes are skipped (they read as zeros: not skipped when zero is not the fill)
    spans = data_spans(source.fd, start, end) if fill == 0 else iter([(start, end)])
    for lo, hi in spans:
        pos = lo
        while pos < hi:
            n = min(len(mv), hi - pos)
            got = source.readinto_raw(mv[:n], pos)
            arr = np.frombuffer(mv[:got], dtype=np.uint8)
            covered += got
            if got and len(values) < 2:
                values.update((int(arr.min()), int(arr.max())))
            other = arr != fill
            nz = int(np.count_nonzero(other))
            if nz and first is None:
                first = pos + int(np.argmax(other))
            count += nz
            if got < n:
                break
            pos += n
    if covered < end - start:
        values.add(0)  # holes and bytes past the end read as zeros
    uniform = next(iter(values)) if len(values) == 1 else None
    return count, first, uniform


_REF_CAP = 1 << 62  # beyond any file: structure extents are capped here (int64 arrays)


class _FileRanges:
    """The file ranges an inspector found in use: structures (:meth:`ref`) and
    merged block extents, for the unreferenced-space report; and the named areas
    (:meth:`area`) whose unused space that report names.
    """

    block_map = "block map"  # what must be decoded before the unreferenced space is known

    def __init__(self, source: FileSource, report: dict[str, Any], scan: bool) -> None:
        self.source = source
        self.report = report
        self.scan = scan
        self.size = source.physical_size
        self.refs: tuple[list[int], list[int]] = ([], [])
        self.block_refs: list[tuple[I64, I64]] = []  # merged block extents
        self.bat_ok = False  # the block extents are known
        self.areas: list[tuple[int, int, str, int]] = []  # start, end, name, fill

    def ref(self, start: int, length: int) -> None:
        # Clipped to the file later; capped here so hostile u64 fields fit in int64.
        self.refs[0].append(min(start, _REF_CAP))
        self.refs[1].append(min(start + length, _REF_CAP))

    def area(self, start: int, length: int, name: str, fill: int = 0) -> None:
        """Name the unreferenced space inside ``[start, start + length)``: reserved or
        unused room of a structure or region, whose bytes should all be ``fill``.
        Its ranges are reported apart, with ``where: name``."""
        self.areas.append((min(start, _REF_CAP), min(start + length, _REF_CAP), name, fill))

    def _split_at_areas(self, gap_s: I64, gap_e: I64) -> tuple[I64, I64]:
        """The gaps cut where a named area starts or ends, so each piece is in one place."""
        if not self.areas or not gap_s.shape[0]:
            return gap_s, gap_e
        cuts = np.unique(np.array([x for a in self.areas for x in a[:2]], dtype=np.int64))
        i = np.searchsorted(gap_s, cuts, side="right") - 1
        inside = (i >= 0) & (cuts > gap_s[np.maximum(i, 0)]) & (cuts < gap_e[np.maximum(i, 0)])
        cut = cuts[inside]
        return np.sort(np.concatenate((gap_s, cut))), np.sort(np.concatenate((cut, gap_e)))

    def _place(self, start: int, end: int) -> tuple[str, int] | None:
        """The name and fill of the smallest area holding ``[start, end)``, if any."""
        holding = [a for a in self.areas if a[0] <= start and end <= a[1]]
        if not holding:
            return None
        _, _, name, fill = min(holding, key=lambda a: a[1] - a[0])
        return name, fill

    def unreferenced(self, trailer: int | None = None) -> dict[str, Any]:
        """The ``unreferenced`` section: file ranges outside every referenced range,
        with their content.

        Each range is cut where a named area starts or ends; ``where`` is the name
        of the smallest area holding it, else its place among the structures. In
        an area whose bytes should be ``fill`` (a VHD BAT's 0xFF padding), the
        range says so and its ``nonzero`` bytes are those other than the fill.

        ``trailer`` is where a structure that closes the file starts (the VHD footer):
        gaps after the last other structure are then "before the footer".
        """
        if not self.bat_ok:
            return {"error": f"not computed: the {self.block_map} could not be decoded"}
        size, scan = self.size, self.scan
        structures = (np.asarray(self.refs[0], np.int64), np.asarray(self.refs[1], np.int64))
        ms, me = _merge_parts([structures, *self.block_refs], size)
        gap_s = np.concatenate(([0], me)).astype(np.int64)
        gap_e = np.concatenate((ms, [size])).astype(np.int64)
        keep = gap_e > gap_s
        gap_s, gap_e = self._split_at_areas(gap_s[keep], gap_e[keep])
        body, tail = me, "after the last structure"
        if trailer is not None:
            body, tail = me[ms < trailer], "after the last block, before the footer"
        last_ref = int(body[-1]) if body.shape[0] else 0
        ranges: list[dict[str, Any]] = []
        buf = bytearray(_SCAN_CHUNK) if scan else None
        named: dict[int | None, str] = {None: "data", 0: "zeros"}  # content, by uniform byte
        for gs, ge in zip(gap_s.tolist(), gap_e.tolist(), strict=True):
            where = tail if gs >= last_ref else "between structures"
            place, fill = self._place(gs, ge) or (where, 0)
            item: dict[str, Any] = {"offset": gs, "length": ge - gs, "where": place}
            if fill:
                item["fill"] = fill  # nonzero: bytes other than this
            if scan:
                nz, first, uniform = scan_nonzero(self.source, gs, ge, buf, fill)
                item["nonzero"] = nz > 0
                item["nonzero-bytes"] = nz
                if first is not None:
                    item["first-nonzero-offset"] = first
                item["content"] = named.get(uniform) or f"every byte {uniform:#04x}"
            ranges.append(item)
        out: dict[str, Any] = {
            "file-size": size,
            "referenced-bytes": int((me - ms).sum()),
            "unreferenced-bytes": int((gap_e - gap_s).sum()),
            "scanned": scan,
        }
        if scan:
            out["nonzero-bytes"] = sum(r["nonzero-bytes"] for r in ranges)
            out["nonzero-ranges"] = sum(1 for r in ranges if r["nonzero"])
        _limited(ranges, "ranges", out)
        return out


# -- VHDX -------------------------------------------------------------------------------


def _header_dict(copy: HeaderCopy) -> dict[str, Any]:
    """A header copy of the layout model (MS-VHDX 2.2.2), every field."""
    d: dict[str, Any] = {"copy": copy.index, "offset": copy.offset, "valid": copy.valid}
    d["current"] = False
    h = copy.fields
    if h is not None:
        d["signature"] = copy.raw[:4].decode("latin-1")
        d.update(_checksums(copy))
        skip = ("checksum", "signature")  # shown above
        d.update({k.replace("_", "-"): v for k, v in h.items() if k not in skip})
        for key in ("file-write-guid", "data-write-guid", "log-guid"):
            d[key] = str(d[key])
        d["reserved"] = _reserved(bytes(h["reserved"]))
    if copy.error:
        d["error"] = copy.error
    return d


def _region_table_dict(t: RegionTableCopy) -> dict[str, Any]:
    """A region table copy of the layout model (MS-VHDX 2.2.3), every entry."""
    d: dict[str, Any] = {"copy": t.index, "offset": t.offset, "valid": t.valid, "current": False}
    if t.entry_count is not None:
        d["signature"] = t.signature.decode("latin-1")
        d.update(_checksums(t))
        d["entry-count"] = t.entry_count
        d["reserved"] = t.reserved
    d["entries"] = [{**e.to_dict(), "flags": e.flags} for e in t.entries]
    if t.error:
        d["error"] = t.error
    return d


class _VHDXInspector(_FileRanges):
    """Walks a VHDX file structure by structure (MS-VHDX section 2)."""

    block_map = "BAT"

    def __init__(self, source: FileSource, report: dict[str, Any], scan: bool) -> None:
        super().__init__(source, report, scan)
        self.header: dict[str, Any] | None = None
        self.log_state: LogState | None = None
        self.regions: list[dict[str, Any]] = []
        self.bat_region: dict[str, Any] | None = None
        self.meta_region: dict[str, Any] | None = None
        self.params: dict[str, Any] = {}  # of the metadata: block size, sizes, has parent

    def run(self) -> None:
        r = self.report
        self.header_section()
        r["file-identifier"] = _section(r, "file identifier", self.file_identifier)
        _section(r, "headers", self.headers)
        _section(r, "log", self.log)
        _section(r, "region tables", self.region_tables)
        _section(r, "metadata", self.metadata)
        _section(r, "bat", self.bat)
        r["unreferenced"] = self.unreferenced()

    # -- MS-VHDX 2.2 -------------------------------------------------------------

    def header_section(self) -> None:
        """The 1 MiB header section: the file identifier (signature and creator) and
        the two 4 KiB headers are live; the rest of their 64 KiB and the section
        after the region tables are reserved (MS-VHDX 2.2, figure 3)."""
        slot = 64 * 1024
        self.area(0, K.VHDX_HEADER_AREA_SIZE, "header section (reserved)")
        self.area(K.VHDX_FILE_ID_OFFSET, slot, "file identifier (reserved)")
        self.ref(K.VHDX_FILE_ID_OFFSET, FILE_IDENTIFIER.sizeof())
        for i, offset in enumerate(K.VHDX_HEADER_OFFSETS, 1):
            self.area(offset, slot, f"header {i} (reserved)")
            self.ref(offset, K.VHDX_HEADER_SIZE)

    # -- MS-VHDX 2.2.1 ------------------------------------------------------------

    def file_identifier(self) -> dict[str, Any]:
        ident = vhdx_layout.read_file_identifier(self.source)
        d: dict[str, Any] = {"offset": 0, "signature": ident.signature.decode("latin-1")}
        d["valid"] = ident.signature == K.VHDX_SIGNATURE
        if ident.creator is not None:
            d["creator"] = ident.creator
        return d

    # -- MS-VHDX 2.2.2 ------------------------------------------------------------

    def headers(self) -> None:
        copies = [_header_dict(vhdx_layout.read_header(self.source, i)) for i in (1, 2)]
        valid = [c for c in copies if c["valid"]]
        current = max(valid, key=lambda c: (c["sequence-number"], -c["copy"]), default=None)
        self.report["headers"] = copies
        self.report["current-header"] = current["copy"] if current else None
        if current is None:
            raise InvalidImageError("no valid header", structure="header")
        current["current"] = True
        self.header = current

    # -- MS-VHDX 2.3 -----------------------------------------------------------------

    def log(self) -> None:
        """The log region, its entries, its active sequence and the replay it implies
        (MS-VHDX 2.3.3)."""
        h = self.header
        if h is None:
            return
        log_offset, log_length = h["log-offset"], h["log-length"]
        log_guid = uuid.UUID(h["log-guid"])
        d: dict[str, Any] = {
            "log-guid": str(log_guid),
            "offset": log_offset,
            "length": log_length,
            "pending": log_guid != _NIL,
        }
        self.report["log"] = d
        if not log_length:
            return
        self.ref(log_offset, log_length)
        if log_offset + log_length > self.size or log_length % 4096:
            d["error"] = f"log region {log_offset:#x}+{log_length:#x} is not inside the file"
            return
        state = LogState(log_guid, log_offset, log_length, [], [])
        try:  # an empty log (zero LogGuid) loads as no entries
            state = load_log(
                self.source, log_offset=log_offset, log_length=log_length, log_guid=log_guid
            )
        except PyvhdxError as exc:
            d["error"] = str(exc)
        entries, active = state.entries, state.active
        active_at = {e.log_offset for e in active}
        d["entries"] = [  # MS-VHDX 2.3.1
            {
                **kebab_fields(e, "log_offset", "file_offset", "sequence_number", "tail"),
                **kebab_fields(e, "entry_length", "descriptor_count"),
                "zero-descriptors": len(e.zero_descriptors),
                "data-descriptors": len(e.data_descriptors),
                **kebab_fields(e, "flushed_file_offset", "last_file_offset"),
                "active": e.log_offset in active_at,
            }
            for e in entries
        ]
        d["active-sequence"] = [e.sequence_number for e in active]
        valid_at = {e.log_offset for e in entries}
        d["other-entries"] = self._stale_entries(log_offset, log_length, log_guid, valid_at)
        if active:
            self.log_state = state
            fields = ("sequence_number", "flushed_file_offset", "last_file_offset")
            d["head"] = kebab_fields(active[-1], *fields)
            d["replay"] = self._replay(state)
        elif log_guid != _NIL and "error" not in d:
            d["error"] = "LogGuid is set but the log holds no valid sequence to replay"

    def _stale_entries(
        self, log_offset: int, log_length: int, log_guid: uuid.UUID, valid_at: set[int]
    ) -> list[dict[str, Any]]:
        """Entry headers that are not part of the current log: earlier sessions, damage."""
        out: list[dict[str, Any]] = []
        budget = _LOG_SCAN_CRC_BUDGET
        for pos, h in entry_headers(self.source, log_offset, log_length):
            if pos in valid_at:
                continue
            if len(out) == LIST_LIMIT:
                break
            item: dict[str, Any] = {
                "log-offset": pos,
                "sequence-number": h.sequence_number,
                "log-guid": str(h.log_guid),
                "current-guid": h.log_guid == log_guid,
                **kebab_fields(h, "entry_length", "descriptor_count", "tail"),
            }
            length = h.entry_length
            if not (0 < length <= log_length and length % K.VHDX_LOG_SECTOR_SIZE == 0):
                item["checksum-valid"] = False
            elif budget >= length:  # else not checked
                budget -= length
                ok = entry_checksum_ok(self.source, log_offset, log_length, pos, h)
                item["checksum-valid"] = ok
            out.append(item)
        return out

    def _raw(self, offset: int, length: int) -> bytes:
        """The file's own bytes (never the replay overlay)."""
        buf = bytearray(length)
        n = self.source.readinto_raw(memoryview(buf), offset)
        return bytes(buf[:n])

    def _replay(self, state: LogState) -> dict[str, Any]:
        """Install the replay as an in-memory overlay and describe what it changes."""
        replay_in_memory(self.source, state)
        writes = []
        for offset, length, kind in state.writes():
            item: dict[str, Any] = {"file-offset": offset, "length": length, "kind": kind}
            if kind == "data":
                old = self._raw(offset, length)
                new = self.source.read(offset, length)
                item["old-sha256"] = hashlib.sha256(old).hexdigest()
                item["new-sha256"] = hashlib.sha256(new).hexdigest()
                item["changed"] = old != new
            writes.append(item)
        d: dict[str, Any] = {
            "replayed": "in memory (the file is not changed)",
            "file-size": self.size,
            "replayed-file-size": self.source.size,
            "write-count": len(writes),
        }
        _limited(writes, "writes", d)
        return d

    def _classify_writes(self) -> None:
        """Name the structure each replayed write lands in (after regions are known)."""
        log = self.report.get("log") or {}
        replay = log.get("replay")
        if not replay:
            return
        spans = [(0, K.VHDX_HEADER_AREA_SIZE, "header area"), (log["offset"], log["length"], "log")]
        spans += [(r["file-offset"], r["length"], f"{r['name']} region") for r in self.regions]
        for item in replay["writes"]:
            off, end = item["file-offset"], item["file-offset"] + item["length"]
            names = [name for s, ln, name in spans if off < s + ln and s < end]
            elsewhere = "beyond the end of the file" if off >= self.size else "data area"
            item["target"] = ", ".join(names) or elsewhere
            if self.bat_region and "BAT region" in names:
                b0 = self.bat_region["file-offset"]
                first = max(0, off - b0) // 8
                last = (min(end, b0 + self.bat_region["length"]) - b0 - 1) // 8
                item["bat-entries"] = {"first": first, "last": last}

    # -- MS-VHDX 2.2.3 --------------------------------------------------------------

    def region_tables(self) -> None:
        tables = [_region_table_dict(vhdx_layout.read_region_table(self.source, i)) for i in (1, 2)]
        self.report["region-tables"] = tables
        for t in tables:  # the entries in use are live; the rest of the 64 KiB is not
            self.area(t["offset"], K.VHDX_REGION_TABLE_SIZE, f"region table {t['copy']} (unused)")
            count = t.get("entry-count")
            used = (
                REGION_TABLE_HEADER.sizeof() + count * REGION_TABLE_ENTRY.sizeof()
                if count is not None and count <= K.VHDX_MAX_REGION_ENTRIES
                else K.VHDX_REGION_TABLE_SIZE  # damaged: all of it
            )
            self.ref(t["offset"], used)
        valid = [t for t in tables if t["valid"]]
        chosen = valid[0] if valid else None
        self.report["current-region-table"] = chosen["copy"] if chosen else None
        if len(valid) == 2:
            self.report["region-tables-identical"] = valid[0]["entries"] == valid[1]["entries"]
        if chosen is None:
            raise InvalidImageError("no valid region table", structure="region table")
        chosen["current"] = True
        self.regions = chosen["entries"]
        first = {r["guid"]: r for r in reversed(self.regions)}  # the first entry of each region
        self.bat_region = first.get(str(K.REGION_BAT))
        self.meta_region = first.get(str(K.REGION_METADATA))
        for r in self.regions:  # the BAT and metadata regions: what they hold is live
            if r is self.bat_region or r is self.meta_region:
                self.area(r["file-offset"], r["length"], f"{r['name']} region (unused)")
            else:
                self.ref(r["file-offset"], r["length"])
        self._classify_writes()

    # -- MS-VHDX 2.6 ------------------------------------------------------------------

    def metadata(self) -> None:
        region = self.meta_region
        if region is None:
            raise InvalidImageError(
                "the region table has no metadata region", structure="region table"
            )
        base = region["file-offset"]
        table = vhdx_layout.read_metadata_table(self.source, base, region["length"])
        for defect in table.defects:
            raise defect.error()
        d: dict[str, Any] = {
            "offset": base,
            "length": region["length"],
            "entry-count": table.entry_count,
        }
        self.report["metadata"] = d
        # Live: the table's header and entries, and the items (MS-VHDX 2.6.1).
        self.area(base, K.VHDX_METADATA_TABLE_SIZE, "metadata table (unused entries)")
        entries = min(table.entry_count or 0, K.VHDX_MAX_METADATA_ENTRIES)
        self.ref(base, METADATA_TABLE_HEADER.sizeof() + entries * METADATA_ENTRY.sizeof())
        for it in table.items:
            self.ref(base + it.offset, it.length)
        d["items"] = [self._item(base, item) for item in table.items]
        if "parent-locator" in self.params:
            self.report["parent-locator"] = self.params["parent-locator"]

    def _item(self, base: int, it: MetadataItem) -> dict[str, Any]:
        """One metadata item: known ones decoded, others as capped hex and a SHA-256."""
        known = it.known and not it.is_user
        at = base + it.offset
        item: dict[str, Any] = {
            "item-id": str(it.item_id),
            "name": it.name if known else ("user" if it.is_user else "unknown"),
            "offset": it.offset,
            "file-offset": at,
            **kebab_fields(it, "length", "is_user", "is_virtual_disk", "is_required"),
        }
        if (
            any(d.code == "outside" for d in it.defects)
            and it.length <= K.VHDX_MAX_METADATA_ITEM_SIZE
        ):
            item["error"] = "lies outside the metadata region (or in its table)"
        elif not known:
            digest = hashlib.sha256()  # of all of the item, read in chunks
            for pos in range(0, it.length, 1 << 20):
                digest.update(self.source.read(at + pos, min(1 << 20, it.length - pos)))
            item.update(_hex_capped(it.data, length=it.length, sha256=digest))
        else:
            try:
                item["value"] = self._decode_item(it.item_id, it.data, at)
            except PyvhdxError as exc:
                item["error"] = str(exc)
                item.update(_hex_capped(it.data))
        return item

    def _decode_item(self, item_id: uuid.UUID, data: bytes, offset: int) -> Any:
        """Known metadata items (MS-VHDX 2.6.2); what the BAT needs goes to ``params``."""
        params = self.params
        if item_id == K.META_PARENT_LOCATOR:
            locator = self._parent_locator(data, offset)
            params["parent-locator"] = locator["values"]
            return locator
        size, key = _ITEM_LAYOUT[item_id]
        if len(data) < size:
            raise InvalidImageError(
                f"item is {len(data)} bytes, expected {size}",
                structure=f"metadata item {K.KNOWN_METADATA[item_id]}",
                field="Length",
                offset=offset,
            )
        if item_id == K.META_FILE_PARAMETERS:
            fp = vhdx_layout.parse_file_parameters(data, offset)
            params.update(kebab_fields(fp, "block_size", "has_parent", "leave_block_allocated"))
            return kebab_fields(fp, "block_size", "leave_block_allocated", "has_parent", "flags")
        if item_id == K.META_PAGE83_DATA:
            return str(uuid.UUID(bytes_le=data[:16]))
        value = int.from_bytes(data[:size], "little")
        if key is not None:
            params[key] = value
        return value

    def _parent_locator(self, data: bytes, offset: int) -> dict[str, Any]:
        """MS-VHDX 2.6.2.6: the layout model's parent locator, serialised."""
        loc = vhdx_layout.parse_parent_locator(data, offset)
        if any(d.code == "too-short" for d in loc.defects):
            raise InvalidImageError(
                loc.defects[0].message, structure="parent locator", offset=offset
            )
        d: dict[str, Any] = {
            "locator-type": str(loc.locator_type),
            "locator-type-known": loc.type_known,
            "key-value-count": loc.key_value_count,
        }
        if len(loc.entries) < loc.key_value_count:
            d["error"] = f"entry {len(loc.entries)} lies past the end of the {len(data)}-byte item"
        entries = []
        for e in loc.entries:
            entry = kebab_fields(
                e, "key_offset", "key_length", "value_offset", "value_length", "key", "value"
            )
            if e.key is None or e.value is None:
                entry["error"] = "key or value lies outside the item or has an odd length"
            entries.append(entry)
        d["entries"] = entries
        d["values"] = dict(loc.values)
        return d

    # -- MS-VHDX 2.5 ------------------------------------------------------------------

    def _bat_geometry(self) -> tuple[int, int, int, int, bool]:
        """Block size, virtual size, sector size and chunk ratio the BAT needs (MS-VHDX 2.5)."""
        p = self.params
        if any(k not in p for k in ("block-size", "virtual-size", "logical-sector-size")):
            raise InvalidImageError(
                "the BAT cannot be decoded without file parameters, virtual size and "
                "logical sector size",
                structure="metadata",
            )
        bs, vsize, lss = p["block-size"], p["virtual-size"], p["logical-sector-size"]
        if not (bs > 0 and bs & (bs - 1) == 0 and lss in (512, 4096) and vsize > 0):
            raise InvalidImageError(
                f"block size {bs} or logical sector size {lss} is invalid", structure="metadata"
            )
        ratio = chunk_ratio(lss, bs)
        if ratio <= 0:
            raise InvalidImageError(f"chunk ratio of block size {bs} is 0", structure="metadata")
        return bs, vsize, lss, ratio, bool(p.get("has-parent"))

    def bat(self) -> None:
        region = self.bat_region
        if region is None:
            raise InvalidImageError("the region table has no BAT region", structure="region table")
        bs, vsize, lss, ratio, differencing = self._bat_geometry()
        count = vhdx_bat_entry_count(vsize, bs, lss, differencing)
        bat_offset = region["file-offset"]
        fixed = self.params.get("leave-block-allocated")
        d: dict[str, Any] = {
            "offset": bat_offset,
            "region-length": region["length"],
            "entry-count": count,
            "chunk-ratio": ratio,
            "block-size": bs,
            "payload-blocks": -(-vsize // bs),
            "disk-type": "differencing" if differencing else ("fixed" if fixed else "dynamic"),
        }
        self.report["bat"] = d
        # data_size, not size: a replayed log may extend the file with zeros far out
        end = self.source.data_size
        self.ref(bat_offset, min(8 * count, region["length"]))  # the entries (MS-VHDX 2.5)
        readable = min(count, region["length"] // 8, max(0, (end - bat_offset) // 8))
        if readable < count:
            d["error"] = f"only {readable} of {count} entries lie inside the BAT region and file"
        size = self.source.size  # with a replayed log: the replayed size
        payload = _Allocation(bs, vsize, size)
        # A chunk's sector bitmap block covers ratio payload blocks of data.
        bitmaps = _Allocation(bs * ratio, vsize, size, extent=K.VHDX_SECTOR_BITMAP_BLOCK_SIZE)
        # Decoded in chunks (MS-VHDX 2.5.1): state counts, allocations, examples.
        counts = np.zeros((2, 8), dtype=np.int64)  # payload, sector bitmap entries by state
        sb_list: list[dict[str, int]] = []
        stale: list[dict[str, Any]] = []
        stale_count = 0
        for i0 in range(0, readable, _BAT_CHUNK):
            raw = self.source.read(bat_offset + 8 * i0, 8 * min(_BAT_CHUNK, readable - i0))
            entries = np.frombuffer(raw, dtype="<u8", count=len(raw) // 8)
            idx = np.arange(i0, i0 + entries.shape[0], dtype=np.int64)
            is_sb = idx % (ratio + 1) == ratio
            state = (entries & np.uint64(K.VHDX_BAT_STATE_MASK)).astype(np.int64)
            offs = np.minimum(entries & np.uint64(K.VHDX_BAT_OFFSET_MASK), np.uint64(1 << 62))
            offs = offs.astype(np.int64)
            pay = ~is_sb
            pstate, poffs = state[pay], offs[pay]
            pblock = idx[pay] - idx[pay] // (ratio + 1)
            counts[0] += np.bincount(pstate, minlength=8)
            alloc = np.isin(pstate, (PayloadState.FULLY_PRESENT, PayloadState.PARTIALLY_PRESENT))
            payload.add(pblock[alloc], poffs[alloc])
            # Entries that are not present but keep an offset (MS-VHDX 2.5.1: it
            # must be 0): they may point at old data.
            sel = ~alloc & (poffs != 0)
            stale_count += int(np.count_nonzero(sel))
            names = [_state_name(s, False) for s in pstate[sel][:_EXAMPLES].tolist()]
            _rows(stale, _EXAMPLES, block=pblock[sel], state=names, file_offset=poffs[sel])
            sstate, soffs = state[is_sb], offs[is_sb]
            counts[1] += np.bincount(sstate, minlength=8)
            spresent = sstate == SectorBitmapState.PRESENT
            chunks = idx[is_sb][spresent] // (ratio + 1)
            bitmaps.add(chunks, soffs[spresent])
            _rows(sb_list, LIST_LIMIT, chunk=chunks, file_offset=soffs[spresent])
        for sb, key in enumerate(("payload-states", "sector-bitmap-states")):
            d[key] = {_state_name(s, sb == 1): c for s, c in enumerate(counts[sb].tolist()) if c}
        payload.summary(d)
        d["stale-offsets"] = {"count": stale_count, "examples": stale}
        _limited(sb_list, "sector-bitmap-blocks", d, bitmaps.count)
        if self.log_state is not None:
            d["changed-by-log-replay"] = self._bat_changes(bat_offset, readable, ratio)
        self.block_refs.extend((payload.union, bitmaps.union))
        self.bat_ok = True

    def _bat_changes(self, bat_offset: int, count: int, ratio: int) -> dict[str, Any]:
        """BAT entries whose value the log replay changes: old and new state and offset."""
        assert self.log_state is not None
        end = bat_offset + 8 * count
        writes = self.log_state.writes()
        sectors = sorted({off for off, n, _ in writes if off < end and bat_offset < off + n})
        changes: list[dict[str, Any]] = []
        total = 0
        sector = K.VHDX_LOG_SECTOR_SIZE
        for pos in sectors:
            lo, hi = max(pos, bat_offset), min(pos + sector, end)
            old = np.frombuffer(self._raw(lo, hi - lo).ljust(hi - lo, b"\0"), dtype="<u8")
            new = np.frombuffer(self.source.read(lo, hi - lo).ljust(hi - lo, b"\0"), dtype="<u8")
            diff = np.flatnonzero(old != new)
            total += int(diff.shape[0])
            for j in diff[: max(0, LIST_LIMIT - len(changes))].tolist():
                index = (lo - bat_offset) // 8 + j
                changes.append(_bat_change(index, ratio, int(old[j]), int(new[j])))
        return {"count": total, "entries": changes}


def _bat_change(index: int, ratio: int, old: int, new: int) -> dict[str, Any]:
    """BAT entry ``index`` changed from ``old`` to ``new``: the payload block or chunk sector
    bitmap it describes, and both states and offsets (MS-VHDX 2.5.1)."""
    k, sb = index // (ratio + 1), index % (ratio + 1) == ratio
    d: dict[str, Any] = {
        "entry": index,
        **({"sector-bitmap-chunk": k} if sb else {"block": index - k}),
    }
    for key, value in (("old", old), ("new", new)):
        state = _state_name(value & K.VHDX_BAT_STATE_MASK, sb)
        d[key] = {"state": state, "file-offset": value & K.VHDX_BAT_OFFSET_MASK}
    return d


def _state_name(state: int, sector_bitmap: bool) -> str:
    """The name of a payload or sector bitmap block state (MS-VHDX 2.5.1.1, 2.5.1.2)."""
    names = _SB_STATE_NAMES if sector_bitmap else _PAYLOAD_STATE_NAMES
    return names.get(state, f"reserved-{state}")


class _Allocation:
    """Allocated blocks, accumulated chunk by chunk of BAT entries in bounded memory.

    Keeps counters, the first and last block, a few examples, and the union of
    the blocks' file extents clipped to the file (at most one interval per
    block that fits in the file, however many entries the BAT has).

    Args:
        block_size: bytes of data per block.
        virtual_size: the disk size (the last block may be partly outside).
        file_size: the file size as read.
        extent: bytes of file each block occupies (VHD: bitmap + data).
        data_skip: bytes before a block's data (VHD: the sector bitmap).
    """

    def __init__(
        self,
        block_size: int,
        virtual_size: int,
        file_size: int,
        extent: int | None = None,
        data_skip: int = 0,
    ) -> None:
        self.block_size = block_size
        # A hostile size (up to 2**64 - 1) would overflow the int64 arithmetic below;
        # no block index times block size reaches 2**62 anyway.
        self.virtual_size = min(virtual_size, 1 << 62)
        self.file_size = file_size
        self.extent = extent if extent is not None else block_size
        self.data_skip = data_skip
        self.count = 0
        self.ends: list[tuple[int, int]] = []  # (block, file offset): first and last of each add
        self.outside_disk = 0
        self.past_count = 0
        self.past_missing = 0
        self.past_examples: list[dict[str, int]] = []
        self.extent_bytes = 0  # sum of the clipped extents, to measure overlaps
        self._union: tuple[I64, I64] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._pending: list[tuple[I64, I64]] = []
        self._pending_n = 0

    def add(self, blk: I64, off: I64) -> None:
        """Add allocated blocks ``blk`` whose extents start at file offsets ``off``."""
        n = int(blk.shape[0])
        if not n:
            return
        self.count += n
        for i in (int(np.argmin(blk)), int(np.argmax(blk))):
            self.ends.append((int(blk[i]), int(off[i])))
        bs = self.block_size
        outside = blk * bs >= self.virtual_size
        self.outside_disk += int(np.count_nonzero(outside))
        # Blocks whose data lies (partly) past the end of the file: a truncated image.
        need = np.minimum(bs, np.maximum(self.virtual_size - blk * bs, 0))
        data_start = off + self.data_skip
        missing = np.clip(data_start + need - np.maximum(data_start, self.file_size), 0, need)
        past = (missing > 0) & ~outside
        if past.any():
            self.past_count += int(np.count_nonzero(past))
            self.past_missing += int(missing[past].sum())
            b = blk[past]
            _rows(
                self.past_examples,
                _EXAMPLES,
                block=b,
                virtual_offset=b * bs,
                file_offset=data_start[past],
                missing_bytes=missing[past],
            )
        s = np.clip(off, 0, self.file_size)
        e = np.clip(off + self.extent, 0, self.file_size)
        self.extent_bytes += int((e - s).sum())
        ms, me = merge_intervals(s, e)
        self._pending.append((ms, me))
        self._pending_n += int(ms.shape[0])
        if self._pending_n > max(1 << 20, 2 * self._union[0].shape[0]):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._union = _merge_parts([self._union, *self._pending], self.file_size)
            self._pending = []
            self._pending_n = 0

    @property
    def union(self) -> tuple[I64, I64]:
        """The merged file extents of the blocks, inside the file."""
        self._merge()
        return self._union

    def summary(self, d: dict[str, Any]) -> None:
        """Add the summary keys to the report section ``d``."""
        ms, me = self.union
        d["allocated-blocks"] = self.count
        if self.ends:
            for key, (block, offset) in (("first", min(self.ends)), ("last", max(self.ends))):
                d[f"{key}-allocated-block"] = {"block": block, "file-offset": offset}
        d["allocated-outside-disk"] = self.outside_disk
        _limited(_ranges(ms[:LIST_LIMIT], me[:LIST_LIMIT]), "file-ranges", d, int(ms.shape[0]))
        d["overlapping-bytes"] = self.extent_bytes - int((me - ms).sum())
        d["beyond-end-of-file"] = {
            "count": self.past_count,
            "missing-bytes": self.past_missing,
            "examples": self.past_examples,
        }


# -- VHD ----------------------------------------------------------------------------------


class _VHDInspector(_FileRanges):
    """Serialises what :mod:`pyvhdx.vhd.layout` finds in a VHD file (VHD spec 2006:
    footers, dynamic header, parent locators, BAT) and the file ranges they use.
    """

    def __init__(self, source: FileSource, report: dict[str, Any], scan: bool) -> None:
        super().__init__(source, report, scan)
        self.footer: vhd_layout.FooterCopy | None = None  # the copy in use
        self.data_end = self.size
        self.hdr: vhd_layout.DynamicHeader | None = None

    def run(self) -> None:
        r = self.report
        _section(r, "footers", self.footers)
        _section(r, "dynamic header", self.dynamic_header)
        _section(r, "bat", self.bat)
        r["unreferenced"] = self.unreferenced(self.data_end if self.data_end < self.size else None)

    # -- footer ---------------------------------------------------------------------

    @staticmethod
    def _footer(copy: vhd_layout.FooterCopy) -> dict[str, Any]:
        f = copy.fields
        geometry = f.disk_geometry
        chs = vhd_layout.CHSGeometry(geometry.cylinders, geometry.heads, geometry.sectors_per_track)
        current = int(f.current_size)
        expected = vhd_layout.chs_geometry(current // VHD_SECTOR_SIZE)
        return {
            **kebab_fields(copy, "where", "offset", "length"),
            "present": True,
            "in-use": False,
            "cookie": copy.raw[:8].decode("latin-1"),
            "features": f.features,
            "temporary": bool(f.features & vhd_layout.FEATURE_TEMPORARY),
            "file-format-version": vhd_layout.version_text(f.file_format_version),
            **kebab_fields(f, "data_offset", "time_stamp"),
            "time-stamp-utc": vhd_layout.timestamp_text(f.time_stamp),
            "creator-application": vhd_layout.fourcc(bytes(f.creator_application)),
            "creator-version": vhd_layout.version_text(f.creator_version),
            "creator-host-os": vhd_layout.fourcc(bytes(f.creator_host_os)),
            "original-size": f.original_size,
            "current-size": current,
            "disk-geometry": {
                **kebab_fields(chs, "cylinders", "heads", "sectors_per_track", "capacity"),
                "expected-chs": list(expected),
                "expected-capacity": expected.capacity,
            },
            "disk-type": _VHD_DISK_TYPES.get(f.disk_type, f"unknown ({f.disk_type})"),
            "disk-type-code": f.disk_type,
            **_checksums(copy),
            "unique-id": str(f.unique_id),
            **kebab_fields(f, "saved_state"),
            "reserved": _reserved(bytes(f.reserved)),
        }

    def footers(self) -> None:
        found = vhd_layout.read_footers(self.source)
        self.data_end = found.data_end
        copies = self._footer_copies(found)
        self.report["footer-in-use"] = None
        self.footer = chosen = choose_footer(found).chosen  # the reader's (DESIGN.md "Copies")
        used = copies[0 if chosen is found.end else 1]
        used["in-use"] = True
        self.report["footer-in-use"] = chosen.where
        self.report["geometry"] = used["disk-geometry"]
        self.ref(self.data_end, self.size - self.data_end)  # the footer, or what is left of it
        if found.start is not None:
            self.ref(0, VHD_FOOTER_SIZE)

    def _footer_copies(self, found: vhd_layout.Footers) -> list[dict[str, Any]]:
        """Both copies in the report (``footers``), and the fields in which they differ."""
        gone = found.problem("footer.truncated") or found.problem("footer.missing")
        notes = (None if gone is None else gone.message, found.start_note)
        pairs = zip(("end", "start"), (found.end, found.start), notes, strict=True)
        copies = [
            {"where": where, "present": False, "note": note} if copy is None else self._footer(copy)
            for where, copy, note in pairs
        ]
        self.report["footers"] = copies
        if found.end is not None and found.start is not None:
            end, start = copies
            skip = {"where", "offset", "length", "in-use", "present"}
            self.report["footer-copies-differ-in"] = [
                k for k in end if k not in skip and end[k] != start[k]
            ]
        return copies

    # -- dynamic header ------------------------------------------------------------------

    def dynamic_header(self) -> None:
        f = self.footer
        if f is None or not f.sparse:
            return
        if (wrong := vhd_layout.header_offset_problem(f, self.data_end)) is not None:
            raise InvalidImageError(wrong.message, structure="VHD footer", field=wrong.field)
        self.hdr = hdr = vhd_layout.read_dynamic_header(
            self.source,
            int(f.fields.data_offset),
            virtual_size=int(f.fields.current_size),
            data_end=self.data_end,
        )
        h = hdr.fields
        self.report["dynamic-header"] = {
            "offset": hdr.offset,
            "cookie": hdr.raw[:8].decode("latin-1"),
            "cookie-valid": hdr.cookie_ok,
            **kebab_fields(h, "data_offset", "table_offset"),
            "header-version": vhd_layout.version_text(h.header_version),
            **kebab_fields(h, "max_table_entries", "block_size"),
            **_checksums(hdr),
            "parent-unique-id": str(h.parent_unique_id),
            "parent-time-stamp": h.parent_time_stamp,
            "parent-time-stamp-utc": vhd_layout.timestamp_text(h.parent_time_stamp),
            "parent-unicode-name": hdr.parent_name,
            "reserved1": _reserved(bytes(h.reserved1)),
            "reserved2": _reserved(bytes(h.reserved2)),
        }
        self.ref(hdr.offset, VHD_DYNAMIC_HEADER_SIZE)
        self.report["parent-locators"] = [self._locator(loc) for loc in hdr.locators]

    def _locator(self, loc: vhd_layout.LocatorEntry) -> dict[str, Any]:
        """A parent locator entry and its data (VHD spec, Parent Locator Entry)."""
        d = kebab_fields(loc, "index", "entry_offset", "platform_code")
        for name in ("data_space", "data_length", "data_offset"):
            d[f"platform-{name.replace('_', '-')}"] = getattr(loc, name)
        if loc.data is None:
            assert loc.problem is not None
            d["error"] = loc.problem.message
            return d
        room = min(loc.reserved_length, self.data_end - loc.data_offset)
        self.area(loc.data_offset, room, f"parent locator {loc.index} (unused data space)")
        self.ref(loc.data_offset, min(loc.data_length, room))
        d.update(_hex_capped(loc.data) if loc.path is None else {"path": loc.path})
        return d

    # -- BAT ---------------------------------------------------------------------------------

    def bat(self) -> None:
        f = self.footer
        if f is None:
            raise InvalidImageError(
                "no footer to read the disk layout from", structure="VHD footer"
            )
        current = int(f.fields.current_size)
        if f.disk_type == VHDDiskType.FIXED:  # spec "Fixed Hard Disk Image"
            self.ref(0, current)
            self.report["bat"] = None
            self.report["fixed-data"] = {
                "offset": 0,
                "length": current,
                "missing-bytes": max(0, current - self.data_end),
                "extra-bytes": max(0, self.data_end - current),
            }
            self.bat_ok = True
            return
        hdr = self.hdr
        if hdr is None:
            raise InvalidImageError("no dynamic header to read the BAT from", structure="VHD")
        bad = next((p for p in hdr.problems if p.code == "header.block-size"), None)
        if bad is not None:
            raise InvalidImageError(bad.message, structure=bad.structure, field=bad.field)
        bs, entries, table = hdr.block_size, hdr.max_table_entries, hdr.table_offset
        if bs <= 0 or bs & (bs - 1):  # a damaged cookie stops the layout's own checks
            raise InvalidImageError(
                f"block size {bs} is not a power of two",
                structure="VHD dynamic header",
                field="BlockSize",
                offset=hdr.field_offset("BlockSize"),
            )
        bitmap = vhd_layout.vhd_bitmap_size(bs)
        d: dict[str, Any] = {
            "offset": table,
            "entry-count": entries,
            "needed-entries": -(-current // bs),
            "block-size": bs,
            "bitmap-size": bitmap,
        }
        self.report["bat"] = d
        readable = min(entries, max(0, (self.data_end - table) // 4))
        if readable < entries:
            d["error"] = f"only {readable} of {entries} entries lie inside the file"
        # The entries are live; their last sector is padded with unused (0xFF) entries.
        self.area(table, vhd_layout.vhd_bat_bytes(readable), "BAT (padding)", fill=0xFF)
        self.ref(table, 4 * readable)
        alloc = _Allocation(bs, current, self.data_end, extent=bitmap + bs, data_skip=bitmap)
        zero_pointers = 0
        for i0, raw in vhd_layout.bat_chunks(self.source, table, readable, strict=False):
            used = raw != np.uint32(VHD_BAT_UNUSED)
            offsets = raw[used].astype(np.int64) * VHD_SECTOR_SIZE
            zero_pointers += int(np.count_nonzero(offsets == 0))
            alloc.add(np.flatnonzero(used) + i0, offsets)
        d["unused-entries"] = readable - alloc.count
        alloc.summary(d)
        d["zero-sector-pointers"] = zero_pointers
        self.block_refs.append(alloc.union)
        self.bat_ok = True


# -- entry point ---------------------------------------------------------------------------


def _probe_open(file: str | os.PathLike[str] | BinaryIO, **options: Any) -> dict[str, Any]:
    """Whether :func:`pyvhdx.open` accepts the image (read-only), and what it reports:
    ``opens``, and when it is false the ``error`` (its text, ``error-type`` and, when
    it names them, ``error-structure``, ``error-field`` and ``error-offset``)."""
    from .image import open_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PyvhdxWarning)
        try:
            with open_image(file, "r", **options) as img:
                info = img.info()
        except (PyvhdxError, OSError) as exc:
            refused: dict[str, Any] = {"opens": False, "error": str(exc)}
            refused["error-type"] = type(exc).__name__
            if isinstance(exc, PyvhdxError):  # where, when the error says
                named = kebab_fields(exc, "structure", "field", "offset")
                refused.update({f"error-{k}": v for k, v in named.items() if v is not None})
            return refused
    return {
        "opens": True,
        **kebab_fields(info, "disk_type", "virtual_size", "log_replayed"),
        "failed-copies": list(info.failed_copies),
        "problems": [p.to_dict() for p in info.problems],
    }


def inspect_image(
    file: str | os.PathLike[str] | BinaryIO,
    *,
    format: str | ImageFormat | None = None,
    scan_unreferenced: bool = True,
    **open_options: Any,
) -> dict[str, Any]:
    """Report every structure of a VHDX or VHD image as found in the file.

    Read-only: nothing is written, a pending log is replayed in memory only.

    Args:
        file: a path, an fsspec URL (``s3://``, ``az://``...; its options as
            ``storage_options=`` among ``open_options``), or a seekable binary
            file object with ``readinto``.
        format: ``"vhdx"``, ``"vhd"`` or ``"raw"``; detected by content if None.
        scan_unreferenced: read the unreferenced ranges to tell whether they
            hold non-zero bytes (set False to skip the reads).
        open_options: keyword arguments for the :func:`pyvhdx.open` probe
            reported under ``open`` (``parent=``, ``strict=``; ``force_share=``
            also reads the file without a lock).

    Returns:
        A JSON-ready dict with kebab-case keys: ``filename``, ``format``,
        ``file-size``, ``open`` (what :func:`pyvhdx.open` makes of it: ``opens``
        false and the ``error`` when it refuses the image; its ``problems``), the
        format's sections (VHDX: ``file-identifier``, ``headers``, ``log``,
        ``region-tables``, ``metadata``, ``parent-locator``, ``bat``; VHD:
        ``footers``, ``geometry``, ``dynamic-header``, ``parent-locators``,
        ``bat``), ``unreferenced``, and ``errors`` for sections that could not be
        decoded.

    Raises:
        OSError: the file cannot be opened or read.
    """
    from .remote import is_url, open_remote

    if is_url(file):  # read once for both, its blocks cached (storage_options: fsspec's)
        file = open_remote(str(file), open_options.get("storage_options"))  # type: ignore[assignment]
    source = FileSource(file, force_share=bool(open_options.get("force_share", False)))
    try:
        fmt = ImageFormat(format) if format is not None else detect_format(source)
        report: dict[str, Any] = {
            "filename": source.name,
            "format": fmt.value,
            "file-size": source.physical_size,
        }
        if fmt is ImageFormat.VHDX:
            _VHDXInspector(source, report, scan_unreferenced).run()
        elif fmt is ImageFormat.VHD:
            _VHDInspector(source, report, scan_unreferenced).run()
        else:
            report["note"] = "a raw image has no structures: every byte is disk content"
    finally:
        source.close()
    report["open"] = _probe_open(file, format=format, **open_options)
    report.setdefault("errors", [])
    return report
