"""``check_image``: verify everything a reader relies on, and collect every finding.

The checker parses the on-disk structures itself, through
:mod:`pyvhdx.structures` and :class:`~pyvhdx.source.FileSource`, so that it
works on images :func:`pyvhdx.open` refuses (both headers damaged, a BAT entry
past the end of the file...). It never stops at the first defect: each step
records its findings and the next step goes on with whatever is still
trustworthy. Finally it tries :func:`pyvhdx.open` and reports
``cannot open: <error>`` when a reader would refuse the image.

VHDX (MS-VHDX section 2): the file identifier (2.2.1); both headers (2.2.2:
signature, CRC-32C, version, which is current); the log (2.3: a pending log is
replayed in memory, as a reader does, and the rest is checked on the replayed
view); both region tables (2.2.3: CRC-32C, entries, agreement); the metadata
region (2.6: required items, sizes, limits); every BAT entry (2.5: states,
reserved bits and offsets; data blocks inside the file, not overlapping each
other, the header area, the log or any region).

VHD (Virtual Hard Disk Image Format Specification, 2006): both footer copies
(cookie, checksum, agreement), the footer fields, the dynamic header, every BAT
entry (inside the file, not overlapping each other or the footer copy, dynamic
header, BAT or parent locator data) and the size of a fixed disk.

BAT checks are vectorized with numpy: sorting the block offsets and comparing
each with the furthest end before it finds every overlap (and every duplicate)
in O(n log n), so BATs with millions of entries take a fraction of a second.
Findings about single entries are capped per kind (:data:`MAX_FINDINGS_PER_KIND`)
and followed by a count of the rest.

Severities and the exit code of ``pyvhdx check``: an *error* is a defect a
reader trips over or a spec violation a repair should fix, including a damaged
redundant copy (a header, region table or footer copy) that readers skip
(exit 1); a *warning* is a deviation readers tolerate (exit 0: SPEC-NOTES
pitfall 6 lists real-world files that have them). A pending log is a warning:
it is the normal state after a crash and every reader replays it. A missing
parent is a warning too: it says nothing about this file. *Info* describes
what was found (which header is current). Every error carries the text of
what a repair would do (``--repair`` is not implemented).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO, ClassVar, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from . import constants as K
from .bat import chunk_ratio, vhdx_bat_entry_count
from .constants import VHD_DYNAMIC_HEADER_SIZE, VHD_FOOTER_SIZE, VHDDiskType
from .errors import ParentError, PyvhdxError
from .image import NO_SIGNATURE, DiskImage, detect_format, no_signature_problem, open_image
from .info import json_fields
from .problems import Problem, Severity
from .source import FileSource
from .vhd import layout as vhd_layout
from .vhd.file import choose_footer
from .vhdx import layout as vhdx_layout
from .vhdx.layout import Defect, MetadataTable, RegionEntry, RegionTableCopy

__all__ = ["MAX_FINDINGS_PER_KIND", "CheckReport", "Finding", "Severity", "check_image"]

#: Findings about individual BAT entries reported per kind of defect; the rest
#: are counted in one summary finding.
MAX_FINDINGS_PER_KIND: Final = 16

_BAT_CHUNK_ENTRIES: Final = 1 << 20  # BAT entries read and checked per step (8 MiB VHDX)
_VHDX_RESERVED_BITS: Final = 0xFFFF8  # MS-VHDX 2.5.1: bits 3-19 of a BAT entry
#: Metadata entry defects (pyvhdx.vhdx.layout codes) reported: what a repair does (a
#: warning if None), what a reader does. Other codes are not reported.
_ITEM_REPAIRS: Final[dict[str, tuple[str | None, str]]] = {
    "overlap": (None, ""),
    "outside": ("rebuild the metadata table", ""),
    "duplicate": ("remove the duplicate entry", ": readers refuse the image"),
    "unknown-required": (
        "none: the image needs software that knows this item",
        ": readers must refuse the image",
    ),
}
#: Parent locator defects (pyvhdx.vhdx.layout codes), as for _ITEM_REPAIRS; any other
#: code is an error that a rebuilt parent locator repairs.
_LOCATOR_REPAIRS: Final[dict[str, tuple[str | None, str]]] = {
    "type": (None, ""),
    "no-linkage": (
        "set parent_linkage to the parent's DataWriteGuid",
        ": the parent cannot be verified",
    ),
    "no-path": ("add the parent's relative_path", ""),
}

I64 = npt.NDArray[np.int64]


#: A finding of the check is a :class:`~pyvhdx.problems.Problem` (the name stays for
#: callers that import it from here).
Finding = Problem


@dataclasses.dataclass
class CheckReport:
    """The result of :func:`check_image`.

    ``opened`` tells whether :func:`pyvhdx.open` accepts the image. The counts
    follow ``qemu-img check --output=json`` where it has a counterpart
    (``total-clusters``, ``allocated-clusters``, ``image-end-offset``).
    """

    filename: str
    format: str | None = None
    disk_type: str | None = None
    virtual_size: int | None = None
    file_size: int | None = None
    block_size: int | None = None
    total_blocks: int | None = None
    allocated_blocks: int | None = None
    image_end_offset: int | None = None
    opened: bool = False
    findings: list[Finding] = dataclasses.field(default_factory=list)

    def _of(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity is severity]

    @property
    def errors(self) -> list[Finding]:
        return self._of(Severity.ERROR)

    @property
    def warnings(self) -> list[Finding]:
        return self._of(Severity.WARNING)

    @property
    def ok(self) -> bool:
        """No errors (warnings and info allowed)."""
        return not self.errors

    @property
    def exit_code(self) -> int:
        """0 when there is no error, 1 otherwise (2, could not run, is the caller's)."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """What ``pyvhdx check --json`` prints."""
        return {
            **json_fields(self, "filename", "format", "disk_type", "virtual_size", "file_size"),
            **json_fields(self, "block_size", "total_blocks", "allocated_blocks"),
            **json_fields(self, "image_end_offset", "opened"),
            "check-errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }


# -- plumbing ---------------------------------------------------------------------------


class _Findings:
    """Collects findings; findings about BAT entries are capped by kind."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        self.counts: dict[str, int] = {}  # BAT entry findings by kind
        self.first: dict[str, Finding] = {}

    def add(self, finding: Finding) -> None:
        self.report.findings.append(finding)

    def error(
        self,
        structure: str,
        message: str,
        offset: int | None = None,
        field: str | None = None,
        *,
        repair: str,
    ) -> None:
        self.add(Problem(structure, message, offset, field, severity=Severity.ERROR, repair=repair))

    def error_from(
        self,
        exc: PyvhdxError,
        what: str,
        repair: str,
        structure: str | None = None,
        offset: int | None = None,
    ) -> None:
        """An error ``what: exc`` about ``structure`` (else the one ``exc`` names), at the
        offset ``exc`` names (else ``offset``) and its field."""
        at = exc.offset if exc.offset is not None else offset
        name = structure or exc.structure or "image"
        self.error(name, f"{what}: {exc}", at, exc.field, repair=repair)

    def warning(
        self, structure: str, message: str, offset: int | None = None, field: str | None = None
    ) -> None:
        self.add(Problem(structure, message, offset, field))

    def info(self, structure: str, message: str, offset: int | None = None) -> None:
        self.add(Problem(structure, message, offset, severity=Severity.INFO))

    def defect(
        self,
        d: Defect | vhd_layout.LayoutProblem,
        repair: str | None,
        suffix: str = "",
        structure: str | None = None,
    ) -> None:
        """A defect a layout model reports: an error with its ``repair``, else a warning."""
        severity = Severity.WARNING if repair is None else Severity.ERROR
        self.add(
            Problem(
                structure or d.structure,
                d.message + suffix,
                d.offset,
                d.field,
                severity=severity,
                repair=repair,
            )
        )

    def entries(self, kind: str, indexes: npt.NDArray[Any], make: Callable[[int], Finding]) -> None:
        """Report ``make(i)`` for the first entries of ``indexes`` (ascending), at most
        :data:`MAX_FINDINGS_PER_KIND` of each ``kind`` in all."""
        if not indexes.shape[0]:
            return
        seen = self.counts.get(kind, 0)
        for i in indexes[: max(0, MAX_FINDINGS_PER_KIND - seen)].tolist():
            finding = make(int(i))
            self.first.setdefault(kind, finding)
            self.add(finding)
        self.counts[kind] = seen + int(indexes.shape[0])

    def summarize(self) -> None:
        """One finding per kind that had more entries than were reported."""
        for kind, count in self.counts.items():
            if count > MAX_FINDINGS_PER_KIND:
                first = self.first[kind]
                more = f"{count - MAX_FINDINGS_PER_KIND} more entries like this ({kind}; "
                more += f"{count} in all)"
                repair = None if first.repair is None else "as for the entries above"
                summary = dataclasses.replace(first, message=more, offset=None, repair=repair)
                self.add(summary)


def _overlaps(starts: I64, ends: I64) -> tuple[I64, I64]:
    """Positions of the ranges that overlap an earlier-starting range, and that range.

    Sorts by start; a range overlaps an earlier one exactly when it starts
    before the furthest end seen so far (``np.maximum.accumulate``). Equal
    starts (duplicate offsets) are overlaps too. Returns ``(hits, partners)``
    as positions in the input arrays, ``hits`` ordered by position.
    """
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = ends[order]
    reach = np.maximum.accumulate(e)
    bad = np.flatnonzero(s[1:] < reach[:-1]) + 1
    partners = np.where(s[bad] < e[bad - 1], bad - 1, -1)
    # Rare nested case: the overlapping range is not the sorted neighbour.
    for j in np.flatnonzero(partners < 0)[: MAX_FINDINGS_PER_KIND * 4].tolist():
        partners[j] = int(np.argmax(e[: bad[j]]))
    partners = np.where(partners < 0, bad - 1, partners)
    hits = order[bad]
    mates = order[partners]
    by_position = np.argsort(hits, kind="stable")
    return hits[by_position].astype(np.int64), mates[by_position].astype(np.int64)


# -- VHDX (MS-VHDX section 2) -----------------------------------------------------------


def _region_name(r: RegionEntry) -> str:
    return K.KNOWN_REGIONS.get(r.guid, f"region {r.guid}")


class _VHDXChecker:
    """Checks one VHDX file (MS-VHDX section 2): maps the defects the layout model
    (:mod:`pyvhdx.vhdx.layout`) reports to findings, and checks what lies between
    structures (placement, overlaps, the BAT)."""

    def __init__(self, source: FileSource, out: _Findings, report: CheckReport) -> None:
        self.source = source
        self.out = out
        self.report = report
        self.header: dict[str, Any] | None = None
        self.header_offset = 0
        self.spans: list[tuple[int, int, str]] = [(0, K.VHDX_HEADER_AREA_SIZE, "header area")]
        self.end = K.VHDX_HEADER_AREA_SIZE

    def run(self) -> None:
        self.report.file_size = self.source.physical_size
        self.check_file_identifier()
        self.check_headers()
        self.check_log()
        regions = self.check_region_tables()
        if regions is None:
            return
        meta = self.check_metadata(regions)
        if meta is None:
            return
        self.check_bat(regions, meta)

    def _errors(self, defects: list[Defect], repair: str) -> None:
        for d in defects:
            self.out.defect(d, repair)

    # -- 2.2.1 file type identifier -----------------------------------------------

    def check_file_identifier(self) -> None:
        ident = vhdx_layout.read_file_identifier(self.source)
        defects = [d for d in ident.defects if d.code == "signature"]
        self._errors(defects, "write the signature 'vhdxfile' at offset 0")

    # -- 2.2.2 headers ----------------------------------------------------------------

    def check_headers(self) -> None:
        """Both headers; the current one is the valid one with the larger SequenceNumber
        (header 1 on a tie, SPEC-NOTES pitfall 2)."""
        copies = [vhdx_layout.read_header(self.source, i) for i in (1, 2)]
        for c in copies:
            self._errors(
                c.defects, f"rewrite header {c.index} from the current header (MS-VHDX 2.2.2.1)"
            )
        seq = {c.index: c.fields["sequence_number"] for c in copies if c.signature_valid}  # type: ignore[index]
        valid = [c for c in copies if c.valid]
        if not valid:
            self.out.error(
                "header",
                "no valid header: readers cannot open the image",
                K.VHDX_HEADER_OFFSETS[0],
                repair="rebuild both headers with new checksums, keeping the log offset and "
                "length of a damaged copy if they are sound",
            )
        candidates = valid or [c for c in copies if c.index in seq]
        if not candidates:
            return
        best = max(candidates, key=lambda c: (seq[c.index], -c.index))
        if not valid:
            self.out.info(
                "header",
                f"checking on with the fields of damaged header {best.index} (its checksum or "
                "version is wrong)",
            )
        else:
            listed = ", ".join(f"header {c.index}: {seq[c.index]}" for c in valid)
            self.out.info(
                f"header {best.index}",
                f"header {best.index} is current (sequence numbers {listed})",
                best.offset,
            )
            if len(valid) == 2 and seq[1] == seq[2] and valid[0].raw != valid[1].raw:
                self.out.warning(
                    "header",
                    f"both headers have sequence number {seq[1]} but differ; pyvhdx uses header "
                    "1, QEMU refuses such a file (SPEC-NOTES pitfall 2)",
                    K.VHDX_HEADER_OFFSETS[1],
                    "SequenceNumber",
                )
        assert best.fields is not None
        self.header = best.fields
        self.header_offset = best.offset
        self._check_header_fields(best.index, best.fields)

    def _check_header_fields(self, index: int, h: dict[str, Any]) -> None:
        """The log fields of the header readers use (MS-VHDX 2.2.2)."""
        name = f"header {index}"
        offset = K.VHDX_HEADER_OFFSETS[index - 1]

        def error(field: str, message: str, repair: str) -> None:
            at = offset + vhdx_layout.HEADER_FIELD_OFFSETS[field]
            self.out.error(name, message, at, field, repair=repair)

        if h["log_version"] != 0:
            error(
                "LogVersion",
                f"log version {h['log_version']} is not 0: readers refuse the image",
                "set LogVersion to 0 if the log is empty",
            )
        log_offset, log_length = h["log_offset"], h["log_length"]
        log, size = f"log at {log_offset:#x}+{log_length:#x}", self.source.physical_size
        if log_offset % K.VHDX_ALIGNMENT or log_length % K.VHDX_ALIGNMENT:
            error(
                "LogOffset",
                f"{log} is not 1 MiB aligned",
                "move the log to a free 1 MiB-aligned area and update both headers",
            )
        elif log_length and (
            log_offset < K.VHDX_HEADER_AREA_SIZE or log_offset + log_length > size
        ):
            error(
                "LogOffset",
                f"{log} lies outside the data area of the {size:#x}-byte file",
                "move the log to a free 1 MiB-aligned area inside the file and update both headers",
            )
        elif log_length:
            self.spans.append((log_offset, log_length, "log"))
            self.end = max(self.end, log_offset + log_length)
        if log_length == 0:
            self.out.warning(name, "the header declares no log (LogLength 0)", offset + 68)

    # -- 2.3 log ------------------------------------------------------------------------

    def check_log(self) -> None:
        """A set LogGuid means a pending log: replay it in memory, as readers do (2.3.3)."""
        h = self.header
        if h is None or h["log_guid"] == K.NIL_GUID:
            return
        from .log import load_log, replay_in_memory

        log_offset, log_length = h["log_offset"], h["log_length"]
        if log_length == 0:
            self.out.error(
                f"header at {self.header_offset:#x}",
                "LogGuid is set but the log has no length: readers refuse the image",
                self.header_offset + 68,
                "LogLength",
                repair="clear LogGuid in both headers (there is nothing to replay)",
            )
            return
        try:
            state = load_log(
                self.source, log_offset=log_offset, log_length=log_length, log_guid=h["log_guid"]
            )
        except PyvhdxError as exc:
            self.out.error_from(
                exc,
                "the pending log cannot be read",
                "none safe: the log the headers name is damaged; data written just before the "
                "crash may be lost",
                "log",
                log_offset,
            )
            return
        if not state.active:
            self.out.warning(
                "log",
                f"LogGuid {h['log_guid']} is set but the log holds no valid sequence "
                f"({len(state.entries)} valid entries): readers ignore it",
                log_offset,
            )
            return
        first, last = state.active[0], state.active[-1]
        self.out.warning(
            "log",
            f"log replay pending: {len(state.active)} entries in the active sequence "
            f"(sequence numbers {first.sequence_number}..{last.sequence_number}, "
            f"{sum(e.descriptor_count for e in state.active)} descriptors); readers replay it "
            "(pyvhdx in memory when read-only) and the rest of this check sees the replayed file",
            log_offset,
        )
        if self.source.overlay is None:
            try:
                replay_in_memory(self.source, state)
            except PyvhdxError as exc:
                self.out.error_from(
                    exc,
                    "the pending log cannot be replayed",
                    "none safe: the log's descriptors are inconsistent",
                    "log",
                    log_offset,
                )

    # -- 2.2.3 region tables -----------------------------------------------------------

    def check_region_tables(self) -> dict[uuid.UUID, RegionEntry] | None:
        """Both copies, their agreement, and the entries of the one readers use (the first
        valid one)."""
        tables = [vhdx_layout.read_region_table(self.source, i) for i in (1, 2)]
        for t in tables:
            self._errors(t.defects, f"rewrite region table {t.index} from the other copy")
        valid = [t for t in tables if t.valid]
        listed = [
            sorted((r.guid.int, r.file_offset, r.length, r.required) for r in t.entries)
            for t in valid
        ]
        if len(listed) == 2 and listed[0] != listed[1]:
            self.out.error(
                "region table 2",
                "the two region tables list different regions; readers use table 1",
                K.VHDX_REGION_TABLE_OFFSETS[1],
                repair="rewrite region table 2 from region table 1",
            )
        if valid:
            return self._check_regions(valid[0])
        self.out.error(
            "region table",
            "no valid region table: readers cannot open the image",
            K.VHDX_REGION_TABLE_OFFSETS[0],
            repair="rebuild the region table from the BAT and metadata regions (found by their "
            "signatures and the metadata)",
        )
        for t in tables:
            if t.parsed:
                self.out.info(
                    f"region table {t.index}",
                    f"checking on with the entries of damaged region table {t.index}",
                )
                return self._check_regions(t)
        return None

    def _check_regions(self, table: RegionTableCopy) -> dict[uuid.UUID, RegionEntry] | None:
        """Each entry once, known or optional, and placed; the BAT and metadata regions."""
        regions: dict[uuid.UUID, RegionEntry] = {}
        size = self.source.data_size  # not size: a log replay may add zeros far out
        for i, r in enumerate(table.entries):
            name = f"region table {table.index} entry {i} ({_region_name(r)})"
            if r.guid in regions:
                self.out.error(
                    name,
                    f"region {r.guid} appears twice",
                    r.entry_offset,
                    "Guid",
                    repair="remove the duplicate entry from both region tables",
                )
                continue
            if r.guid not in K.KNOWN_REGIONS:
                if r.required:
                    self.out.error(
                        name,
                        f"unknown region {r.guid} is marked required: readers must refuse "
                        "the image",
                        r.entry_offset + 28,
                        "Required",
                        repair="none: the image needs software that knows this region",
                    )
                else:
                    self.out.info(name, f"unknown optional region {r.guid} (ignored by readers)")
            regions[r.guid] = r
            if not self._check_placement(name, r, size):
                self.spans.append((r.file_offset, r.length, f"{_region_name(r)} region"))
                self.end = max(self.end, r.file_offset + r.length)
        missing = [g for g in (K.REGION_BAT, K.REGION_METADATA) if g not in regions]
        for g in missing:
            self.out.error(
                f"region table {table.index}",
                f"has no {K.KNOWN_REGIONS[g]} region: readers cannot open the image",
                table.offset,
                repair=f"locate the {K.KNOWN_REGIONS[g]} region and add it to both region tables",
            )
        return None if missing else regions

    def _check_placement(self, name: str, r: RegionEntry, size: int) -> bool:
        """A region's alignment, extent and overlaps with the structures placed before it
        (MS-VHDX 2.2.3.2); True if misplaced."""
        bad = bool(
            r.file_offset % K.VHDX_ALIGNMENT
            or r.length % K.VHDX_ALIGNMENT
            or r.length == 0
            or r.file_offset < K.VHDX_HEADER_AREA_SIZE
        )
        if bad:
            self.out.error(
                name,
                f"region at {r.file_offset:#x}+{r.length:#x} is not 1 MiB aligned, is "
                "empty, or lies in the 1 MiB header area",
                r.entry_offset + 16,
                "FileOffset",
                repair="move the region to a 1 MiB-aligned free area and update both region tables",
            )
        elif r.file_offset + r.length > size:
            self.out.error(
                name,
                f"region at {r.file_offset:#x}+{r.length:#x} ends beyond the end of the "
                f"{size:#x}-byte file",
                r.entry_offset + 24,
                "Length",
                repair="extend the file (the region's missing part is lost) or shrink the region",
            )
        for s, ln, what in self.spans:
            if r.file_offset < s + ln and s < r.file_offset + r.length:
                self.out.error(
                    name,
                    f"region at {r.file_offset:#x}+{r.length:#x} overlaps the {what} at "
                    f"{s:#x}+{ln:#x}",
                    r.entry_offset + 16,
                    "FileOffset",
                    repair=f"move the {_region_name(r)} region to a free 1 MiB-aligned "
                    "area and update both region tables",
                )
        return bad

    # -- 2.6 metadata -------------------------------------------------------------------

    def check_metadata(self, regions: dict[uuid.UUID, RegionEntry]) -> dict[str, Any] | None:
        """The metadata table and the system items (MS-VHDX 2.6.1, 2.6.2)."""
        region = regions[K.REGION_METADATA]
        table = vhdx_layout.read_metadata_table(self.source, region.file_offset, region.length)
        for d in table.defects:
            if d.code == "region-length":
                d = dataclasses.replace(d, offset=region.entry_offset + 24)
            self.out.defect(d, "rebuild the metadata table from the items found in the region")
        if table.defects:
            return None
        for item in table.items:
            for d in item.defects:
                if d.code in _ITEM_REPAIRS:
                    self.out.defect(d, *_ITEM_REPAIRS[d.code])
        return self._check_metadata_items(table)

    def _item(self, table: MetadataTable, guid: uuid.UUID, size: int) -> tuple[bytes, int] | None:
        """The bytes and file offset of required item ``guid``, if present and at least
        ``size`` long."""
        label = K.KNOWN_METADATA[guid]
        found = table.known.get(guid)
        if found is None:
            self.out.error(
                "metadata table",
                f"required metadata item {label} is missing: readers cannot open the image",
                table.offset,
                label,
                repair=f"add the {label} item (its value must be recovered by hand)",
            )
            return None
        at = table.offset + found.offset
        if found.length < size or len(found.data) < size:
            self.out.error(
                f"metadata item {label}",
                f"is {found.length} bytes, expected {size}",
                at,
                "Length",
                repair=f"rewrite the {label} item with its {size}-byte value",
            )
            return None
        return found.data, at

    def _check_metadata_items(self, table: MetadataTable) -> dict[str, Any] | None:
        """The system items (MS-VHDX 2.6.2): the disk's parameters, or None if unusable."""
        meta: dict[str, Any] = {}
        ok = self._check_file_parameters(table, meta)
        for guid, size, field in (
            (K.META_LOGICAL_SECTOR_SIZE, 4, "LogicalSectorSize"),
            (K.META_PHYSICAL_SECTOR_SIZE, 4, "PhysicalSectorSize"),
            (K.META_VIRTUAL_DISK_SIZE, 8, "VirtualDiskSize"),
        ):
            ok = self._check_value(table, guid, size, field, meta) and ok
        p83 = table.known.get(K.META_PAGE83_DATA)
        if p83 is None:
            self.out.warning(
                "metadata table", "the Page 83 Data item (virtual disk id) is missing", table.offset
            )
        elif p83.length < 16:
            self.out.warning(
                "metadata item page83_data",
                f"is {p83.length} bytes, expected 16",
                table.offset + p83.offset,
                "Length",
            )
        if meta.get("has_parent"):
            self._check_parent_locator(table)
        if not ok:
            return None
        self.report.virtual_size = meta["virtual_disk_size"]
        self.report.block_size = meta["block_size"]
        if meta["has_parent"]:
            self.report.disk_type = "differencing"
        else:
            self.report.disk_type = "fixed" if meta["leave_block_allocated"] else "dynamic"
        return meta

    def _check_file_parameters(self, table: MetadataTable, meta: dict[str, Any]) -> bool:
        """MS-VHDX 2.6.2.1: a power-of-two block size from 1 to 256 MiB; False if not."""
        item = self._item(table, K.META_FILE_PARAMETERS, 8)
        if item is None:
            return False
        data, at = item
        params = vhdx_layout.parse_file_parameters(data, at)
        bs = params.block_size
        ok = bs > 0 and bs & (bs - 1) == 0 and K.VHDX_MIN_BLOCK_SIZE <= bs <= K.VHDX_MAX_BLOCK_SIZE
        if not ok:
            self.out.error(
                "metadata item file_parameters",
                f"block size {bs} is not a power of two from 1 to 256 MiB",
                at,
                "BlockSize",
                repair="none safe: the block size cannot be inferred reliably",
            )
        if params.flags & ~3:
            self.out.warning(
                "metadata item file_parameters",
                f"reserved flag bits are set ({params.flags:#x})",
                at + 4,
                "Reserved",
            )
        meta["block_size"] = bs
        meta["leave_block_allocated"] = params.leave_block_allocated
        meta["has_parent"] = params.has_parent
        return ok

    def _check_value(
        self, table: MetadataTable, guid: uuid.UUID, size: int, field: str, meta: dict[str, Any]
    ) -> bool:
        """A sector size, 512 or 4096 (MS-VHDX 2.6.2.4, 2.6.2.5), or the virtual size, a
        multiple of the logical sector up to 64 TiB (2.6.2.2), kept in ``meta`` by item name;
        False if the disk cannot be read (a bad physical sector size does not matter)."""
        item = self._item(table, guid, size)
        if item is None:
            return False
        name = K.KNOWN_METADATA[guid]
        value = meta[name] = int.from_bytes(item[0][:size], "little")
        if guid != K.META_VIRTUAL_DISK_SIZE:
            if value in K.VHDX_SECTOR_SIZES:
                return True
            message = f"sector size {value} is not 512 or 4096"
            repair = "set the sector size to 512 or 4096 (as the guest formatted it)"
        else:
            lss = meta.get("logical_sector_size", 512)
            if lss not in K.VHDX_SECTOR_SIZES:
                lss = 512  # reported above; still check the size against a sector
            if 0 < value <= K.VHDX_MAX_VIRTUAL_SIZE and not value % lss:
                return True
            message = (
                f"virtual size {value} is not a multiple of the {lss}-byte sector from one "
                "sector to 64 TiB"
            )
            repair = "none safe: the size cannot be inferred reliably"
        self.out.error(f"metadata item {name}", message, item[1], field, repair=repair)
        return guid == K.META_PHYSICAL_SECTOR_SIZE

    def _check_parent_locator(self, table: MetadataTable) -> None:
        """MS-VHDX 2.6.2.6: the locator's defects, as the layout model reports them."""
        found = table.known.get(K.META_PARENT_LOCATOR)
        if found is None or found.length < 20:
            self.out.error(
                "metadata table",
                "HasParent is set but the parent locator item is missing or too short",
                table.offset,
                "parent_locator",
                repair="add a parent locator naming the parent (parent_linkage and a path)",
            )
            return
        at = table.offset + found.offset
        name = "metadata item parent_locator"
        for d in vhdx_layout.parse_parent_locator(found.data, at).defects:
            repair, suffix = _LOCATOR_REPAIRS.get(d.code, ("rebuild the parent locator", ""))
            entry = d.structure != "parent locator"  # "parent locator entry {i}"
            self.out.defect(d, repair, suffix, f"metadata item {d.structure}" if entry else name)
        self.out.info(name, "the parent image is not checked", at)

    # -- 2.5 BAT -------------------------------------------------------------------------

    def check_bat(self, regions: dict[uuid.UUID, RegionEntry], meta: dict[str, Any]) -> None:
        """Every BAT entry, vectorized by chunks of entries (MS-VHDX 2.5, 2.5.1)."""
        region = regions[K.REGION_BAT]
        bs: int = meta["block_size"]
        lss: int = meta["logical_sector_size"]
        vsize: int = meta["virtual_disk_size"]
        differencing: bool = meta["has_parent"]
        total = vhdx_bat_entry_count(vsize, bs, lss, differencing)
        bat = _VHDXBat(
            offset=region.file_offset,
            block_size=bs,
            virtual_size=vsize,
            ratio=chunk_ratio(lss, bs),
            differencing=differencing,
            data_end=self.source.size,
            spans=self.spans[1:],
            out=self.out,
        )
        self.report.total_blocks = bat.blocks
        if total * 8 > region.length:
            self.out.error(
                "BAT region",
                f"{region.length:#x} bytes cannot hold the {total} entries a {vsize}-byte disk "
                f"with {bs}-byte blocks needs",
                region.entry_offset + 24,
                "Length",
                repair="move the BAT to a larger region at the end of the file and update both "
                "region tables",
            )
        n = min(total, region.length // 8, max(0, self.source.data_size - bat.offset) // 8)
        for i0 in range(0, n, _BAT_CHUNK_ENTRIES):
            data = self.source.read(bat.offset + 8 * i0, 8 * min(_BAT_CHUNK_ENTRIES, n - i0))
            bat.check_chunk(i0, np.frombuffer(data, dtype="<u8"))
        bat.finish()
        self.report.allocated_blocks = bat.allocated
        self.report.image_end_offset = max(self.end, bat.furthest)


class _BatWords(NamedTuple):
    """How the findings of one format's BAT check name things."""

    structure: str
    entry_size: int  # bytes per BAT entry
    field: str  # the field a finding about entry {i} names (when its check names none)
    block: str  # a block, in the kinds of findings
    new_space: str  # where a repair copies a shared block


@dataclasses.dataclass(kw_only=True)
class _BatEntries:
    """What the VHDX and VHD BAT checks share: a finding names an entry by its index; the
    blocks that pass the single-entry checks are kept for the overlap check (:meth:`share`).
    """

    WORDS: ClassVar[_BatWords]

    offset: int  # of the BAT
    block_size: int
    virtual_size: int
    data_end: int  # where the space blocks may lie in ends (the file's end, the VHD footer)
    spans: list[tuple[int, int, str]]  # the structures no block may overlap
    out: _Findings
    allocated: int = 0
    furthest: int = 0  # the end of the furthest block kept
    kept: list[tuple[I64, I64, I64]] = dataclasses.field(default_factory=list)

    @property
    def blocks(self) -> int:
        """The disk's blocks; the entries past them map nothing."""
        return -(-self.virtual_size // self.block_size)

    def block_end(self, start: I64, block: I64) -> I64:
        """Where the blocks ``block`` whose data starts at ``start`` end in the file: only
        the part of the last block inside the disk need be stored."""
        return start + np.minimum(self.block_size, self.virtual_size - block * self.block_size)

    def name(self, i: int) -> str:
        """Entry ``i`` (its block), in messages."""
        raise NotImplementedError

    def report(
        self,
        kind: str,
        indexes: I64,
        message: Callable[[int], str],
        field: str | None = None,
        repair: str | Callable[[int], str] | None = None,
    ) -> None:
        """Findings ``message(i)`` about the entries ``indexes`` (ascending), at their file
        offsets: errors when a ``repair`` (of entry ``i``) is known, else warnings (at most
        :data:`MAX_FINDINGS_PER_KIND` of each ``kind``)."""
        severity = Severity.WARNING if repair is None else Severity.ERROR

        def problem(i: int) -> Problem:
            where = self.offset + self.WORDS.entry_size * i
            fix = repair(i) if callable(repair) else repair
            name = field or self.WORDS.field.format(i=i)
            return Problem(
                self.WORDS.structure, message(i), where, name, severity=severity, repair=fix
            )

        self.out.entries(kind, indexes, problem)

    def keep(self, idx: I64, start: I64, end: I64, at: Callable[[int], str], repair: str) -> None:
        """Errors for the blocks ``[start, end)`` of entries ``idx`` that overlap a span
        (``at(i)`` places block ``i``; ``repair`` names the span ``{what}``); keep them."""
        for s, ln, what in self.spans:
            self.report(
                f"{self.WORDS.block} overlapping the {what}",
                idx[(start < s + ln) & (end > s)],
                partial(self._overlap_message, at, f"the {what} at {s:#x}+{ln:#x}"),
                repair=repair.format(what=what),
            )
        self.kept.append((idx, start, end))
        if end.shape[0]:
            self.furthest = max(self.furthest, int(end.max()))

    def _overlap_message(self, at: Callable[[int], str], what: str, i: int) -> str:
        return f"{self.name(i)} at {at(i)} overlaps {what}"

    def share(self) -> None:
        """Errors for the kept blocks that share file space with another."""
        if not self.kept:
            return
        index, start, end = (np.concatenate(parts) for parts in zip(*self.kept, strict=True))
        hits, mates = _overlaps(start, end)
        entries = index[hits]

        def message(i: int) -> str:
            k = int(np.searchsorted(entries, i))  # entries are ascending and distinct
            at, mate_at = int(start[hits[k]]), int(start[mates[k]])
            how = "shares its offset with" if at == mate_at else "overlaps"
            return (
                f"{self.name(i)} at {at:#x} {how} {self.name(int(index[mates[k]]))} at "
                f"{mate_at:#x}: the two share file space, so a write to one changes the other"
            )

        self.report(
            f"{self.WORDS.block}s sharing file space",
            entries,
            message,
            repair=lambda i: (
                f"copy the shared block to new space {self.WORDS.new_space} and point "
                f"{self.name(i)} there (which of the two owned it first is unknown)"
            ),
        )


@dataclasses.dataclass(kw_only=True)
class _VHDXBat(_BatEntries):
    """The BAT checks of MS-VHDX 2.5.1, applied chunk by chunk of entries."""

    WORDS = _BatWords("BAT", 8, "FileOffsetMB", "data block", "at the end of the file")

    ratio: int
    differencing: bool
    partial_chunks: list[I64] = dataclasses.field(default_factory=list)
    bitmap_chunks: list[I64] = dataclasses.field(default_factory=list)

    def name(self, i: int) -> str:
        if i % (self.ratio + 1) == self.ratio:
            return f"sector bitmap entry {i} (chunk {i // (self.ratio + 1)})"
        return f"payload block {i - i // (self.ratio + 1)} (entry {i})"

    def check_chunk(self, i0: int, raw: npt.NDArray[np.uint64]) -> None:
        """Check entries ``i0 .. i0 + len(raw) - 1``."""
        if not raw.any():
            return  # all NOT_PRESENT without offsets: nothing to report (sparse disks)
        r, diff, P = self.ratio, self.differencing, K.PayloadState
        idx = np.arange(i0, i0 + raw.shape[0], dtype=np.int64)
        is_sb = idx % (r + 1) == r
        block = idx - idx // (r + 1)
        state = (raw & np.uint64(K.VHDX_BAT_STATE_MASK)).astype(np.int64)
        offs = (raw & np.uint64(K.VHDX_BAT_OFFSET_MASK)).astype(np.int64)
        inside = ~is_sb & (block < self.blocks)
        present = ~is_sb & ((state == P.FULLY_PRESENT) | (state == P.PARTIALLY_PRESENT))
        sb_present = is_sb & (state == 6) & diff
        self.allocated += int(np.count_nonzero(present & inside))
        end = self.block_end(offs, block)
        if diff:
            partial_present = present & inside & (state == P.PARTIALLY_PRESENT)
            self.partial_chunks.append(np.unique(block[partial_present] // r))
            self.bitmap_chunks.append(idx[sb_present] // (r + 1))
            end = np.where(is_sb, offs + K.VHDX_SECTOR_BITMAP_BLOCK_SIZE, end)
        checked = (present & inside) | sb_present
        low = checked & (offs < K.VHDX_HEADER_AREA_SIZE)
        # end < offs: offset + length overflowed int64 (a block just below 2**63)
        past = checked & ~low & ((end > self.data_end) | (end < offs))

        def say(text: str) -> Callable[[int], str]:
            def message(i: int) -> str:
                at = int(offs[i - i0])
                length = int(end[i - i0]) - at
                name, size = self.name(i), self.data_end
                return text.format(i=i, name=name, at=at, mb=at >> 20, len=length, size=size)

            return message

        lost = "set the entry to NOT_PRESENT (the block's content is lost)"
        # (kind, entries, message, field, repair): the payload states (MS-VHDX 2.5.1.1),
        # the sector bitmap states (2.5.1.2), then where the blocks lie
        for kind, entries, text, field, repair in (
            (
                "reserved bits set",
                (raw & np.uint64(_VHDX_RESERVED_BITS)) != 0,
                "entry {i}: reserved bits 3-19 are set",
                "Reserved",
                None,
            ),
            (
                "reserved payload state 4",
                inside & (state == 4),
                "{name} has reserved state 4: readers refuse the image",
                "State",
                lost,
            ),
            (
                "state 5 (UNMAPPED in spec v0.95)",
                inside & (state == P.UNMAPPED_V095),
                "{name} has state 5, UNMAPPED in spec v0.95 (reserved in 1.0); read as unmapped "
                "(SPEC-NOTES pitfall 6)",
                "State",
                None,
            ),
            (
                "PARTIALLY_PRESENT in a non-differencing file",
                inside & (state == P.PARTIALLY_PRESENT) & (not diff),
                "{name} is PARTIALLY_PRESENT in a file without a parent; read as fully present",
                "State",
                None,
            ),
            (
                "ZERO entry with a file offset",
                inside & (state == P.ZERO) & (offs != 0),
                "{name} is ZERO with FileOffsetMB {mb}: the field is reserved, and Hyper-V fails "
                "to read such an image (SPEC-NOTES pitfall 12)",
                "FileOffsetMB",
                "set FileOffsetMB to 0, keeping the ZERO state",
            ),
            (
                "NOT_PRESENT entry with a file offset",
                inside & (state == P.NOT_PRESENT) & (offs != 0),
                "{name} is NOT_PRESENT with FileOffsetMB {mb} (the field is reserved in this "
                "state)",
                "FileOffsetMB",
                None,
            ),
            (
                "allocated payload entry past the end of the disk",
                present & ~inside,
                "{name} lies past the end of the disk but is marked present; readers ignore it",
                "State",
                None,
            ),
            (
                "reserved sector bitmap state",
                is_sb & (state != 0) & (state != 6) & diff,
                "{name} has a reserved state: readers refuse the image",
                "State",
                "set the entry to NOT_PRESENT if no block of its chunk is partially present",
            ),
            (
                "sector bitmap entry in a non-differencing file",
                is_sb & (state != 0) & (not diff),
                "{name} is not NOT_PRESENT in a file without a parent; readers ignore it "
                "(SPEC-NOTES pitfall 6)",
                "State",
                None,
            ),
            (
                "data block in the header area",
                low,
                "{name} points at {at:#x}, inside the 1 MiB header area",
                "FileOffsetMB",
                lost,
            ),
            (
                "data block beyond the end of the file",
                past,
                "{name} at {at:#x}+{len:#x} ends beyond the end of the {size:#x}-byte file "
                "(truncated?)",
                "FileOffsetMB",
                "extend the file with zeros to the block's end (the missing data is lost) or set "
                "the entry to NOT_PRESENT",
            ),
        ):
            self.report(kind, idx[entries], say(text), field, repair)
        ok = checked & ~low & ~past
        self.keep(
            idx[ok],
            offs[ok],
            end[ok],
            lambda i: f"{int(offs[i - i0]):#x}",
            "set the entry to NOT_PRESENT (the block and the {what} share bytes; one of them is "
            "lost)",
        )

    def finish(self) -> None:
        """The checks that need every entry: overlaps between blocks, sector bitmaps."""
        self.share()
        if self.differencing and self.partial_chunks:
            r = self.ratio
            lost = np.setdiff1d(
                np.concatenate(self.partial_chunks), np.concatenate(self.bitmap_chunks)
            )
            self.report(
                "partially present blocks without a sector bitmap",
                (lost + 1) * r + lost,
                lambda i: (
                    f"chunk {i // (r + 1)} has PARTIALLY_PRESENT blocks but its sector "
                    "bitmap entry is not PRESENT: readers cannot tell which sectors are in this "
                    "file"
                ),
                "State",
                "none safe: the sector bitmap is lost; review the chunk's partial blocks",
            )
        self.out.summarize()


# -- VHD (Virtual Hard Disk Image Format Specification, 2006) ---------------------------


#: Repairs of the VHD defects :mod:`pyvhdx.vhd.layout` reports that are errors.
_VHD_REPAIRS: Final = {
    "footer.checksum": "recompute the checksum (the cookie is intact)",
    "footer.start-missing": "write a copy of the footer at offset 0",
    "footer.copies-differ": "copy the footer at the end of the file to offset 0",
    "footer.disk-type": "set DiskType to 2 when the file size is CurrentSize + 512, else 3",
    "footer.size-unaligned": "round CurrentSize down to a sector multiple",
    "footer.data-offset": "set DataOffset to 512, where the dynamic header normally is",
    "fixed.short": "extend the data with zeros to CurrentSize and rewrite the footer after it "
    "(the missing data is lost)",
    "header.cookie": "rebuild the dynamic header (BAT offset found by its position)",
    "header.checksum": "recompute the checksum",
    "header.block-size": "none safe: the block size cannot be inferred reliably",
    "header.table-offset": "none safe: the BAT must be found by hand",
    "header.entries-too-few": "none safe: the BAT describes a smaller disk; shrink CurrentSize",
    "header.bat-past-end": "reduce MaxTableEntries to the entries the file holds",
    "header.bat-overlaps-header": "none safe: the BAT or the header is damaged",
}
#: Repairs of a damaged footer at the end: (with a copy at offset 0, without).
_VHD_END_REPAIRS: Final = {
    "footer.truncated": (
        "rewrite the footer at the end of the file from the copy at offset 0",
        "rebuild the footer (the file was cut short)",
    ),
    "footer.missing": ("append a copy of the footer at offset 0", "rebuild the footer"),
}
_VHD_INFO: Final = {"footer.old"}
#: Defects after which the BAT cannot be found.
_VHD_STOPS: Final = {"header.cookie", "header.block-size", "header.table-offset"}


@dataclasses.dataclass
class _VHDChecker:
    """Checks one VHD file (VHD spec 2006): what :mod:`pyvhdx.vhd.layout` finds and
    :func:`~pyvhdx.vhd.file.choose_footer` decides, as findings; then every BAT entry.
    """

    source: FileSource
    out: _Findings
    report: CheckReport

    def _add(
        self,
        problem: vhd_layout.LayoutProblem,
        structure: str | None = None,
        repair: str | None = None,
    ) -> None:
        """Report a layout problem: info, error (with its repair) or warning."""
        if problem.code in _VHD_INFO:
            self.out.info(structure or problem.structure, problem.message, problem.offset)
        else:
            self.out.defect(problem, repair or _VHD_REPAIRS.get(problem.code), "", structure)

    def _resize_explains(self, size: int) -> bool:
        """An interrupted resize to ``size`` (its record beside the file) left the copy
        at offset 0 behind; ``pyvhdx resize`` run again rewrites it."""
        from .journal import read_resize_record

        sizes = read_resize_record(self.source.name) if self.source.fd is not None else None
        return sizes is not None and sizes[1] == size

    def run(self) -> None:
        self.report.file_size = self.source.physical_size
        footers = vhd_layout.read_footers(self.source)
        for problem in footers.problems:  # what is wrong with each copy, as found
            repairs = _VHD_END_REPAIRS.get(problem.code)
            self._add(problem, repair=repairs[footers.start is None] if repairs else None)
        if footers.end is None and footers.start is None:
            return
        choice = choose_footer(footers)
        chosen = choice.chosen
        for problem, _ in choice.failed():
            if problem.code == "footer.start-missing":
                self._add(problem)
        if (differ := choice.differ()) is not None:
            if self._resize_explains(int(chosen.fields.current_size)):
                self.out.warning(differ.structure, differ.message, differ.offset)
            else:
                self._add(differ)
        if chosen is not footers.end or not chosen.checksum_ok:
            self.out.info(chosen.name, f"readers use the {chosen.name}", chosen.offset)
        self.report.virtual_size = int(chosen.fields.current_size)
        for problem in vhd_layout.footer_field_problems(chosen):
            self._add(problem)
        data_end = footers.data_end
        if chosen.disk_type == VHDDiskType.FIXED:
            self.report.disk_type = "fixed"
            self.report.image_end_offset = data_end + chosen.length
            if (wrong := vhd_layout.fixed_size_problem(chosen, data_end)) is not None:
                self._add(wrong)
        elif chosen.sparse:
            self.report.disk_type = (
                "dynamic" if chosen.disk_type == VHDDiskType.DYNAMIC else "differencing"
            )
            self.check_dynamic(chosen, data_end)

    # -- dynamic and differencing disks -------------------------------------------------

    def check_dynamic(self, footer: vhd_layout.FooterCopy, data_end: int) -> None:
        """The dynamic header, the parent locators and every BAT entry."""
        if (wrong := vhd_layout.header_offset_problem(footer, data_end)) is not None:
            self._add(wrong)
            return
        vsize = int(footer.fields.current_size)
        hdr = vhd_layout.read_dynamic_header(
            self.source, int(footer.fields.data_offset), virtual_size=vsize, data_end=data_end
        )
        codes = {p.code for p in hdr.problems}
        for problem in hdr.problems:
            self._add(problem, "dynamic header")
        if codes & {"header.cookie", "header.block-size"}:
            return
        self.report.block_size = bs = hdr.block_size
        self.report.total_blocks = -(-vsize // bs)
        if codes & _VHD_STOPS:
            return
        table, entries = hdr.table_offset, hdr.max_table_entries
        spans: list[tuple[int, int, str]] = [
            (0, VHD_FOOTER_SIZE, "footer copy at offset 0"),
            (hdr.offset, VHD_DYNAMIC_HEADER_SIZE, "dynamic header"),
            (table, vhd_layout.vhd_bat_bytes(entries), "BAT"),
        ]
        if footer.disk_type == VHDDiskType.DIFFERENCING:
            spans += self._locator_spans(hdr)
        bat = _VHDBat(
            offset=table,
            block_size=bs,
            bitmap_size=vhd_layout.vhd_bitmap_size(bs),
            # CurrentSize is a u64: cap it so int64 arithmetic holds (no block reaches 2**62)
            virtual_size=min(vsize, 1 << 62),
            data_end=data_end,
            spans=spans,
            out=self.out,
        )
        n = min(entries, max(0, data_end - table) // 4)
        for i0, raw in vhd_layout.bat_chunks(self.source, table, n, strict=False):
            bat.check_chunk(i0, raw)
        bat.finish()
        self.report.allocated_blocks = bat.allocated
        end = max(max(s + ln for s, ln, _ in spans), bat.furthest)
        self.report.image_end_offset = end + footer.length

    def _locator_spans(self, hdr: vhd_layout.DynamicHeader) -> list[tuple[int, int, str]]:
        spans = []
        for loc in hdr.locators:
            if loc.problem is not None:
                self._add(loc.problem, "dynamic header")
            elif loc.data_length:
                label = f"parent locator {loc.index} ({loc.platform_code.strip()}) data"
                spans.append((loc.data_offset, loc.data_length, label))
        self.out.info("dynamic header", "the parent image is not checked", hdr.offset)
        return spans


@dataclasses.dataclass(kw_only=True)
class _VHDBat(_BatEntries):
    """The BAT checks of a dynamic VHD, applied chunk by chunk of entries."""

    WORDS = _BatWords("VHD BAT", 4, "BAT[{i}]", "block", "before the footer")

    bitmap_size: int

    def name(self, i: int) -> str:
        return f"block {i}"

    def check_chunk(self, i0: int, raw: npt.NDArray[np.uint32]) -> None:
        """Check entries ``i0 .. i0 + len(raw) - 1``."""
        used = raw != np.uint32(K.VHD_BAT_UNUSED)
        if not used.any():
            return  # all unallocated: nothing to report (sparse disks)
        idx = np.arange(i0, i0 + raw.shape[0], dtype=np.int64)
        start = raw.astype(np.int64) * K.VHD_SECTOR_SIZE
        beyond = used & (idx >= self.blocks)
        self.report(
            "allocated entry past the end of the disk",
            idx[beyond],
            lambda i: (
                f"entry {i} (past the {self.blocks} blocks of the disk) is allocated; "
                "readers ignore it"
            ),
        )
        used &= ~beyond
        self.allocated += int(np.count_nonzero(used))
        end = self.block_end(start + self.bitmap_size, idx)

        def at(i: int) -> str:
            return f"{int(start[i - i0]):#x}+{int(end[i - i0] - start[i - i0]):#x}"

        past = used & (end > self.data_end)
        self.report(
            "block beyond the end of the file",
            idx[past],
            lambda i: (
                f"block {i} at sector {int(raw[i - i0])} ({at(i)}, bitmap included) "
                f"ends beyond the data area, which ends at {self.data_end:#x} (truncated?)"
            ),
            repair="extend the file with zeros to the block's end and rewrite the footer after "
            "it (the missing data is lost), or mark the entry unused",
        )
        ok = used & ~past
        self.keep(
            idx[ok],
            start[ok],
            end[ok],
            at,
            "mark the entry unused (the block and the {what} share bytes; the block's data is "
            "lost)",
        )

    def finish(self) -> None:
        self.share()
        self.out.summarize()


# -- entry point --------------------------------------------------------------------------


def _probe_open(
    file: str | os.PathLike[str] | BinaryIO, fmt: K.ImageFormat, out: _Findings
) -> bool:
    """Open the image as a reader would; report ``cannot open`` if it refuses.

    A missing parent is a warning: it says nothing about this file's integrity.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = open_image(file, "r", format=fmt)
    except ParentError as exc:
        out.warning(exc.structure or "parent", f"cannot open without the parent: {exc}")
        return False
    except PyvhdxError as exc:
        out.error_from(
            exc, "cannot open", "fix the errors above; readers refuse the image until then"
        )
        return False
    img.close()
    return True


def check_image(
    image: str | os.PathLike[str] | BinaryIO | DiskImage,
    *,
    format: str | K.ImageFormat | None = None,
    storage_options: dict[str, Any] | None = None,
) -> CheckReport:
    """Check an image and return every finding (see the module docstring).

    Args:
        image: a path, an fsspec URL (``s3://``, ``az://``...: read-only through
            :mod:`pyvhdx.remote`), a seekable binary file object, or an open
            :class:`~pyvhdx.DiskImage` (checked through its own file, as opened).
        format: ``"vhdx"``, ``"vhd"`` or ``"raw"``; detected by content if None.
        storage_options: for a URL, fsspec's options (credentials, endpoint).

    Returns:
        The report; ``report.exit_code`` is 0 without errors, else 1.

    Raises:
        OSError: the file cannot be opened or read (the check could not run).
    """
    from .remote import is_url, open_remote

    if is_url(image):  # storage_options: fsspec's (credentials, endpoint)
        image = open_remote(str(image), storage_options)  # type: ignore[assignment]
    source = image.handler.source if isinstance(image, DiskImage) else FileSource(image)
    report = CheckReport(filename=source.name)
    out = _Findings(report)
    try:
        if format is not None:
            fmt = K.ImageFormat(format)
        else:
            fmt = image.format if isinstance(image, DiskImage) else detect_format(source)
        report.format = fmt.value
        checkers: dict[Any, type[_VHDXChecker | _VHDChecker]] = {
            K.ImageFormat.VHDX: _VHDXChecker,
            K.ImageFormat.VHD: _VHDChecker,
        }
        if fmt not in checkers:
            report.file_size = report.virtual_size = source.physical_size
            report.disk_type = "fixed"
            out.info("raw image", "a raw image has no structures to check")
            if format is None:  # detected, not given: no VHD or VHDX signature was found
                report.findings += (
                    [p for p in image.handler.problems if p.code == NO_SIGNATURE]
                    if isinstance(image, DiskImage)
                    else [no_signature_problem(source)]
                )
        else:
            try:
                checkers[fmt](source, out, report).run()
            except PyvhdxError as exc:
                out.error_from(
                    exc,
                    "the check stopped",
                    "fix this first; the structures after it were not checked",
                )
        # an open DiskImage is checked as opened: readers accept it
        report.opened = isinstance(image, DiskImage) or _probe_open(image, fmt, out)
        if isinstance(image, (str, os.PathLike, DiskImage)):
            from .journal import merge_notes, resize_notes

            for note in merge_notes(source.name):
                out.warning("merge", note)
            for note in resize_notes(source.name):
                out.warning("resize", note)
    finally:
        if not isinstance(image, DiskImage):
            source.close()
    return report
