"""Byte counts as people write and read them: ``10M``, ``1.5G``; ``10 MiB (10485760 bytes)``.

Both directions use binary units (K = KiB = 1024 bytes, ..., E = EiB = 2**60),
as qemu-img reads and prints sizes. Both are exact: a size is parsed as a
fraction (never a float or a rounded decimal) and printed from integers.
"""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

__all__ = ["format_size", "parse_size"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SUFFIXES = {"": 1, **{unit[0].lower(): 1 << 10 * power for power, unit in enumerate(_UNITS, 1)}}
_SIZE_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgtpe])(?:ib)?|b)?", re.IGNORECASE)


def _significant(numerator: int, denominator: int) -> str:
    """``numerator / denominator`` (at least 1) to three significant digits, rounded half
    to even, trailing zeros of the fraction dropped: ``1.5``, ``9.77``, ``1000``."""
    whole = numerator // denominator
    decimals = 0 if whole >= 100 else 1 if whole >= 10 else 2
    scaled, rest = divmod(numerator * 10**decimals, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and scaled % 2):
        scaled += 1
    text = str(scaled)
    if decimals:
        text = f"{text[:-decimals]}.{text[-decimals:]}".rstrip("0").rstrip(".")
    return text


def format_size(size: int) -> str:
    """A byte count with a binary unit: ``10 MiB (10485760 bytes)``, ``512 bytes``.

    The unit is the largest one the size reaches; the number has three significant
    digits (``9.77 MiB``, ``1000 MiB``), or is whole when the size is a whole number
    of that unit. The exact count follows in parentheses.
    """
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    power = 1
    while power < len(_UNITS) and size >= 1 << 10 * (power + 1):
        power += 1
    text = _significant(size, 1 << 10 * power)
    if text == "1024" and power < len(_UNITS):  # 1023.6 MiB rounds to 1 GiB, not 1024 MiB
        power += 1
        text = _significant(size, 1 << 10 * power)
    return f"{text} {_UNITS[power - 1]} ({size} bytes)"


def parse_size(text: str) -> int:
    """A byte count as written by people: ``512``, ``4K``, ``10M``, ``1.5G``, ``64GiB``.

    Suffixes are binary and case-insensitive: K = KiB, M = MiB, G = GiB, T = TiB,
    P = PiB, E = EiB (``B`` alone means bytes), as qemu-img reads them. The number
    is read exactly and must give a whole number of bytes (``1.5K`` is 1536,
    ``1.0001K`` is refused).

    Raises:
        InvalidArgumentError: not a size, or not a whole number of bytes (also a
            ValueError).
    """
    from fractions import Fraction  # here: imported by few commands, at start-up

    match = _SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise InvalidArgumentError(
            f"invalid size {text!r}: use a number with an optional binary suffix "
            "K, M, G, T, P or E (KiB, MiB, ...)"
        )
    value = Fraction(match.group(1)) * _SUFFIXES[(match.group(2) or "").lower()]
    if value.denominator != 1:
        raise InvalidArgumentError(f"invalid size {text!r}: not a whole number of bytes")
    return value.numerator
