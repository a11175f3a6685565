"""Rendering for people and programs: aligned fields, tables, sizes, JSON.

Everything here turns library values into text; nothing parses arguments or
opens images. Strings that come from images are escaped (:func:`printable`).
"""

from __future__ import annotations

import enum
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..sizes import format_size as format_size  # the renderers' size text (re-exported)

INDENT = "    "

Row = tuple[str, Any]
"""One ``key: value`` line (or a nested section when the value is a mapping or list)."""


def _numpy_item(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, an array as a list; anything else as
    it is. numpy is not imported for this: a value can only be numpy's if it is loaded."""
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    return value


def printable(text: str) -> str:
    """Escape control and other non-printable characters (strings come from images)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return "".join(out)


def scalar(key: str, value: Any) -> str:
    """Render one scalar value for humans; ``key`` picks offsets/sizes by name."""
    if value is None:
        return "none"
    value = _numpy_item(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, int):
        name = key.replace("_", "-").lower()
        if name.endswith(("offset", "checksum")):
            return f"{value:#x}"
        if name.endswith(("size", "length", "capacity")):
            return format_size(value)
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex() or '""'
    return printable(str(value)) or '""'


def _one_line(key: str, value: Any) -> str | None:
    """The value of a ``key: value`` line, or None for a nested section."""
    if isinstance(value, Mapping):
        return None if value else "none"
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (Mapping, list, tuple, str)) for v in value):
            return None
        return ", ".join(scalar(key, v) for v in value) or "none"
    return scalar(key, value)


def key_label(key: str) -> str:
    return printable(str(key)).replace("-", " ")


def render_fields(rows: Iterable[Row], indent: int = 0, *, tables: bool = False) -> list[str]:
    """Render ``(key, value)`` rows as aligned ``key: value`` lines.

    Values:
        * a scalar is one line (offsets in hex, sizes with a unit, booleans yes/no);
        * a list of numbers is one line, comma separated; an empty one is "none";
        * a list of strings is one indented line per item under ``key:``;
        * a mapping is a nested section (its keys with ``-`` shown as spaces);
        * a list of mappings is numbered nested sections ``[0]:``, ``[1]:``...

    Values of one level are aligned on the longest key of that level. With
    ``tables``, a list of flat records that fits the width is a table instead.
    """
    texts = [(key_label(k), v, _one_line(k, v)) for k, v in rows]
    pad = INDENT * indent
    width = max((len(label) + 1 for label, _, text in texts if text is not None), default=0)
    lines: list[str] = []
    for label, value, text in texts:
        if text is not None:
            lines.append(f"{pad}{label + ':':<{width}} {text}".rstrip())
            continue
        lines.append(f"{pad}{label}:")
        if isinstance(value, Mapping):
            lines.extend(render_fields(value.items(), indent + 1, tables=tables))
        elif all(isinstance(v, str) for v in value):
            lines.extend(f"{pad}{INDENT}{printable(v)}" for v in value)
        elif (
            tables
            and _is_table(value)
            and (
                max(map(len, table := table_lines(value, indent + 1))) <= _TABLE_WIDTH
                or (
                    len(value) <= 4
                    and max(map(len, table := transposed_lines(value, indent + 1))) <= _TABLE_WIDTH
                )
            )
        ):
            lines.extend(table)
        else:
            items = [
                (f"[{i}]", v if isinstance(v, Mapping) else {"value": v})
                for i, v in enumerate(value)
            ]
            lines.extend(render_fields(items, indent + 1, tables=tables))
    return lines


def _json_default(value: Any) -> Any:
    """``json.dumps`` hook: make any value the library might hand over serializable."""
    import dataclasses  # here: the modules a command imports at start are few

    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    item = _numpy_item(value)
    if item is not value:
        return item
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON, keys in their given order."""
    import json

    print(json.dumps(data, indent=2, sort_keys=False, default=_json_default))


def print_lines(lines: Iterable[str]) -> None:
    """Print rendered lines (from :func:`render_fields`), one per line, control
    characters other than tabs and newlines escaped (:func:`printable`: a line may
    hold a name from an image)."""
    for line in lines:
        print("\n".join("\t".join(map(printable, part.split("\t"))) for part in line.split("\n")))


TABLE_ROWS = 32  # rows of a table shown by the human inspect report (JSON has them all)


def _short_size(size: int) -> str:
    """A compact byte count for tables: ``512 B``, ``8 KiB``, ``1.5 MiB``."""
    text = format_size(size)
    return text.split(" (")[0].replace("bytes", "B").replace("1 byte", "1 B")


def cell(key: str, value: Any) -> str:
    """One table cell: offsets and checksums in hex, lengths compact, booleans yes/no."""
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(key, v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{key_label(k)} {cell(k, v)}" for k, v in value.items())
    if isinstance(value, bool) or value is None:
        return scalar(key, value)
    if isinstance(value, int):
        name = key.lower()
        if name.endswith(("offset", "checksum", "tail")):
            return f"{value:#x}"
        if name.endswith(("length", "size", "bytes", "capacity")):
            return _short_size(value)
        return str(value)
    return printable(str(value))


_TABLE_WIDTH = 150  # wider tables are shown as one section per record


def _flat(value: Any) -> bool:
    """A table cell: a scalar, a list of scalars, or a mapping of scalars."""
    if isinstance(value, Mapping):
        return all(not isinstance(v, Mapping) and _flat(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(not isinstance(v, (Mapping, list, tuple)) for v in value)
    return True


def _is_table(value: Any) -> bool:
    """A non-empty list of mappings whose values all fit in a cell."""
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, Mapping) and all(_flat(x) for x in v.values()) for v in value)
    )


def table_lines(records: Sequence[Mapping[str, Any]], indent: int = 0) -> list[str]:
    """Render records as an aligned table (columns in first-seen key order)."""
    pad = INDENT * indent
    columns = list(dict.fromkeys(k for r in records for k in r))
    shown = records[:TABLE_ROWS]
    cells = [[cell(c, r.get(c)) if c in r else "" for c in columns] for r in shown]
    heads = [key_label(c) for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = [pad + _aligned(row, widths).rstrip() for row in [heads, *cells]]
    if len(records) > len(shown):
        lines.append(f"{pad}... {len(records) - len(shown)} more (see --json)")
    return lines


def transposed_lines(records: Sequence[Mapping[str, Any]], indent: int = 0) -> list[str]:
    """Render a few records side by side: one row per field, one column per record.

    Columns are headed by each record's first field (``copy 1``, ``where end``);
    a field holding a mapping becomes one row per key.
    """
    pad = INDENT * indent
    firsts = [next(iter(r.items()), ("", "")) for r in records]
    columns = [f"{key_label(k)} {cell(k, v)}".strip() for k, v in firsts]
    paths: list[tuple[str, ...]] = []  # a field, or a key of a field holding a mapping
    for r in records:
        for k, v in list(r.items())[1:]:
            for path in [(k, str(sub)) for sub in v] if isinstance(v, Mapping) else [(k,)]:
                if path not in paths:
                    paths.append(path)

    def get(r: Mapping[str, Any], path: tuple[str, ...]) -> str:
        value: Any = r
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                return ""
            value = value[key]
        return cell(path[-1], value)

    labels = ["", *(" ".join(key_label(x) for x in path) + ":" for path in paths)]
    rows = [columns, *([get(r, path) for r in records] for path in paths)]
    width = max(map(len, labels))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return [
        f"{pad}{label:<{width}} {_aligned(row, widths)}".rstrip()
        for label, row in zip(labels, rows, strict=True)
    ]


def _aligned(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Cells padded to their column widths, two spaces apart."""
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
