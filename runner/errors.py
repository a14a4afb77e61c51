"""Errors the user can act on: printed without a traceback, with a non-zero exit code."""

from __future__ import annotations

from dataclasses import dataclass

QUOTE_CHARS = 80        # a quoted value longer than this is cut (a 200-URL list is not one line)
MESSAGE_CHARS = 400     # the last guard: no message line grows past this


def quoted(value, limit: int = QUOTE_CHARS) -> str:
    """repr() of a value an error quotes, cut to a readable length with its full size said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} items" if isinstance(value, (list, dict)) else f"{len(text)} characters"
    return f"{text[:limit - 3]}... ({size})"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text)} characters in all)"


@dataclass(frozen=True)
class Problem:
    """One recipe problem, located: `file:line:col: $.path: message (hint)`."""
    file: str
    line: int | None
    col: int | None
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        text = f"{where}: {self.path}: {_cut(self.message, MESSAGE_CHARS)}"
        return f"{text}\n    hint: {_cut(self.hint, MESSAGE_CHARS)}" if self.hint else text


class RecipeError(Exception):
    """The recipe cannot be loaded or validated; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StepError(Exception):
    """A step failed for a reason the user can fix; the message says what, where and how."""


class PlanError(Exception):
    """The requested run cannot be planned (unknown step name, missing upstream section...)."""
