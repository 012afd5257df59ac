"""Erasure that really erases: the stores the webhook tests do not plant (the synthetic raw store, a
stray copy), a prediction log a live writer is appending to, and the scan that makes a forgotten store
fail the request instead of passing quietly."""

from __future__ import annotations

import json
import re
import sqlite3
import struct
import subprocess
import sys
import threading
import textwrap
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storeflow.components.ingest import ingest
from storeflow.components.monitor.predictions import log_files
from storeflow.components.shopify import journal, layout, privacy
from storeflow.components.shopify.traces import Needles, find_traces
from storeflow.components.tables import read_tables
from storeflow.serving.predlog import PredictionLog

ERASED, KEPT = 7_200_000_000_042, 7_200_000_000_043
WARM_UP = 7_200_000_900_000  # erased before a measurement


def on_disk(roots: list[Path], customer_id: int, email: str | None) -> list[str]:
    """An independent look at every file: the id as a whole number in text (not the digits of a longer
    number or a fraction) or packed int64, the email; Parquet decoded, SQLite dumped as SQL text
    (integers there are variable-length), zip members opened."""
    number = re.compile(rb"(?<![0-9.])" + str(customer_id).encode() + rb"(?![0-9])")
    packed = [struct.pack("<q", customer_id), struct.pack(">q", customer_id)]
    found = []
    for path in sorted({p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}):
        data = path.read_bytes()
        text = data
        if path.suffix == ".parquet":
            text = pq.read_table(path).to_pandas().to_csv().encode()
            data = b""  # other int64 columns (order ids...) hold plain 8-byte values too
        elif data.startswith(b"SQLite format 3"):
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
            text = data + "\n".join(conn.iterdump()).encode()
            conn.close()
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                text = data = b"".join(archive.read(m) for m in archive.namelist())
        if number.search(text) or any(p in data for p in packed) or (email and email.lower().encode() in text.lower()):
            found.append(str(path))
    return found


def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds:.0f} s"
        time.sleep(0.02)


def _journal(settings) -> sqlite3.Connection:
    return journal.connect(layout.journal_path(settings))


# --- the synthetic raw store -----------------------------------------------------------------------


@pytest.fixture
def synthetic(settings):
    settings.ingest.synthetic.customers, settings.ingest.synthetic.orders = 40, 300
    snapshot = ingest(settings).snapshot
    customers = read_tables(snapshot)["customers"]
    with_orders = set(read_tables(snapshot)["orders"]["customer_id"].dropna())
    row = customers[customers["customer_id"].isin(with_orders)].iloc[0]
    return settings, int(row["customer_id"]), str(row["email"])


def test_customer_redact_erases_the_synthetic_raw_store(synthetic):
    settings, customer, email = synthetic
    raw = next((settings.data_dir / "synthetic").glob("store-*.jsonl"))
    assert email.encode() in raw.read_bytes() and str(customer).encode() in raw.read_bytes()
    lines_before = raw.read_bytes().count(b"\n")

    conn = _journal(settings)
    removed = privacy.redact_customer(settings, conn, None, privacy.Subject(customer, email))
    conn.close()

    assert on_disk([settings.project.state_dir], customer, email) == []
    assert removed["raw_records"] > 1  # the customer and their orders
    assert 0 < raw.read_bytes().count(b"\n") < lines_before  # everyone else is still there
    assert ingest(settings).row_counts["customers"] == 39  # the erased store re-ingests without them


def test_shop_redact_leaves_no_email_of_the_store_anywhere(synthetic):
    settings, _, _ = synthetic
    raw = next((settings.data_dir / "synthetic").glob("store-*.jsonl"))
    emails = {json.loads(line).get("email") for line in raw.open()} - {None}
    assert len(emails) == 40

    conn = _journal(settings)
    privacy.redact_shop(settings, conn, None, "kettle-and-leaf.myshopify.com")
    conn.close()

    everything = [p for p in settings.project.state_dir.rglob("*") if p.is_file()]
    left = [str(p) for p in everything if any(e.encode() in p.read_bytes() for e in emails)]
    assert left == []


