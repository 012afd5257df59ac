"""Read a time window of the prediction log (``serving/predlog.py`` format) with DuckDB.

DuckDB scans the JSONL files in parallel and keeps a fixed-size reservoir sample, so a window of any
size costs bounded memory. Lines that are not JSON (the unfinished last line of a file being written)
are skipped; a feature missing from every line comes back as an all-null column the caller reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.prediction_logs import local_dir, local_files

SCORE = "score"
TIME = "ts"
CUSTOMER = "customer_id"
VERSION = "model_version"


@dataclass
class Window:
    """Logged predictions in ``[start, end)``: counts per model version, and a sample of one version."""

    start: datetime
    end: datetime
    files: list[Path]
    rows_by_version: dict[str, int]
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    rows: int = 0
    sampled: bool = False
    present_features: list[str] = field(default_factory=list)
    model_version: str | None = None

    @property
    def cdf_error_95(self) -> float:
        """Dvoretzky-Kiefer-Wolfowitz bound: with 95% confidence, every sampled column's empirical
        distribution is within this distance (sup of CDFs) of the whole window's."""
        n = len(self.frame)
        return 0.0 if not self.sampled or n == 0 else math.sqrt(math.log(2 / 0.05) / (2 * n))


def log_dir(settings: Settings) -> Path:
    return local_dir(settings)


def log_files(directory: Path) -> list[Path]:
    return local_files(directory)


def _source(files: list[Path]) -> str:
    paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    # Explicit columns: no schema inference pass, and features stay JSON whatever keys each line has.
    return (f"read_json([{paths}], format='newline_delimited', ignore_errors=true, "
            "columns={ts: 'VARCHAR', model_version: 'VARCHAR', customer_id: 'BIGINT', fallback: 'BOOLEAN', "
            "score: 'DOUBLE', expected_spend: 'DOUBLE', features: 'JSON'})")


def read_window(source: Path | list[Path], start: datetime, end: datetime, columns: list[str],
                model_version: str | None, max_rows: int, seed: int = 0) -> Window:
    """Predictions logged in ``[start, end)`` by ``model_version`` (None: the most served one), features
    in ``columns`` as floats, sampled uniformly down to ``max_rows``. ``source``: a log directory, or the
    files themselves (``prediction_logs.window_files``: this machine's and the object store's)."""
    import duckdb

    files = sorted(source) if isinstance(source, list) else log_files(source)
    window = Window(start=start, end=end, files=files, rows_by_version={})
    if not files:
        return window
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"""CREATE TEMP VIEW logged AS
        SELECT TRY_CAST(ts AS TIMESTAMPTZ) AS ts, coalesce(model_version, 'none') AS model_version, customer_id,
               fallback, score, expected_spend, features
        FROM {_source(files)}""")
    con.execute(f"CREATE TEMP VIEW windowed AS SELECT * FROM logged "
                f"WHERE ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'")
    counts = con.execute("SELECT model_version, count(*) FROM windowed GROUP BY 1 ORDER BY 2 DESC").fetchall()
    window.rows_by_version = {str(v): int(n) for v, n in counts}
    if model_version is None and counts:
        model_version = str(counts[0][0])
    window.model_version = None if model_version is None else str(model_version)
    window.rows = window.rows_by_version.get(str(model_version), 0)
    if window.rows == 0:
        return window
    # expected_spend: what the answer said of spend (null in logs of versions without a spend model, or older)
    rows = "SELECT ts, customer_id, fallback, score, expected_spend, features FROM windowed WHERE model_version = $1"
    if window.rows > max_rows:
        # Sample before parsing features: JSON extraction is the costly part.
        rows = f"SELECT * FROM ({rows}) USING SAMPLE reservoir({int(max_rows)} ROWS) REPEATABLE ({int(seed)})"
        window.sampled = True
    paths = ", ".join("'$.\"" + c.replace("'", "''").replace('"', '\\"') + "\"'" for c in columns)
    # json_extract gives SQL NULL for an absent key and JSON null for a null value: both matter.
    values = "".join(f", TRY_CAST(v[{i + 1}] AS DOUBLE) AS \"{c}\", v[{i + 1}] IS NOT NULL AS \"__has_{c}\""
                     for i, c in enumerate(columns))
    query = (f"SELECT ts, customer_id, fallback, score, expected_spend{values} FROM "
             f"(SELECT *, json_extract(features, [{paths}]) AS v FROM ({rows}))") if columns else rows
    frame = con.execute(query, [str(model_version)]).df()
    # A key absent from every line is a missing column; present but null everywhere is all-null.
    window.present_features = [c for c in columns if bool(frame[f"__has_{c}"].any())]
    window.frame = frame.drop(columns=[f"__has_{c}" for c in columns])
    window.frame[TIME] = pd.to_datetime(window.frame[TIME], utc=True)
    return window
