"""Text tables and numbers for reports and terminals: the one table builder of ``analysis``.

:func:`grid` lays out a header and rows of cell texts as a Markdown pipe table (padded so that
it reads as plain text too) or as fixed-width columns; :func:`frame_grid` does the same for a
DataFrame, formatting each value with :func:`cell`. Every report and terminal table goes
through these two, so a missing value always reads ``—`` and a ``|`` inside a cell never splits
a Markdown column.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

#: What a missing value reads as.
MISSING = "—"
#: Appended to an interval whose bound was clipped to the quantity's range (see
#: :data:`CLIPPED_NOTE`).
CLIPPED_MARK = "*"
#: The sentence a table with a clipped interval carries below it.
CLIPPED_NOTE = (
    f"{CLIPPED_MARK} interval clipped to the range the quantity can take (e.g. an accuracy in "
    "[0, 1], a time ≥ 0): with few seeds the Student-t interval reaches past it."
)


def _missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _decimals(value: float, significant: int = 3) -> int:
    """Decimals that show ``significant`` digits of ``value`` (0.952 -> 3, 35.21 -> 1)."""
    if not math.isfinite(value) or value == 0:
        return significant
    return int(min(max(significant - 1 - math.floor(math.log10(abs(value))), 0), 8))


def format_number(value: float | None, significant: int = 3) -> str:
    """A number with ``significant`` digits; ``∞`` for infinity, ``—`` when missing."""
    if _missing(value):
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{_decimals(value, significant)}f}"


def format_mean_std(mean: float | None, std: float | None, significant: int = 3) -> str:
    """``"0.952 ± 0.004"``; the std uses the mean's decimals so columns line up."""
    if _missing(mean):
        return MISSING
    digits = _decimals(mean, significant)
    if _missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_interval(
    mean: float | None, low: float | None, high: float | None, clipped: bool = False, significant: int = 3
) -> str:
    """``0.952 [0.941, 0.963]`` (bounds with the mean's decimals, :data:`CLIPPED_MARK` after a
    clipped interval); the mean alone without bounds (one seed); ``—`` when missing."""
    if _missing(mean) or not np.isfinite(mean):
        return MISSING
    text = format_number(mean, significant)
    if _missing(low) or _missing(high) or not (np.isfinite(low) and np.isfinite(high)):
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text} [{low:.{decimals}f}, {high:.{decimals}f}]" + (CLIPPED_MARK if clipped else "")


def cell(value: object, digits: int = 3, integer: bool = False) -> str:
    """One value as table text: integers as integers (floats too when ``integer``), other
    numbers with ``digits`` decimals (magnitudes below 1e-3 in ``g`` form, so a residual of 1e-15
    does not print as 0.000), ``—`` when missing, text as is."""
    if _missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)) or (integer and isinstance(value, (float, np.floating))):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}g}" if 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def grid(
    header: Sequence[str], body: Sequence[Sequence[str]], style: str = "markdown", right: Collection[int] = ()
) -> str:
    """The table: ``markdown`` (a padded pipe table; ``|`` and newlines inside cells escaped) or
    ``plain`` (fixed-width columns). Columns whose index is in ``right`` are right-aligned."""
    if style not in ("markdown", "plain"):
        raise ValueError(f"style must be 'markdown' or 'plain', not {style!r}")
    rows = [list(header), *([str(c) for c in row] for row in body)]
    if style == "markdown":
        rows = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> list[str]:
        return [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]

    if style == "plain":
        lines = ["  ".join(line(rows[0])), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(line(row)) for row in rows[1:]]
        return "\n".join(text.rstrip() for text in lines)
    rule = "|" + "|".join("-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join(["| " + " | ".join(line(rows[0])) + " |", rule, *("| " + " | ".join(line(r)) + " |" for r in rows[1:])])


def frame_grid(
    frame: pd.DataFrame,
    columns: Sequence[str] | None = None,
    style: str = "markdown",
    digits: int = 3,
    integers: Collection[str] = (),
) -> str:
    """:func:`grid` of a DataFrame: ``columns`` (default all, those absent skipped) as the header,
    every value through :func:`cell` (``integers``: float columns holding counts), numeric
    columns right-aligned."""
    cols = [c for c in (columns if columns is not None else frame.columns) if c in frame.columns]
    body = [
        [cell(v, digits, c in integers) for c, v in zip(cols, row, strict=True)]
        for row in frame[cols].itertuples(index=False)
    ]
    right = {i for i, c in enumerate(cols) if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}
    return grid([str(c) for c in cols], body, style, right)
