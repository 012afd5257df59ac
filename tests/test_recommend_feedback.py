"""Click-through rate per model version from the recommendation and feedback logs: only events that name a
logged answer of their own version count, and a click only on a product that answer showed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from storeflow.components.recommend.feedback import ctr_by_version, ctr_report, markdown

A, B, C = "a" * 32, "b" * 32, "c" * 32
GID = "gid://shopify/Product/"


def _answers() -> pd.DataFrame:
    return pd.DataFrame([{"ts": "t", "request_id": A, "model_version": "1", "products": [11, 12]},
                         {"ts": "t", "request_id": B, "model_version": "2", "products": [21, 22]},
                         {"ts": "t", "request_id": C, "model_version": "2", "products": [21, 23]}])


def _event(request_id, version, event, product=None) -> dict:
    return {"ts": "t", "request_id": request_id, "model_version": version, "event": event,
            "product": None if product is None else f"{GID}{product}"}


def test_ctr_counts_only_events_that_join_their_answer():
    events = pd.DataFrame([
        _event(A, "1", "impression"), _event(A, "1", "click", 12),
        _event(B, "2", "impression"), _event(C, "2", "impression"), _event(C, "2", "click", 23),
        _event(B, "2", "click", 12),    # a product version 2 did not show: not counted
        _event(A, "2", "click", 11),    # version 1's answer credited to version 2: not counted
        _event("d" * 32, "1", "click", 11),  # no such answer logged
    ])
    table = ctr_by_version(_answers(), events).set_index("model_version")
    assert table.loc["1", ["answers", "impressions", "clicks", "unjoined"]].tolist() == [1, 1, 1, 1]
    assert table.loc["2", ["answers", "impressions", "clicks", "unjoined"]].tolist() == [2, 2, 1, 2]
    assert table.loc["1", "ctr"] == 1.0 and table.loc["2", "ctr"] == 0.5
    assert "| 2 | 2 | 2 | 1 | 50.00% | 2 |" in markdown(table.reset_index())


def test_no_impressions_is_no_ctr_not_a_division_error():
    table = ctr_by_version(_answers(), pd.DataFrame([_event(A, "1", "click", 11)]))
    assert pd.isna(table.set_index("model_version").loc["1", "ctr"])
    assert "n/a" in markdown(table)


def test_the_report_reads_the_server_logs_and_skips_a_half_written_line(tmp_path):
    root = tmp_path / "recommendations"
    (root / "predictions").mkdir(parents=True)
    (root / "feedback").mkdir()
    (root / "predictions" / "predictions-1.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _answers().to_dict("records")) + '{"ts": "t", "request_')
    (root / "feedback" / "predictions-1.jsonl").write_text(
        json.dumps(_event(A, "1", "impression")) + "\n" + json.dumps(_event(A, "1", "click", 11)) + "\n")
    table = ctr_report(tmp_path).set_index("model_version")
    assert table.loc["1", ["answers", "impressions", "clicks"]].tolist() == [1, 1, 1]
    assert table.loc["2", "answers"] == 2 and pd.isna(table.loc["2", "ctr"])


def test_nothing_logged_yet_is_an_empty_table(tmp_path):
    assert ctr_report(tmp_path).empty


@pytest.mark.parametrize(("body", "says"), [
    ({"event": "view"}, "event"),
    ({"event": "click", "request_id": A, "model_version": "1", "products": [f"{GID}1"]}, "product clicked"),
    ({"event": "impression", "request_id": "not-hex", "model_version": "1", "products": [f"{GID}1"]}, "request_id"),
    ({"event": "impression", "request_id": A, "model_version": "1", "products": ["gid://shopify/Customer/1"]},
     "products"),
])
def test_bad_feedback_is_a_422_naming_the_field(body, says):
    import asyncio

    from starlette.requests import Request

    from storeflow.serving.recommend_feedback import FeedbackEndpoint

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/v1/feedback", "headers": []}, receive)
    response = asyncio.run(FeedbackEndpoint(None, ["1"]).handle(request))
    assert response.status_code == 422
    assert says in json.loads(response.body)["error"]
