"""The error types the converter raises for bad input.

ConversionError: a bad input file or output location; every message names the offending
file (or folder) and the problem, on one line, so the CLI can print it as is and a user
knows what to fix (a bad option value is a contracts.errors.ConfigError).
"""
from __future__ import annotations

from pathlib import Path


class ConversionError(Exception):
    """Bad input or an unusable output location.

    ``path`` is the file or folder at fault, ``problem`` a short human sentence.
    ``case_id`` is set when the problem belongs to one case (``on_bad_case=skip`` can
    then drop that case and carry on).
    """

    def __init__(self, path: str | Path, problem: str, case_id: str | None = None):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the source
        self.case_id = case_id
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # survive pickling across the process pool
        return (ConversionError, (self.path, self.problem, self.case_id))

    def as_record(self) -> dict:
        return {"case_id": self.case_id, "file": self.path, "problem": self.problem}

