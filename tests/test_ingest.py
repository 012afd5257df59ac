"""Ingest of Shopify bulk JSONL: parsed values, snapshots, idempotence, duplicates, and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from storeflow.components.config import IngestConfig, Settings
from storeflow.components.ingest import IngestError, bulk_queries, ingest, read_bulk_jsonl
from storeflow.components.ingest.bulk_jsonl import BULK_SCHEMA
from storeflow.components.ingest.stage import reader_key
from storeflow.components.tables import TABLES, read_table, read_tables

BULK = Path(__file__).parent / "data" / "shopify" / "bulk"
UTC = "UTC"


def use(settings: Settings, source: str, path: Path) -> Settings:
    settings.ingest = IngestConfig(source=source, path=path)
    return settings


def test_bulk_orders_are_parsed_with_shop_money_presentment_currency_and_highest_risk():
    orders = read_bulk_jsonl([BULK / "orders.jsonl"])["orders"].set_index("order_id")

    first = orders.loc[5601001]
    assert first["name"] == "#1001"
    assert first["customer_id"] == 7701
    assert first["email"] == "ana.ruiz@example.com"
    assert first["created_at"] == pd.Timestamp("2025-03-05T19:22:10", tz=UTC)
    assert first["currency"] == "CAD"  # what the customer paid in...
    assert first["total_price"] == 67.97  # ...while money stays in shop currency
    assert first["subtotal_price"] == 61.02
    assert first["total_discounts"] == 6.78
    assert first["financial_status"] == "PARTIALLY_REFUNDED"
    assert first["risk_level"] == "MEDIUM"  # highest of LOW and MEDIUM
    assert orders.loc[5601002, "risk_level"] == "HIGH"  # PENDING never outranks a result
    guest = orders.loc[5601003]
    assert pd.isna(guest["customer_id"]) and guest["email"] is None
    assert guest["risk_level"] == "HIGH"  # deprecated riskLevel, read only because assessments are empty
    assert guest["cancelled_at"] == pd.Timestamp("2025-04-03T01:00:00", tz=UTC)
    assert guest["currency"] == "USD"  # no presentmentMoney: falls back to currencyCode


def test_line_items_hang_off_their_order_through_parent_id_and_refunds_are_inline():
    tables = read_bulk_jsonl([BULK / "orders.jsonl"])
    items = tables["line_items"].set_index("line_item_id")
    assert items.loc[8800101, ["order_id", "product_id", "sku", "quantity", "price"]].tolist() == [
        5601001, 6601, "COF-HB-340", 2, 18.0]
    assert items.loc[8800102, "title"] == "Stoneware Mug \u2013 Sand"
    assert pd.isna(items.loc[8800201, "product_id"])  # deleted product
    assert items.groupby("order_id").size().to_dict() == {5601001: 2, 5601002: 1, 5601003: 1}
    refunds = tables["refunds"]
    assert refunds.to_dict("records") == [
        {"refund_id": 9901, "order_id": 5601001, "created_at": pd.Timestamp("2025-03-20T10:00:00", tz=UTC),
         "amount": 18.0}
    ]


def test_record_type_comes_from_the_gid_so_files_may_hold_any_mix(tmp_path: Path):
    tables = read_bulk_jsonl(sorted(BULK.glob("*.jsonl")))
    customers = tables["customers"].set_index("customer_id")
    assert customers.loc[7701, "email"] == "ana.ruiz@example.com"  # defaultEmailAddress.emailAddress
    assert customers.loc[7702, "email"] == "ben@example.org"  # deprecated Customer.email still read
    products = tables["products"].set_index("product_id")
    assert products.loc[6602, ["product_type", "vendor"]].tolist() == ["Mugs", "Mori Ceramics"]

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"".join(path.read_bytes() for path in sorted(BULK.glob("*.jsonl"), reverse=True)))
    together = read_bulk_jsonl([mixed])
    for name in TABLES:
        pd.testing.assert_frame_equal(
            together[name].sort_values(together[name].columns[0], ignore_index=True),
            tables[name].sort_values(tables[name].columns[0], ignore_index=True),
        )


def test_ingest_writes_a_snapshot_named_by_the_input_hash_with_a_manifest(settings: Settings):
    result = ingest(use(settings, "jsonl", BULK / "orders.jsonl"))

    expected_hash = hashlib.sha256((BULK / "orders.jsonl").read_bytes()).hexdigest()
    assert result.content_hash == expected_hash
    assert result.snapshot == settings.data_dir / "snapshots" / f"{expected_hash}-{reader_key('jsonl')}"
    assert not result.reused and result.source == "jsonl"
    assert result.row_counts == {"orders": 3, "line_items": 4, "customers": 0, "products": 0, "refunds": 1}
    manifest = json.loads((result.snapshot / "_manifest.json").read_text())
    assert manifest["content_hash"] == expected_hash
    for name in TABLES:
        entry = manifest["tables"][name]
        assert entry["rows"] == result.row_counts[name] == len(read_table(result.snapshot, name))
        assert entry["sha256"] == hashlib.sha256((result.snapshot / entry["file"]).read_bytes()).hexdigest()


def test_a_changed_reader_ingests_the_same_input_anew_and_keeps_the_old_snapshot(settings: Settings, monkeypatch):
    from storeflow.components.ingest import bulk_jsonl

    first = ingest(use(settings, "jsonl", BULK / "orders.jsonl"))
    before = {path: path.stat().st_mtime_ns for path in first.snapshot.iterdir()}
    monkeypatch.setattr(bulk_jsonl, "READER_VERSION", bulk_jsonl.READER_VERSION + 1)
    second = ingest(use(settings, "jsonl", BULK / "orders.jsonl"))
    assert not second.reused and second.snapshot != first.snapshot
    assert second.content_hash == first.content_hash  # same input bytes
    assert {path: path.stat().st_mtime_ns for path in first.snapshot.iterdir()} == before
    assert json.loads((second.snapshot / "_manifest.json").read_text())["reader"] == reader_key("jsonl")


def test_reingesting_the_same_input_reuses_the_snapshot_untouched(settings: Settings, tmp_path: Path):
    inputs = tmp_path / "bulk"
    shutil.copytree(BULK, inputs)
    first = ingest(use(settings, "jsonl", inputs))
    stamps = {path.name: path.stat().st_mtime_ns for path in first.snapshot.iterdir()}

    again = ingest(settings)

    assert again.reused and again.snapshot == first.snapshot and again.row_counts == first.row_counts
    assert {path.name: path.stat().st_mtime_ns for path in again.snapshot.iterdir()} == stamps
    assert len(list((settings.data_dir / "snapshots").iterdir())) == 1

    (inputs / "products.jsonl").write_text((inputs / "products.jsonl").read_text().replace("Coffee", "Beans"))
    changed = ingest(settings)
    assert not changed.reused and changed.snapshot != first.snapshot
    assert read_table(changed.snapshot, "products")["product_type"].tolist()[0] == "Beans"
    assert read_table(first.snapshot, "products")["product_type"].tolist()[0] == "Coffee"


def test_exact_duplicates_collapse_but_conflicting_records_are_kept(settings: Settings, tmp_path: Path):
    lines = (BULK / "orders.jsonl").read_text().splitlines()
    order = json.loads(lines[0])
    conflicting = {**order, "updatedAt": "2025-03-21T00:00:00Z",
                   "totalPriceSet": {"shopMoney": {"amount": "60.0", "currencyCode": "USD"}}}
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join([*lines, lines[0], lines[1], json.dumps(conflicting)]) + "\n")

    tables = read_tables(ingest(use(settings, "jsonl", path)).snapshot)

    orders = tables["orders"]
    assert sorted(orders.loc[orders["order_id"] == 5601001, "total_price"]) == [60.0, 67.97]
    assert len(orders) == 4
    assert (tables["line_items"]["line_item_id"] == 8800101).sum() == 1
    assert (tables["refunds"]["refund_id"] == 9901).sum() == 1  # same refund on both versions


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id":"gid://shopify/Order/1","name":"#1", ', "not valid JSON"),
        ('{"id":"gid://shopify/LineItem/5","quantity":"two","__parentId":"gid://shopify/Order/1"}',
         "field 'quantity' should be an integer, got 'two'"),
        ('{"id":"gid://shopify/Order/1","totalPriceSet":{"shopMoney":{"amount":"12,50"}}}',
         "totalPriceSet.shopMoney.amount '12,50' is not a number"),
        ('{"id":"gid://shopify/Order/1","createdAt":"yesterday"}', "createdAt 'yesterday' is not an ISO 8601 timestamp"),
        ('{"id":"gid://shopify/Fulfillment/7"}', "unsupported record type 'Fulfillment'"),
        ('{"id":"12345"}', "malformed id '12345'"),
        ('{"id":"gid://shopify/Order/99999999999999999999"}', "malformed id 'gid://shopify/Order/99999999999999999999'"),
        ('{"id":"gid://shopify/Order/9223372036854775808"}', "malformed id 'gid://shopify/Order/9223372036854775808'"),
        ('{"id":"gid://shopify/Order/1","totalPriceSet":{"shopMoney":{"amount":"NaN"}}}',
         "totalPriceSet.shopMoney.amount 'NaN' is not a finite number"),
        ('{"id":"gid://shopify/Order/1","totalPriceSet":{"shopMoney":{"amount":"1.7e308"}}}',
         "totalPriceSet.shopMoney.amount '1.7e308' is past the largest amount taken (1e+12)"),
        ('{"id":"gid://shopify/Order/1","id":"gid://shopify/Order/2"}', "key(s) 'id' given twice in one object"),
        ('{"name":"#9","createdAt":"2025-03-05T19:22:10Z"}', "record has no id"),
        ('[1, 2]', "expected a JSON object, got list"),
        ('{"id":"gid://shopify/LineItem/9","quantity":1}', "line item gid://shopify/LineItem/9 has no __parentId"),
        ('{"id":"gid://shopify/LineItem/9","quantity":1,"__parentId":"gid://shopify/Product/3"}',
         "__parentId 'gid://shopify/Product/3' is not a Order gid"),
        ('{"id":"gid://shopify/Order/1","risk":{"assessments":[{"riskLevel":"SEVERE"}]}}',
         "risk level 'SEVERE' is not one of"),
    ],
)
def test_bad_input_names_file_line_and_problem_and_writes_nothing(
    settings: Settings, tmp_path: Path, line: str, problem: str
):
    earlier = ingest(use(settings, "jsonl", BULK / "products.jsonl"))
    before = {path: path.stat().st_mtime_ns for path in earlier.snapshot.iterdir()}
    good = (BULK / "orders.jsonl").read_text().splitlines()  # its line 5 is blank
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join([*good, line, good[0]]) + "\n")

    with pytest.raises(IngestError) as error:
        ingest(use(settings, "jsonl", path))

    assert str(error.value).startswith(f"{path}: line {len(good) + 1}: ")
    assert problem in str(error.value)
    assert sorted(p.name for p in (settings.data_dir / "snapshots").iterdir()) == [earlier.snapshot.name]
    assert {path: path.stat().st_mtime_ns for path in earlier.snapshot.iterdir()} == before


def test_missing_input_and_empty_directory_are_reported(settings: Settings, tmp_path: Path):
    with pytest.raises(IngestError, match="input does not exist"):
        ingest(use(settings, "jsonl", tmp_path / "nope.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"empty: directory has no \.jsonl files"):
        ingest(use(settings, "jsonl", tmp_path / "empty"))


def test_a_macs_hidden_metadata_files_beside_the_export_are_not_read(settings: Settings, tmp_path: Path):
    """A folder of exports copied from a Mac holds ._orders.jsonl (AppleDouble, binary) beside orders.jsonl: ingest
    read it and failed with 'not UTF-8 ... save or export the file as UTF-8' for a file Finder never shows. Found by
    testing from outside."""
    exports = tmp_path / "exports"
    shutil.copytree(BULK, exports)
    clean = ingest(use(settings, "jsonl", exports))
    (exports / "._orders.jsonl").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\xb0")
    again = ingest(use(settings, "jsonl", exports))
    assert again.reused and again.snapshot == clean.snapshot


def test_a_failed_write_leaves_no_partial_snapshot(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    import storeflow.components.ingest.snapshot as snapshot

    def broken(name, frame):
        if name == "customers":
            raise OSError("disk full")
        return original(name, frame)

    original = snapshot.conform
    monkeypatch.setattr(snapshot, "conform", broken)
    with pytest.raises(OSError, match="disk full"):
        ingest(use(settings, "jsonl", BULK))
    assert list((settings.data_dir / "snapshots").iterdir()) == []

    monkeypatch.setattr(snapshot, "conform", original)
    assert ingest(settings).row_counts["customers"] == 2


def test_bulk_query_asks_for_every_field_the_reader_uses():
    queries = bulk_queries()
    assert list(queries) == ["Orders", "Customers", "Products"]
    for text in queries.values():
        assert text.startswith("query ") and text.count("edges") >= 1
    text = "\n".join(queries.values())
    deprecated = {"riskLevel", "email", "__parentId"}  # fallbacks for older files; __parentId is Shopify's
    for field in BULK_SCHEMA:
        if field.name not in deprecated:
            assert field.name in text, field.name
    assert "riskLevel" in queries["Orders"].split("assessments")[1][:40]  # only inside assessments
    assert "lineItems" in queries["Orders"]


@pytest.fixture()
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read JSON 16 KB at a time, so a small store spans many batches (a 6 GB export does at 32 MB)."""
    from storeflow.components.ingest import bulk_jsonl

    monkeypatch.setattr(bulk_jsonl, "BATCH_BYTES", 16 << 10)


