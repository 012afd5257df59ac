"""Click-through rate per model version: feedback events (impressions, clicks) joined to the logged
recommendation answers they name by ``request_id`` (logs written by ``storeflow.serving.recommend_feedback``).

An event is counted only when its request id is a logged answer of the same model version, and a click only
when the product clicked is one that answer showed: a client cannot credit a version with clicks it did not
earn. Events that do not join are reported (``unjoined``), never counted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ANSWER_COLUMNS = {"ts": "VARCHAR", "request_id": "VARCHAR", "model_version": "VARCHAR", "products": "BIGINT[]"}
EVENT_COLUMNS = {"ts": "VARCHAR", "request_id": "VARCHAR", "model_version": "VARCHAR", "event": "VARCHAR",
                 "product": "VARCHAR"}


def read_log(directory: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Every JSON line of the log files in ``directory`` (a line being written is skipped)."""
    return read_files(sorted(Path(directory).glob("*.jsonl")) if Path(directory).is_dir() else [], columns)


def read_files(files: list[Path], columns: dict[str, str]) -> pd.DataFrame:
    """Every JSON line of ``files`` (a line being written is skipped), in ``columns``."""
    import duckdb

    if not files:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    spec = ", ".join(f"{name}: '{kind}'" for name, kind in columns.items())
    return duckdb.sql(f"SELECT * FROM read_json([{paths}], format='newline_delimited', ignore_errors=true, "
                      f"columns={{{spec}}})").df()


def ctr_by_version(answers: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Per model version: answers logged, impressions and clicks that join one, CTR (clicks / impressions),
    and events that joined nothing."""
    shown = answers.drop_duplicates("request_id").set_index("request_id")
    joined = events.join(shown[["model_version", "products"]], on="request_id", rsuffix="_answer")
    ok = joined["model_version"] == joined["model_version_answer"]
    clicked = joined["product"].fillna("").str.rsplit("/", n=1).str[-1]
    in_answer = [c.isdigit() and not isinstance(p, float) and int(c) in set(p)  # NaN: no answer joined
                 for c, p in zip(clicked, joined["products"])]
    ok &= (joined["event"] == "impression") | ((joined["event"] == "click") & pd.Series(in_answer, index=joined.index))
    counted = joined[ok]
    table = pd.DataFrame({
        "answers": answers.groupby("model_version")["request_id"].nunique(),
        "impressions": counted[counted["event"] == "impression"].groupby("model_version").size(),
        "clicks": counted[counted["event"] == "click"].groupby("model_version").size(),
        "unjoined": joined[~ok].groupby("model_version").size(),
    }).fillna(0).astype("int64")
    table["ctr"] = (table["clicks"] / table["impressions"].where(table["impressions"] > 0)).astype("float64")
    table.index.name = "model_version"
    return table.reset_index().sort_values("model_version", key=_numeric_first).reset_index(drop=True)


def _numeric_first(versions: pd.Series) -> pd.Series:
    return versions.map(lambda v: (0, int(v), "") if str(v).isdigit() else (1, 0, str(v)))


def ctr_report(state_dir: Path) -> pd.DataFrame:
    """CTR per model version from the logs a recommender server writes under ``state_dir``."""
    root = Path(state_dir) / "recommendations"
    return ctr_by_version(read_log(root / "predictions", ANSWER_COLUMNS), read_log(root / "feedback", EVENT_COLUMNS))


def served_ctr(settings) -> pd.DataFrame:
    """CTR per model version from every recommender log ``settings`` reaches: this machine's files and those
    the servers shipped to ``serving.prediction_log_store`` (what the recommend task reports on a cluster)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="recommender-logs-") as scratch:
        return ctr_by_version(read_logs(settings, "predictions", ANSWER_COLUMNS, Path(scratch)),
                              read_logs(settings, "feedback", EVENT_COLUMNS, Path(scratch)))


def markdown(table: pd.DataFrame) -> str:
    """The table for a report: one row per model version."""
    lines = ["| model version | answers | impressions | clicks | CTR | unjoined events |", "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        ctr = "n/a" if pd.isna(row.ctr) else f"{row.ctr:.2%}"
        lines.append(f"| {row.model_version} | {row.answers:,} | {row.impressions:,} | {row.clicks:,} | {ctr} | "
                     f"{row.unjoined:,} |")
    return "\n".join(lines) + "\n"


KINDS = ("predictions", "feedback")  # the recommender's answers, and the impressions and clicks naming them


def local_log_dir(state_dir: Path, kind: str) -> Path:
    """A recommender server's local directory of ``kind`` (answers: predictions; events: feedback) log files."""
    if kind not in KINDS:
        raise ValueError(f"recommender log kind must be one of {KINDS}, got {kind!r}")
    return Path(state_dir) / "recommendations" / kind


def log_store(settings, kind: str):
    """Where the recommender's ``kind`` log files are shipped, as the propensity prediction log's are
    (:mod:`storeflow.components.prediction_logs`): the ``recommendations/<kind>`` folder of
    ``serving.prediction_log_store``; None when no store is set."""
    from storeflow.components.prediction_logs import LogStore

    uri = settings.serving.prediction_log_store
    if not uri:
        return None
    local_log_dir(Path("."), kind)  # the kind is checked
    base, _, query = uri.partition("?")
    return LogStore(f"{base.rstrip('/')}/recommendations/{kind}" + (f"?{query}" if query else ""))


def read_logs(settings, kind: str, columns: dict[str, str], scratch: Path, start=None, end=None) -> pd.DataFrame:
    """Every line of the recommender's ``kind`` logs: this machine's files and those shipped to the object
    store (fetched into ``scratch``), only files that may hold lines of ``[start, end)`` when given."""
    from storeflow.components.prediction_logs import started_at

    files = sorted(local_log_dir(settings.project.state_dir, kind).glob("*.jsonl"))
    if (store := log_store(settings, kind)) is not None:
        for log in store.logs():
            begun = started_at(log.name)
            if begun is None or (end is not None and begun >= end) or (start is not None and log.modified < start):
                continue
            files.append(store.fetch(log.name, Path(scratch) / kind))
    return read_files(files, columns)
