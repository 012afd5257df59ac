"""bench/cdnow.py: the CDNOW panel rewritten as Shopify's exports, read back by the orders-CSV ingest as a
merchant's exports are (the real-data comparison of bench/model.py depends on it). A tiny panel in
CDNOW_master.txt's layout, inside a wheel-shaped zip: no download."""

from __future__ import annotations

import importlib
import sys
import zipfile
from pathlib import Path

from storeflow.components.ingest.orders_csv import read_csv_exports

BENCH = Path(__file__).resolve().parents[1] / "bench"

PANEL = """ customer_id  date number_of_cds  dollar_value
 00001 19970101  1   11.77
 00002 19970112  1   12.00
 00002 19970112  5   77.00
 00002 19970326  2   20.76
 00003 19970102  2   20.76
"""


def _cdnow():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("cdnow")
    finally:
        sys.path.remove(str(BENCH))


def test_the_panel_becomes_one_order_per_customer_and_day_keyed_by_shopify_customer_ids(tmp_path):
    cdnow = _cdnow()
    wheel = tmp_path / "Lifetimes-0.11.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(cdnow.MEMBER, PANEL)
    orders, customers = cdnow.exports(cdnow.purchases(wheel))
    orders.to_csv(tmp_path / "orders_export.csv", index=False)
    customers.to_csv(tmp_path / "customers_export.csv", index=False)

    tables = read_csv_exports([tmp_path / "orders_export.csv", tmp_path / "customers_export.csv"])
    read = tables["orders"].sort_values("created_at")
    # Customer 00002's two purchases on 1997-01-12 are one order of 6 CDs and 89.00.
    assert len(read) == 4
    assert sorted(read["customer_id"].unique().tolist()) == [7_000_001, 7_000_002, 7_000_003]
    second = read[read["customer_id"] == 7_000_002]
    assert sorted(second["total_price"].round(2).tolist()) == [20.76, 89.0]
    # On the panel's day in shop time (UTC-5), between 08:00 and 22:00; stored in UTC.
    first = read["created_at"].min().tz_convert("-05:00")
    assert str(first.date()) == "1997-01-01" and 8 <= first.hour < 22
