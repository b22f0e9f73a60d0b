"""Free text a user gives a name or a reason: printable characters only.

Control and formatting characters (NUL, escape sequences, U+202E RIGHT-TO-LEFT OVERRIDE,
zero-width characters, ...) in a token's name, an override's reason or a model card's
intended use would be stored and shown to others as they are: they truncate text in C
libraries, rewrite a terminal's screen, or reorder what a reviewer reads. So they are refused
where the text comes in, with the position and name of the first one.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator

# Cc: control, Cf: format (bidirectional overrides, zero-width), Cs: surrogates, Co: private
# use, Zl/Zp: line and paragraph separators.
_REFUSED = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _check(text: str, allowed: frozenset[str]) -> str:
    for i, ch in enumerate(text):
        if ch not in allowed and unicodedata.category(ch) in _REFUSED:
            name = unicodedata.name(ch, "a control character")
            raise ValueError(
                f"U+{ord(ch):04X} ({name}) at position {i}: control and formatting characters "
                "are not allowed"
            )
    return text


def one_line(text: str) -> str:
    return _check(text, frozenset())


def prose(text: str) -> str:
    """Lines and tabs are fine in a paragraph."""
    return _check(text, frozenset("\n\t"))


# A name or a label: one line of printable characters.
Label = Annotated[str, AfterValidator(one_line)]
# A reason or a description: printable characters, newlines and tabs.
Prose = Annotated[str, AfterValidator(prose)]
