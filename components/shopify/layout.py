"""Where the Shopify connection keeps its state; one place so that privacy erasure can find all of it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from storeflow.components.config import Settings
from storeflow.components.prediction_logs import local_dir


def raw_dir(settings: Settings) -> Path:
    """Raw bulk exports: the merged store JSONL, its watermark, an export in progress."""
    return settings.data_dir / "shopify"


def store_jsonl(settings: Settings) -> Path:
    """Every record pulled so far, newest version per id: the input ingest snapshots."""
    return raw_dir(settings) / "store.jsonl"


def sync_state(settings: Settings) -> Path:
    """The ``updated_at`` watermark, stored with the data it describes."""
    return raw_dir(settings) / "sync.json"


def pending_dir(settings: Settings) -> Path:
    """An export not finished yet; a re-run resumes its operations and downloads."""
    return raw_dir(settings) / "pending"


def connection_dir(settings: Settings) -> Path:
    return settings.project.state_dir / "shopify"


def baselines_dir(settings: Settings) -> Path:
    """The served model versions' BG/NBD files, downloaded from MLflow (one folder per version)."""
    return connection_dir(settings) / "baselines"


def journal_path(settings: Settings) -> Path:
    """SQLite (WAL): webhook events, orders received live, shop install state."""
    return connection_dir(settings) / "webhooks.db"


def data_requests_dir(settings: Settings) -> Path:
    """Exports answering customers/data_request, for the merchant to hand over."""
    return connection_dir(settings) / "data_requests"


def prediction_log_dir(settings: Settings) -> Path:
    """This machine's prediction log files (the object store's, ``serving.prediction_log_store``, are read and
    erased through ``components.prediction_logs``)."""
    return local_dir(settings)


def erasure_epoch(settings: Settings) -> Path:
    """Counter bumped after every erasure; running servers drop their caches when it moves."""
    return connection_dir(settings) / "erasure-epoch"


def erasure_roots(settings: Settings) -> list[Path]:
    """Every place storeflow writes customer data: the state dir, and the configurable locations that
    may lie outside it. Erasure is verified by scanning all of them."""
    roots = [settings.project.state_dir, settings.feature_repo_dir, prediction_log_dir(settings)]
    if settings.monitor.report_dir:
        roots.append(settings.monitor.report_dir)
    artifacts = settings.artifact_location
    if artifacts and artifacts.startswith("file:"):
        roots.append(Path(url2pathname(urlparse(artifacts).path)))
    if settings.tracking_uri.startswith("sqlite:///"):
        roots.append(Path(settings.tracking_uri.removeprefix("sqlite:///")))
    return roots
