"""Mutation fuzzing harness shared by the test suite and ``tools/fuzz.py``.

Three parts (issue 8, DESIGN.md "Bad input"):

* **Seeds** (:func:`build_seeds`): small images of every format and type, made
  with pyvhdx itself, with ``tests/vhdxbuild.py`` (partially present blocks,
  sector bitmaps), with hand-built VHDX logs (a pending log from a crashed
  write session and a synthetic two-entry sequence) and, when available, with
  ``qemu-img``. Each seed file comes with a catalogue of its structures
  (:class:`Field` and :class:`Span`), found by a parser written here with
  ``struct`` so it does not share pyvhdx's assumptions.
* **Mutations** (:func:`make_mutation`, :func:`apply_mutation`): truncation,
  appended bytes, bit flips, random bytes, copies of one structure over
  another, and fields of every structure set to edge values (0, 1, all ones,
  the signed extremes, just past the end of the file, the offsets of other
  structures), with checksums fixed afterwards so the value reaches the code
  behind the checksum. A mutation is a JSON-able dict: it can be saved,
  replayed and turned into a regression test. Choices come from a
  :class:`Chooser`: a seeded ``random.Random``, hypothesis's ``data.draw`` or
  atheris's ``FuzzedDataProvider``.
* **The run** (:func:`run_case`): open (plain, with ``allow_missing_parent``,
  ``resolve_parent=False``, ``salvage`` and ``strict``), ``info().to_dict()``
  through ``json.dumps``, ``inspect_image``, ``check_image``, the allocation map
  (``extents`` and ``chain_extents``), a full read by ``hash_image`` (or reads
  at the start, end and random offsets of a large disk), random reads and
  stream reads, a comparison with the unmutated seed and a conversion. Only
  :class:`pyvhdx.errors.PyvhdxError` may escape an operation; anything else is
  recorded with its traceback as an *escape*. A time bound (``SIGALRM``) turns
  a hang into a recorded *hang*, a ``MemoryError`` into a *memory* outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar, cast

_T = TypeVar("_T")

KiB = 1024
MiB = 1024 * KiB

#: Full reads, hashes and comparisons only for disks up to this virtual size;
#: larger (hostile) sizes get reads at the start, the end and random offsets.
READ_LIMIT = 256 * MiB
#: Conversions only up to this virtual size (they write a new image).
CONVERT_LIMIT = 64 * MiB
#: Extents listed at most per map (a hostile map is bounded by its BAT anyway).
EXTENT_LIMIT = 200_000

# --------------------------------------------------------------------------------
# choices
# --------------------------------------------------------------------------------


class Chooser:
    """The source of every choice a mutation makes (subclasses: random, hypothesis, atheris)."""

    def randint(self, lo: int, hi: int) -> int:  # inclusive bounds
        raise NotImplementedError

    def randbytes(self, n: int) -> bytes:
        return bytes(self.randint(0, 255) for _ in range(n))

    def choice(self, seq: Sequence[_T]) -> _T:
        return seq[self.randint(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        return self.randint(0, 999) < int(p * 1000)


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def randint(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def randbytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class HypothesisChooser(Chooser):
    """Draws from a hypothesis ``data`` object (``st.data()``): shrinkable choices."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def randint(self, lo: int, hi: int) -> int:
        return int(self.data.draw(self.st.integers(lo, hi)))

    def randbytes(self, n: int) -> bytes:
        return bytes(self.data.draw(self.st.binary(min_size=n, max_size=n)))