def test_a_store_erasure_does_not_know_fails_the_request_naming_the_file(synthetic):
    settings, customer, email = synthetic
    copy = settings.project.state_dir / "exports" / "customers-backup.csv"
    copy.parent.mkdir()
    copy.write_text(f"id,email\n{customer},{email}\n{KEPT},someone.else@example.com\n")

    conn = _journal(settings)
    with pytest.raises(privacy.ErasureIncomplete, match="customers-backup.csv"):
        privacy.redact_customer(settings, conn, None, privacy.Subject(customer, email))
    conn.close()
    # What it does know is erased all the same; only the unknown copy is left, for someone to look at.
    assert on_disk([settings.project.state_dir], customer, email) == [str(copy)]


def test_a_pipeline_runs_parquet_artifact_without_a_suffix_is_erased(settings):
    """A KFP run keeps the features step's training set as ``.../features/training_set``: Parquet with
    no ``.parquet``. Erasure looked for Parquet by name, so the scan found the customer there and
    customers/redact failed (the demo-erasure test, once features wrote the training set as an artifact);
    shop/redact removed only the stores it names, so its scan failed on such files too."""
    artifact = settings.project.state_dir / "runs" / "20261204-000000" / "artifacts" / "features" / "training_set"
    artifact.parent.mkdir(parents=True)
    pq.write_table(pa.table({"customer_id": [KEPT, ERASED, KEPT], "label": [1, 0, 0]}), artifact)

    conn = _journal(settings)
    removed = privacy.redact_customer(settings, conn, None, privacy.Subject(ERASED))
    conn.close()

    assert removed["parquet_rows"] == 1
    assert pq.read_table(artifact).column("customer_id").to_pylist() == [KEPT, KEPT]
    assert on_disk([settings.project.state_dir], ERASED, None) == []

    conn = _journal(settings)
    privacy.redact_shop(settings, conn, None, "any.myshopify.com")  # every row is the shop's: the file goes
    conn.close()
    assert not artifact.exists()


# --- the scan -----------------------------------------------------------------------------------------


