"""The VHDX layout model (MS-VHDX 2.2.1-2.2.3, 2.6): readers and builders of every structure
outside the log and the BAT. Readers return each copy with its checksums and :class:`Defect`
list and never raise or choose a copy; :mod:`pyvhdx.vhdx.file` decides (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, Final

from ..checksum import crc32c_with_zeroed_field
from ..constants import (
    KNOWN_METADATA,
    KNOWN_REGIONS,
    NIL_GUID,
    PARENT_LOCATOR_TYPE_VHDX,
    VHDX_HEADER_OFFSETS,
    VHDX_HEADER_SIZE,
    VHDX_MAX_METADATA_ENTRIES,
    VHDX_MAX_METADATA_ITEM_SIZE,
    VHDX_MAX_REGION_ENTRIES,
    VHDX_METADATA_TABLE_SIZE,
    VHDX_REGION_TABLE_OFFSETS,
    VHDX_REGION_TABLE_SIZE,
    VHDX_SIGNATURE,
    MiB,
)
from ..errors import InvalidArgumentError, InvalidImageError, PyvhdxError
from ..info import kebab_fields
from ..source import FileSource
from ..structures import field_offsets, parse
from ..structures.vhdx import (
    FILE_IDENTIFIER,
    FILE_PARAMETERS,
    HEADER,
    METADATA_ENTRY,
    METADATA_TABLE_HEADER,
    PARENT_LOCATOR_ENTRY,
    PARENT_LOCATOR_HEADER,
    REGION_TABLE_ENTRY,
    REGION_TABLE_HEADER,
)
from ..vhd.layout import LayoutProblem

__all__ = [
    "HEADER_FIELD_OFFSETS",
    "META_IS_REQUIRED",
    "META_IS_USER",
    "META_IS_VIRTUAL_DISK",
    "Defect",
    "FileIdentifier",
    "FileParameters",
    "HeaderCopy",
    "LocatorEntry",
    "MetadataItem",
    "MetadataTable",
    "ParentLocator",
    "RegionEntry",
    "RegionTableCopy",
    "header_field_error",
    "parse_file_parameters",
    "parse_parent_locator",
    "read_file_identifier",
    "read_header",
    "read_metadata_table",
    "read_region_table",
    "vhdx_file_identifier",
    "vhdx_header",
    "vhdx_metadata_region",
    "vhdx_parent_locator",
    "vhdx_region_table",
]

# MS-VHDX 2.6.1.2 metadata entry flags
META_IS_USER = 1
META_IS_VIRTUAL_DISK = 2
META_IS_REQUIRED = 4
_REGION_REQUIRED = 1  # MS-VHDX 2.2.3.2 region table entry flags, bit 0
_LOCATOR_HEADER_SIZE = PARENT_LOCATOR_HEADER.sizeof()  # MS-VHDX 2.6.2.6.1
_LOCATOR_ENTRY_SIZE = PARENT_LOCATOR_ENTRY.sizeof()  # MS-VHDX 2.6.2.6.2
_PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


#: What is wrong with one copy of a structure: ``code`` for the deciders, then where
#: (the one layout-problem type of both formats).
Defect = LayoutProblem


#: MS-VHDX 2.2.2: where each field of a header starts in it, by its spec name.
HEADER_FIELD_OFFSETS: Final = field_offsets(HEADER)


def header_field_error(
    message: str, index: int, field: str, error: type[PyvhdxError] = InvalidImageError
) -> PyvhdxError:
    """The error about ``field`` of header ``index`` (1 or 2), at the field's offset."""
    offset = VHDX_HEADER_OFFSETS[index - 1] + HEADER_FIELD_OFFSETS[field]
    return error(message, structure=f"header {index}", field=field, offset=offset)


def _checksum_defect(structure: str, offset: int, stored: int, computed: int) -> Defect:
    return Defect(
        "checksum",
        structure,
        f"checksum {stored:#010x} does not match the computed {computed:#010x}",
        offset + 4,
        "Checksum",
    )