class FdpChooser(Chooser):
    """Draws from an atheris ``FuzzedDataProvider``; zeros once its bytes run out."""

    def __init__(self, fdp: Any) -> None:
        self.fdp = fdp

    def randint(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return lo
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def randbytes(self, n: int) -> bytes:
        raw = bytes(self.fdp.ConsumeBytes(n))
        return raw + bytes(n - len(raw))


# --------------------------------------------------------------------------------
# structure catalogues
# --------------------------------------------------------------------------------

Fix = tuple[str, int, int, int]  # (algorithm, start, length, checksum field offset)


@dataclasses.dataclass(frozen=True)
class Field:
    """An integer (or raw bytes) field of a structure in a seed file.

    ``kind`` tells the value generator what the field means: ``int``,
    ``count``, ``flags``, ``offset`` and ``length`` (in ``unit`` bytes),
    ``guid``, ``bytes`` (signatures, codes), ``bat_vhdx`` (a VHDX BAT entry:
    state and FileOffsetMB) or ``bat_vhd`` (a VHD BAT entry: a sector number).
    """

    name: str
    offset: int
    width: int
    endian: str = "<"
    kind: str = "int"
    unit: int = 1
    fix: Fix | None = None
    choices: tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class Span:
    """A byte range of a structure: flipped, overwritten, copied, or cut at its edges.

    ``text`` is the encoding of a path string held there (``utf-16-le``,
    ``utf-16-be``), which gets hostile path strings.
    """

    name: str
    start: int
    length: int
    fix: Fix | None = None
    text: str | None = None


@dataclasses.dataclass
class SeedFile:
    name: str
    data: bytes
    fields: list[Field] = dataclasses.field(default_factory=list)
    spans: list[Span] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Seed:
    """A set of files (a single image or a differencing chain) and the one to open."""

    name: str
    format: str
    files: list[SeedFile]
    target: str

    def file(self, name: str) -> SeedFile:
        return next(f for f in self.files if f.name == name)


def _u(data: bytes, off: int, fmt: str) -> int:
    size = struct.calcsize(fmt)
    if off < 0 or off + size > len(data):
        return 0
    return int(struct.unpack_from(fmt, data, off)[0])


_VHDX_HEADER_FIELDS = [
    ("signature", 0, 4, "bytes"),
    ("checksum", 4, 4, "int"),
    ("sequence_number", 8, 8, "int"),
    ("file_write_guid", 16, 16, "guid"),
    ("data_write_guid", 32, 16, "guid"),
    ("log_guid", 48, 16, "guid"),
    ("log_version", 64, 2, "int"),
    ("version", 66, 2, "int"),
    ("log_length", 68, 4, "length"),
    ("log_offset", 72, 8, "offset"),
]
_REGION_BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
_REGION_METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
_META_NAMES = {
    uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B"): "file_parameters",
    uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8"): "virtual_disk_size",
    uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746"): "page83",
    uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F"): "logical_sector_size",
    uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556"): "physical_sector_size",
    uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"): "parent_locator",
}
_SECTOR_SIZES = (0, 1, 256, 511, 512, 513, 1024, 2048, 4096, 8192, 65536, 0xFFFFFFFF)
_BLOCK_SIZES = (
    0,
    1,
    512,
    4096,
    MiB - 1,
    MiB,
    2 * MiB,
    3 * MiB,
    128 * MiB,
    256 * MiB,
    512 * MiB,
    1 << 31,
    0xFFFFFFFF,
)


def _vhdx_catalogue(data: bytes) -> tuple[list[Field], list[Span]]:
    """Fields and spans of a VHDX file, as far as its structures parse."""
    fields: list[Field] = []
    spans: list[Span] = [Span("file identifier", 0, 64 * KiB)]
    fields.append(Field("file_identifier.signature", 0, 8, kind="bytes"))
    for i, off in ((1, 64 * KiB), (2, 128 * KiB)):
        fix: Fix = ("crc32c", off, 4 * KiB, off + 4)
        spans.append(Span(f"header {i}", off, 4 * KiB, fix))
        for name, rel, width, kind in _VHDX_HEADER_FIELDS:
            choices: tuple[Any, ...] = ()
            if name in ("log_version", "version"):
                choices = (0, 1, 2, 0xFFFF)
            fields.append(
                Field(f"header{i}.{name}", off + rel, width, kind=kind, fix=fix, choices=choices)
            )
    regions: dict[uuid.UUID, tuple[int, int]] = {}
    for i, off in ((1, 192 * KiB), (2, 256 * KiB)):
        fix = ("crc32c", off, 64 * KiB, off + 4)
        spans.append(Span(f"region table {i}", off, 64 * KiB, fix))
        fields += [
            Field(f"region_table{i}.signature", off, 4, kind="bytes", fix=fix),
            Field(f"region_table{i}.checksum", off + 4, 4, fix=fix),
            Field(f"region_table{i}.entry_count", off + 8, 4, kind="count", fix=fix),
            Field(f"region_table{i}.reserved", off + 12, 4, fix=fix),
        ]
        count = min(_u(data, off + 8, "<I"), 8)
        for e in range(count):
            p = off + 16 + 32 * e
            name = f"region_table{i}.entry{e}"
            fields += [
                Field(f"{name}.guid", p, 16, kind="guid", fix=fix),
                Field(f"{name}.file_offset", p + 16, 8, kind="offset", fix=fix),
                Field(f"{name}.length", p + 24, 4, kind="length", fix=fix),
                Field(f"{name}.flags", p + 28, 4, kind="flags", fix=fix),
            ]
            if i == 1 and p + 32 <= len(data):
                guid = uuid.UUID(bytes_le=data[p : p + 16])
                regions[guid] = (_u(data, p + 16, "<Q"), _u(data, p + 24, "<I"))
    # the log (from header 1's fields), every entry found in it
    log_offset, log_length = _u(data, 64 * KiB + 72, "<Q"), _u(data, 64 * KiB + 68, "<I")
    if log_length and log_offset + log_length <= len(data):
        spans.append(Span("log", log_offset, log_length))
        for pos in range(log_offset, log_offset + log_length, 4 * KiB):
            if data[pos : pos + 4] == b"loge":
                _log_entry_catalogue(data, pos, log_offset + log_length, fields, spans)
    # metadata
    meta = regions.get(_REGION_METADATA)
    sizes: dict[str, int] = {}
    if meta and meta[0] + 64 * KiB <= len(data):
        base = meta[0]
        spans.append(Span("metadata table", base, 64 * KiB))
        fields += [
            Field("metadata.signature", base, 8, kind="bytes"),
            Field("metadata.reserved", base + 8, 2),
            Field("metadata.entry_count", base + 10, 2, kind="count"),
        ]
        for e in range(min(_u(data, base + 10, "<H"), 16)):
            p = base + 32 + 32 * e
            guid = uuid.UUID(bytes_le=data[p : p + 16])
            item = _META_NAMES.get(guid, f"item{e}")
            name = f"metadata.entry{e}({item})"
            fields += [
                Field(f"{name}.item_id", p, 16, kind="guid"),
                Field(f"{name}.offset", p + 16, 4, kind="offset"),
                Field(f"{name}.length", p + 20, 4, kind="length"),
                Field(f"{name}.flags", p + 24, 4, kind="flags", choices=(0, 1, 2, 4, 5, 6, 7)),
                Field(f"{name}.reserved", p + 28, 4),
            ]
            ioff, ilen = base + _u(data, p + 16, "<I"), _u(data, p + 20, "<I")
            if ioff + ilen > len(data):
                continue
            spans.append(Span(f"metadata item {item}", ioff, ilen))
            if item == "file_parameters":
                sizes["block_size"] = _u(data, ioff, "<I")
                sizes["has_parent"] = _u(data, ioff + 4, "<I") & 2
                fields += [
                    Field("file_parameters.block_size", ioff, 4, choices=_BLOCK_SIZES),
                    Field("file_parameters.flags", ioff + 4, 4, kind="flags", choices=(0, 1, 2, 3)),
                ]
            elif item == "virtual_disk_size":
                sizes["virtual_size"] = _u(data, ioff, "<Q")
                fields.append(Field("virtual_disk_size", ioff, 8, kind="length"))
            elif item in ("logical_sector_size", "physical_sector_size"):
                sizes[item] = _u(data, ioff, "<I")
                fields.append(Field(item, ioff, 4, choices=_SECTOR_SIZES))
            elif item == "page83":
                fields.append(Field("page83", ioff, 16, kind="guid"))
            elif item == "parent_locator":
                _locator_catalogue(data, ioff, ilen, fields, spans)
    # the BAT
    bat = regions.get(_REGION_BAT)
    if bat and bat[0] < len(data):
        spans.append(Span("BAT", bat[0], min(bat[1], len(data) - bat[0])))
        bs = sizes.get("block_size") or MiB
        ls = sizes.get("logical_sector_size") or 512
        vs = sizes.get("virtual_size") or 0
        ratio = max(1, ((1 << 23) * ls) // bs)
        blocks = -(-vs // bs)
        if sizes.get("has_parent"):
            count = -(-blocks // ratio) * (ratio + 1)
        else:
            count = blocks + (blocks - 1) // ratio if blocks else 0
        # the first payload entries, the last ones (and two past them), every entry
        # in use and the sector bitmap entries: the rest are zeros like the first
        last = blocks + (blocks - 1) // ratio if blocks else 0
        indices = [i + i // ratio for i in range(min(blocks, 64))] + [last - 1, last, last + 1]
        indices += [(k + 1) * ratio + k for k in range(min(-(-blocks // ratio) or 1, 64))]
        end = min(len(data), bat[0] + min(bat[1], 8 * (count + 2)))
        raw = data[bat[0] : end - (end - bat[0]) % 8]
        used = [j for j in range(len(raw) // 8) if raw[8 * j : 8 * j + 8] != bytes(8)]
        indices += used[:4096]
        for i in sorted(set(indices)):
            if i >= min(count + 2, bat[1] // 8):
                continue
            p = bat[0] + 8 * i
            sb = i % (ratio + 1) == ratio
            what = f"sb{i // (ratio + 1)}" if sb else f"payload{i - i // (ratio + 1)}"
            fields.append(Field(f"bat[{i}]({what})", p, 8, kind="bat_vhdx"))
            entry = _u(data, p, "<Q")
            if entry & 7 in (6, 7) and (entry & ~0xFFFFF) < len(data):
                start = entry & ~0xFFFFF
                spans.append(Span(f"{'sector bitmap' if sb else 'block'} {i}", start, MiB))
    return fields, spans


def _locator_catalogue(
    data: bytes, ioff: int, ilen: int, fields: list[Field], spans: list[Span]
) -> None:
    fields += [
        Field("parent_locator.locator_type", ioff, 16, kind="guid"),
        Field("parent_locator.reserved", ioff + 16, 2),
        Field("parent_locator.key_value_count", ioff + 18, 2, kind="count"),
    ]
    for k in range(min(_u(data, ioff + 18, "<H"), 16)):
        p = ioff + 20 + 12 * k
        koff, voff = _u(data, p, "<I"), _u(data, p + 4, "<I")
        klen, vlen = _u(data, p + 8, "<H"), _u(data, p + 10, "<H")
        key = data[ioff + koff : ioff + koff + klen].decode("utf-16-le", "replace")
        name = f"parent_locator.entry{k}({key})"
        fields += [
            Field(f"{name}.key_offset", p, 4, kind="offset"),
            Field(f"{name}.value_offset", p + 4, 4, kind="offset"),
            Field(f"{name}.key_length", p + 8, 2, kind="length"),
            Field(f"{name}.value_length", p + 10, 2, kind="length"),
        ]
        if koff + klen <= ilen:
            spans.append(Span(f"locator key {key}", ioff + koff, klen, text="utf-16-le"))
        if voff + vlen <= ilen:
            spans.append(Span(f"locator value {key}", ioff + voff, vlen, text="utf-16-le"))


def _log_entry_catalogue(
    data: bytes, pos: int, log_end: int, fields: list[Field], spans: list[Span]
) -> None:
    length = _u(data, pos + 8, "<I")
    if not length or pos + length > log_end:
        length = 4 * KiB
    fix: Fix = ("crc32c", pos, length, pos + 4)
    name = f"log@{pos:#x}"
    spans.append(Span(name, pos, length, fix))
    fields += [
        Field(f"{name}.signature", pos, 4, kind="bytes", fix=fix),
        Field(f"{name}.checksum", pos + 4, 4, fix=fix),
        Field(f"{name}.entry_length", pos + 8, 4, kind="length", fix=fix),
        Field(f"{name}.tail", pos + 12, 4, kind="offset", fix=fix),
        Field(f"{name}.sequence_number", pos + 16, 8, fix=fix),
        Field(f"{name}.descriptor_count", pos + 24, 4, kind="count", fix=fix),
        Field(f"{name}.reserved", pos + 28, 4, fix=fix),
        Field(f"{name}.log_guid", pos + 32, 16, kind="guid", fix=fix),
        Field(f"{name}.flushed_file_offset", pos + 48, 8, kind="offset", fix=fix),
        Field(f"{name}.last_file_offset", pos + 56, 8, kind="offset", fix=fix),
    ]
    count = _u(data, pos + 24, "<I")
    n_data = 0
    for d in range(min(count, 126)):
        p = pos + 64 + 32 * d
        sig = data[p : p + 4]
        n_data += sig == b"desc"
        dn = f"{name}.desc{d}"
        fields += [
            Field(f"{dn}.signature", p, 4, kind="bytes", fix=fix),
            Field(f"{dn}.trailing_or_reserved", p + 4, 4, fix=fix),
            Field(f"{dn}.leading_or_zero_length", p + 8, 8, kind="length", fix=fix),
            Field(f"{dn}.file_offset", p + 16, 8, kind="offset", fix=fix),
            Field(f"{dn}.sequence_number", p + 24, 8, fix=fix),
        ]
    first_data = pos + 4 * KiB * (1 if count <= 126 else 1 + -(-(count - 126) // 128))
    for d in range(min(n_data, 8)):
        p = first_data + 4 * KiB * d
        if p + 4 * KiB > log_end:
            break
        dn = f"{name}.data{d}"
        fields += [
            Field(f"{dn}.signature", p, 4, kind="bytes", fix=fix),
            Field(f"{dn}.sequence_high", p + 4, 4, fix=fix),
            Field(f"{dn}.sequence_low", p + 4092, 4, fix=fix),
        ]


_VHD_FOOTER_FIELDS = [
    ("cookie", 0, 8, "bytes", ()),
    ("features", 8, 4, "flags", ()),
    ("file_format_version", 12, 4, "int", (0x00010000,)),
    ("data_offset", 16, 8, "offset", ()),
    ("time_stamp", 24, 4, "int", ()),
    ("creator_application", 28, 4, "bytes", (b"win ", b"vpc ", b"qemu", b"qem2", b"d2v ")),
    ("creator_version", 32, 4, "int", ()),
    ("creator_host_os", 36, 4, "bytes", ()),
    ("original_size", 40, 8, "length", ()),
    ("current_size", 48, 8, "length", ()),
    ("cylinders", 56, 2, "int", ()),
    ("heads", 58, 1, "int", ()),
    ("sectors_per_track", 59, 1, "int", ()),
    ("disk_type", 60, 4, "int", (0, 1, 2, 3, 4, 5, 6, 0xFFFFFFFF)),
    ("checksum", 64, 4, "int", ()),
    ("unique_id", 68, 16, "guid", ()),
    ("saved_state", 84, 1, "int", ()),
]
_VHD_HEADER_FIELDS = [
    ("cookie", 0, 8, "bytes", ()),
    ("data_offset", 8, 8, "offset", ()),
    ("table_offset", 16, 8, "offset", ()),
    ("header_version", 24, 4, "int", (0x00010000,)),
    ("max_table_entries", 28, 4, "count", ()),
    ("block_size", 32, 4, "int", _BLOCK_SIZES),
    ("checksum", 36, 4, "int", ()),
    ("parent_unique_id", 40, 16, "guid", ()),
    ("parent_time_stamp", 56, 4, "int", ()),
    ("reserved1", 60, 4, "int", ()),
]
_PLATFORM_CODES = (b"W2ku", b"W2ru", b"Wi2k", b"Wi2r", b"MacX", b"Mac ", b"\0\0\0\0", b"None")


def _vhd_catalogue(data: bytes) -> tuple[list[Field], list[Span]]:
    fields: list[Field] = []
    spans: list[Span] = []
    size = len(data)
    footers = []
    if size >= 512 and data[size - 512 : size - 504] == b"conectix":
        footers.append(("footer", size - 512))
    if size >= 512 and data[:8] == b"conectix" and size != 512:
        footers.append(("footer_copy", 0))
    for name, off in footers:
        fix: Fix = ("vhd", off, 512, off + 64)
        spans.append(Span(name, off, 512, fix))
        for fname, rel, width, kind, choices in _VHD_FOOTER_FIELDS:
            unit = 1
            fields.append(Field(f"{name}.{fname}", off + rel, width, ">", kind, unit, fix, choices))
    if not footers:
        return fields, spans
    foot = footers[0][1]
    hdr = _u(data, foot + 16, ">Q")
    if hdr + 1024 > size or data[hdr : hdr + 8] != b"cxsparse":
        return fields, spans
    fix = ("vhd", hdr, 1024, hdr + 36)
    spans.append(Span("dynamic header", hdr, 1024, fix))
    for fname, rel, width, kind, choices in _VHD_HEADER_FIELDS:
        fields.append(
            Field(f"dynamic_header.{fname}", hdr + rel, width, ">", kind, 1, fix, choices)
        )
    spans.append(Span("parent unicode name", hdr + 64, 512, fix, text="utf-16-be"))
    for k in range(8):
        p = hdr + 576 + 24 * k
        name = f"dynamic_header.locator{k}"
        fields += [
            Field(f"{name}.platform_code", p, 4, ">", "bytes", 1, fix, _PLATFORM_CODES),
            Field(f"{name}.data_space", p + 4, 4, ">", "length", 1, fix),
            Field(f"{name}.data_length", p + 8, 4, ">", "length", 1, fix),
            Field(f"{name}.reserved", p + 12, 4, ">", "int", 1, fix),
            Field(f"{name}.data_offset", p + 16, 8, ">", "offset", 1, fix),
        ]
        code = data[p : p + 4]
        length, offset = _u(data, p + 8, ">I"), _u(data, p + 16, ">Q")
        if code in (b"W2ku", b"W2ru") and length and offset + length <= size:
            spans.append(Span(f"locator {k} data", offset, length, text="utf-16-le"))
    table, entries, block = (
        _u(data, hdr + 16, ">Q"),
        _u(data, hdr + 28, ">I"),
        _u(data, hdr + 32, ">I"),
    )
    if table < size:
        spans.append(Span("BAT", table, min(4 * entries, size - table)))
    bitmap = -(-(block // 512) // 8)
    bitmap = -(-bitmap // 512) * 512
    # the first entries, the last ones (and one past them) and every entry in use
    raw = data[table : min(size, table + 4 * entries)]
    used = [j for j in range(len(raw) // 4) if raw[4 * j : 4 * j + 4] != b"\xff" * 4]
    for i in sorted({*range(min(entries, 64)), entries - 1, entries, *used[:4096]}):
        p = table + 4 * i
        if i < 0 or p + 4 > size:
            continue
        fields.append(Field(f"bat[{i}]", p, 4, ">", "bat_vhd", 512))
        sector = _u(data, p, ">I")
        if sector != 0xFFFFFFFF and sector * 512 + bitmap <= size:
            spans.append(Span(f"bitmap {i}", sector * 512, bitmap))
            spans.append(Span(f"block {i}", sector * 512 + bitmap, min(block, size)))
    return fields, spans


def catalogue(data: bytes, fmt: str) -> tuple[list[Field], list[Span]]:
    """The structures of a seed file (``fmt``: vhdx, vhd or raw)."""
    if fmt == "vhdx":
        return _vhdx_catalogue(data)
    if fmt == "vhd":
        return _vhd_catalogue(data)
    return [], [Span("data", 0, len(data))]


# --------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------


def file_seed(name: str, paths: Sequence[Path], fmt: str, target: str | None = None) -> Seed:
    """A seed of image files (one image, or a chain with its parents), each catalogued
    by the format its suffix names; the target is the last file unless named."""
    files = []
    for path in paths:
        data = path.read_bytes()
        fields, spans = catalogue(data, {".vhd": "vhd", ".vhdx": "vhdx"}.get(path.suffix, "raw"))
        files.append(SeedFile(path.name, data, fields, spans))
    return Seed(name, fmt, files, target or paths[-1].name)


def _pattern(n: int, salt: int) -> bytes:
    """``n`` bytes that differ per sector (so misplaced reads show)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{salt}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def _write_blocks(path: Path, writes: Sequence[tuple[int, int]], salt: int) -> None:
    import pyvhdx

    with pyvhdx.open(path, "r+") as img:
        for k, (offset, length) in enumerate(writes):
            img.write_at(offset, _pattern(length, salt + k))


def _vhdx_log_entry(
    seq: int,
    tail: int,
    guid: uuid.UUID,
    descs: Sequence[tuple[str, int, Any]],
    *,
    flushed: int,
    last: int,
) -> bytes:
    """A log entry (MS-VHDX 2.3.1) with data ``("data", offset, 4096 bytes)`` and
    zero ``("zero", offset, length)`` descriptors, CRC-32C included.
    """
    from pyvhdx.checksum import crc32c_with_zeroed_field

    n_data = sum(1 for d in descs if d[0] == "data")
    desc_sectors = 1 if len(descs) <= 126 else 1 + -(-(len(descs) - 126) // 128)
    length = 4096 * (desc_sectors + n_data)
    out = bytearray(length)
    struct.pack_into(
        "<4sIIIQII16sQQ", out, 0, b"loge", 0, length, tail, seq, len(descs), 0,
        guid.bytes_le, flushed, last,
    )  # fmt: skip
    k = 0
    for i, (kind, offset, value) in enumerate(descs):
        p = 64 + 32 * i
        if kind == "zero":
            struct.pack_into("<4sIQQQ", out, p, b"zero", 0, value, offset, seq)
            continue
        sector = bytes(value)
        struct.pack_into(
            "<4sIQQQ",
            out,
            p,
            b"desc",
            int.from_bytes(sector[4092:], "little"),
            int.from_bytes(sector[:8], "little"),
            offset,
            seq,
        )
        s = 4096 * (desc_sectors + k)
        out[s : s + 4] = b"data"
        struct.pack_into("<I", out, s + 4, seq >> 32)
        out[s + 8 : s + 4092] = sector[8:4092]
        struct.pack_into("<I", out, s + 4092, seq & 0xFFFFFFFF)
        k += 1
    out[4:8] = crc32c_with_zeroed_field(out, 4).to_bytes(4, "little")
    return bytes(out)


def _set_log_guid(buf: bytearray, guid: uuid.UUID) -> None:
    from pyvhdx.checksum import crc32c_with_zeroed_field

    for off in (64 * KiB, 128 * KiB):
        buf[off + 48 : off + 64] = guid.bytes_le
        buf[off + 4 : off + 8] = crc32c_with_zeroed_field(buf[off : off + 4096], 4).to_bytes(
            4, "little"
        )


def _seed_synthetic_log(path: Path, *, wrap: bool = False) -> None:
    """A dynamic VHDX with a pending two-entry log sequence: a BAT change that maps
    block 3 past the end of the file (LastFileOffset extends it), a zeroed range
    and a data sector inside block 0. With ``wrap`` the first entry starts in the
    last sector of the log and wraps around its end (MS-VHDX 2.3: a circular buffer).
    """
    import pyvhdx

    pyvhdx.create(path, 4 * MiB, block_size=MiB)
    _write_blocks(path, [(0, 64 * KiB), (MiB, 8 * KiB)], 11)
    buf = bytearray(path.read_bytes())
    with pyvhdx.open(path) as img:
        h: Any = img.handler
        bat_offset = h.bat_offset
        b0 = img.handler.table.code(0)
    size = len(buf)
    new_block = -(-size // MiB) * MiB
    bat_sector = bytearray(buf[bat_offset : bat_offset + 4096])
    struct.pack_into("<Q", bat_sector, 8 * 3, new_block | 6)
    guid = uuid.UUID("0f0f0f0f-1111-2222-3333-444455556666")
    e1 = _vhdx_log_entry(
        7, 0, guid, [("data", bat_offset, bytes(bat_sector))], flushed=size, last=new_block + MiB
    )
    e2 = _vhdx_log_entry(
        8,
        0,
        guid,
        [("zero", b0 + 8 * KiB, 8 * KiB), ("data", b0 + 32 * KiB, _pattern(4096, 99))],
        flushed=size,
        last=new_block + MiB,
    )
    log = 1 * MiB
    if wrap:
        pos = MiB - 4096  # e1: its header in the log's last sector, its data sector at 0
        descs = [("zero", b0 + 8 * KiB, 8 * KiB), ("data", b0 + 32 * KiB, _pattern(4096, 99))]
        last = new_block + MiB
        e1 = _vhdx_log_entry(7, pos, guid, [("data", bat_offset, bytes(bat_sector))],
                             flushed=size, last=last)  # fmt: skip
        e2 = _vhdx_log_entry(8, pos, guid, descs, flushed=size, last=last)
        buf[log + pos : log + MiB] = e1[:4096]
        buf[log : log + 4096] = e1[4096:]
        buf[log + 4096 : log + 4096 + len(e2)] = e2
    else:
        buf[log : log + len(e1)] = e1
        buf[log + len(e1) : log + len(e1) + len(e2)] = e2
    _set_log_guid(buf, guid)
    path.write_bytes(bytes(buf))


def _seed_crashed_write(path: Path) -> None:
    """A dynamic VHDX whose write session crashed after its log entry was written and
    announced in the headers, before the BAT was updated in place: the log is pending.
    """
    import pyvhdx
    from tests.crashfile import CrashFile, SimulatedCrash

    pristine = path.with_suffix(".pristine")
    pyvhdx.create(pristine, 4 * MiB, block_size=MiB, logical_sector_size=4096)
    _write_blocks(pristine, [(0, 16 * KiB)], 21)
    for crash_at in range(1, 64):
        shutil.copyfile(pristine, path)
        f = CrashFile(path, crash_at)
        try:
            with pyvhdx.open(cast(BinaryIO, f), "r+") as img:
                img.write_at(2 * MiB + 512, _pattern(3 * 4096, 22))
                img.write_at(3 * MiB, _pattern(4096, 23))
        except SimulatedCrash:
            pass
        finally:
            f.close()
        raw = path.read_bytes()
        if raw[64 * KiB + 48 : 64 * KiB + 64] == bytes(16) and raw[
            128 * KiB + 48 : 128 * KiB + 64
        ] == bytes(16):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pyvhdx.open(path) as img:
                if img.handler.log_replayed and img.read_at(3 * MiB, 4096) == _pattern(4096, 23):
                    pristine.unlink()
                    return
    raise RuntimeError("no crash point left a pending log")  # pragma: no cover


def _seed_vhdx_partial(directory: Path, stem: str, sector: int) -> tuple[str, str]:
    """A vhdxbuild parent and a differencing child with a partially present block
    (sector bitmap), a fully present one, a ZERO one and an UNMAPPED one.
    """
    from tests.vhdxbuild import build_vhdx

    bs = MiB
    size = 4 * MiB
    parent = build_vhdx(
        directory / f"{stem}-parent.vhdx",
        _pattern(size, 31),
        block_size=bs,
        logical_sector_size=sector,
    )
    per_block = bs // sector
    bits = [(i // 3) % 2 == 0 for i in range(per_block)]
    content = _pattern(size, 32)
    build_vhdx(
        directory / f"{stem}.vhdx",
        content,
        block_size=bs,
        logical_sector_size=sector,
        disk_type="differencing",
        states={0: 7, 1: 6, 2: 2, 3: 3},
        sector_bitmaps={0: bits},
        parent_locator={
            "parent_linkage": "{" + str(parent.data_write_guid) + "}",
            "relative_path": f".\\{stem}-parent.vhdx",
            "volume_path": "\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\p.vhdx",
            "absolute_win32_path": f"C:\\images\\{stem}-parent.vhdx",
        },
    )
    return f"{stem}-parent.vhdx", f"{stem}.vhdx"


def _qemu(args: list[str]) -> bool:
    exe = shutil.which("qemu-img")
    if exe is None:
        return False
    subprocess.run([exe, *args], check=True, capture_output=True)
    return True


def build_seeds(
    directory: Path, *, qemu: bool = True, names: Sequence[str] | None = None
) -> dict[str, Seed]:
    """Make the seed images in ``directory`` and return them with their catalogues.

    Args:
        directory: an empty (or scratch) directory; each seed gets a subdirectory.
        qemu: also make seeds with ``qemu-img`` when it is installed.
        names: build only these seeds (default: all).
    """
    import pyvhdx

    directory.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, Seed] = {}

    def want(name: str) -> bool:
        return names is None or name in names

    def add(name: str, fmt: str, files: list[str], target: str | None = None) -> None:
        seeds[name] = file_seed(name, [directory / name / f for f in files], fmt, target)

    def fresh(name: str) -> Path:
        d = directory / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        return d

    if want("raw"):
        d = fresh("raw")
        (d / "disk.img").write_bytes(_pattern(640 * KiB, 1))
        add("raw", "raw", ["disk.img"])
    for name, kw, writes in (
        (
            "vhdx-dynamic-512",
            dict(logical_sector_size=512),
            [(0, 96 * KiB), (2 * MiB + 4096, 5000)],
        ),
        (
            "vhdx-dynamic-4096",
            dict(logical_sector_size=4096, physical_sector_size=4096),
            [(4096, 8192), (3 * MiB - 4096, 12288)],
        ),
        ("vhdx-fixed", dict(disk_type="fixed"), [(512, 4096), (MiB + 3, 70000)]),
    ):
        if want(name):
            d = fresh(name)
            size = 2 * MiB if name == "vhdx-fixed" else 4 * MiB
            pyvhdx.create(d / "disk.vhdx", size, block_size=MiB, **kw)
            _write_blocks(d / "disk.vhdx", writes, 2)
            add(name, "vhdx", ["disk.vhdx"])
    if want("vhdx-log-synthetic"):
        d = fresh("vhdx-log-synthetic")
        _seed_synthetic_log(d / "disk.vhdx")
        add("vhdx-log-synthetic", "vhdx", ["disk.vhdx"])
    if want("vhdx-log-wrapped"):
        d = fresh("vhdx-log-wrapped")
        _seed_synthetic_log(d / "disk.vhdx", wrap=True)
        add("vhdx-log-wrapped", "vhdx", ["disk.vhdx"])
    if want("vhdx-log-crashed"):
        d = fresh("vhdx-log-crashed")
        _seed_crashed_write(d / "disk.vhdx")
        add("vhdx-log-crashed", "vhdx", ["disk.vhdx"])
    for name, sector in (("vhdx-diff-partial-512", 512), ("vhdx-diff-partial-4096", 4096)):
        if want(name):
            d = fresh(name)
            files = _seed_vhdx_partial(d, "child", sector)
            add(name, "vhdx", list(files))
    if want("vhdx-chain3"):
        d = fresh("vhdx-chain3")
        pyvhdx.create(d / "base.vhdx", 4 * MiB, block_size=MiB)
        _write_blocks(d / "base.vhdx", [(0, 2 * MiB)], 41)
        pyvhdx.create(d / "mid.vhdx", parent=d / "base.vhdx", block_size=MiB)
        _write_blocks(d / "mid.vhdx", [(MiB + 512, 4096)], 42)
        pyvhdx.create(d / "top.vhdx", parent=d / "mid.vhdx", block_size=MiB)
        _write_blocks(d / "top.vhdx", [(3 * MiB, 1000)], 43)
        add("vhdx-chain3", "vhdx", ["base.vhdx", "mid.vhdx", "top.vhdx"])
    if want("mixed-vhdx-on-vhd"):
        # A VHDX child whose linkage names a VHD parent's Unique Id: across formats.
        from tests.vhdxbuild import build_vhdx

        d = fresh("mixed-vhdx-on-vhd")
        pyvhdx.create(d / "base.vhd", 2 * MiB, block_size=512 * KiB)
        _write_blocks(d / "base.vhd", [(0, 1536 * KiB)], 81)
        with pyvhdx.open(d / "base.vhd") as img:
            ident = img.handler.identity_as_parent()
        build_vhdx(
            d / "child.vhdx",
            _pattern(2 * MiB, 82),
            block_size=MiB,
            disk_type="differencing",
            states={0: 7, 1: 0},
            sector_bitmaps={0: [i % 5 == 0 for i in range(MiB // 512)]},
            parent_locator={"parent_linkage": "{" + ident + "}", "relative_path": "base.vhd"},
        )
        add("mixed-vhdx-on-vhd", "vhdx", ["base.vhd", "child.vhdx"])
    if want("vhdx-large-sparse"):
        # 80 GiB in 1 MiB blocks: 20 sector bitmap chunks, a BAT loaded lazily
        d = fresh("vhdx-large-sparse")
        pyvhdx.create(d / "base.vhdx", 80 << 30, block_size=MiB)
        _write_blocks(d / "base.vhdx", [(0, 4096), ((4 << 30) + 5 * MiB, 8192)], 91)
        pyvhdx.create(d / "child.vhdx", parent=d / "base.vhdx", block_size=MiB)
        _write_blocks(d / "child.vhdx", [((4 << 30) + 5 * MiB + 4096, 512), (79 << 30, 4096)], 92)
        add("vhdx-large-sparse", "vhdx", ["base.vhdx", "child.vhdx"])
    if want("vhd-large-sparse"):
        d = fresh("vhd-large-sparse")
        pyvhdx.create(d / "disk.vhd", 300 << 30, block_size=2 * MiB)
        _write_blocks(d / "disk.vhd", [(MiB, 4096), (299 << 30, 8192)], 93)
        add("vhd-large-sparse", "vhd", ["disk.vhd"])
    if want("vhd-fixed"):
        d = fresh("vhd-fixed")
        pyvhdx.create(d / "disk.vhd", MiB + 512 * 7, disk_type="fixed")
        _write_blocks(d / "disk.vhd", [(0, 3000), (MiB, 512)], 51)
        add("vhd-fixed", "vhd", ["disk.vhd"])
    if want("vhd-dynamic"):
        d = fresh("vhd-dynamic")
        pyvhdx.create(d / "disk.vhd", 3 * MiB, block_size=512 * KiB)
        _write_blocks(d / "disk.vhd", [(1000, 3000), (MiB + 512, 512 * KiB)], 52)
        add("vhd-dynamic", "vhd", ["disk.vhd"])
    if want("vhd-diff"):
        d = fresh("vhd-diff")
        pyvhdx.create(d / "parent.vhd", 2 * MiB, block_size=256 * KiB)
        _write_blocks(d / "parent.vhd", [(0, MiB)], 61)
        pyvhdx.create(d / "child.vhd", parent=d / "parent.vhd", block_size=256 * KiB)
        _write_blocks(d / "child.vhd", [(700, 2000), (300 * KiB, 4096), (MiB + 5, 10)], 62)
        add("vhd-diff", "vhd", ["parent.vhd", "child.vhd"])
    if qemu and shutil.which("qemu-img"):
        raw = directory / "qemu-src.img"
        content = bytearray(3 * MiB)
        content[5000:90000] = _pattern(85000, 71)
        content[2 * MiB : 2 * MiB + 4096] = _pattern(4096, 72)
        raw.write_bytes(bytes(content))
        for name, fmt, opts, fname in (
            ("qemu-vhdx", "vhdx", "block_size=1M,log_size=1M,subformat=dynamic", "disk.vhdx"),
            ("qemu-vpc-dynamic", "vpc", "subformat=dynamic", "disk.vhd"),
            ("qemu-vpc-fixed", "vpc", "subformat=fixed,force_size=on", "disk.vhd"),
        ):
            if want(name):
                d = fresh(name)
                _qemu(["convert", "-f", "raw", "-O", fmt, "-o", opts, str(raw), str(d / fname)])
                add(name, "vhdx" if fmt == "vhdx" else "vhd", [fname])
        raw.unlink()
    return seeds


def write_seed(seed: Seed, directory: Path) -> None:
    """Write the seed's (unmutated) files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in seed.files:
        (directory / f.name).write_bytes(f.data)


# --------------------------------------------------------------------------------
# mutations
# --------------------------------------------------------------------------------

_SIGNATURES = (
    b"vhdxfile",
    b"head",
    b"regi",
    b"metadata",
    b"loge",
    b"desc",
    b"zero",
    b"data",
    b"conectix",
    b"cxsparse",
)


def _hostile_paths(seed: Seed, target: str) -> list[str]:
    """Path strings a locator might hold to lead a reader astray."""
    names = [f.name for f in seed.files]
    return [
        "",
        ".",
        "..",
        target,  # itself: a self-parent
        f".\\{target}",
        *names,
        *(f"..\\{seed.name}\\{n}" for n in names),
        "..\\..\\..\\..\\..\\..\\etc\\passwd",
        "../../../../etc/passwd",
        "/etc/passwd",
        "/dev/sda",
        "/dev/zero",
        "/proc/self/mem",
        "\\\\?\\C:\\Windows\\System32\\config\\SAM",
        "\\\\.\\PhysicalDrive0",
        "\\\\?\\GLOBALROOT\\Device\\Harddisk0\\Partition0",
        "\\\\server\\share\\parent.vhdx",
        "C:parent.vhdx",
        "C:\\",
        "\\",
        "/",
        "parent.vhdx\0/etc/passwd",
        "\0" * 8,
        "a" * 300,
        "\ud800x.vhdx",
        "con",
        "NUL",
        "aux.vhdx",
        "{" + str(uuid.UUID(int=0)) + "}",
    ]


def _int_edges(width: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    half = 1 << (8 * width - 1)
    values = {0, 1, 2, 7, 8, 255, 256, 511, 512, 4095, 4096, top, top - 1, half - 1, half, half + 1}
    return sorted(v for v in values if v <= top)


def _field_value(
    c: Chooser, f: Field, current: int, file_size: int, span_starts: list[int], guids: list[bytes]
) -> int | bytes:
    """An edge value for ``f`` (an int, or bytes for ``guid``/``bytes`` fields)."""
    top = (1 << (8 * f.width)) - 1
    if f.kind == "guid":
        pick = c.randint(0, 3)
        if pick == 0:
            return bytes(16)
        if pick == 1:
            return b"\xff" * 16
        if pick == 2 and guids:
            return bytes(c.choice(guids))
        return c.randbytes(16)
    if f.kind == "bytes":
        pick = c.randint(0, 3)
        byte_pool = list(f.choices) + [s[: f.width].ljust(f.width, b"\0") for s in _SIGNATURES]
        if pick <= 1:
            return bytes(c.choice(byte_pool))[: f.width].ljust(f.width, b"\0")
        if pick == 2:
            return bytes(f.width)
        return c.randbytes(f.width)
    if f.kind == "bat_vhdx":
        state = c.choice((0, 1, 2, 3, 4, 5, 6, 6, 6, 7, 7))
        offsets = [
            0,
            MiB,
            file_size,
            -(-file_size // MiB) * MiB,
            file_size + MiB,
            1 << 40,
            (1 << 64) - MiB,
            1 << 63,
            (1 << 63) - MiB,  # just below off_t's end: offset + block overflows int64
            (1 << 63) - 2 * MiB,
            1 << 62,
        ]
        offsets += [s & ~(MiB - 1) for s in span_starts]
        offset = c.choice(offsets) & 0xFFFFFFFFFFF00000
        if c.chance(0.1):
            offset |= c.randint(0, 0xFFFFF) & ~7  # reserved bits
        return (offset | state) & top
    if f.kind == "bat_vhd":
        pool = [
            0,
            1,
            2,
            3,
            top,
            top - 1,
            file_size // 512,
            file_size // 512 - 1,
            file_size // 512 + 1,
            (1 << 31),
        ]
        pool += [s // 512 for s in span_starts]
        return c.choice(pool) & top
    pick = c.randint(0, 9)
    if f.choices and pick <= 2:
        return int(c.choice(f.choices)) & top
    if f.kind in ("offset", "length") and pick <= 6:
        pool = [
            file_size,
            file_size - 1,
            file_size + 1,
            file_size - 512,
            file_size - 4096,
            -(-file_size // MiB) * MiB,
            file_size + MiB,
            MiB,
            64 * KiB,
            current * 2,
            current + 1,
            current - 1,
            current + 4096,
            current + MiB,
            (1 << 63) - 1,
            (1 << 63) - MiB,
            (1 << 62) + 4096,
        ]
        pool += span_starts
        return (c.choice(pool) // f.unit) & top
    if pick <= 7:
        return c.choice(_int_edges(f.width))
    if pick == 8:
        return (current ^ (1 << c.randint(0, 8 * f.width - 1))) & top
    return c.randint(0, top)


def _field_groups(sf: SeedFile) -> dict[str, list[Field]]:
    """Fields by structure (``header1``, ``bat``, ``log@0x100000``...), so that each
    structure is chosen as often as any other, whatever its number of fields.
    """
    groups: dict[str, list[Field]] = {}
    for f in sf.fields:
        key = f.name.split(".")[0].split("[")[0]
        groups.setdefault(key, []).append(f)
    return groups


_SIZES = (
    512,
    4096,
    MiB - 512,
    MiB + 512,
    (1 << 32) + 4096,
    1 << 40,
    (64 << 40) - 4096,
    64 << 40,
    (64 << 40) + 4096,
    1 << 62,
    (1 << 64) - 512,
)


def _recipe(c: Chooser, sf: SeedFile, size: int) -> list[tuple[Field, int | bytes]]:
    """Fields that only matter together: a resized disk with a BAT to match, a log
    that extends the file far and a region placed out there, a partially present
    block with its sector bitmap elsewhere.
    """
    by = {f.name: f for f in sf.fields}

    def num(f: Field) -> int:
        return int.from_bytes(
            sf.data[f.offset : f.offset + f.width], "big" if f.endian == ">" else "little"
        )

    out: list[tuple[Field, int | bytes]] = []
    pick = c.randint(0, 2)
    if "virtual_disk_size" in by:  # VHDX
        regions = [
            f for f in sf.fields if f.name.startswith("region_table") and f.name.endswith(".length")
        ]
        logs = [f for f in sf.fields if f.name.endswith(".last_file_offset")]
        bat = [f for f in sf.fields if f.name.startswith("bat[")]
        if pick == 0:
            vs = c.choice(_SIZES)
            out.append((by["virtual_disk_size"], vs & ((1 << 64) - 1)))
            bs = (
                num(by["file_parameters.block_size"]) if "file_parameters.block_size" in by else MiB
            )
            need = -(-(-(-vs // max(bs, 1)) * 8) // MiB) * MiB
            for f in regions:
                out.append((f, min(need, 0xFFF00000)))
        elif pick == 1 and logs:
            far = c.choice(
                (size + MiB, 1 << 32, 1 << 40, (1 << 63) - MiB, 1 << 63, (1 << 64) - MiB)
            )
            for f in logs:
                out.append((f, far & ((1 << 64) - 1)))
            offsets = [
                f
                for f in sf.fields
                if f.name.startswith("region_table") and f.name.endswith(".file_offset")
            ]
            if offsets and c.chance(0.7):
                out.append((c.choice(offsets), (far - MiB) & ((1 << 64) - 1) & ~(MiB - 1)))
                if c.chance(0.5):  # a large BAT out there, and a disk that needs it
                    out += [(f, 0xFFF00000) for f in regions]
                    out.append((by["virtual_disk_size"], c.choice((1 << 40, 64 << 40))))
        elif bat:
            payload = [f for f in bat if "payload" in f.name]
            sbs = [f for f in bat if "(sb" in f.name]
            spans = [sp.start & ~(MiB - 1) for sp in sf.spans if sp.start >= MiB]
            if payload:
                f = c.choice(payload)
                out.append((f, (num(f) & ~7 or c.choice(spans or [MiB])) | 7))
            for f in sbs:
                out.append((f, c.choice(spans or [0]) | c.choice((6, 6, 0, 7))))
    elif "dynamic_header.max_table_entries" in by:  # dynamic or differencing VHD
        bs = max(num(by["dynamic_header.block_size"]), 1)
        vs = c.choice((*_SIZES, size, size * 2))
        entries = min(-(-vs // bs), 0xFFFFFFFF)
        for name in ("footer.current_size", "footer_copy.current_size"):
            if name in by:
                out.append((by[name], vs & ((1 << 64) - 1)))
        if pick != 2:
            out.append((by["dynamic_header.max_table_entries"], entries))
    elif "footer.current_size" in by:  # fixed VHD
        vs = c.choice((size - 512, size - 1024, size, size - 511, 0, *_SIZES))
        out.append((by["footer.current_size"], max(vs, 0) & ((1 << 64) - 1)))
        if c.chance(0.5):
            out.append((by["footer.disk_type"], c.choice((3, 4))))
    return out


def make_mutation(
    seeds: dict[str, Seed], c: Chooser, *, seed_name: str | None = None
) -> dict[str, Any]:
    """Choose a seed, a file of it and one to four mutation operations."""
    names = sorted(seeds)
    seed = seeds[seed_name] if seed_name else seeds[c.choice(names)]
    # the target most of the time, its parents too
    sf = seed.file(seed.target) if c.chance(0.75) else c.choice(seed.files)
    size = len(sf.data)
    span_starts = sorted({s.start for s in sf.spans} | {s.start + s.length for s in sf.spans})
    guids = [sf.data[f.offset : f.offset + 16] for f in sf.fields if f.kind == "guid"]
    for other in seed.files:
        guids += [other.data[f.offset : f.offset + 16] for f in other.fields if f.kind == "guid"]
    ops: list[dict[str, Any]] = []
    fixes: list[Fix] = []
    n = 1 + (c.randint(0, 2) if c.chance(0.5) else 0)
    for _ in range(n):
        kind = c.randint(0, 99)
        if kind < 8 and sf.fields:  # several fields at once, consistently
            recipe = _recipe(c, sf, size)
            for f, value in recipe:
                order: Literal["big", "little"] = "big" if f.endian == ">" else "little"
                raw = value.to_bytes(f.width, order) if isinstance(value, int) else value
                ops.append({"op": "write", "field": f.name, "offset": f.offset, "hex": raw.hex()})
                if f.fix:
                    fixes.append(f.fix)
        elif kind < 45 and sf.fields:  # set a field: a structure first, then one of its fields
            groups = _field_groups(sf)
            f = c.choice(groups[c.choice(sorted(groups))])
            current = int.from_bytes(
                sf.data[f.offset : f.offset + f.width], "big" if f.endian == ">" else "little"
            )
            value = _field_value(c, f, current, size, span_starts, guids)
            if isinstance(value, int):
                raw = value.to_bytes(f.width, "big" if f.endian == ">" else "little")
            else:
                raw = value
            ops.append({"op": "write", "field": f.name, "offset": f.offset, "hex": raw.hex()})
            if f.fix and c.chance(0.85):
                fixes.append(f.fix)
        elif kind < 55:  # truncate
            pool = [0, 1, 511, 512, size - 1, size - 511, size - 512, size - 4096, size - MiB]
            for s in sf.spans:
                pool += [s.start, s.start + 1, s.start + s.length - 1, s.start + s.length]
            new = c.choice(pool) if c.chance(0.7) else c.randint(0, size)
            ops.append({"op": "truncate", "size": max(0, min(size, new))})
        elif kind < 58:  # append
            n_bytes = c.choice((1, 511, 512, 4096, MiB))
            fill = "zero" if c.chance(0.5) else "random"
            data = (
                bytes(n_bytes)
                if fill == "zero"
                else c.randbytes(min(n_bytes, 4096)) * (-(-n_bytes // 4096))
            )
            ops.append({"op": "append", "hex": data[:n_bytes].hex()})
        elif kind < 80:  # flip bits
            for _ in range(c.randint(1, 4)):
                if sf.spans and c.chance(0.7):
                    s = c.choice(sf.spans)
                    if s.length <= 0:
                        continue
                    off = s.start + c.randint(0, min(s.length, 1 << 30) - 1)
                    if s.fix and c.chance(0.5):
                        fixes.append(s.fix)
                else:
                    off = c.randint(0, max(0, size - 1))
                ops.append({"op": "flip", "offset": off, "bit": c.randint(0, 7)})
        elif kind < 88 and any(s.text for s in sf.spans):  # hostile path strings
            s = c.choice([s for s in sf.spans if s.text])
            text = c.choice(_hostile_paths(seed, seed.target))
            raw = text.encode(s.text or "utf-16-le", "surrogatepass")
            if c.chance(0.5):
                raw = raw[: s.length].ljust(s.length, b"\0")
            ops.append(
                {
                    "op": "write",
                    "field": s.name,
                    "offset": s.start,
                    "hex": raw[: max(s.length, 64)].hex(),
                }
            )
            if s.fix:
                fixes.append(s.fix)
        elif kind < 94 and len(sf.spans) > 1:  # one structure copied over another
            a, b = c.choice(sf.spans), c.choice(sf.spans)
            n_bytes = min(a.length, b.length, 64 * KiB)
            ops.append(
                {
                    "op": "copy",
                    "src": a.start,
                    "dst": b.start,
                    "length": n_bytes,
                    "what": f"{a.name} -> {b.name}",
                }
            )
            if b.fix and c.chance(0.7):
                fixes.append(b.fix)
        else:  # random bytes somewhere in a structure
            s = c.choice(sf.spans) if sf.spans else Span("file", 0, size)
            n_bytes = c.choice((1, 2, 4, 8, 16, 64))
            off = s.start + c.randint(0, max(0, s.length - 1))
            ops.append(
                {
                    "op": "write",
                    "field": f"random in {s.name}",
                    "offset": off,
                    "hex": c.randbytes(n_bytes).hex(),
                }
            )
            if s.fix and c.chance(0.5):
                fixes.append(s.fix)
    # truncation last, so it is not undone by a later write
    ops.sort(key=lambda o: o["op"] == "truncate")
    if fixes:
        ops.append({"op": "fix", "fixes": [list(f) for f in dict.fromkeys(fixes)]})
    return {"seed": seed.name, "file": sf.name, "ops": ops}


def _fix(buf: bytearray, fix: Sequence[Any]) -> None:
    algo, start, length, field = fix
    if start < 0 or start + length > len(buf) or field + 4 > len(buf):
        return
    if algo == "crc32c":
        from pyvhdx.checksum import crc32c_with_zeroed_field

        value = crc32c_with_zeroed_field(bytes(buf[start : start + length]), field - start)
        buf[field : field + 4] = value.to_bytes(4, "little")
    else:
        buf[field : field + 4] = b"\0\0\0\0"
        total = sum(buf[start : start + length])
        buf[field : field + 4] = (~total & 0xFFFFFFFF).to_bytes(4, "big")


def apply_mutation(data: bytes, mutation: dict[str, Any]) -> bytes:
    """The bytes of the mutated file (``data`` is the seed file's)."""
    buf = bytearray(data)
    for op in mutation["ops"]:
        kind = op["op"]
        if kind == "write":
            raw = bytes.fromhex(op["hex"])
            off = op["offset"]
            if off > len(buf):
                continue
            buf[off : off + len(raw)] = raw
        elif kind == "flip":
            if op["offset"] < len(buf):
                buf[op["offset"]] ^= 1 << op["bit"]
        elif kind == "truncate":
            del buf[op["size"] :]
        elif kind == "append":
            buf += bytes.fromhex(op["hex"])
        elif kind == "copy":
            src = bytes(buf[op["src"] : op["src"] + op["length"]])
            dst = op["dst"]
            if dst < len(buf):
                buf[dst : dst + len(src)] = src[: len(buf) - dst]
        elif kind == "fix":
            for fix in op["fixes"]:
                _fix(buf, fix)
        else:  # pragma: no cover
            raise ValueError(f"unknown mutation {kind}")
    return bytes(buf)


def materialize(seed: Seed, mutation: dict[str, Any], directory: Path) -> Path:
    """Write the seed's files with the mutated one into ``directory``; return the target."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in seed.files:
        data = apply_mutation(f.data, mutation) if f.name == mutation["file"] else f.data
        (directory / f.name).write_bytes(data)
    return directory / seed.target


# --------------------------------------------------------------------------------
# running a case
# --------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by the SIGALRM handler when a case runs past its time bound."""


@dataclasses.dataclass
class CaseResult:
    """What one case did: ``status`` is ``ok``, ``escape``, ``hang`` or ``memory``."""

    status: str = "ok"
    outcomes: list[str] = dataclasses.field(default_factory=list)
    escapes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _where(tb: Any) -> str:
    """``file:line function`` of the innermost frame inside pyvhdx (else the innermost)."""
    frames = traceback.extract_tb(tb)
    inside = [f for f in frames if f"{os.sep}pyvhdx{os.sep}" in f.filename]
    nothing: list[traceback.FrameSummary | None] = [None]
    f = (inside or frames or nothing)[-1]
    if f is None:
        return "?"
    return f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"


def escape_signature(e: dict[str, Any]) -> str:
    """What makes two escapes the same bug: the exception type and where it was raised."""
    return f"{e['op']}: {e['type']} at {e['where']}"


@contextlib.contextmanager
def time_bound(seconds: float, *, cpu: bool = False) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (0: no bound)
    of wall time or, with ``cpu``, of this process's CPU time (a fuzzer at low
    priority on a busy machine then sees no hang that is only its starvation)."""
    if not seconds:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"time bound of {seconds} s {'CPU time ' if cpu else ''}exceeded")

    timer, sig = (
        (signal.ITIMER_PROF, signal.SIGPROF) if cpu else (signal.ITIMER_REAL, signal.SIGALRM)
    )
    old = signal.signal(sig, fire)
    signal.setitimer(timer, seconds)
    try:
        yield
    finally:
        signal.setitimer(timer, 0)
        signal.signal(sig, old)


def _status_kib(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def vm_size() -> int:
    """This process's virtual memory size in bytes (Linux ``/proc``), else 0."""
    return _status_kib("VmSize:") * 1024


@contextlib.contextmanager
def memory_bound(extra: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``extra`` bytes (soft
    ``RLIMIT_AS``, restored after), so a runaway allocation is a ``MemoryError``.
    A no-op where the size cannot be read.
    """
    import resource

    now = vm_size()
    if not now or extra <= 0:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = now + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class PeakMeter:
    """The resident memory one call adds at its peak (Linux: the ``VmHWM`` high-water
    mark, reset before by writing 5 to ``/proc/self/clear_refs``).

    Unlike ``RLIMIT_AS`` it counts what the call touched, not the address space it
    reserved, and it measures the call alone however large the process has grown.
    ``added`` is ``None`` where the mark cannot be reset.
    """

    def __init__(self) -> None:
        self.added: int | None = None
        self._base = 0

    def __enter__(self) -> PeakMeter:
        self._base = _status_kib("VmRSS:")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self._base = 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self._base:
            self.added = max(0, _status_kib("VmHWM:") - self._base) * 1024


def rss() -> int:
    """This process's resident size in bytes (Linux ``/proc``), else 0."""
    return _status_kib("VmRSS:") * 1024


class _Run:
    """Runs the operations of one case, recording outcomes and escapes."""

    def __init__(self, result: CaseResult) -> None:
        self.result = result

    def op(self, name: str, fn: Callable[..., Any]) -> Any:
        from pyvhdx.errors import PyvhdxError

        try:
            value = fn()
        except PyvhdxError as exc:
            self.result.outcomes.append(f"{name}: {type(exc).__name__} {exc.structure} {exc.field}")
            return None
        except MemoryError as exc:
            self._escape(name, exc, "memory")
            return None
        except CaseTimeout:
            raise
        except Exception as exc:  # the point: nothing else may escape
            self._escape(name, exc, "escape")
            return None
        self.result.outcomes.append(f"{name}: ok")
        return value

    def _escape(self, name: str, exc: BaseException, status: str) -> None:
        e = {
            "op": name,
            "type": type(exc).__name__,
            "message": str(exc)[:500],
            "where": _where(exc.__traceback__),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[
                -8000:
            ],
        }
        self.result.escapes.append(e)
        if self.result.status == "ok" or status == "memory":
            self.result.status = status


def _json(value: Any) -> str:
    return json.dumps(value)


def _read_plan(img: Any, rng: random.Random) -> list[tuple[int, int]]:
    """Reads for a disk: edges, block boundaries, unaligned, random."""
    vs = img.virtual_size
    bs = img.block_size or MiB
    plan = [(0, 512), (max(0, vs - 512), 512), (max(0, vs - 1), 1), (vs, 16), (vs + 4096, 1)]
    plan += [(max(0, bs - 100), 300), (max(0, 2 * bs - 4096), 8192), (1, 4095)]
    for _ in range(6):
        off = rng.randint(0, max(0, vs))
        plan.append((off, rng.choice((1, 511, 512, 4096, 4097, 65536 + 3, MiB + 1))))
    return plan


def _reads(img: Any, rng: random.Random) -> int:
    total: int = 0
    for off, length in _read_plan(img, rng):
        total += len(img.read_at(off, length))
    buf = bytearray(4096 + 7)
    mv = memoryview(buf)[3:]
    total += img.readinto_at(rng.randint(0, max(0, img.virtual_size - 1)), mv)
    return total


def _stream_reads(img: Any, rng: random.Random) -> int:
    s = img.stream()
    s.seek(rng.randint(0, max(0, img.virtual_size)))
    n = len(s.read(5000))
    s.seek(-min(4096, img.virtual_size), os.SEEK_END)
    n += len(s.read())
    return n


def _full_read(img: Any) -> str:
    from pyvhdx.hashing import hash_image

    return hash_image(img, ["md5"], progress=False)["md5"]


def _extents(it: Iterator[Any]) -> int:
    n = 0
    for _ in it:
        n += 1
        if n >= EXTENT_LIMIT:
            break
    return n


class WriteMismatch(AssertionError):
    """Bytes written through ``r+`` did not read back (a wrong result, not an error)."""


def _copy_case(directory: Path, seed: Seed, name: str) -> Path:
    """Copy the case's files into ``directory / name`` (the seed's own copy must stay
    as it is); return the copy of the target."""
    work = directory / name
    work.mkdir(exist_ok=True)
    for f in seed.files:
        src = directory / f.name
        if src.exists():
            shutil.copyfile(src, work / f.name)
    return work / seed.target


def _write_case(directory: Path, seed: Seed, rng: random.Random) -> int:
    """Open a copy of the case ``r+``, write, close, reopen and read the writes back.

    A write the image refuses must raise a pyvhdx error; one it accepts must read
    back, before and after close, from the same open and from a fresh one. An r+
    open that is refused must not have changed any file.
    """
    import pyvhdx

    target = _copy_case(directory, seed, "rw")
    work = target.parent
    done: list[tuple[int, bytes]] = []
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    try:
        img = pyvhdx.open(target, "r+")
    except pyvhdx.PyvhdxError:
        # refusing to open for writing must leave every file as it was
        for name, data in before.items():
            if (work / name).read_bytes() != data:
                raise WriteMismatch(f"a refused r+ open changed {name}") from None
        raise
    with img:
        vs = img.virtual_size
        sector = img.logical_sector_size or 512
        plan = [(0, sector), (max(0, vs - sector), sector)]
        for _ in range(3):
            off = rng.randint(0, max(0, vs - 1))
            n = rng.choice((1, sector, 4096 + 17, 65536, MiB + 512))
            if rng.random() < 0.5:
                off -= off % sector
                n = max(sector, n - n % sector)
            plan.append((off, n))
        for off, n in plan:
            n = max(0, min(n, vs - off))
            if n == 0:
                continue
            data = _pattern(n, rng.randint(1, 1 << 30))
            img.write_at(off, data)
            done.append((off, data))
            if img.read_at(off, n) != data:
                raise WriteMismatch(f"read after write at {off:#x}+{n} differs (same open)")
        with contextlib.suppress(pyvhdx.PyvhdxError):
            img.write_at(vs, b"x")  # past the end: an error, never a write
            raise WriteMismatch("a write past the end of the disk was accepted")
    with pyvhdx.open(target) as again:
        for i, (off, data) in enumerate(done):
            want = bytearray(data)  # this write, as the later ones left it
            for later_off, later in done[i + 1 :]:
                lo, hi = max(off, later_off), min(off + len(data), later_off + len(later))
                if lo < hi:
                    want[lo - off : hi - off] = later[lo - later_off : hi - later_off]
            if again.read_at(off, len(want)) != want:
                raise WriteMismatch(f"written bytes at {off:#x}+{len(want)} differ after reopening")
    return len(done)


def _digest(img: Any, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``img``."""
    import hashlib

    h = hashlib.sha256()
    for pos in range(0, size, 4 * MiB):
        h.update(img.read_at(pos, min(4 * MiB, size - pos)))
    return h.hexdigest()


def _merge_case(directory: Path, seed: Seed) -> str:
    """Merge a copy of a differencing target into its parent; the parent must then
    read as the child's chain read before (both through pyvhdx). A refused merge
    must leave a parent that still opens."""
    import hashlib

    import pyvhdx

    target = _copy_case(directory, seed, "mg")
    with pyvhdx.open(target) as chain:
        if chain.disk_type is not pyvhdx.DiskType.DIFFERENCING or chain.parent is None:
            return "not a differencing chain"
        if chain.virtual_size > READ_LIMIT:
            return "too large"
        parent = Path(chain.parent.name)
        size = chain.virtual_size
        want = _digest(chain, size)
    parent_before = hashlib.sha256(parent.read_bytes()).hexdigest()
    try:
        pyvhdx.merge(target, keep_child=True)
    except pyvhdx.PyvhdxError:
        if hashlib.sha256(parent.read_bytes()).hexdigest() != parent_before:
            try:  # a merge stopped midway: the parent must still open and read
                with pyvhdx.open(parent, verify_parent=False) as p:
                    p.read_at(0, 512)
            except pyvhdx.PyvhdxError as exc:
                raise WriteMismatch(f"a failed merge left {parent.name} unreadable") from exc
        raise
    with pyvhdx.open(parent) as merged:
        got = _digest(merged, size)  # a smaller child leaves the parent's tail alone
    if got != want:
        raise WriteMismatch(
            f"after merge {parent.name} reads {got[:16]}, the chain read {want[:16]}"
        )
    return got


def run_case(
    directory: Path,
    seed: Seed,
    *,
    pristine: Path | None = None,
    rng_seed: int = 0,
    time_limit: float = 10.0,
    cpu_time: bool = False,
    convert: bool = True,
    light: bool = False,
    write: bool = False,
) -> CaseResult:
    """Run every operation on the (mutated) seed files in ``directory``.

    Args:
        directory: holds the seed's files, one of them mutated.
        seed: the seed (its target is the file opened).
        pristine: the unmutated target, with its chain beside it, to compare with.
        rng_seed: chooses the random reads.
        time_limit: seconds for the whole case (0: unbounded).
        cpu_time: bound the CPU time of the case, not its wall time.
        convert: also convert the image (into ``directory / "out"``).
        light: skip the expensive variants (strict and salvage opens, stream reads).
        write: also open a copy ``r+``, write, and read the writes back; and
            merge a copy of a differencing target into its parent.
    """
    import pyvhdx
    from pyvhdx.check import check_image
    from pyvhdx.compare import find_difference
    from pyvhdx.inspect import inspect_image

    result = CaseResult()
    run = _Run(result)
    target = directory / seed.target
    rng = random.Random(rng_seed)
    start = time.perf_counter()
    opened: list[Any] = []
    try:
        with time_bound(time_limit, cpu=cpu_time), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # numpy scalar overflow is a wrong result, not a warning to ignore
            warnings.simplefilter("error", RuntimeWarning)
            variants: list[tuple[str, dict[str, Any]]] = [
                ("open", {}),
                ("open-missing-parent", {"allow_missing_parent": True}),
                ("open-no-parent", {"resolve_parent": False}),
            ]
            if not light:
                variants += [("open-salvage", {"salvage": True}), ("open-strict", {"strict": True})]
            for name, kw in variants:
                img = run.op(name, lambda kw=kw: pyvhdx.open(target, **kw))
                if img is None:
                    continue
                opened.append(img)
                run.op(f"{name}-info", lambda img=img: _json(img.info().to_dict()))
            # a file object without a descriptor: the other read path of FileSource
            mem = run.op(
                "open-bytesio",
                lambda: pyvhdx.open(io.BytesIO(target.read_bytes()), resolve_parent=False),
            )
            if mem is not None:
                opened.append(mem)
                run.op("bytesio-info", lambda: _json(mem.info().to_dict()))
                run.op("bytesio-reads", lambda: _reads(mem, random.Random(rng_seed)))
            run.op("inspect", lambda: _json(inspect_image(target)))
            run.op("check", lambda: _json(check_image(target).to_dict()))
            img = opened[0] if opened else None
            for other in opened[1:-1] if mem is not None else opened[1:]:
                # the other variants read differently (a missing parent as zeros, salvage)
                run.op("variant-reads", lambda o=other: _reads(o, random.Random(rng_seed)))
            if img is not None:
                big = img.virtual_size > READ_LIMIT
                run.op("extents", lambda: _extents(img.extents()))
                run.op("chain-extents", lambda: _extents(img.chain_extents()))
                if not big:
                    run.op("full-read", lambda: _full_read(img))
                run.op("reads", lambda: _reads(img, rng))
                if not light:
                    run.op("stream", lambda: _stream_reads(img, rng))
                if pristine is not None and not big:
                    run.op("compare", lambda: find_difference(img, pristine))
                    if not light:
                        run.op(
                            "compare-strict", lambda: find_difference(img, pristine, strict=True)
                        )
                if convert and img.virtual_size <= CONVERT_LIMIT:
                    out = directory / "out"
                    out.mkdir(exist_ok=True)
                    dest = out / rng.choice(("c.vhdx", "c.vhd", "c.img"))
                    run.op(
                        f"convert-{dest.suffix[1:]}",
                        lambda: pyvhdx.convert(
                            target, dest, force=True, progress=False, sync=False
                        ),
                    )
                    shutil.rmtree(out, ignore_errors=True)
            for img in opened:
                run.op("close", img.close)
            if write:
                run.op("write-r+", lambda: _write_case(directory, seed, rng))
                shutil.rmtree(directory / "rw", ignore_errors=True)
                run.op("merge", lambda: _merge_case(directory, seed))
                shutil.rmtree(directory / "mg", ignore_errors=True)
    except CaseTimeout as exc:
        result.status = "hang"
        run._escape("timeout", exc, "hang")
        result.status = "hang"
    finally:
        for img in opened:
            with contextlib.suppress(Exception):
                img.close()
        result.seconds = time.perf_counter() - start
    return result


class Workspace:
    """Each seed's files written once, in a ``case`` and a ``pristine`` directory.

    :meth:`run` writes the mutated file over its ``case`` copy, runs the case and
    puts the seed's bytes back, so a case costs two file writes, not a copy of
    the whole chain.
    """

    def __init__(self, root: Path, seeds: dict[str, Seed]) -> None:
        self.root = root
        self.seeds = seeds
        for seed in seeds.values():
            write_seed(seed, root / seed.name / "case")
            write_seed(seed, root / seed.name / "pristine")

    @contextlib.contextmanager
    def case(self, mutation: dict[str, Any]) -> Iterator[tuple[Seed, Path]]:
        """The seed and its ``case`` directory with the mutated file written in it;
        the seed's files are put back after (and anything else there removed)."""
        seed = self.seeds[mutation["seed"]]
        case = self.root / seed.name / "case"
        sf = seed.file(mutation["file"])
        (case / sf.name).write_bytes(apply_mutation(sf.data, mutation))
        try:
            yield seed, case
        finally:
            keep = {f.name for f in seed.files}
            for extra in case.iterdir():
                if extra.name not in keep or not extra.is_file():
                    if extra.is_dir():
                        shutil.rmtree(extra, ignore_errors=True)
                    else:
                        extra.unlink()
            for f in seed.files:
                if f.name == sf.name or not (case / f.name).is_file():
                    (case / f.name).write_bytes(f.data)

    def run(self, mutation: dict[str, Any], *, rng_seed: int = 0, **kw: Any) -> CaseResult:
        with self.case(mutation) as (seed, case):
            return run_case(
                case,
                seed,
                pristine=self.root / seed.name / "pristine" / seed.target,
                rng_seed=rng_seed,
                **kw,
            )


def field_ops(
    sf: SeedFile, changes: Mapping[str, int | bytes], *, fix: bool = True
) -> list[dict[str, Any]]:
    """Mutation operations that set catalogued fields of ``sf`` by name (for regression
    tests: a mutation described by field names survives changes of the seed layout).

    With ``fix``, the checksums of the structures touched are recomputed after.
    """
    ops: list[dict[str, Any]] = []
    fixes: list[Fix] = []
    by_name = {f.name: f for f in sf.fields}
    for name, value in changes.items():
        f = by_name[name]
        raw = (
            value
            if isinstance(value, bytes)
            else value.to_bytes(f.width, "big" if f.endian == ">" else "little")
        )
        ops.append({"op": "write", "field": name, "offset": f.offset, "hex": raw.hex()})
        if fix and f.fix:
            fixes.append(f.fix)
    if fixes:
        ops.append({"op": "fix", "fixes": [list(x) for x in dict.fromkeys(fixes)]})
    return ops


def mutated_case(
    directory: Path,
    seed_name: str,
    ops: list[dict[str, Any]] | Callable[[SeedFile], list[dict[str, Any]]],
    *,
    file: str | None = None,
) -> tuple[Seed, Path]:
    """Build one seed in ``directory``, mutate one of its files and write the case.

    ``ops`` are mutation operations, or a function of the seed file returning them
    (see :func:`field_ops`). Returns the seed and the path of the target to open.
    """
    seeds = build_seeds(directory / "seeds", qemu=seed_name.startswith("qemu"), names=[seed_name])
    seed = seeds[seed_name]
    sf = seed.file(file or seed.target)
    mutation = {"seed": seed_name, "file": sf.name, "ops": ops(sf) if callable(ops) else ops}
    write_seed(seed, directory / "pristine")
    return seed, materialize(seed, mutation, directory / "case")


def span_ops(sf: SeedFile, name: str, raw: bytes, *, fix: bool = True) -> list[dict[str, Any]]:
    """Mutation operations that write ``raw`` at the start of the catalogued span ``name``."""
    span = next(s for s in sf.spans if s.name == name)
    ops: list[dict[str, Any]] = [
        {"op": "write", "field": name, "offset": span.start, "hex": raw.hex()}
    ]
    if fix and span.fix:
        ops.append({"op": "fix", "fixes": [list(span.fix)]})
    return ops


# --------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------

#: The subcommands fuzzed through the command line: those that read their images
#: (convert writes a new file only; compact runs with ``--dry-run``).
CLI_READERS = (
    "info",
    "check",
    "map",
    "compare",
    "inspect",
    "hash",
    "measure",
    "diff",
    "scan",
    "convert",
    "compact",
)
#: The subcommands that change an image or serve it: not fuzzed through the CLI.
CLI_OTHERS = ("create", "merge", "resize", "set-parent", "set", "apply", "serve", "mount")
#: Exit statuses a reading command may end with (ok, an image problem, a usage error).
CLI_STATUSES = (0, 1, 2)
_TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class CliResult:
    """One command line run in-process; ``problems`` is empty when it behaved.

    ``cause`` says where an escaped exception (or a printed traceback) was raised:
    ``cli`` (``pyvhdx/cli/``), ``library`` (elsewhere in pyvhdx) or ``""``.
    """

    argv: list[str]
    status: int | None = None
    stdout: str = ""
    stderr: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    cause: str = ""
    seconds: float = 0.0

    def describe(self, base: Path | None = None) -> str:
        argv = " ".join(self.argv)
        if base is not None:
            argv = argv.replace(str(base), "<dir>")
        return f"pyvhdx {argv} -> {'; '.join(self.problems)}"


def _capture() -> io.TextIOWrapper:
    # a text stream over bytes, as a real stdout (``buffer``, ``reconfigure``)
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def _captured(stream: io.TextIOWrapper) -> str:
    buffer = cast(io.BytesIO, stream.buffer)
    return buffer.getvalue().decode("utf-8", "backslashreplace")


def _cause(files: Sequence[str]) -> str:
    """``cli`` or ``library``: where the innermost frame inside pyvhdx is."""
    inside = [f for f in files if f"{os.sep}pyvhdx{os.sep}" in f]
    if not inside:
        return ""
    return "cli" if f"pyvhdx{os.sep}cli{os.sep}" in inside[-1] else "library"


def run_cli(
    argv: Sequence[str], *, time_limit: float = 10.0, cpu_time: bool = False, memory: int = 1 << 30
) -> CliResult:
    """Run ``pyvhdx argv`` in this process (``pyvhdx.cli.main``) and judge it.

    A problem is: an exception out of ``main`` (the real command would print a
    traceback), a traceback on stderr, an exit status other than 0, 1 and 2, with
    ``--json`` a stdout that is neither empty nor one JSON document, no answer in
    ``time_limit`` seconds (of CPU time with ``cpu_time``), or more than ``memory``
    bytes of address space.
    """
    from pyvhdx.cli import main

    result = CliResult(list(argv))
    out, err = _capture(), _capture()
    start = time.perf_counter()
    try:
        with (
            memory_bound(memory),
            time_bound(time_limit, cpu=cpu_time),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            result.status = main(list(argv))
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        result.status = code if isinstance(code, int) else -1
    except CaseTimeout:
        result.problems.append(f"hang: no answer in {time_limit} s")
    except Exception as exc:  # the point: the command line must not let one out
        where = _where(exc.__traceback__)
        result.problems.append(f"{type(exc).__name__} escaped: {str(exc)[:200]} ({where})")
        result.cause = _cause([f.filename for f in traceback.extract_tb(exc.__traceback__)])
    result.seconds = time.perf_counter() - start
    result.stdout, result.stderr = _captured(out), _captured(err)
    if result.status is not None and result.status not in CLI_STATUSES:
        result.problems.append(f"exit status {result.status}")
    if _TRACEBACK in result.stderr:
        files = [ln for ln in result.stderr.splitlines() if ln.strip().startswith('File "')]
        last = result.stderr.strip().splitlines()[-1]
        result.problems.append(f"traceback on stderr: {last[:200]}")
        result.cause = result.cause or _cause(files)
    if "--json" in argv and result.stdout.strip():
        try:
            json.loads(result.stdout)
        except ValueError as exc:
            result.problems.append(f"stdout is not JSON ({exc}): {result.stdout[:80]!r}")
    return result


def _virtual_size(target: Path) -> int:
    """The largest virtual size the target opens with (0 if it opens with none)."""
    import pyvhdx

    size = 0
    variants: list[dict[str, Any]] = [{}, {"salvage": True}]
    for kw in variants:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pyvhdx.open(target, allow_missing_parent=True, **kw) as img:
                    size = max(size, img.virtual_size)
        except Exception:  # the library campaign judges the library; here only the size
            continue
    return size


_OPEN_OPTIONS = ("--strict", "--salvage", "--allow-missing-parent", "-U")


@functools.cache
def cli_options(command: str) -> frozenset[str]:
    """The option strings the subcommand accepts (the open options differ)."""
    import argparse

    from pyvhdx.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            return frozenset(o for a in sub._actions for o in a.option_strings)
    return frozenset()


def cli_argv(
    command: str,
    c: Chooser,
    seed: Seed,
    case: Path,
    pristine: Path,
    size: int,
    *,
    trouble: bool = True,
) -> list[str] | None:
    """A command line of ``command`` on the case's target, or None where the command
    would read more than the case bounds allow (``size``: the virtual size). With
    ``trouble``, now and then a format is forced (``-f``), often the wrong one."""
    target = str(case / seed.target)
    other = str(pristine)
    parent = str(case / seed.files[-2].name) if len(seed.files) > 1 else None
    reads = size <= READ_LIMIT

    accepted = cli_options(command)

    def opening(*, parent_option: bool = True) -> list[str]:
        choices = [o for o in _OPEN_OPTIONS if o in accepted]
        opts = [c.choice(choices)] if choices and c.chance(0.4) else []
        if trouble and c.chance(0.1):
            opts += ["-f", c.choice(("vhdx", "vhd", "raw", "vpc"))]
        if parent and parent_option and c.chance(0.2):
            opts += ["--parent", parent]
        return opts

    argv: list[str]
    if command == "info":
        argv = ["info", target, *opening()] + (["--backing-chain"] if c.chance(0.3) else [])
    elif command == "check":
        argv = ["check", target]
        argv += ["-f", c.choice(("vhdx", "vhd"))] if trouble and c.chance(0.1) else []
    elif command == "map":
        argv = ["map", target, *opening()]
        if c.chance(0.3):
            argv += ["--offset", str(c.choice((0, 512, 4096, MiB + 512, 1 << 40)))]
        if c.chance(0.3) or not reads:
            argv += ["--length", c.choice(("1", "4K", "1M", "64M"))]
    elif command in ("compare", "diff"):
        if not reads:
            return None
        a, b = (other, target) if c.chance(0.6) else (target, other)
        if command == "diff" and parent and c.chance(0.5):
            a, b = parent, target  # NEW a child of BASE: the stored ranges
        if command == "compare":
            argv = ["compare", a, b, *opening(parent_option=False)]
            argv += ["-s"] if c.chance(0.3) else []
        else:
            argv = ["diff", a, b] + ([c.choice(("--exact", "--compare"))] if c.chance(0.4) else [])
    elif command == "inspect":
        argv = ["inspect", target, *opening()] + (["--no-scan"] if c.chance(0.3) else [])
    elif command == "hash":
        if not reads:
            return None
        argv = ["hash", target, *opening(), "--no-progress"]
        argv += ["-a", "md5"] if c.chance(0.3) else []
    elif command == "measure":
        argv = ["measure", target] + (
            ["-O", c.choice(("vhdx", "vhd", "raw"))] if c.chance(0.5) else []
        )
    elif command == "scan":
        if not reads:
            return None
        argv = ["scan", target, "--jobs", "1"] + (["-a", "md5"] if c.chance(0.3) else [])
    elif command == "convert":
        if size > CONVERT_LIMIT:
            return None
        fmt = c.choice(("vhdx", "vhd", "raw"))
        dest = str(case / "out" / f"c.{fmt}")
        argv = ["convert", target, dest, "-O", fmt, "--force", "--no-progress", *opening()]
    elif command == "compact":
        if not reads:
            return None
        argv = ["compact", target, "--dry-run", "--no-progress"]
        argv += ["--mode", c.choice(("full", "quick", "zero"))] if c.chance(0.5) else []
    else:
        raise ValueError(f"not a reading command: {command}")
    hostile = sorted(o for o in CLI_HOSTILE_VALUES if o in accepted)
    if trouble and hostile and c.chance(0.05):
        option = c.choice(hostile)
        argv += [option, c.choice(CLI_HOSTILE_VALUES[option])]
    if c.chance(0.85):
        argv.append("--json")
    return argv


#: Values no reading command should take, for the options that take one: each must
#: end in a usage error or a pyvhdx error, never a traceback.
CLI_HOSTILE_VALUES: dict[str, tuple[str, ...]] = {
    "--offset": ("-1", "0x10", "1.5M", "abc", "1E", "99999999999T", "18446744073709551616"),
    "--length": ("0", "-1", "1.5K", "1E"),
    "-a": ("shake_128", "nosuch", "MD5", ""),
    "--jobs": ("0", "-1", "x"),
    "--block-size": ("0", "1", "3M", "1T", "1E", "-1M"),
    "--logical-sector-size": ("0", "1", "4097", "1T"),
    "--storage-option": ("x", "=1", "anon=", "a=b"),
    "--parent": ("/nonexistent/parent.vhdx", ""),
    "--mode": ("nosuch",),
}


def cli_plain_argv(command: str, image: Path, other: Path, out: Path) -> list[str]:
    """The simplest command line of a reading command on ``image`` (``other``: a
    second image for compare and diff; ``out``: a folder for convert's output)."""
    argv = [command, str(image)]
    if command in ("compare", "diff"):
        argv.append(str(other))
    elif command == "convert":
        argv += [str(out / "c.vhdx"), "--force"]
    elif command == "compact":
        argv.append("--dry-run")
    elif command == "scan":
        argv += ["--jobs", "1"]
    return argv


def run_cli_case(
    ws: Workspace,
    mutation: dict[str, Any],
    rng_seed: int,
    *,
    commands: Sequence[str] = CLI_READERS,
    count: int = 4,
    time_limit: float = 10.0,
    cpu_time: bool = False,
    trouble: bool = True,
) -> list[CliResult]:
    """Run ``count`` reading commands (chosen from ``commands``; with ``count`` 0
    each of them once, in order) on a mutated image.

    With ``trouble``, now and then the target is not there, is a folder, or its
    parents are missing.
    """
    c = RandomChooser(random.Random(rng_seed))
    with ws.case(mutation) as (seed, case):
        pristine = ws.root / seed.name / "pristine" / seed.target
        (case / "out").mkdir()
        trouble_kind = c.randint(0, 99) if trouble else 100
        if trouble_kind < 2:  # the target is missing
            (case / seed.target).unlink()
        elif trouble_kind < 4:  # the target is a folder
            (case / seed.target).unlink()
            (case / seed.target).mkdir()
        elif trouble_kind < 7 and len(seed.files) > 1:  # the parents are missing
            for f in seed.files[:-1]:
                (case / f.name).unlink()
        size = _virtual_size(case / seed.target)
        results = []
        for command in [c.choice(commands) for _ in range(count)] if count else commands:
            argv = cli_argv(command, c, seed, case, pristine, size, trouble=trouble)
            if argv is not None:
                results.append(run_cli(argv, time_limit=time_limit, cpu_time=cpu_time))
    return results


#: The sample images of the repository, fuzzed through the command line.
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "sample_images"
#: The built seeds fuzzed through the command line in the test suite: small, one
#: of each kind (logs, partial blocks, chains, across formats, VHD, raw).
CLI_SEEDS = (
    "vhdx-dynamic-4096",
    "vhdx-log-crashed",
    "vhdx-diff-partial-512",
    "vhdx-chain3",
    "mixed-vhdx-on-vhd",
    "vhd-dynamic",
    "vhd-diff",
    "vhd-fixed",
    "raw",
)


def sample_seeds() -> dict[str, Seed]:
    """The images of ``sample_images/`` as seeds, named ``sample-<file name>``."""
    seeds = {}
    for path in sorted(SAMPLE_IMAGES.glob("*.vhd*")):
        name = f"sample-{path.name}"
        seeds[name] = file_seed(name, [path], path.suffix[1:])
    return seeds


def case_mutation(seeds: dict[str, Seed], master: int, case_id: int) -> tuple[dict[str, Any], int]:
    """Case ``case_id`` of the campaign ``master``: its mutation and its own seed."""
    rng = random.Random(f"{master}:{case_id}")
    return make_mutation(seeds, RandomChooser(rng)), rng.randint(0, 1 << 30)


def cli_problem_signature(r: CliResult) -> str:
    """What makes two misbehaving runs the same bug: the command, the kinds of its
    problems and, for an escaped exception, where it was raised."""
    kinds = []
    for p in r.problems:
        kind = p.split(":")[0]
        if " escaped" in kind and p.endswith(")"):
            kind += " at " + p[p.rindex("(") + 1 : -1]
        kinds.append(kind)
    return f"{r.argv[0] if r.argv else '?'}: {'; '.join(kinds)}"
