"""Bad input to ingest: every error names the file, the line and what is wrong, a failed ingest leaves the
snapshots already stored as they were, and what ingest repairs quietly (exact duplicates) is said aloud."""

from __future__ import annotations

import json
import logging
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from storeflow.components.config import IngestConfig, Settings, ValidateConfig
from storeflow.components.ingest import IngestError, ingest, read_bulk_jsonl, read_orders_csv
from storeflow.components.validate import ValidationFailed, validate

DATA = Path(__file__).parent / "data" / "shopify"
ORDERS = DATA / "bulk" / "orders.jsonl"
EXPORT = DATA / "orders_export.csv"
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)  # after every fixture order


def use(settings: Settings, source: str, path: Path) -> Settings:
    settings.ingest = IngestConfig(source=source, path=path)
    return settings


def order_lines() -> list[dict]:
    return [json.loads(line) for line in ORDERS.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def fails_and_keeps_earlier(settings: Settings, source: str, bad: Path) -> IngestError:
    """Ingest a good input, then ``bad``: the error, with the earlier snapshot untouched and nothing new
    (no second snapshot, no temp dir) beside it."""
    earlier = ingest(use(settings, "jsonl", DATA / "bulk" / "products.jsonl")).snapshot
    stamps = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in earlier.iterdir()}
    with pytest.raises(IngestError) as error:
        ingest(use(settings, source, bad))
    assert [path.name for path in (settings.data_dir / "snapshots").iterdir()] == [earlier.name]
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in earlier.iterdir()} == stamps
    return error.value


def test_a_bad_update_of_an_ingested_directory_fails_and_the_earlier_snapshot_stays_whole(
    settings: Settings, tmp_path: Path
):
    inputs = tmp_path / "exports"
    shutil.copytree(DATA / "bulk", inputs)
    earlier = ingest(use(settings, "jsonl", inputs))
    stamps = {path.name: path.read_bytes() for path in earlier.snapshot.iterdir()}
    good = (inputs / "orders.jsonl").read_bytes()
    (inputs / "orders.jsonl").write_bytes(good + b'{"id":"gid://shopify/Order/9","name":"#9\xff"}\n')

    with pytest.raises(IngestError, match=r"orders\.jsonl: line \d+: not UTF-8"):
        ingest(settings)

    assert [path.name for path in (settings.data_dir / "snapshots").iterdir()] == [earlier.snapshot.name]
    assert {path.name: path.read_bytes() for path in earlier.snapshot.iterdir()} == stamps
    (inputs / "orders.jsonl").write_bytes(good)  # the export fixed: the earlier snapshot serves again
    again = ingest(settings)
    assert again.reused and again.snapshot == earlier.snapshot and again.row_counts == earlier.row_counts


def test_jsonl_that_is_not_utf8_names_file_line_and_byte_offset(settings: Settings, tmp_path: Path):
    good = ORDERS.read_bytes()
    bad_line = '{"id":"gid://shopify/Product/1","title":"Caf\xe9 au lait","createdAt":"2025-01-01T00:00:00Z"}\n'
    path = tmp_path / "export.jsonl"
    path.write_bytes(good + bad_line.encode("latin-1"))

    error = fails_and_keeps_earlier(settings, "jsonl", path)

    line = good.count(b"\n") + 1
    offset = path.read_bytes().index(b"\xe9")
    assert str(error).startswith(f"{path}: line {line}: not UTF-8: byte 0xe9 at byte offset {offset} ")
    assert "ArrowException" not in str(error) and "Wrapping" not in str(error)


def test_utf16_jsonl_is_named_as_such(tmp_path: Path):
    path = tmp_path / "export.jsonl"
    path.write_bytes(ORDERS.read_text().encode("utf-16"))
    with pytest.raises(IngestError, match=r"export\.jsonl: line 1: not UTF-8: the file is UTF-16"):
        read_bulk_jsonl([path])


