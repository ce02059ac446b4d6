"""Where each policy of a Cedar file starts, and which one fails to parse.

Why: cedarpy reports parse and validation errors without source positions (validation errors
name the policy by its position, ``policy3``), and an operator needs "file:line".  Cedar
policies end with ``;`` outside string literals and ``//`` comments, and nothing else in the
grammar uses ``;``, so a small scanner finds each policy's first line exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    """One policy's text (through its ``;``, or the unterminated tail) and its first line."""

    line: int
    text: str


def segments(text: str) -> list[Segment]:
    """The policies of ``text`` in order (a tail of only blanks and comments is dropped)."""
    out: list[Segment] = []
    start = 0
    first_line: int | None = None
    line = 1
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == '"':
            if first_line is None:
                first_line = line
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif ch == ";":
            out.append(Segment(first_line or line, text[start : i + 1]))
            start, first_line = i + 1, None
        elif not ch.isspace() and first_line is None:
            first_line = line
        i += 1
    if first_line is not None:
        out.append(Segment(first_line, text[start:]))
    return out
