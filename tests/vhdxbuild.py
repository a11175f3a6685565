"""A small VHDX writer for tests, built from pyvhdx's own layout builders (pyvhdx.vhdx.layout).

It makes images qemu-img cannot (4096-byte logical sectors, chosen BAT states,
differencing children, planted defects) so tests can read them back through
pyvhdx and through libvhdi. Layout: headers and region tables in the first MiB,
then a 1 MiB log, the metadata region, the BAT region, and the data blocks, all
1 MiB aligned (MS-VHDX 2.1).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from pathlib import Path

from pyvhdx.bat import chunk_ratio, vhdx_bat_entry_count, vhdx_payload_index
from pyvhdx.constants import (
    META_FILE_PARAMETERS,
    META_LOGICAL_SECTOR_SIZE,
    META_PAGE83_DATA,
    META_PARENT_LOCATOR,
    META_PHYSICAL_SECTOR_SIZE,
    META_VIRTUAL_DISK_SIZE,
    REGION_BAT,
    REGION_METADATA,
    PayloadState,
)
from pyvhdx.vhdx.layout import (
    vhdx_file_identifier,
    vhdx_header,
    vhdx_metadata_region,
    vhdx_parent_locator,
    vhdx_region_table,
)

MiB = 1 << 20


@dataclasses.dataclass
class Layout:
    """Where the builder put each structure."""

    path: Path
    log_offset: int
    metadata_offset: int
    bat_offset: int
    bat_length: int
    data_offset: int
    block_offsets: dict[int, int]
    chunk_ratio: int
    data_write_guid: uuid.UUID


def header_bytes(
    seq: int,
    *,
    log_offset: int,
    log_length: int = MiB,
    log_guid: uuid.UUID | None = None,
    data_write_guid: uuid.UUID | None = None,
    version: int = 1,
) -> bytearray:
    return bytearray(
        vhdx_header(
            seq,
            file_write_guid=uuid.uuid4(),
            data_write_guid=data_write_guid or uuid.uuid4(),
            log_guid=log_guid or uuid.UUID(int=0),
            log_offset=log_offset,
            log_length=log_length,
            version=version,
        )
    )


def region_table_bytes(entries: list[tuple[uuid.UUID, int, int, bool]]) -> bytearray:
    return bytearray(vhdx_region_table(entries))


def parent_locator_bytes(kv: dict[str, str]) -> bytes:
    return vhdx_parent_locator(list(kv.items()))  # surrogatepass: tests plant lone surrogates


def build_vhdx(
    path: Path,
    content: bytes,
    *,
    block_size: int = MiB,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    disk_type: str = "dynamic",
    states: Mapping[int, int] | None = None,
    parent_locator: dict[str, str] | None = None,
    extra_metadata: list[tuple[uuid.UUID, bytes, int]] | None = None,
    creator: str = "pyvhdx tests",
    sector_bitmaps: dict[int, list[bool]] | None = None,
) -> Layout:
    """Write a VHDX whose virtual content is ``content``.

    Dynamic images store only blocks with non-zero bytes; fixed ones store all.
    ``states`` forces the payload state of given blocks (data is stored for
    FULLY/PARTIALLY_PRESENT, nothing otherwise). ``extra_metadata`` adds items
    ``(guid, data, flags)``.
    """
    virtual_size = len(content)
    differencing = disk_type == "differencing"
    ratio = chunk_ratio(logical_sector_size, block_size)
    entries = vhdx_bat_entry_count(virtual_size, block_size, logical_sector_size, differencing)
    bat_length = max(MiB, -(-entries * 8 // MiB) * MiB)
    log_offset = MiB
    metadata_offset = 2 * MiB
    bat_offset = 3 * MiB
    data_offset = bat_offset + bat_length
    nblocks = -(-virtual_size // block_size)
    bat = bytearray(bat_length)
    blocks: dict[int, int] = {}
    out = bytearray(data_offset)
    states = dict(states or {})
    for b in range(nblocks):
        chunk = content[b * block_size : (b + 1) * block_size]
        if b in states:
            state = states[b]
        elif disk_type == "fixed" or any(chunk):
            state = PayloadState.FULLY_PRESENT
        else:
            state = PayloadState.NOT_PRESENT
        offset = 0
        if state in (PayloadState.FULLY_PRESENT, PayloadState.PARTIALLY_PRESENT):
            offset = len(out)
            out += chunk + bytes(block_size - len(chunk))
            blocks[b] = offset
        idx = vhdx_payload_index(b, ratio)
        bat[8 * idx : 8 * idx + 8] = (offset | state).to_bytes(8, "little")

    # sector bitmap blocks, one per chunk that has a partial block (MS-VHDX 2.5.1.2)
    per_block = block_size // logical_sector_size
    chunks: dict[int, bytearray] = {}
    for b, bits in (sector_bitmaps or {}).items():
        assert len(bits) == per_block
        chunk_index = b // ratio
        bitmap = chunks.setdefault(chunk_index, bytearray(MiB))
        first = (b % ratio) * per_block
        for i, bit in enumerate(bits):
            if bit:
                pos = first + i
                bitmap[pos // 8] |= 1 << (pos % 8)
    for chunk_index, bitmap in chunks.items():
        offset = len(out)
        out += bitmap
        idx = (chunk_index + 1) * ratio + chunk_index
        bat[8 * idx : 8 * idx + 8] = (offset | 6).to_bytes(8, "little")

    # metadata region
    dwg = uuid.uuid4()
    items: list[tuple[uuid.UUID, bytes, int]] = [
        (
            META_FILE_PARAMETERS,
            block_size.to_bytes(4, "little")
            + ((1 if disk_type == "fixed" else 0) | (2 if differencing else 0)).to_bytes(
                4, "little"
            ),
            4,
        ),
        (META_VIRTUAL_DISK_SIZE, virtual_size.to_bytes(8, "little"), 6),
        (META_PAGE83_DATA, uuid.uuid4().bytes_le, 6),
        (META_LOGICAL_SECTOR_SIZE, logical_sector_size.to_bytes(4, "little"), 6),
        (META_PHYSICAL_SECTOR_SIZE, physical_sector_size.to_bytes(4, "little"), 6),
    ]
    if differencing:
        items.append((META_PARENT_LOCATOR, parent_locator_bytes(parent_locator or {}), 6))
    items += extra_metadata or []
    meta = vhdx_metadata_region(items)

    out[0:520] = vhdx_file_identifier(creator)
    out[64 * 1024 : 68 * 1024] = header_bytes(1, log_offset=log_offset, data_write_guid=dwg)
    out[128 * 1024 : 132 * 1024] = header_bytes(2, log_offset=log_offset, data_write_guid=dwg)
    regions = [
        (REGION_BAT, bat_offset, bat_length, True),
        (REGION_METADATA, metadata_offset, MiB, True),
    ]
    out[192 * 1024 : 256 * 1024] = region_table_bytes(regions)
    out[256 * 1024 : 320 * 1024] = region_table_bytes(regions)
    out[metadata_offset : metadata_offset + MiB] = meta
    out[bat_offset : bat_offset + bat_length] = bat
    path.write_bytes(bytes(out))
    return Layout(
        path, log_offset, metadata_offset, bat_offset, bat_length, data_offset, blocks, ratio, dwg
    )