def test_a_utf8_byte_order_mark_is_not_an_error_and_later_errors_keep_their_line(tmp_path: Path):
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ORDERS.read_bytes())
    assert len(read_bulk_jsonl([path])["orders"]) == 3
    path.write_bytes(b"\xef\xbb\xbf" + ORDERS.read_bytes() + b'{"id":"gid://shopify/Order/9","createdAt":7}\n')
    with pytest.raises(IngestError) as error:
        read_bulk_jsonl([path])
    line = ORDERS.read_bytes().count(b"\n") + 1
    assert str(error.value) == f"{path}: line {line}: field 'createdAt' should be a string, got 7"


@pytest.mark.parametrize(
    ("renames", "expected", "found"),
    [
        ({"createdAt": "created", "customer": "buyer"}, "none of its 3 Order records has createdAt", ("created", "buyer")),
        ({"totalPriceSet": "total"}, "none of its 3 Order records has totalPriceSet.shopMoney.amount", ("total",)),
        ({"id": "orderId"}, "none of its 7 records has id", ("orderId",)),
    ],
)
def test_fields_renamed_on_every_record_are_named_with_what_the_file_has_instead(
    settings: Settings, tmp_path: Path, renames: dict, expected: str, found: tuple[str, ...]
):
    records = [{renames.get(key, key) if "Order/" in str(record.get("id")) or key == "id" else key: value
                for key, value in record.items()} for record in order_lines()]
    path = write_jsonl(tmp_path / "export.jsonl", records)

    error = fails_and_keeps_earlier(settings, "jsonl", path)

    assert str(error).startswith(f"{path}: {expected} (")
    has = str(error).split("the first one, line 1, has ")[1].split(", ")
    assert set(found) <= set(has) and not set(renames) & set(has)


def test_orders_none_of_which_has_a_customer_are_a_warning_at_ingest_and_stop_validation(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    records = [{("buyer" if key == "customer" else key): value for key, value in record.items()}
               for record in order_lines()]
    path = write_jsonl(tmp_path / "export.jsonl", records)

    with caplog.at_level(logging.WARNING):
        snapshot = ingest(use(settings, "jsonl", path)).snapshot

    assert f"{path}: none of its 3 Order records has customer.id" in caplog.text
    assert "buyer" in caplog.text
    with pytest.raises(ValidationFailed) as failed:
        validate(snapshot, ValidateConfig(), now=NOW)
    assert failed.value.report.failed_rules == ["no_customers"]
    assert "none of the 3 order(s) has a customer_id" in str(failed.value)


def test_an_order_without_created_at_passes_ingest_and_stops_validation_naming_column_and_count(
    settings: Settings, tmp_path: Path
):
    records = order_lines()
    del records[0]["createdAt"]  # the other orders still have it
    snapshot = ingest(use(settings, "jsonl", write_jsonl(tmp_path / "export.jsonl", records))).snapshot

    with pytest.raises(ValidationFailed) as failed:
        validate(snapshot, ValidateConfig(), now=NOW)
    assert failed.value.report.failed_rules == ["required_values"]
    assert "required_values [orders]: 1 of 3 orders row(s) have no created_at: order_id 5601001" in str(failed.value)


def test_a_line_longer_than_the_reader_block_is_read(tmp_path: Path):
    records = order_lines()
    order = records[0]
    order["refunds"] = [{**order["refunds"][0], "id": f"gid://shopify/Refund/{n}"} for n in range(1, 15_001)]
    path = write_jsonl(tmp_path / "export.jsonl", [*records, {**order, "id": "gid://shopify/Order/77"}])
    assert max(map(len, path.read_bytes().splitlines())) > 1 << 20  # pyarrow's default block

    tables = read_bulk_jsonl([path])

    assert len(tables["orders"]) == 4 and len(tables["refunds"]) == 2 * 15_000


def test_exact_duplicate_lines_are_counted_in_the_ingest_log_the_manifest_and_the_validation_report(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    lines = [line for line in ORDERS.read_text().splitlines() if line.strip()]
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join([*lines, lines[0], lines[1], lines[1]]) + "\n")  # an order, its item twice

    with caplog.at_level(logging.WARNING):
        result = ingest(use(settings, "jsonl", path))

    expected = {"orders": 1, "line_items": 2, "refunds": 1}  # the order's inline refund came twice too
    assert result.duplicates_dropped == expected and result.row_counts["line_items"] == 4
    assert "dropped exact duplicate rows" in caplog.text and "'line_items': 2" in caplog.text
    assert json.loads((result.snapshot / "_manifest.json").read_text())["duplicates_dropped"] == expected
    assert ingest(settings).duplicates_dropped == expected  # reused: the manifest remembers

    report = validate(result.snapshot, ValidateConfig(), now=NOW)
    assert report.passed
    assert [(w.rule, w.table, w.count) for w in report.warnings if w.rule == "duplicate_lines"] == [
        ("duplicate_lines", "orders", 1), ("duplicate_lines", "line_items", 2), ("duplicate_lines", "refunds", 1)]
    assert "warning: duplicate_lines [line_items]: 2 exact duplicate row(s) in the input, dropped at ingest" in (
        report.render())


# --- the orders CSV export ---


def csv_lines() -> list[str]:
    return EXPORT.read_text().splitlines()


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        (lambda text: text.rstrip("\n")[:-40], r"line 8: row has 50 field\(s\), the header has 79"),
        (lambda text: text + '#1006,"ann@example.com,paid\n', r"line 9: a quoted value opened in this row is never closed"),
        (lambda text: text.replace("\n#1003,", "\n#1003,x,", 1), r"line 5: row has 80 field\(s\), the header has 79"),
    ],
    ids=["cut-mid-row", "unterminated-quote", "extra-field"],
)
def test_a_csv_row_cut_short_or_with_an_open_quote_is_an_error_naming_file_and_line(
    settings: Settings, tmp_path: Path, cut, expected: str
):
    path = tmp_path / "orders_export.csv"
    path.write_text(cut(EXPORT.read_text()))

    error = fails_and_keeps_earlier(settings, "csv", path)

    assert str(error).startswith(f"{path}: ")
    assert re.search(expected, str(error)), str(error)


