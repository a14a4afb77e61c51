"""Errors the user can act on: printed without a traceback, with a non-zero exit code."""

from __future__ import annotations

from dataclasses import dataclass


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
        text = f"{where}: {self.path}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class RecipeError(Exception):
    """The recipe cannot be loaded or validated; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StepError(Exception):
    """A step failed for a reason the user can fix; the message says what, where and how."""


class PlanError(Exception):
    """The requested run cannot be planned (unknown step name, missing upstream section...)."""
