"""Every VHDX structure round-trips: parse(build(x)) == x and build(parse(b)) == b."""

from __future__ import annotations

import uuid

import pytest
from construct import Construct
from hypothesis import given
from hypothesis import strategies as st

from pyvhdx.errors import InvalidImageError
from pyvhdx.structures import parse
from pyvhdx.structures.vhdx import (
    DATA_DESCRIPTOR,
    DATA_SECTOR,
    FILE_IDENTIFIER,
    FILE_PARAMETERS,
    HEADER,
    LOG_ENTRY_HEADER,
    METADATA_ENTRY,
    METADATA_TABLE_HEADER,
    PARENT_LOCATOR_ENTRY,
    PARENT_LOCATOR_HEADER,
    REGION_TABLE_ENTRY,
    REGION_TABLE_HEADER,
    ZERO_DESCRIPTOR,
)

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
guids = st.uuids()

STRATEGIES: dict[str, tuple[Construct, st.SearchStrategy[dict[str, object]]]] = {
    "header": (
        HEADER,
        st.fixed_dictionaries(
            dict(
                checksum=u32,
                sequence_number=u64,
                file_write_guid=guids,
                data_write_guid=guids,
                log_guid=guids,
                log_version=u16,
                version=u16,
                log_length=u32,
                log_offset=u64,
                reserved=st.binary(min_size=4016, max_size=4016),
            )
        ),
    ),
    "region_table_header": (
        REGION_TABLE_HEADER,
        st.fixed_dictionaries(dict(checksum=u32, entry_count=u32, reserved=u32)),
    ),
    "region_table_entry": (
        REGION_TABLE_ENTRY,
        st.fixed_dictionaries(dict(guid=guids, file_offset=u64, length=u32, flags=u32)),
    ),
    "metadata_table_header": (
        METADATA_TABLE_HEADER,
        st.fixed_dictionaries(
            dict(reserved=u16, entry_count=u16, reserved2=st.binary(min_size=20, max_size=20))
        ),
    ),
    "metadata_entry": (
        METADATA_ENTRY,
        st.fixed_dictionaries(dict(item_id=guids, offset=u32, length=u32, flags=u32, reserved=u32)),
    ),
    "file_parameters": (FILE_PARAMETERS, st.fixed_dictionaries(dict(block_size=u32, flags=u32))),
    "parent_locator_header": (
        PARENT_LOCATOR_HEADER,
        st.fixed_dictionaries(dict(locator_type=guids, reserved=u16, key_value_count=u16)),
    ),
    "parent_locator_entry": (
        PARENT_LOCATOR_ENTRY,
        st.fixed_dictionaries(
            dict(key_offset=u32, value_offset=u32, key_length=u16, value_length=u16)
        ),
    ),
    "log_entry_header": (
        LOG_ENTRY_HEADER,
        st.fixed_dictionaries(
            dict(
                checksum=u32,
                entry_length=u32,
                tail=u32,
                sequence_number=u64,
                descriptor_count=u32,
                reserved=u32,
                log_guid=guids,
                flushed_file_offset=u64,
                last_file_offset=u64,
            )
        ),
    ),
    "zero_descriptor": (
        ZERO_DESCRIPTOR,
        st.fixed_dictionaries(
            dict(reserved=u32, zero_length=u64, file_offset=u64, sequence_number=u64)
        ),
    ),
    "data_descriptor": (
        DATA_DESCRIPTOR,
        st.fixed_dictionaries(
            dict(trailing_bytes=u32, leading_bytes=u64, file_offset=u64, sequence_number=u64)
        ),
    ),
    "data_sector": (
        DATA_SECTOR,
        st.fixed_dictionaries(
            dict(sequence_high=u32, data=st.binary(min_size=4084, max_size=4084), sequence_low=u32)
        ),
    ),
}


def _strip(obj: object) -> dict[str, object]:
    return {k: v for k, v in dict(obj).items() if not k.startswith("_") and k != "signature"}  # type: ignore[call-overload]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    struct, strategy = STRATEGIES[name]
    value = data.draw(strategy)
    raw = struct.build(value)
    assert len(raw) == struct.sizeof()
    parsed = struct.parse(raw)
    assert _strip(parsed) == value
    assert struct.build(parsed) == raw


@given(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0xD7FF), max_size=200))
def test_file_identifier_creator(creator: str) -> None:
    raw = FILE_IDENTIFIER.build(dict(creator=creator))
    assert raw[:8] == b"vhdxfile" and len(raw) == 520
    assert FILE_IDENTIFIER.parse(raw).creator == creator


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@given(data=st.data())
def test_reserved_and_checksum_build_as_zeros(name: str, data: st.DataObject) -> None:
    """A builder gives only the fields that carry meaning: the reserved fields and the
    checksum (computed later over the built bytes) come out as zeros."""
    struct, strategy = STRATEGIES[name]
    value = data.draw(strategy)
    zeros = {
        k: bytes(len(v)) if isinstance(v, bytes) else 0
        for k, v in value.items()
        if k.startswith("reserved") or k == "checksum"
    }
    meaningful = {k: v for k, v in value.items() if k not in zeros}
    assert _strip(struct.parse(struct.build(meaningful))) == {**value, **zeros}


def test_guid_mixed_endian_layout() -> None:
    """MS-VHDX GUIDs are stored mixed-endian: the BAT region GUID bytes (SPEC-NOTES)."""
    on_disk = bytes.fromhex("6677C22D23F600429D64115E9BFD4A08")
    entry = REGION_TABLE_ENTRY.parse(on_disk + bytes(16))
    assert entry.guid == uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")


@given(st.binary(max_size=4096))
def test_parse_garbage_raises_only_pyvhdx_errors(blob: bytes) -> None:
    for struct, _ in STRATEGIES.values():
        try:
            parse(struct, blob, structure="test", offset=123)
        except InvalidImageError as exc:
            assert exc.offset == 123
