"""How user input appears in error messages: clipped values and config-path lines.

Every validation layer (YAML reading, the pydantic schema, the registries) reports problems as
one line each, ``<config path>: <what is wrong> (got <value>)``, so the CLI can print all of them
at once. A value is never echoed at more than :data:`MAX_SHOWN` characters: a config can hold a
huge string or an alias-expanded structure, and formatting it whole would flood the terminal (or,
for a billion-laughs document, exhaust memory).
"""

from __future__ import annotations

import reprlib
from typing import Any

#: Characters of a user value a message shows at most (an ellipsis marks the cut).
MAX_SHOWN = 100

# reprlib bounds the work as well as the length: a deep or wide structure is abbreviated level by
# level instead of being rendered whole and cut afterwards.
_REPR = reprlib.Repr()
_REPR.maxstring = MAX_SHOWN
_REPR.maxother = MAX_SHOWN
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


class ConfigProblems(Exception):
    """Every problem of one config file (``problems``, one line each), rendered as one message.

    The CLI prints it and exits with status 2 before anything starts. Subclasses only name the kind
    of file (a sweep config, a profile config) in :attr:`kind`.
    """

    kind = "config"

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"invalid {self.kind} {self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` bounded to about ``limit`` characters (strings keep their quotes)."""
    return clip(_REPR.repr(value), limit)


def _number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


#: pydantic error type → what the field expected, in words.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _type_message(kind: str, value: Any) -> str:
    """Why ``value`` does not fit a field of the given pydantic ``*_type`` error, with the fix."""
    expected = _EXPECTED[kind]
    if isinstance(value, str) and kind in ("int_type", "float_type") and _number_text(value):
        return f"expected {expected}, got the string {shown(value)}; numbers are written without quotes"
    if isinstance(value, str) and kind == "bool_type":
        return f"expected {expected}, got the string {shown(value)}; booleans are written true or false"
    if isinstance(value, float) and kind == "int_type":
        return f"expected {expected}, got {shown(value)}; write a whole number without a decimal point or exponent"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kind == "string_type":
        return f"expected {expected}, got the number {shown(value)}; quote it to make it a string"
    if isinstance(value, (dict, list)):
        return f"expected {expected}, got a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"expected {expected}, got {shown(value)}"


def pydantic_problems(exc: Any, prefix: str = "", unknown_hint: str = "") -> list[str]:
    """One readable line per error of a ``pydantic.ValidationError``: ``training.steps: …``,
    under ``prefix``; ``unknown_hint`` follows "unknown key" (e.g. the keys that exist)."""
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        loc = ".".join(p for p in (prefix, loc) if p) or "(top level)"
        kind, value = err["type"], err.get("input")
        if kind == "extra_forbidden":
            msg = "unknown key" + unknown_hint
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in _EXPECTED:
            msg = _type_message(kind, value)
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if not isinstance(value, (dict, list)):
                msg += f" (got {shown(value)})"
        out.append(f"{loc}: {msg}")
    return out
