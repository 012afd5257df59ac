"""The validate stage: check a snapshot, write the report beside it, stop the pipeline on failure."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from storeflow.components.config import ValidateConfig
from storeflow.components.ingest.snapshot import MANIFEST, read_manifest
from storeflow.components.tables import TABLES, empty_frame, read_tables
from storeflow.components.validate.report import ValidationFailed, ValidationReport
from storeflow.components.validate.rules import NOTICES, RULES, Context

REPORT_FILE = "validation_report.json"


def validate_tables(tables: dict[str, pd.DataFrame], config: ValidateConfig, now: datetime,
                    duplicates_dropped: Mapping[str, int] | None = None) -> ValidationReport:
    """Run every rule over the tables (a missing table counts as empty); ``duplicates_dropped`` is what
    ingest dropped per table (its manifest). Pure: reads and writes nothing."""
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    tables = {name: tables[name] if name in tables else empty_frame(name) for name in TABLES}
    unknown = sorted(set(config.warn_only) - set(RULES))
    if unknown:
        raise ValueError(f"validate.warn_only names unknown rule(s) {', '.join(unknown)}; "
                         f"rules are {', '.join(RULES)}")
    context = Context(config, now, duplicates_dropped or {})
    found = [finding for rule in RULES.values() for finding in rule(tables, context)]
    warn_only = NOTICES.union(config.warn_only)
    failures = [f for f in found if f.rule not in warn_only]
    return ValidationReport(
        passed=not failures,
        checked_at=now,
        rules=list(RULES),
        findings=failures,
        row_counts={name: len(frame) for name, frame in tables.items()},
        warnings=[f for f in found if f.rule in warn_only],
    )


def validate(snapshot: Path, config: ValidateConfig, now: datetime | None = None) -> ValidationReport:
    """Validate an ingested snapshot, write ``<snapshot>/validation_report.json``; raise
    :class:`ValidationFailed` (message: the readable report) if any rule fails."""
    snapshot = Path(snapshot)
    manifest = read_manifest(snapshot) if (snapshot / MANIFEST).exists() else {}
    report = validate_tables(read_tables(snapshot), config, now or datetime.now(timezone.utc),
                             manifest.get("duplicates_dropped"))
    report.snapshot = str(snapshot)
    path = snapshot / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(report.to_json())
    tmp.replace(path)
    if not report.passed:
        raise ValidationFailed(report)
    return report
