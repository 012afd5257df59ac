"""Ingest of the Shopify admin "Export orders" CSV (fixture: tests/data/shopify/orders_export.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from storeflow.components.config import IngestConfig, Settings
from storeflow.components.ingest import IngestError, ingest, read_orders_csv
from storeflow.components.ingest.gids import stable_id
from storeflow.components.tables import read_tables

EXPORT = Path(__file__).parent / "data" / "shopify" / "orders_export.csv"


def customer_key(email: str) -> int:
    return int(stable_id(pd.Series([email]), "email")[0])


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return read_orders_csv(EXPORT)


def test_one_order_per_block_of_rows_with_order_fields_from_its_first_row(tables):
    orders = tables["orders"].set_index("name")
    assert list(orders.index) == ["#1001", "#1002", "#1003", "#1004", "#1005"]
    first = orders.loc["#1001"]
    assert first["order_id"] == 5512345678901
    assert first["created_at"] == pd.Timestamp("2024-03-05 19:22:10", tz="UTC")  # -0500 shop offset
    assert first["updated_at"] == pd.Timestamp("2024-03-06 14:10:00", tz="UTC")  # latest: Fulfilled at
    assert (first["currency"], first["total_price"], first["subtotal_price"]) == ("CAD", 67.97, 54.0)
    assert (first["financial_status"], first["risk_level"]) == ("PAID", "LOW")
    second = orders.loc["#1002"]
    assert (second["total_discounts"], second["financial_status"], second["risk_level"]) == (
        4.5, "PARTIALLY_REFUNDED", "MEDIUM")
    assert orders.loc["#1005", "total_price"] == 1250.0  # "1,250.00"
    assert orders.loc["#1004", "cancelled_at"] == pd.Timestamp("2024-04-10 09:00:00", tz="UTC")


def test_customer_id_is_derived_from_the_normalized_email(tables):
    orders = tables["orders"].set_index("name")
    ana = customer_key("ana.ruiz@example.com")
    assert orders.loc["#1001", "customer_id"] == ana  # "Ana.Ruiz@Example.com " in the file
    assert orders.loc["#1003", "customer_id"] == ana
    assert orders.loc["#1001", "email"] == "ana.ruiz@example.com"
    assert pd.isna(orders.loc["#1004", "customer_id"])  # guest without email
    customers = tables["customers"].set_index("customer_id")
    assert len(customers) == 3
    assert customers.loc[ana, "created_at"] == pd.Timestamp("2024-03-05 19:22:10", tz="UTC")
    assert customers.loc[ana, "updated_at"] == pd.Timestamp("2024-04-02 23:45:00", tz="UTC")
    assert customer_key("ana.ruiz@example.com") == 2150592688684021953  # stable across runs and machines


def test_line_items_products_and_refunds(tables):
    items = tables["line_items"]
    assert items.groupby("order_id").size().to_dict() == {
        5512345678901: 2, 5512345678902: 1, 5512345678903: 1, 5512345678904: 1, 5512345678905: 2}
    mug = items[items["sku"] == "MUG-SAND"].iloc[0]
    assert (mug["title"], mug["quantity"], mug["price"]) == ("Stoneware Mug - Sand", 1, 18.0)
    assert items["line_item_id"].is_unique
    coffee = items[items["sku"] == "COF-HB-340"]
    assert coffee["product_id"].nunique() == 1 and len(coffee) == 2  # same SKU, same product, two orders
    products = tables["products"].set_index("title")
    assert products.loc["House Blend Coffee - 340g", "vendor"] == "Northside Roasters"
    assert "Gift Card $22" in products.index  # no SKU: keyed by name
    refunds = tables["refunds"].set_index("order_id")
    assert refunds["amount"].to_dict() == {5512345678902: 12.25, 5512345678905: 1250.0}


def test_ingest_csv_snapshot_and_reuse(settings: Settings):
    settings.ingest = IngestConfig(source="csv", path=EXPORT)
    first = ingest(settings)
    assert first.row_counts == {"orders": 5, "line_items": 7, "customers": 3, "products": 6, "refunds": 2}
    assert ingest(settings).reused
    assert read_tables(first.snapshot)["orders"]["order_id"].tolist()[0] == 5512345678901


def test_an_order_exported_twice_collapses(settings: Settings, tmp_path: Path):
    lines = EXPORT.read_text().splitlines()
    doubled = tmp_path / "orders_export.csv"
    doubled.write_text("\n".join([*lines, lines[1], lines[2]]) + "\n")  # order #1001 again
    settings.ingest = IngestConfig(source="csv", path=doubled)
    assert ingest(settings).row_counts == {"orders": 5, "line_items": 7, "customers": 3, "products": 6, "refunds": 2}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace(",67.97,", ",sixty,", 1), "row 2: 'Total' value 'sixty' is not a number"),
        (lambda text: text.replace("2024-04-02 19:45:00 -0400", "02/04/2024", 1),
         "row 5: 'Created at' value '02/04/2024' is not a timestamp"),
        (lambda text: text.replace(",5512345678903,", ",,", 1), "row 5: order #1003 has no numeric 'Id'"),
        (lambda text: text.replace("Lineitem quantity", "Qty", 1), "missing column(s) of the Shopify orders export: Lineitem quantity"),
        # numbers that were silently changed: a decimal comma read as grouping (67,97 -> 6797), inf accepted,
        # an Id or quantity past int64 cast to -9223372036854775808
        (lambda text: text.replace(",67.97,", ',"67,97",', 1), "row 2: 'Total' value '67,97' has a comma that is not "
                                                              "thousands grouping"),
        (lambda text: text.replace(",67.97,", ',"1,234",', 1), "row 2: 'Total' value '1,234' has a comma"),
        (lambda text: text.replace(",67.97,", ",inf,", 1), "row 2: 'Total' value 'inf' is not a finite number"),
        (lambda text: text.replace(",67.97,", ",1.7e308,", 1), "row 2: 'Total' value '1.7e308' is past the largest "
                                                               "amount taken (1e+12)"),
        (lambda text: text.replace(",2,House", ",99999999999999999999,House", 1),
         "row 2: 'Lineitem quantity' '99999999999999999999' is not a whole number"),
        (lambda text: text.replace("5512345678901", "99999999999999999999999", 1), "row 2: order #1001 has no numeric 'Id'"),
    ],
)
def test_bad_rows_are_named(settings: Settings, tmp_path: Path, edit, message: str):
    bad = tmp_path / "orders_export.csv"
    bad.write_text(edit(EXPORT.read_text()))
    settings.ingest = IngestConfig(source="csv", path=bad)
    with pytest.raises(IngestError) as error:
        ingest(settings)
    assert str(error.value).startswith(str(bad)) and message in str(error.value)
    assert not (settings.data_dir / "snapshots").exists() or not list((settings.data_dir / "snapshots").iterdir())


CUSTOMERS = Path(__file__).parent / "data" / "shopify" / "customers_export.csv"


def _features_after_the_export(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    from storeflow.components.features.compute import customer_features

    return customer_features(tables, [pd.Timestamp("2024-06-01", tz="UTC").to_pydatetime()]).set_index("customer_id")


def test_refunds_from_refunded_amount_reach_the_features(tables):
    """The export has no refund time; the order's latest known time stands in, so a refund counts
    (a refund with no time was never counted: refund_rate and net spend ignored every refund)."""
    refunds = tables["refunds"].set_index("order_id")["created_at"]
    assert refunds[5512345678905] == pd.Timestamp("2024-05-01 12:00:05", tz="UTC")  # Paid at, its latest time
    features = _features_after_the_export(tables)
    chen = features.loc[customer_key("chen.wei@example.net")]
    assert chen["refund_rate"] == 1.0 and chen["monetary"] == pytest.approx(0.0)
    assert features.loc[customer_key("ben@example.org"), "monetary"] == pytest.approx(40.50 - 12.25)


def test_an_exports_refund_time_is_used_where_it_has_one(tmp_path: Path):
    text = EXPORT.read_text().splitlines()
    header, rows = text[0] + ",Refunded at", [line + "," for line in text[1:]]
    rows[2] = rows[2][:-1] + ",2024-03-20 10:00:00 +0100"  # order #1002's first row
    edited = tmp_path / "orders_export.csv"
    edited.write_text("\n".join([header, *rows]) + "\n")
    refunds = read_orders_csv(edited)["refunds"].set_index("order_id")["created_at"]
    assert refunds[5512345678902] == pd.Timestamp("2024-03-20 09:00:00", tz="UTC")
    assert refunds[5512345678905] == pd.Timestamp("2024-05-01 12:00:05", tz="UTC")  # none given: the order's


def test_category_affinity_uses_the_vendor_when_the_export_has_no_product_type(tables):
    """Products from the orders export have no product type: the vendor stands in, so affinity varies
    (it was 1.0 for every customer, a constant feature)."""
    affinity = _features_after_the_export(tables)["category_affinity"]
    assert affinity[customer_key("ana.ruiz@example.com")] == pytest.approx(4 / 5)  # 4 coffee units of 5
    assert affinity[customer_key("chen.wei@example.net")] == pytest.approx(3 / 4)
    assert affinity.nunique() > 1


def _export_dir(tmp_path: Path, *files: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    for file in files:
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def test_the_customers_export_keys_orders_by_shopify_customer_ids(settings: Settings, tmp_path: Path, caplog):
    settings.ingest = IngestConfig(source="csv", path=_export_dir(tmp_path, EXPORT, CUSTOMERS))
    with caplog.at_level("WARNING"):
        result = ingest(settings)
    assert "will not match" not in caplog.text
    tables = read_tables(result.snapshot)
    orders = tables["orders"].set_index("name")
    assert orders.loc["#1001", "customer_id"] == orders.loc["#1003", "customer_id"] == 7412345678901  # "'7412..."
    assert orders.loc["#1002", "customer_id"] == 7412345678902  # "Ben@Example.org" in the customers export
    assert pd.isna(orders.loc["#1004", "customer_id"])
    assert sorted(tables["customers"]["customer_id"]) == [7412345678901, 7412345678902, 7412345678903]
    assert result.row_counts == {"orders": 5, "line_items": 7, "customers": 3, "products": 6, "refunds": 2}


def test_without_the_customers_export_ingest_says_serving_will_not_match(settings: Settings, tmp_path: Path, caplog):
    settings.ingest = IngestConfig(source="csv", path=EXPORT)
    with caplog.at_level("WARNING"):
        ingest(settings)
    assert "no customers export" in caplog.text and "will not match the Shopify customer ids" in caplog.text


def test_customers_missing_from_the_customers_export_are_counted(tmp_path: Path, caplog):
    from storeflow.components.ingest.orders_csv import read_csv_exports

    partial = tmp_path / "customers_export.csv"
    partial.write_text("\n".join(line for line in CUSTOMERS.read_text().splitlines() if "chen.wei" not in line) + "\n")
    with caplog.at_level("WARNING"):
        orders = read_csv_exports([EXPORT, partial])["orders"].set_index("name")
    assert orders.loc["#1005", "customer_id"] == customer_key("chen.wei@example.net")  # kept, derived
    assert "1 of 3 customer email(s)" in caplog.text and "serving will not match them" in caplog.text


def test_a_bad_customer_id_is_named(tmp_path: Path):
    from storeflow.components.ingest.orders_csv import read_customers_csv

    bad = tmp_path / "customers_export.csv"
    bad.write_text(CUSTOMERS.read_text().replace("'7412345678902", "Ben", 1))
    with pytest.raises(IngestError, match=r"row 3: 'Customer ID' 'Ben' is not a Shopify customer id"):
        read_customers_csv(bad)


def test_thousands_grouping_still_reads_and_a_negative_quantity_fails_validation(settings: Settings, tmp_path: Path):
    """A quantity of -2 passed ingest and the validate gate: no rule looked at quantities."""
    from storeflow.components.validate.report import ValidationFailed
    from storeflow.components.validate.stage import validate

    grouped = tmp_path / "grouped" / "orders_export.csv"
    grouped.parent.mkdir()
    grouped.write_text(EXPORT.read_text().replace(",67.97,", ',"1,067.97",', 1))
    assert read_orders_csv(grouped)["orders"]["total_price"].iloc[0] == 1067.97
    negative = tmp_path / "negative" / "orders_export.csv"
    negative.parent.mkdir()
    negative.write_text(EXPORT.read_text().replace(",2,House", ",-2,House", 1))
    settings.ingest = IngestConfig(source="csv", path=negative)
    with pytest.raises(ValidationFailed) as failed:
        validate(ingest(settings).snapshot, settings.validate_)
    assert failed.value.report.failed_rules == ["negative_quantities"]
    assert "1 line item(s) with a negative quantity/price" in str(failed.value)
