"""The prediction log through an object store, as on a cluster with no ReadWriteMany volume: each serving
process ships its closed log files to S3 and keeps none, the monitor task (on another pod, with an empty
directory of its own) reads the window from S3, and erasure and data requests reach the stored files.

S3 is moto's server on 127.0.0.1 (the S3 REST API, no network), reached through pyarrow's S3 filesystem
exactly as a MinIO or AWS bucket is: AWS_ENDPOINT_URL and the AWS_* credentials from the environment."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from storeflow.components.monitor.predictions import read_window
from storeflow.components.prediction_logs import LogStore, local_files, log_store, window_files
from storeflow.components.shopify import journal, layout, privacy
from storeflow.serving.predlog import prediction_log

BUCKET = "storeflow-predictions"
ERASED, KEPT = 7_300_000_000_042, 7_300_000_000_043
COLUMNS = ["recency_days", "frequency"]


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "storeflow-test",
           "AWS_SECRET_ACCESS_KEY": "storeflow-test-secret", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def shipping(s3, settings, request):
    settings.serving.prediction_log_store = f"s3://{BUCKET}/{request.node.name}"
    settings.serving.prediction_log_ship_seconds = 0.3
    return settings


def stored(s3, settings) -> list[dict]:
    prefix = settings.serving.prediction_log_store.removeprefix(f"s3://{BUCKET}/") + "/"
    lines = []
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        lines += [json.loads(line) for line in s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().splitlines()]
    return lines


def record(customer: int, score: float, ts: datetime | None = None) -> dict:
    return {"ts": (ts or datetime.now(timezone.utc)).isoformat(), "model_version": "1", "customer_id": customer,
            "fallback": False, "score": score, "features": {"recency_days": 3.0, "frequency": 2.0}}


def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds:.0f} s"
        time.sleep(0.05)


def test_closed_log_files_reach_the_object_store_and_leave_the_pod(shipping, s3) -> None:
    settings = shipping
    settings.serving.prediction_log_rotate_bytes = 2_000  # a few files by size, the last by age and at close
    writer = prediction_log(settings)
    directory = layout.prediction_log_dir(settings)
    for i in range(60):
        writer.append([record(KEPT, i / 100)])
        time.sleep(0.002)
    # Quiet traffic: the open file is closed and shipped by age, without a shutdown.
    wait_for(lambda: len(stored(s3, settings)) == 60, "every logged line in the store")
    assert local_files(directory) == [] or all(p.stat().st_size == 0 for p in local_files(directory))
    writer.append([record(KEPT, 0.99)])
    writer.close()
    lines = stored(s3, settings)
    assert writer.dropped == 0 and len(lines) == 61 and lines[-1]["score"] == 0.99
    assert local_files(directory) == []  # the pod keeps nothing: its emptyDir can go with it
    assert len(log_store(settings).logs()) >= 3


def test_the_monitor_on_another_pod_reads_the_window_from_the_store(shipping, s3, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    writer = prediction_log(shipping)
    writer.append([record(KEPT, 0.4, now - timedelta(minutes=m, seconds=30)) for m in range(150)])
    writer.close()
    # The monitor task: the same store, a directory of its own with nothing in it.
    monitor = shipping.model_copy(update={"serving": shipping.serving.model_copy(
        update={"prediction_log_dir": tmp_path / "monitor-pod"})})
    files = window_files(monitor, now - timedelta(hours=1), now + timedelta(minutes=1), tmp_path / "fetched")
    window = read_window(files, now - timedelta(hours=1), now + timedelta(minutes=1), COLUMNS, None, max_rows=1000)
    assert window.rows == 60 and window.model_version == "1"  # the hour's 60 of the 150 logged
    assert window.frame["frequency"].eq(2.0).all()
    # A window that ended before the file was begun fetches nothing.
    assert window_files(monitor, now - timedelta(days=3), now - timedelta(days=2), tmp_path / "none") == []


def test_erasure_and_data_requests_reach_the_files_serving_shipped(shipping, s3) -> None:
    settings = shipping
    writer = prediction_log(settings)
    writer.append([record(ERASED, 0.1), record(KEPT, 0.2), record(ERASED, 0.3), record(KEPT, 0.4)])
    writer.close()
    assert {r["customer_id"] for r in stored(s3, settings)} == {ERASED, KEPT}
    conn = journal.connect(layout.journal_path(settings))
    try:
        # The scan looks in the store too: a stored line of the erased fails the request, naming the object.
        with pytest.raises(privacy.ErasureIncomplete, match=rf"s3://{BUCKET}/.*predictions-.*\.jsonl"):
            privacy.verify(settings, privacy.Subject(ERASED).needles, "customers/redact")
        removed = privacy.redact_customer(settings, conn, None, privacy.Subject(ERASED))
        assert removed["prediction_log_lines"] == 2
        assert [r["score"] for r in stored(s3, settings)] == [0.2, 0.4]  # everyone else's lines stay

        export = json.loads(privacy.export_customer(settings, conn, None, privacy.Subject(KEPT), "req-1").read_text())
        assert [p["score"] for p in export["data"]["predictions"]] == [0.2, 0.4]

        privacy.redact_shop(settings, conn, None, "demo-store.myshopify.com")
        assert stored(s3, settings) == [] and log_store(settings).logs() == []
    finally:
        conn.close()


def test_a_store_uri_pyarrow_cannot_open_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=r"serving\.prediction_log_store 'ftp://nowhere/x'"):
        LogStore("ftp://nowhere/x")


def test_the_artifact_store_secrets_endpoint_variable_reaches_the_store(s3, monkeypatch) -> None:
    """On a cluster the transformer and the monitor task get the Secret MLflow uses, whose endpoint variable
    is MLFLOW_S3_ENDPOINT_URL; pyarrow itself reads only AWS_ENDPOINT_URL."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    store = LogStore(f"s3://{BUCKET}/via-mlflow-variable")
    store.write("predictions-20261204T000000000000-pod-1.jsonl", b'{"customer_id": 1}\n')
    assert [log.name for log in store.logs()] == ["predictions-20261204T000000000000-pod-1.jsonl"]
    assert s3.get_object(Bucket=BUCKET, Key="via-mlflow-variable/predictions-20261204T000000000000-pod-1.jsonl")