def test_a_short_row_in_the_middle_of_a_csv_is_named_too(tmp_path: Path):
    lines = csv_lines()
    lines[3] = ",".join(lines[3].split(",")[:10])
    path = tmp_path / "orders_export.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"orders_export\.csv: line 4: row has 10 field\(s\), the header has 79"):
        read_orders_csv(path)


def test_a_quoted_value_spanning_lines_is_one_row_and_errors_after_it_keep_their_line(tmp_path: Path):
    lines = csv_lines()
    lines[1] = lines[1].replace("Ana.Ruiz@Example.com ", '"Ana.Ruiz@Example.com\n"', 1)  # now lines 2-3
    path = tmp_path / "orders_export.csv"
    path.write_text("\n".join([*lines, "#1009,short"]) + "\n")
    with pytest.raises(IngestError, match=r"orders_export\.csv: line 10: row has 2 field\(s\)"):
        read_orders_csv(path)


def test_a_csv_that_is_not_utf8_names_line_and_byte_offset(settings: Settings, tmp_path: Path):
    path = tmp_path / "orders_export.csv"
    path.write_bytes(EXPORT.read_text().replace("Tasting Notes", "Caf\xe9 Notes", 1).encode("latin-1", "replace"))

    error = fails_and_keeps_earlier(settings, "csv", path)

    data = path.read_bytes()
    offset = data.index(b"\xe9")
    line = data[:offset].count(b"\n") + 1
    assert str(error).startswith(f"{path}: line {line}: not UTF-8: byte 0xe9 at byte offset {offset} ")


def test_an_empty_csv_and_a_repeated_header_column_are_named(tmp_path: Path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match=r"empty\.csv: line 1: no header row \(the file is empty"):
        read_orders_csv(empty)
    lines = csv_lines()
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join([lines[0].replace("Subtotal", "Total", 1), *lines[1:]]) + "\n")
    with pytest.raises(IngestError, match=r"twice\.csv: line 1: header repeats column\(s\) 'Total'"):
        read_orders_csv(twice)