def _signature_defect(structure: str, offset: int, found: bytes, want: bytes) -> Defect:
    return Defect(
        "signature", structure, f"signature is {found!r}, not {want!r}", offset, "Signature"
    )


def _truncated_defect(structure: str, offset: int) -> Defect:
    return Defect("truncated", structure, "lies beyond the end of the file", offset)


# -- 2.2.1 file type identifier ------------------------------------------------------


class _Copy:
    """What a structure read (file identifier, header, region table) tells of its defects."""

    defects: list[Defect]

    @property
    def valid(self) -> bool:
        return not self.defects

    @property
    def error(self) -> str | None:
        """The first defect's message (the reason a reader skips this copy)."""
        return self.defects[0].message if self.defects else None


@dataclasses.dataclass
class FileIdentifier(_Copy):
    """The file type identifier at offset 0 (MS-VHDX 2.2.1)."""

    signature: bytes
    creator: str | None
    defects: list[Defect]


def read_file_identifier(source: FileSource) -> FileIdentifier:
    size = FILE_IDENTIFIER.sizeof()
    data = source.read(0, size)
    ident = FileIdentifier(data[:8], None, [])
    if len(data) < size:
        ident.defects.append(_truncated_defect("file identifier", 0))
    if data[:8] != VHDX_SIGNATURE:
        ident.defects.append(_signature_defect("file identifier", 0, data[:8], VHDX_SIGNATURE))
    if not ident.defects:
        ident.creator = parse(FILE_IDENTIFIER, data, structure="file identifier", offset=0).creator
    return ident


def vhdx_file_identifier(creator: str) -> bytes:
    """The 520 bytes of a file type identifier naming ``creator`` (MS-VHDX 2.2.1)."""
    return bytes(FILE_IDENTIFIER.build(dict(creator=creator)))


# -- 2.2.2 headers -------------------------------------------------------------------


@dataclasses.dataclass
class HeaderCopy(_Copy):
    """One of the two headers, as found (MS-VHDX 2.2.2); ``fields`` None if truncated."""

    index: int  # 1 or 2
    offset: int
    raw: bytes
    fields: dict[str, Any] | None
    defects: list[Defect]
    stored_checksum: int | None = None
    computed_checksum: int | None = None

    @property
    def signature_valid(self) -> bool:
        return self.raw[:4] == b"head" and self.fields is not None

    @property
    def valid(self) -> bool:
        return self.fields is not None and not self.defects


def read_header(source: FileSource, index: int) -> HeaderCopy:
    """Header ``index`` (1 or 2): fields, checksums and defects (signature, CRC-32C, version)."""
    offset = VHDX_HEADER_OFFSETS[index - 1]
    name = f"header {index}"
    data = source.read(offset, VHDX_HEADER_SIZE)
    if len(data) < VHDX_HEADER_SIZE:
        return HeaderCopy(index, offset, data, None, [_truncated_defect(name, offset)])
    fields = dict(parse(HEADER, b"head" + data[4:], structure=name, offset=offset))
    fields.pop("_io", None)
    stored = int.from_bytes(data[4:8], "little")
    computed = crc32c_with_zeroed_field(data, 4)
    copy = HeaderCopy(index, offset, data, fields, [], stored, computed)
    if data[:4] != b"head":
        copy.defects.append(_signature_defect(name, offset, data[:4], b"head"))
        return copy
    if stored != computed:
        copy.defects.append(_checksum_defect(name, offset, stored, computed))
    if fields["version"] != 1:
        copy.defects.append(
            Defect("version", name, f"version {fields['version']} is not 1", offset + 66, "Version")
        )
    return copy


