"""Small value checks shared by the dataset loaders' ``validate_args``.

Each returns a list of human-readable problems (empty when the value is fine), so that config
validation can report every mistake at once before a run starts.
"""

from __future__ import annotations

from typing import Any

from bench.problems import shown


def int_problems(name: str, value: Any, minimum: int = 1, optional: bool = False) -> list[str]:
    """``value`` must be an int >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return [f"{name} must be an integer >= {minimum}, got {shown(value)}"]
    return []


def str_problems(name: str, value: Any, optional: bool = True) -> list[str]:
    """``value`` must be a non-empty string (or None when ``optional``)."""
    if value is None and optional:
        return []
    if not isinstance(value, str) or not value:
        return [f"{name} must be a non-empty string, got {shown(value)}"]
    return []
