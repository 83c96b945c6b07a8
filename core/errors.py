"""Errors that carry enough context (file, row, field) to act on without a traceback."""

from __future__ import annotations


class MarginLensError(Exception):
    """Any error MarginLens reports to the user as a one-line message."""


class NotADatasetError(MarginLensError):
    """The source cannot be read as a preference dataset at all (binary, empty, unknown extension)."""


class RowError(MarginLensError):
    """One bad row: where it is, which field, and why."""

    def __init__(self, source: str, row: int, field: str, reason: str, message: str, line: int | None = None):
        self.source = source
        self.row = row
        self.line = line
        self.field = field
        self.reason = reason
        self.message = message
        where = f"line {line}" if line is not None else f"row {row}"
        super().__init__(f"{source}: {where}, field '{field}': {reason}: {message}")

    def to_dict(self) -> dict:
        return {
            "row": self.row,
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "message": self.message,
        }