def vhdx_header(
    sequence_number: int,
    *,
    file_write_guid: uuid.UUID,
    data_write_guid: uuid.UUID,
    log_guid: uuid.UUID = NIL_GUID,
    log_offset: int = MiB,
    log_length: int = MiB,
    version: int = 1,
    log_version: int = 0,
) -> bytes:
    """A 4 KiB header with its CRC-32C (MS-VHDX 2.2.2)."""
    raw = HEADER.build(
        dict(
            checksum=0,
            sequence_number=sequence_number,
            file_write_guid=file_write_guid,
            data_write_guid=data_write_guid,
            log_guid=log_guid,
            log_version=log_version,
            version=version,
            log_length=log_length,
            log_offset=log_offset,
            reserved=bytes(4016),
        )
    )
    return _with_crc(raw)


def _with_crc(raw: bytes | bytearray) -> bytes:
    out = bytearray(raw)
    out[4:8] = crc32c_with_zeroed_field(out, 4).to_bytes(4, "little")
    return bytes(out)


# -- 2.2.3 region tables -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegionEntry:
    """A region table entry (MS-VHDX 2.2.3.2)."""

    guid: uuid.UUID
    file_offset: int
    length: int
    required: bool
    flags: int = dataclasses.field(default=0, compare=False)
    entry_offset: int = dataclasses.field(default=0, compare=False)  # in the file

    @property
    def name(self) -> str:
        return KNOWN_REGIONS.get(self.guid, "unknown")

    def to_dict(self) -> dict[str, Any]:
        fields = kebab_fields(self, "name", "file_offset", "length", "required")
        return {"guid": str(self.guid), **fields}


@dataclasses.dataclass
class RegionTableCopy(_Copy):
    """One of the two region tables, as found (MS-VHDX 2.2.3)."""

    index: int
    offset: int
    entry_count: int | None
    entries: list[RegionEntry]
    defects: list[Defect]
    stored_checksum: int | None = None
    computed_checksum: int | None = None
    reserved: int = 0
    signature: bytes = b""

    @property
    def parsed(self) -> bool:
        return not any(d.code in ("truncated", "signature", "entry-count") for d in self.defects)


def read_region_table(source: FileSource, index: int) -> RegionTableCopy:
    """Region table ``index`` (1 or 2): entries, checksums and defects."""
    offset = VHDX_REGION_TABLE_OFFSETS[index - 1]
    name = f"region table {index}"
    data = source.read(offset, VHDX_REGION_TABLE_SIZE)
    if len(data) < VHDX_REGION_TABLE_SIZE:
        return RegionTableCopy(index, offset, None, [], [_truncated_defect(name, offset)])
    stored = int.from_bytes(data[4:8], "little")
    computed = crc32c_with_zeroed_field(data, 4)
    head = parse(REGION_TABLE_HEADER, b"regi" + data[4:16], structure=name, offset=offset)
    table = RegionTableCopy(
        index, offset, head.entry_count, [], [], stored, computed, head.reserved, data[:4]
    )
    if data[:4] != b"regi":
        table.defects.append(_signature_defect(name, offset, data[:4], b"regi"))
    elif stored != computed:
        table.defects.append(_checksum_defect(name, offset, stored, computed))
    if head.entry_count > VHDX_MAX_REGION_ENTRIES:
        message = f"EntryCount {head.entry_count} exceeds {VHDX_MAX_REGION_ENTRIES}"
        table.defects.append(Defect("entry-count", name, message, offset + 8, "EntryCount"))
    for i in range(min(head.entry_count, VHDX_MAX_REGION_ENTRIES)):
        pos = 16 + 32 * i
        e = parse(REGION_TABLE_ENTRY, data[pos : pos + 32], structure=name, offset=offset + pos)
        required = bool(e.flags & _REGION_REQUIRED)
        entry = RegionEntry(e.guid, e.file_offset, e.length, required, e.flags, offset + pos)
        table.entries.append(entry)
    return table


def vhdx_region_table(entries: list[tuple[uuid.UUID, int, int, bool]]) -> bytes:
    """A 64 KiB region table with its CRC-32C (MS-VHDX 2.2.3)."""
    raw = bytearray(VHDX_REGION_TABLE_SIZE)
    raw[:16] = REGION_TABLE_HEADER.build(dict(checksum=0, entry_count=len(entries), reserved=0))
    for i, (guid, offset, length, required) in enumerate(entries):
        raw[16 + 32 * i : 48 + 32 * i] = REGION_TABLE_ENTRY.build(
            dict(guid=guid, file_offset=offset, length=length, flags=int(required))
        )
    return _with_crc(raw)


