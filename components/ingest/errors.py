"""The one error ingest raises for bad input."""

from __future__ import annotations

from pathlib import Path


class IngestError(ValueError):
    """Input that cannot be ingested; the message names the file, the line or row, and the problem.

    Raised before anything is written, so a failed ingest never leaves a partial snapshot.
    """

    def __init__(self, problem: str, path: Path | str | None = None, location: str | None = None):
        self.problem = problem
        self.path = Path(path) if path is not None else None
        self.location = location
        where = ": ".join(str(part) for part in (path, location) if part is not None)
        super().__init__(f"{where}: {problem}" if where else problem)
