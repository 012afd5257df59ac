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