# -- 2.6.1 metadata table ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetadataItem:
    """A metadata table entry and its bytes, at most 1 MiB (MS-VHDX 2.6.1.2)."""

    item_id: uuid.UUID
    offset: int  # relative to the metadata region
    length: int
    is_user: bool
    is_virtual_disk: bool
    is_required: bool
    data: bytes
    flags: int = dataclasses.field(default=0, compare=False)
    entry_offset: int = dataclasses.field(default=0, compare=False)  # in the file
    defects: tuple[Defect, ...] = dataclasses.field(default=(), compare=False)

    @property
    def name(self) -> str:
        return KNOWN_METADATA.get(self.item_id, "user" if self.is_user else "unknown")

    @property
    def known(self) -> bool:
        """A system item this reader knows (MS-VHDX 2.6.2)."""
        return self.item_id in KNOWN_METADATA

    def to_dict(self) -> dict[str, Any]:
        fields = kebab_fields(
            self, "name", "offset", "length", "is_user", "is_virtual_disk", "is_required"
        )
        return {"item-id": str(self.item_id), **fields}


@dataclasses.dataclass
class MetadataTable:
    """The metadata table and every entry; ``known``: the usable known items (MS-VHDX 2.6.1)."""

    offset: int  # the metadata region's file offset
    region_length: int
    entry_count: int | None
    items: list[MetadataItem]
    known: dict[uuid.UUID, MetadataItem]
    defects: list[Defect]


def read_metadata_table(source: FileSource, offset: int, region_length: int) -> MetadataTable:
    """The metadata table at ``offset`` and the items of a ``region_length`` region."""
    name = "metadata table"
    table = MetadataTable(offset, region_length, None, [], {}, [])
    if region_length < VHDX_METADATA_TABLE_SIZE:
        message = "metadata region is smaller than its 64 KiB table"
        table.defects.append(Defect("region-length", "metadata region", message, offset, "Length"))
        return table
    data = source.read(offset, VHDX_METADATA_TABLE_SIZE)
    if len(data) < VHDX_METADATA_TABLE_SIZE:
        table.defects.append(_truncated_defect(name, offset))
        return table
    if data[:8] != b"metadata":
        table.defects.append(_signature_defect(name, offset, data[:8], b"metadata"))
        return table
    head = parse(METADATA_TABLE_HEADER, data[:32], structure=name, offset=offset)
    table.entry_count = head.entry_count
    if head.entry_count > VHDX_MAX_METADATA_ENTRIES:
        message = f"EntryCount {head.entry_count} exceeds {VHDX_MAX_METADATA_ENTRIES}"
        table.defects.append(Defect("entry-count", name, message, offset + 10, "EntryCount"))
        return table
    for i in range(head.entry_count):
        pos = 32 + 32 * i
        entry = parse(
            METADATA_ENTRY,
            data[pos : pos + 32],
            structure=f"metadata entry {i}",
            offset=offset + pos,
        )
        item = _metadata_item(source, table, i, entry, offset + pos)
        table.items.append(item)
        if item.known and not any(d.code in ("outside", "duplicate") for d in item.defects):
            table.known[item.item_id] = item
    return table


