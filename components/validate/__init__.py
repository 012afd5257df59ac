"""Validate: the data-quality gate between ingest and features."""

from storeflow.components.validate.report import RuleFinding, ValidationFailed, ValidationReport
from storeflow.components.validate.rules import RULES
from storeflow.components.validate.stage import REPORT_FILE, validate, validate_tables

__all__ = [
    "REPORT_FILE",
    "RULES",
    "RuleFinding",
    "ValidationFailed",
    "ValidationReport",
    "validate",
    "validate_tables",
]
