"""The BG/NBD model the webhook receiver scores live customers with: the served version's own.

A trained version keeps the BG/NBD its training rows were scored with in its MLflow model directory
(``btyd/bgnbd.nc``, see ``train.log_baseline_model``), so it reaches every pod through the registry, not a
volume shared with the features task. The receiver follows the version serving resolves
(``serving.model_version``, else the ``serving.model_alias`` alias): a background thread asks the registry
every ``shopify.baseline_refresh_seconds`` and downloads a new version's file once. Applying webhooks never
waits on MLflow, and carries on with the last file it had while MLflow is down.

Until a registered version has one (no model yet, or versions trained before it was kept), the file the
features stage saved on this machine is used (the embedded setup's state directory), else none: the BTYD
features are then missing, which serving treats as such.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from storeflow.components.config import Settings
from storeflow.components.features.btyd import LOGGED_DIR, LOGGED_FILE
from storeflow.components.features.repo import btyd_model_path

log = logging.getLogger(__name__)


class ServedBaseline:
    """A callable naming the BG/NBD file to score with now (``btyd.LiveScorer``'s source)."""

    def __init__(self, settings: Settings, directory: Path):
        self.settings = settings
        self.directory = Path(directory)
        self.version: str | None = None  # the registered version whose file is in use
        self._path: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self) -> Path | None:
        if self._path is not None:
            return self._path
        local = btyd_model_path(self.settings)
        return local if local.exists() else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="served-baseline")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the registry is down or slow: keep the file in use, try later
                log.exception("could not check the served model's BG/NBD in MLflow; keeping %s", self._path or "none")
            self._stop.wait(self.settings.shopify.baseline_refresh_seconds)

    def _registry_exists(self) -> bool:
        uri = self.settings.tracking_uri
        # The embedded registry is a SQLite file: none yet means no model yet (and no 7 s `import mlflow`).
        return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()

    def refresh(self) -> str | None:
        """Follow the served version: download its BG/NBD when it changed; the version in use, or None."""
        if not self._registry_exists():
            return None
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        from storeflow.components import tracking

        client = tracking.connect(self.settings)
        name, serving = self.settings.registry.model_name, self.settings.serving
        try:
            version = serving.model_version or str(client.get_model_version_by_alias(name, serving.model_alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None  # nothing registered or promoted yet
            raise
        if version == self.version:
            return version
        target = self.directory / version
        if not (target / LOGGED_FILE).exists():
            source = client.get_model_version_download_uri(name, version)  # where its files are (s3://, ...)
            partial = self.directory / f".{version}.partial"
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{LOGGED_DIR}/{LOGGED_FILE}",
                                                    dst_path=str(partial))
            except (MlflowException, OSError) as exc:
                self._path, self.version = None, version
                log.warning("model version %s keeps no BG/NBD (%s; trained before versions kept it?): live BTYD "
                            "features use %s", version, exc, self() or "none")
                return version
            partial.replace(target)  # whole or not at all: a download cut short is fetched again
        self._path, self.version = target / LOGGED_FILE, version
        log.info("live BTYD features now score with model version %s's BG/NBD", version)
        return version