def test_an_export_read_batch_by_batch_gives_the_same_snapshot(settings, tmp_path: Path, small_batches):
    from storeflow.components.config import SyntheticStoreConfig
    from storeflow.components.ingest import generate_store
    from storeflow.components.tables import read_tables

    path = generate_store(SyntheticStoreConfig(customers=300, orders=2_000, products=40), tmp_path / "store.jsonl")
    assert path.stat().st_size > 40 * (16 << 10)
    settings.ingest = IngestConfig(source="jsonl", path=path)
    streamed = read_tables(ingest(settings).snapshot)

    whole = read_bulk_jsonl([path])  # one batch: the reader's default block holds the whole file
    for name, frame in whole.items():
        pd.testing.assert_frame_equal(streamed[name], frame.astype(streamed[name].dtypes.to_dict()),
                                      check_dtype=False, obj=name)
    assert len(streamed["orders"]) == 2_000


def test_a_bad_line_in_a_later_batch_is_named_by_its_line(tmp_path: Path, small_batches):
    good = [line for line in (BULK / "orders.jsonl").read_text().splitlines() if line.strip()]
    filler = [f'{{"id":"gid://shopify/Product/{n}","title":"Mug {n}","productType":"Mugs","vendor":"V",'
              f'"createdAt":"2025-01-01T00:00:00Z"}}' for n in range(1, 2_000)]
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join([*good, *filler, '{"id":"gid://shopify/Order/5","createdAt":"yesterday"}']) + "\n")
    with pytest.raises(IngestError) as error:
        read_bulk_jsonl([path])
    assert str(error.value).startswith(f"{path}: line {len(good) + len(filler) + 1}: createdAt 'yesterday' is not")