def _metadata_item(
    source: FileSource, table: MetadataTable, index: int, e: Any, entry_offset: int
) -> MetadataItem:
    """One entry, its bytes and its defects (outside, overlap, duplicate, unknown required)."""
    name = f"metadata entry {index}"
    label = KNOWN_METADATA.get(e.item_id, str(e.item_id))
    span = f"item {label} at {e.offset:#x}+{e.length:#x}"
    defects: list[Defect] = []

    def bad(code: str, message: str, delta: int, field: str) -> None:
        defects.append(Defect(code, name, message, entry_offset + delta, field))

    is_user = bool(e.flags & META_IS_USER)
    base = table.offset
    data = b""
    if e.length > VHDX_MAX_METADATA_ITEM_SIZE or (
        e.length
        and (e.offset < VHDX_METADATA_TABLE_SIZE or e.offset + e.length > table.region_length)
    ):
        where = f"{table.region_length:#x}-byte metadata region (or in its table)"
        bad("outside", f"{span} lies outside the {where}", 16, "Offset")
    else:
        for other in table.items:
            if any(d.code == "outside" for d in other.defects):
                continue
            if (
                e.length
                and e.offset < other.offset + other.length
                and other.offset < e.offset + e.length
            ):
                other_label = KNOWN_METADATA.get(other.item_id, str(other.item_id))
                bad("overlap", f"{span} overlaps item {other_label}", 16, "Offset")
        if e.item_id in table.known and not is_user:
            bad("duplicate", f"metadata item {label} appears twice", 0, "ItemId")
        if e.item_id not in KNOWN_METADATA and e.flags & META_IS_REQUIRED and not is_user:
            message = f"unknown metadata item {e.item_id} is marked required"
            bad("unknown-required", message, 24, "IsRequired")
        data = source.read(base + e.offset, e.length) if e.length else b""
        if len(data) < e.length:
            defects.append(_truncated_defect(name, base + e.offset))
    return MetadataItem(
        e.item_id,
        e.offset,
        e.length,
        is_user,
        bool(e.flags & META_IS_VIRTUAL_DISK),
        bool(e.flags & META_IS_REQUIRED),
        data,
        e.flags,
        entry_offset,
        tuple(defects),
    )


