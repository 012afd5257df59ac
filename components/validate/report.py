"""What the validation gate found, in a form a person can read and a pipeline can store."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime


@dataclass
class RuleFinding:
    """One rule failing on one table: how many rows (or ids) and which, up to the configured cap."""

    rule: str
    table: str
    count: int
    message: str  # what is wrong, in words
    id_column: str | None = None
    examples: list = field(default_factory=list)  # ids of offending rows, at most max_failures_listed

    def render(self) -> str:
        text = f"{self.rule} [{self.table}]: {self.message}"
        if self.examples:
            more = f" (+{self.count - len(self.examples)} more)" if self.count > len(self.examples) else ""
            text += f": {self.id_column} " + ", ".join(str(example) for example in self.examples) + more
        return text


@dataclass
class ValidationReport:
    passed: bool
    checked_at: datetime
    rules: list[str]  # every rule that was checked, failing or not
    findings: list[RuleFinding]  # only failures
    row_counts: dict[str, int]
    snapshot: str | None = None
    warnings: list[RuleFinding] = field(default_factory=list)  # findings of validate.warn_only rules

    @property
    def failed_rules(self) -> list[str]:
        return list(dict.fromkeys(finding.rule for finding in self.findings))

    def render(self) -> str:
        where = f" for snapshot {self.snapshot}" if self.snapshot else ""
        counts = ", ".join(f"{rows} {name}" for name, rows in self.row_counts.items())
        warnings = [f"  - warning: {finding.render()}" for finding in self.warnings]
        if self.passed:
            head = f"Validation passed{where}: {len(self.rules)} rules checked on {counts}"
            return "\n".join([head + (f", {len(warnings)} warning(s)" if warnings else ""), *warnings])
        head = (f"Validation FAILED{where}: {len(self.failed_rules)} of {len(self.rules)} rules failed "
                f"({', '.join(self.failed_rules)}) on {counts}")
        return "\n".join([head, *(f"  - {finding.render()}" for finding in self.findings), *warnings])

    __str__ = render

    def to_dict(self) -> dict:
        data = asdict(self)
        data["checked_at"] = self.checked_at.isoformat()
        data["failed_rules"] = self.failed_rules
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"


class ValidationFailed(Exception):
    """The gate failed; the message is the readable report, ``.report`` the structured one."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.render())