def test_the_scan_finds_ids_in_every_encoding_storeflow_writes(tmp_path: Path):
    needles = Needles(frozenset({ERASED}), frozenset({"Ada@Example.com"}))
    pq.write_table(pa.table({"customer_id": [KEPT, ERASED], "x": [1.0, 2.0]}), tmp_path / "features.parquet")
    pq.write_table(pa.table({"customer_id": [KEPT], "order_id": [ERASED]}), tmp_path / "orders.parquet")
    conn = sqlite3.connect(tmp_path / "journal.db")
    conn.execute("CREATE TABLE live_orders (order_id INTEGER, customer_id INTEGER)")
    conn.execute("INSERT INTO live_orders VALUES (?, ?)", (1, ERASED))
    conn.commit()
    conn.close()
    with zipfile.ZipFile(tmp_path / "model.skops", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", json.dumps({"example": {"customer": f"gid://shopify/Customer/{ERASED}"}}) * 50)
    (tmp_path / "report.html").write_text("<td>ada@example.com</td>")
    (tmp_path / "longer.json").write_text(json.dumps({"id": ERASED * 10, "n": ERASED + 1}))

    found = {(t.path.name, t.where) for t in find_traces([tmp_path], needles)}

    assert ("features.parquet", "column customer_id") in found
    assert not any(name == "orders.parquet" for name, _ in found)  # an order id is no customer id
    assert ("journal.db", "column live_orders.customer_id") in found
    assert any(name == "model.skops" and where.startswith("member") for name, where in found)
    assert ("report.html", "bytes") in found
    assert not any(name == "longer.json" for name, _ in found)  # other numbers that contain the id


# --- the prediction log a running server writes ----------------------------------------------------------


def test_erasing_a_prediction_log_a_live_writer_appends_to(settings):
    directory = layout.prediction_log_dir(settings)
    writer = PredictionLog(directory, max_queue=100_000)
    kept_written = 0
    stop = threading.Event()

    def serve_traffic():
        nonlocal kept_written
        for _ in range(3000):
            writer.append([{"customer_id": ERASED, "score": 0.1}, {"customer_id": KEPT, "score": 0.2}])
            kept_written += 1
            stop.wait(0.0005)

    traffic = threading.Thread(target=serve_traffic)
    traffic.start()
    conn = _journal(settings)
    try:
        while not log_files(directory):
            stop.wait(0.01)
        erasures = 0
        while traffic.is_alive():  # erase again and again while lines stream in
            erasures += privacy.erase_prediction_logs(settings, privacy.Subject(ERASED)) > 0
    finally:
        stop.set()
        traffic.join()
    writer.append([{"customer_id": KEPT, "score": 0.25}])  # the erased customer has stopped buying
    # Every line queued before it is then on disk too (a writer left on a replaced file never gets there).
    wait_for(lambda: b'"score":0.25' in b"".join(p.read_bytes() for p in log_files(directory)),
             "the writer's line in the log monitoring reads")
    privacy.redact_customer(settings, conn, None, privacy.Subject(ERASED))
    conn.close()
    writer.append([{"customer_id": KEPT, "score": 0.3}])  # the server goes on serving
    writer.close()
    kept_written += 2

    lines = [json.loads(line) for path in log_files(directory) for line in path.read_bytes().splitlines()]
    assert writer.dropped == 0 and erasures > 5
    assert ERASED not in {r["customer_id"] for r in lines}
    assert on_disk([settings.project.state_dir], ERASED, None) == []
    # Every line of everyone else is where monitoring reads it, the last one too: the writer kept
    # appending to the file on disk, not to a replaced one.
    assert sum(r["customer_id"] == KEPT for r in lines) == kept_written
    assert lines[-1]["score"] == 0.3


def test_redacting_a_large_prediction_log_reads_it_a_piece_at_a_time(settings):
    """Issue 11's soak: the webhook receiver grew with its prediction logs (0-61 MB), because
    customers/redact read each whole log into memory twice: to rewrite it (a list of its lines) and to
    prove the erasure (the file's bytes and a lowered copy). A 48 MB log: +110 MB at the peak before,
    +7 MB streamed.

    Measured in a fresh interpreter: the suite's own process has a peak RSS of its own already."""
    directory = layout.prediction_log_dir(settings)
    directory.mkdir(parents=True)
    features = {f"feature_{n}": 12.5 + n for n in range(12)}
    lines = [json.dumps({"ts": "2026-06-01T12:00:00.123456+00:00", "request_id": f"r{n}", "model_version": "3",
                         "customer_id": ERASED if n % 1000 == 7 else KEPT + n % 400, "score": 0.734,
                         "features": features, "shop": "demo-store.myshopify.com"}) + "\n" for n in range(2000)]
    big, small = directory / "predictions-1-host-1.jsonl", directory / "predictions-0-host-1.jsonl"
    written = 0
    with big.open("w") as out:
        while out.tell() < 48 << 20:
            out.writelines(lines)
            written += 1
    small.write_text("".join(lines).replace(str(ERASED), str(WARM_UP)))
    size_mb, erased_lines = big.stat().st_size / 2**20, written * sum(str(ERASED) in line for line in lines)
    _journal(settings).close()
    done = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import test_erasure; test_erasure.redaction_peak(sys.stdin.read())", str(Path(__file__).parent)],
                          input=settings.to_json(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    peak_mb, kept_mb, dropped = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{size_mb:.0f} MB log: peak +{peak_mb:.1f} MB, kept +{kept_mb:.1f} MB")
    assert dropped == erased_lines
    assert str(ERASED).encode() not in big.read_bytes() and str(KEPT).encode() in big.read_bytes()
    # Streamed, the peak is a few windows of 1 MiB (measured: 7 MB), whatever the log's size.
    assert peak_mb < size_mb / 3, f"customers/redact took {peak_mb:.0f} MB above its start for a {size_mb:.0f} MB log"


def redaction_peak(settings_json: str) -> None:
    """customers/redact of ERASED (after a first one on the small log, so lazy imports are done); prints
    [peak RSS above the start MB, RSS kept after MB, prediction-log lines dropped]."""
    import threading

    import psutil

    from storeflow.components.config import load_settings

    settings = load_settings(json.loads(settings_json))
    conn = _journal(settings)
    directory = layout.prediction_log_dir(settings)
    big = directory / "predictions-1-host-1.jsonl"
    aside = big.rename(settings.project.state_dir.parent / "aside.jsonl")  # outside every store erasure scans
    privacy.redact_customer(settings, conn, None, privacy.Subject(WARM_UP))  # on the small log
    aside.rename(big)
    process = psutil.Process()
    before = process.memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from here
    removed = {}
    # In a thread, as the receiver's applier runs it (a thread's allocations live in an arena of their own).
    worker = threading.Thread(target=lambda: removed.update(privacy.redact_customer(settings, conn, None,
                                                                                    privacy.Subject(ERASED))))
    worker.start()
    worker.join()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    print(json.dumps([(peak - before) / 2**20, (process.memory_info().rss - before) / 2**20,
                      removed.get("prediction_log_lines")]))


# --- everything the demo writes, with a server running ----------------------------------------------------

MODEL = "storeflow-repeat-purchase"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A quick demo: the training pipeline on a small synthetic store, `storeflow serve` on the result,
    served traffic, and a monitoring run over it (its reports and their MLflow copies)."""
    import subprocess
    import sys

    from conftest import free_port, quick_overrides, stop_process
    from storeflow.components.config import load_settings
    from storeflow.components.monitor.stage import monitor
    from storeflow.pipelines.local import run_local
    from storeflow.pipelines.training import STAGES, training_pipeline

    root = tmp_path_factory.mktemp("erasure-demo")
    overrides = quick_overrides(root, ingest={"synthetic": {"customers": 300, "orders": 2500, "products": 40}},
                                project={"state_dir": str(root / "state"), "shop_domain": SHOP},
                                serving={"auth": "off", "feature_cache_seconds": 600, "feature_refresh_seconds": 600})
    settings = load_settings(overrides)
    run_local(training_pipeline, settings, STAGES)

    port, ready = free_port(), root / "ready"
    script = ("import json, sys; from storeflow.components.config import load_settings; "
              "from storeflow.serving.server import serve; "
              "serve(load_settings(json.loads(sys.argv[1])), port=int(sys.argv[2]), ready_file=sys.argv[3])")
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(overrides), str(port), str(ready)],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, "server", 180)
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        base = f"http://127.0.0.1:{port}"
        snapshot = next(p for p in (settings.data_dir / "snapshots").iterdir() if p.is_dir())
        served = [int(c) for c in read_tables(snapshot)["customers"]["customer_id"][:150]]
        for start in range(0, len(served), 50):
            _predict(base, *served[start:start + 50])
        wait_for(lambda: sum(_logged(settings, c) for c in served[:1] + served[-1:]) == 2, "served traffic logged")
        monitor(settings, publish=False)
        yield settings, base, served, overrides
    finally:
        stop_process(proc, log)


SHOP = "kettle-and-leaf.myshopify.com"


def _predict(base: str, *customer_ids: int) -> dict:
    import httpx

    answer = httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [{"customer_id": c} for c in customer_ids]},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


def _logged(settings, customer_id: int) -> int:
    """Lines for the customer in the files monitoring reads."""
    return sum(json.loads(line)["customer_id"] == customer_id
               for path in log_files(layout.prediction_log_dir(settings)) for line in path.read_bytes().splitlines())


@pytest.mark.slow
def test_redact_leaves_nothing_of_the_customer_in_anything_the_demo_wrote(demo, monkeypatch):
    from starlette.testclient import TestClient
    from test_webhook_signing import SECRET, delivery

    from storeflow.components.shopify.webhooks import create_app

    settings, base, served, overrides = demo
    snapshot = next(p for p in (settings.data_dir / "snapshots").iterdir() if p.is_dir())
    customers = read_tables(snapshot)["customers"].set_index("customer_id")["email"]
    erased, kept = served[0], served[1]
    email = customers[erased]
    all_emails = set(customers.dropna())
    roots = layout.erasure_roots(settings)

    assert _predict(base, erased)["fallback"] is False
    wait_for(lambda: _logged(settings, erased) == 2, "second served line of the customer")
    monkeypatch.setenv("SHOPIFY_API_SECRET", SECRET)
    from storeflow.components.config import load_settings

    receiver = load_settings({**overrides, "serving": {"shopify_client_id": "storeflow-test-app"}})
    with TestClient(create_app(receiver), base_url="https://storeflow.example") as client:
        def deliver(topic, payload, webhook_id):
            assert client.post("/webhooks", **delivery(topic, payload, webhook_id, shop=SHOP)).status_code == 200
            client.app.state.applier.drain()

        deliver("customers/data_request", {"shop_domain": SHOP, "customer": {"id": erased, "email": email},
                                           "data_request": {"id": 77}}, "wh-request")
        planted = on_disk(roots, erased, email)
        for store in ("data/synthetic/store-", "snapshots/", "data/training/", "customer_features.parquet", "online.db",
                      "predictions/", "shopify/webhooks.db", "data_requests/"):
            assert any(store in path for path in planted), f"test setup: nothing of the customer in {store}"

        deliver("customers/redact", {"shop_domain": SHOP, "customer": {"id": erased, "email": email},
                                     "orders_to_redact": []}, "wh-redact")

        assert on_disk(roots, erased, email) == []
        # The running server forgot them, and goes on logging where monitoring reads. (Its feature cache is off
        # until traffic repeats; test_serving_features erases a customer from a cache that is on.)
        assert _predict(base, erased)["fallback"] is True
        before = _logged(settings, kept)
        assert _predict(base, kept)["fallback"] is False
        wait_for(lambda: _logged(settings, kept) == before + 1, "new prediction in the log monitoring reads")

        deliver("shop/redact", {"shop_domain": SHOP}, "wh-shop-redact")
        left = [str(p) for root in roots if root.exists() for p in root.rglob("*")
                if p.is_file() and any(e.encode() in p.read_bytes().lower() for e in all_emails)]
        assert left == []
        assert on_disk(roots, kept, customers[kept]) == []
        assert _predict(base, kept)["fallback"] is True


def test_the_scans_quick_look_for_a_needle_finds_what_the_full_pattern_finds():
    """The scan looks for an email's or an id's plain bytes before it runs its pattern (whose look-behind made it try
    every byte: 69 s of a 500,000-customer store's proving scan, 12 s with the quick look). Random texts of near
    misses and hits, big and small ids, mixed case: the answer is the full pattern's, every time."""
    import random

    rng = random.Random(7)
    needles = Needles(frozenset({7_390_245_781_931, 42}), frozenset({"Ada.Lovelace@Example.com"}))
    pieces = [b"7390245781931", b"17390245781931", b"7390245781931.5", b"1.7390245781931", b"a.7390245781931",
              b"gid://shopify/Customer/42", b"gid://shopify/Customer/421", b'"customer_id": 42', b'"customer_id":"42"',
              b"42", b"ADA.LOVELACE@EXAMPLE.COM", b"ada.lovelace@example.co", b"lovelace@example.com", b"x" * 50,
              b",", b"\n", b" ", b"0", b".", b"customer"]
    found = 0
    for _ in range(3000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        expected = needles._literal.search(text.lower()) is not None
        assert needles.in_text(text) == expected, text
        found += expected
    assert 300 < found < 2900  # both answers were asked for, many times


@pytest.mark.parametrize("many", [False, True], ids=["one customer", "a whole shop"])
def test_the_fraction_digits_of_a_decimal_are_no_customer_id(tmp_path: Path, many: bool):
    """An Evidently report's data held 1978.7200000000016; a synthetic customer id is 7200000000016, so
    shop/redact's scan failed on a float repr (the demo-erasure test, by chance). An id as a number, in
    a gid, or after a non-digit and a dot is still found."""
    erased = 7_200_000_000_016
    needles = Needles(frozenset({erased} | ({erased + 5 * n for n in range(1, 100)} if many else set())))
    assert not needles.in_bytes(b"[0.0, 1978.7200000000016, 0.0]", packed=False)
    assert not needles.in_bytes(b'{"mean": 12.7200000000016}', packed=False)
    for found in (b"[7200000000016, 1.5]", b'"gid://shopify/Customer/7200000000016"', b"id a.7200000000016",
                  b"7200000000016.0"):
        assert needles.in_bytes(found, packed=False), found


def test_redacting_a_customer_of_a_large_store_reads_its_snapshot_a_batch_at_a_time(settings):
    """customers/redact runs in the webhook applier's process (a 2 GiB pod). It read every snapshot's tables whole,
    twice (resolving the customer's aliases, then erasing): on a 500,000-customer store (5M orders) it peaked at
    3,697 MB of heap, so the pod would be killed in it and again on every retry, every later event waiting behind
    it. On a 1,000,000-order snapshot here: a peak of +919 MB above the start before, +222 MB now (a row group
    at a time: ingest writes a million rows to one).
    Measured in a fresh interpreter, the redaction in a thread as the applier runs it."""
    from conftest import large_snapshot

    snapshot = large_snapshot(settings.data_dir / "snapshots" / "big", orders=1_000_000, customers=100_000)
    orders = pq.read_table(snapshot / "orders.parquet", columns=["customer_id"])["customer_id"].to_pylist()
    theirs = orders.count(5)
    assert theirs > 0
    _journal(settings).close()
    script = textwrap.dedent("""
        import json, re, sys, threading
        from pathlib import Path
        import psutil
        from storeflow.components.config import load_settings
        from storeflow.components.shopify import journal, layout, privacy
        import storeflow.components.risk.orders, storeflow.components.risk.velocity  # privacy's lazy imports

        settings = load_settings(json.loads(sys.stdin.read()))
        conn = journal.connect(layout.journal_path(settings))
        before = psutil.Process().memory_info().rss
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from here
        removed = {}
        worker = threading.Thread(target=lambda: removed.update(privacy.redact_customer(
            settings, conn, None, privacy.Subject(5, "customer5@example.com"))))
        worker.start()
        worker.join()
        peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
        print(json.dumps({"peak_mb": (peak - before) / 2**20, "snapshot_rows": removed.get("snapshot_rows")}))
    """)
    done = subprocess.run([sys.executable, "-c", script], input=settings.to_json(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    tables = read_tables(snapshot)
    assert 5 not in set(tables["orders"]["customer_id"]) and 5 not in set(tables["customers"]["customer_id"])
    assert len(tables["orders"]) == 1_000_000 - theirs and len(tables["customers"]) == 100_000 - 1
    assert len(tables["line_items"]) == 1_000_000 - theirs  # a line item an order
    assert measured["snapshot_rows"] == 2 * theirs + 1  # orders, their line items, the customer row
    assert measured["peak_mb"] < 400, measured


def test_a_customer_column_of_any_type_is_searched_for_the_ids():
    """Any Parquet under the state dir is searched by its customer_id column: an all-null column, a
    dictionary-encoded or float one is compared value by value, not refused (the erasure would fail and be retried)."""
    from storeflow.components.shopify.subject_rows import is_in

    columns = {"null": pa.nulls(3), "dictionary": pa.array([ERASED, KEPT, ERASED]).dictionary_encode(),
               "float": pa.array([float(KEPT), float(ERASED), None]), "int": pa.array([KEPT, None, ERASED])}
    found = {name: is_in(pa.chunked_array([column]), {ERASED}).tolist() for name, column in columns.items()}
    assert found == {"null": [False] * 3, "dictionary": [True, False, True], "float": [False, True, False],
                     "int": [False, False, True]}


def test_erasing_a_customer_from_an_older_snapshot_does_not_make_it_the_newest(settings):
    """A redaction rewrites every snapshot holding the customer. It stamped each rewrite as ingested now, so an
    older snapshot rewritten last became "the newest": the applier's index, the risk scorer's history and a data
    request's export then read last month's store. The rewrite keeps when the snapshot was ingested."""
    from conftest import large_snapshot

    from storeflow.components.ingest.snapshot import MANIFEST, newest_snapshot, read_manifest

    root = settings.data_dir / "snapshots"
    # named so that the older sorts last: rewritten last, and first on a tie
    older = large_snapshot(root / "z-older", orders=3_000, customers=100)
    newer = large_snapshot(root / "a-newer", orders=3_000, customers=100)
    (older / MANIFEST).write_text(json.dumps({"ingested_at": "2026-11-01T00:00:00+00:00"}))
    (newer / MANIFEST).write_text(json.dumps({"ingested_at": "2026-12-01T00:00:00.250000+00:00"}))
    assert newest_snapshot(root) == newer
    conn = _journal(settings)
    removed = privacy.redact_customer(settings, conn, None, privacy.Subject(5, "customer5@example.com"))
    assert removed["snapshot_rows"] > 0
    for snapshot in (older, newer):
        assert 5 not in set(read_tables(snapshot)["orders"]["customer_id"])
        assert read_manifest(snapshot)["redactions"]
    assert read_manifest(older)["ingested_at"] == "2026-11-01T00:00:00+00:00"
    assert newest_snapshot(root) == newer


def test_the_newest_snapshot_is_chosen_by_time_whatever_the_stamps_precision(tmp_path: Path):
    """Snapshots are ordered by when they were ingested, as times, not as text: a stamp with another zone offset
    (a manifest written elsewhere) sorted by its digits, and manifests before 2026-12-07 stamp whole seconds, later
    ones microseconds. A stamp without a zone counts as UTC; one that is no time, as the oldest."""
    from storeflow.components.ingest.snapshot import MANIFEST, finished_snapshots, newest_snapshot

    stamps = {"b": "2026-12-01T10:00:00.500000+00:00", "a": "2026-12-01T10:00:01+00:00",
              "c": "2026-12-01T11:00:00+01:00", "d": "2026-12-01T09:59:59.999999", "e": "not a time"}
    for name, stamp in stamps.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST).write_text(json.dumps({"ingested_at": stamp}))
    (tmp_path / "half-written").mkdir()  # no manifest yet
    assert [p.name for p in finished_snapshots(tmp_path)] == ["a", "b", "c", "d", "e"]
    assert newest_snapshot(tmp_path).name == "a"  # 11:00+01:00 is 10:00 UTC
    assert newest_snapshot(tmp_path / "missing") is None


def test_an_email_or_id_is_found_whole_not_inside_anothers(tmp_path: Path):
    """jo@example.com is no trace in mojo@example.com nor in jo@example.com.au, customer 5 none in '"id":55': the
    journal bodies of those others were emptied (their orders never applied) and the proof failed on their rows."""
    needles = Needles(frozenset(), frozenset({"jo@example.com"}))
    assert needles.in_bytes(b'{"email":"JO@example.com"}') and needles.in_bytes(b"jo@example.com.")
    assert not needles.in_bytes(b'{"email":"mojo@example.com"}') and not needles.in_bytes(b"jo@example.com.au")
    conn = journal.connect(tmp_path / "webhooks.db")
    for webhook_id, body in (("mine", b'{"id":5,"email":"jo@example.com"}'), ("other", b'{"id":55,"email":"mojo@example.com"}')):
        conn.execute("INSERT INTO events (webhook_id, shop, topic, received_at, body) VALUES (?, 's', 'orders/create', '', ?)",
                     (webhook_id, body))
    privacy.erase_journal(conn, privacy.Subject(5, "jo@example.com"))
    assert dict(conn.execute("SELECT webhook_id, body IS NULL FROM events")) == {"mine": 1, "other": 0}


class _Killed(BaseException):
    """What a kill -9 between two renames leaves: nothing after them runs."""


def test_a_snapshot_rewrite_cut_short_between_its_renames_is_finished_by_the_retried_redact(synthetic, monkeypatch):
    """A redaction rewrites a snapshot beside it, then swaps the two with two renames. Killed between them, the
    snapshot was gone: only .<name>.old (the erased customer in it, for good) and .<name>.redacted were left, and
    the snapshot listing took both hidden folders for snapshots (the old copy a reader could use as the store). The
    listing skips hidden folders, and the retried redaction finishes the swap first."""
    from storeflow.components.ingest.snapshot import finished_snapshots, newest_snapshot

    settings, customer, email = synthetic
    root = settings.data_dir / "snapshots"
    (snapshot,) = finished_snapshots(root)
    real = privacy.os.rename

    def killed_before_the_second(source, target):
        if Path(source).name == f".{snapshot.name}.redacted":  # the rewrite in, the snapshot out already
            raise _Killed
        real(source, target)

    monkeypatch.setattr(privacy.os, "rename", killed_before_the_second)
    conn = _journal(settings)
    with pytest.raises(_Killed):
        privacy.redact_customer(settings, conn, None, privacy.Subject(customer, email))
    monkeypatch.setattr(privacy.os, "rename", real)
    assert not snapshot.exists() and {p.name for p in root.iterdir() if p.is_dir()} >= {
        f".{snapshot.name}.old", f".{snapshot.name}.redacted"}
    assert finished_snapshots(root) == [] and newest_snapshot(root) is None  # never the hidden copies

    privacy.redact_customer(settings, conn, None, privacy.Subject(customer, email))  # the applier's retry
    conn.close()

    assert finished_snapshots(root) == [snapshot]
    assert [p.name for p in root.iterdir() if p.name.startswith(f".{snapshot.name}")] == []
    tables = read_tables(snapshot)
    assert customer not in set(tables["customers"]["customer_id"]) and len(tables["customers"]) == 39
    assert on_disk([settings.project.state_dir], customer, email) == []
