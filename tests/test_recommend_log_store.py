"""The recommender's logs (answers; impressions and clicks) go where the propensity prediction log goes: with
``serving.prediction_log_store`` set, each server ships its closed files to the store's
``recommendations/predictions`` and ``recommendations/feedback`` folders and keeps no copy, and monitoring and
the canary read them there, so replicas and the monitoring pipeline share no volume. The store here is a local
path (pyarrow's filesystem, as s3:// is on a cluster)."""

from __future__ import annotations

import shutil
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_monitor_recommendations import END, _week_then_day  # noqa: E402

from storeflow.components.monitor.recommendations import recommender_window  # noqa: E402
from storeflow.components.recommend.canary import feedback_logs as canary_logs  # noqa: E402
from storeflow.components.recommend.feedback import KINDS, local_log_dir, log_store, served_ctr  # noqa: E402


@pytest.fixture
def stored(settings, tmp_path):
    settings.serving.prediction_log_store = str(tmp_path / "bucket" / "logs")
    return settings


def test_the_server_ships_its_answer_and_feedback_logs_to_the_store(stored):
    from storeflow.serving.recommender import feedback_logs

    answers, events = feedback_logs(stored)
    answers.append([{"ts": "2026-11-20T11:00:00+00:00", "request_id": "a" * 32, "model_version": "2",
                     "basket": [1], "products": [7, 8]}])
    events.append([{"ts": "2026-11-20T11:00:01+00:00", "request_id": "a" * 32, "model_version": "2",
                    "event": "impression", "product": None}])
    answers.close()
    events.close()
    for kind in KINDS:
        (shipped,) = log_store(stored, kind).logs()
        assert shipped.name.startswith("predictions-") and b'"request_id":"' + b"a" * 32 in log_store(
            stored, kind).read(shipped.name)
        assert not list(local_log_dir(stored.project.state_dir, kind).glob("*.jsonl"))  # no copy kept


def test_monitoring_and_the_canary_read_the_shipped_logs(stored):
    _week_then_day(stored, ctr_now=0.03, products_now=np.arange(1, 201))
    for kind in KINDS:  # the files move to the store, as the servers' shipping does
        store = log_store(stored, kind)
        for n, path in enumerate(sorted(local_log_dir(stored.project.state_dir, kind).glob("*.jsonl"))):
            store.write(f"predictions-2026110{n + 1}T000000000000-recommender-{n}-1.jsonl", path.read_bytes())
        shutil.rmtree(local_log_dir(stored.project.state_dir, kind))
    part = recommender_window(stored, END - timedelta(hours=24), END)
    assert part["status"] == "analysed" and part["ctr_level"] == "critical", part
    assert part["answers"] == 1_500 and [r["model_version"] for r in part["baseline_ctr"]] == ["1"]
    answers, events = canary_logs(stored)()
    assert len(answers) == 7_500 and set(events["model_version"]) == {"1", "2"}
    table = served_ctr(stored).set_index("model_version")  # what the recommend task reports
    assert table.loc["1", "impressions"] == 6_000 and table.loc["2", "impressions"] == 1_500


def test_a_bad_store_uri_or_kind_is_named(settings):
    settings.serving.prediction_log_store = "nosuch://bucket/x"
    with pytest.raises(ValueError, match="prediction_log_store"):
        log_store(settings, "feedback")
    with pytest.raises(ValueError, match="kind"):
        local_log_dir(settings.project.state_dir, "clicks")
