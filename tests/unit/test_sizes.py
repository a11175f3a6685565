"""pyvhdx.sizes: byte counts printed (format_size) and parsed (parse_size), exactly.

format_size is checked against a reference written here from exact fractions;
parse_size round-trips every byte count written exactly in every unit, and
refuses any that is not a whole number of bytes, however close.
"""

from __future__ import annotations

import os
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pyvhdx.cli import main
from pyvhdx.errors import InvalidArgumentError
from pyvhdx.sizes import format_size, parse_size

UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
MiB = 1 << 20


def reference_format(size: int) -> str:
    """The number of the largest unit the size reaches, rounded (half to even) to three
    significant digits, trailing fraction zeros dropped; 1024 of a unit is the next."""
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    power = max(p for p in range(1, len(UNITS) + 1) if size >= 1024**p)
    value = Fraction(size, 1024**power)
    rounded = round(value, 0 if value >= 100 else 1 if value >= 10 else 2)
    if rounded == 1024 and power < len(UNITS):
        power += 1
        rounded = round(Fraction(size, 1024**power), 2)
    number = Decimal(rounded.numerator) / Decimal(rounded.denominator)  # exact: 100 / den
    return f"{format(number.normalize(), 'f')} {UNITS[power - 1]} ({size} bytes)"


#: Sizes near the edges: whole units, just off them, and near every rounding step.
_unit = st.integers(1, 6).map(lambda p: 1 << 10 * p)
near_edges = st.builds(
    lambda unit, count, off: max(0, count * unit // 100 + off),
    _unit,
    st.integers(1, 1024 * 100),
    st.integers(-600, 600),
)
sizes = st.one_of(st.integers(0, 1 << 72), near_edges)


@given(sizes)
@example(1000 * MiB + 512)  # a 1000M fixed VHD: "1 MiB" before (zeros stripped)
@example(100 * MiB + 512)
@example(1020 * MiB)  # "102 MiB" before
@example(1024 * MiB - 1)
@example((1 << 70) + 1)  # past EiB: 1024 EiB
def test_format_size_matches_reference(size: int) -> None:
    assert format_size(size) == reference_format(size)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (1000 * MiB + 512, "1000 MiB (1048576512 bytes)"),
        (100 * MiB + 512, "100 MiB (104858112 bytes)"),
        (1020 * MiB, "1020 MiB (1069547520 bytes)"),
        (10 * MiB + 512, "10 MiB (10486272 bytes)"),
        (10_240_000, "9.77 MiB (10240000 bytes)"),
        (1024 * MiB - 1, "1 GiB (1073741823 bytes)"),
        (1 << 60, "1 EiB (1152921504606846976 bytes)"),
    ],
)
def test_format_size_examples(size: int, text: str) -> None:
    assert format_size(size) == text


def test_info_of_a_1000m_fixed_vhd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reported case: ``file size: 1 MiB (1048576512 bytes)``."""
    image = tmp_path / "big.vhd"
    assert main(["create", "--type", "fixed", os.fspath(image), "1000M"]) == 0
    capsys.readouterr()
    assert main(["info", os.fspath(image)]) == 0
    out = capsys.readouterr().out
    assert "virtual size:         1000 MiB (1048576000 bytes)" in out
    assert "file size:            1000 MiB (1048576512 bytes)" in out


SUFFIXES = [("", 1), ("B", 1)] + [
    (spelling, 1 << 10 * power)
    for power, unit in enumerate(UNITS, 1)
    for spelling in (unit[0], unit[0].lower(), unit)
]


def exact_decimal(value: Fraction) -> str:
    """The finite decimal expansion of ``value`` (its denominator is a power of two)."""
    places = value.denominator.bit_length() - 1
    assert value.denominator == 1 << places
    digits = str(value.numerator * 5**places).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}" if places else digits
    assert Fraction(text) == value
    return text


@given(st.integers(0, 1 << 80), st.sampled_from(SUFFIXES))
def test_parse_size_round_trips_whole_numbers(count: int, suffix: tuple[str, int]) -> None:
    spelling, unit = suffix
    assert parse_size(f"{count}{spelling}") == count * unit


@given(st.integers(0, 1 << 80), st.sampled_from(SUFFIXES[2:]))
def test_parse_size_round_trips_exact_fractions(size: int, suffix: tuple[str, int]) -> None:
    """Any byte count written exactly in any unit (``1.5K``, ``0.0009765625K``) reads back."""
    spelling, unit = suffix
    text = exact_decimal(Fraction(size, unit))
    assert parse_size(f"{text}{spelling}") == size
    assert parse_size(f"{text} {spelling}") == size


@given(st.integers(0, 1 << 70), st.sampled_from(SUFFIXES), st.integers(1, 40))
@example(1024, ("K", 1024), 28)  # 1.0000000000000000000000000001K was 1024 (Decimal rounding)
def test_parse_size_refuses_a_fraction_of_a_byte(
    size: int, suffix: tuple[str, int], extra_digits: int
) -> None:
    """A size a hair off a whole byte count is refused, however many digits it takes."""
    spelling, unit = suffix
    text = exact_decimal(Fraction(size, unit))
    text = (text if "." in text else text + ".") + "0" * (extra_digits - 1) + "1"
    with pytest.raises(InvalidArgumentError):
        parse_size(f"{text}{spelling}")


def test_parse_size_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a whole number of bytes"):
        parse_size("1.0000000000000000000000000001K")
    with pytest.raises(ValueError, match="invalid size '10X'"):
        parse_size("10X")


def test_parse_size_exbibytes() -> None:
    assert parse_size("1E") == parse_size("1EiB") == parse_size("1024P") == 1 << 60
    assert parse_size("0.5e") == 1 << 59


def test_a_bad_size_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.vhdx"
    assert main(["create", os.fspath(image), "1.0000000000000000000000000001K"]) == 2
    err = capsys.readouterr().err
    assert "not a whole number of bytes" in err
    assert not image.exists()