def test_a_field_absent_from_one_batch_only_is_not_a_renamed_field(tmp_path: Path, small_batches):
    """Whole-file checks (no record has createdAt) run over the file, not per batch."""
    orders = [json.loads(line) for line in (BULK / "orders.jsonl").read_text().splitlines() if line.strip()]
    order = next(record for record in orders if "Order/" in record["id"])
    without = [{key: value for key, value in order.items() if key != "createdAt"} | {"id": f"gid://shopify/Order/{n}"}
               for n in range(1, 200)]
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in [*without, order]))
    assert path.stat().st_size > 2 * (16 << 10)

    tables = read_bulk_jsonl([path])
    assert tables["orders"]["created_at"].notna().sum() == 1  # validate's required_values names the 199

    path.write_text("".join(json.dumps(record) + "\n" for record in without))
    with pytest.raises(IngestError, match="none of its 199 Order records has createdAt"):
        read_bulk_jsonl([path])


def test_a_line_longer_than_a_batch_mid_file_is_read_once(tmp_path: Path, small_batches):
    records = [json.loads(line) for line in (BULK / "orders.jsonl").read_text().splitlines() if line.strip()]
    order = next(record for record in records if "Order/" in record["id"])
    many = [{**order, "id": f"gid://shopify/Order/{n}", "refunds": []} for n in range(1, 400)]
    long = {**order, "id": "gid://shopify/Order/999",
            "refunds": [{**order["refunds"][0], "id": f"gid://shopify/Refund/{n}"} for n in range(1, 400)]} \
        if order.get("refunds") else {**order, "id": "gid://shopify/Order/999", "name": "x" * (40 << 10)}
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in [*many, long, *many[:50]]))
    assert max(map(len, path.read_bytes().splitlines())) > 16 << 10

    orders = read_bulk_jsonl([path])["orders"]
    assert len(orders) == 450 and orders["order_id"].value_counts().max() == 2  # the 50 repeated ids, once more
    assert (orders["order_id"] == 999).sum() == 1
