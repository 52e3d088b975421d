"""How manifest problems are reported: per-row `ManifestError`, whole-file `ManifestFileError`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2vz_core.errors import InputError
from t2vz_core.manifest.columns import COLUMN_ORDER


@dataclass(frozen=True)
class ManifestError:
    """One problem with one row (or the header, row 1). `row` counts like a spreadsheet: header = 1."""

    row: int
    column: str | None
    message: str
    job_id: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        job = f" (job {self.job_id!r})" if self.job_id else ""
        return f"{where}{job}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message, "job_id": self.job_id}


class ManifestFileError(InputError):
    """The manifest as a whole is unusable (unreadable, empty, not UTF-8, bad header): CLI exit code 2."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}, line {line}" if line else self.path
        super().__init__(f"{where}: {reason}")


def format_errors(errors: Iterable[ManifestError], path: str | os.PathLike[str] | None = None) -> str:
    """One line per problem, ready for a terminal: 'demo.csv: row 3, column seed (job 'a'): ...'."""
    prefix = f"{Path(path).name}: " if path is not None else ""
    ordered = sorted(errors, key=lambda e: (e.row, COLUMN_ORDER.get(e.column or "", -1)))
    return "\n".join(f"{prefix}{error}" for error in ordered)