def vhdx_metadata_region(items: list[tuple[uuid.UUID, bytes, int]], length: int = MiB) -> bytes:
    """The metadata table and items, ``(guid, data, flags)`` each (MS-VHDX 2.6)."""
    raw = bytearray(length)
    raw[:32] = METADATA_TABLE_HEADER.build(
        dict(reserved=0, entry_count=len(items), reserved2=bytes(20))
    )
    pos = VHDX_METADATA_TABLE_SIZE
    for i, (guid, data, flags) in enumerate(items):
        raw[32 + 32 * i : 64 + 32 * i] = METADATA_ENTRY.build(
            dict(item_id=guid, offset=pos, length=len(data), flags=flags, reserved=0)
        )
        raw[pos : pos + len(data)] = data
        pos += max(8, -(-len(data) // 8) * 8)
    return bytes(raw)


# -- 2.6.2.6 parent locator ----------------------------------------------------------


@dataclasses.dataclass
class LocatorEntry:
    """A key/value entry of the parent locator, UTF-16LE ``surrogatepass`` (MS-VHDX 2.6.2.6.2)."""

    index: int
    key_offset: int
    value_offset: int
    key_length: int
    value_length: int
    key: str | None
    value: str | None


@dataclasses.dataclass
class ParentLocator:
    """The parent locator item (MS-VHDX 2.6.2.6), as found."""

    offset: int  # file offset of the item
    length: int
    locator_type: uuid.UUID
    key_value_count: int
    entries: list[LocatorEntry]
    values: dict[str, str]
    defects: list[Defect]

    @property
    def type_known(self) -> bool:
        return self.locator_type == PARENT_LOCATOR_TYPE_VHDX


def parse_parent_locator(data: bytes, offset: int) -> ParentLocator:
    """Decode the parent locator item ``data`` at file ``offset`` (MS-VHDX 2.6.2.6)."""
    name = "parent locator"
    if len(data) < _LOCATOR_HEADER_SIZE:
        short = Defect(
            "too-short", name, f"the item is {len(data)} bytes, shorter than its header", offset
        )
        return ParentLocator(offset, len(data), NIL_GUID, 0, [], {}, [short])
    head = parse(PARENT_LOCATOR_HEADER, data[:20], structure=name, offset=offset)
    loc = ParentLocator(offset, len(data), head.locator_type, head.key_value_count, [], {}, [])
    if not loc.type_known:
        loc.defects.append(
            Defect("type", name, f"unknown locator type {head.locator_type}", offset, "LocatorType")
        )
    if _LOCATOR_HEADER_SIZE + _LOCATOR_ENTRY_SIZE * head.key_value_count > len(data):
        message = f"{head.key_value_count} key/value entries do not fit in the {len(data)}-byte "
        message += "parent locator"
        loc.defects.append(Defect("key-value-count", name, message, offset + 18, "KeyValueCount"))
    for i in range(head.key_value_count):
        pos = _LOCATOR_HEADER_SIZE + _LOCATOR_ENTRY_SIZE * i
        if pos + _LOCATOR_ENTRY_SIZE > len(data):
            break
        loc.entries.append(_locator_entry(loc, data, i, offset + pos, pos))
    if "parent_linkage" not in loc.values:
        loc.defects.append(
            Defect("no-linkage", name, "parent_linkage key is missing", offset, "parent_linkage")
        )
    if not any(k in loc.values for k in _PATH_KEYS):
        message = "no path key (relative_path, volume_path, absolute_win32_path)"
        loc.defects.append(Defect("no-path", name, message, offset))
    return loc


def _locator_entry(loc: ParentLocator, data: bytes, i: int, at: int, pos: int) -> LocatorEntry:
    e = parse(PARENT_LOCATOR_ENTRY, data[pos : pos + 12], structure="parent locator", offset=at)
    texts: list[str | None] = []
    for fld, off, ln in (
        ("Key", e.key_offset, e.key_length),
        ("Value", e.value_offset, e.value_length),
    ):
        if off + ln > len(data) or ln % 2:
            texts.append(None)
            message = f"{fld.lower()} at {off:#x}+{ln:#x} lies outside the {len(data)}-byte "
            message += "parent locator (or has an odd length)"
            where = f"parent locator entry {i}"
            loc.defects.append(Defect("text", where, message, at, f"{fld}Offset"))
        else:
            texts.append(data[off : off + ln].decode("utf-16-le", errors="surrogatepass"))
    key, value = texts
    if key is not None and value is not None:
        loc.values[key] = value
    return LocatorEntry(i, e.key_offset, e.value_offset, e.key_length, e.value_length, key, value)


def vhdx_parent_locator(entries: Sequence[tuple[str, str]]) -> bytes:
    """A VHDX parent locator item, UTF-16LE ``surrogatepass`` (MS-VHDX 2.6.2.6)."""
    table = _LOCATOR_HEADER_SIZE + _LOCATOR_ENTRY_SIZE * len(entries)
    blob = bytearray()
    head = bytearray(
        PARENT_LOCATOR_HEADER.build(
            dict(locator_type=PARENT_LOCATOR_TYPE_VHDX, reserved=0, key_value_count=len(entries))
        )
    )
    for key, value in entries:
        k = key.encode("utf-16-le", errors="surrogatepass")
        v = value.encode("utf-16-le", errors="surrogatepass")
        if len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise InvalidArgumentError(f"parent locator {key} is too long ({len(v)} bytes)")
        key_offset = table + len(blob)
        blob += k + v
        head += PARENT_LOCATOR_ENTRY.build(
            dict(
                key_offset=key_offset,
                value_offset=key_offset + len(k),
                key_length=len(k),
                value_length=len(v),
            )
        )
    return bytes(head + blob)


@dataclasses.dataclass(frozen=True)
class FileParameters:
    """The file parameters metadata item (MS-VHDX 2.6.2.1)."""

    block_size: int
    flags: int

    @property
    def leave_block_allocated(self) -> bool:
        return bool(self.flags & 1)

    @property
    def has_parent(self) -> bool:
        return bool(self.flags & 2)


def parse_file_parameters(data: bytes, offset: int) -> FileParameters:
    """The first 8 bytes of the file parameters item at file ``offset``."""
    fp = parse(FILE_PARAMETERS, data[:8], structure="file parameters", offset=offset)
    return FileParameters(int(fp.block_size), int(fp.flags))
