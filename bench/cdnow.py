"""CDNOW as a merchant would hand it over: Shopify "Export orders" and "Export customers" CSVs.

Why: issue 14's model is also judged on a real transaction history, and CDNOW (23,570 customers of an
online CD retailer, January 1997 to June 1998; Fader, Hardie & Lee 2005) is the public one the
buy-till-you-die literature uses. Its full panel ships inside the ``lifetimes`` wheel on PyPI, the one
place this machine can download from, so the wheel is fetched with ``pip download`` (data only: lifetimes
is never installed or imported) and its ``CDNOW_master.txt`` is rewritten as the two exports. The data
stays outside the repository (under ``bench/.state``, ignored by git).

What the rewrite has to invent, and how: CDNOW records a date, a CD count and a dollar amount per
purchase. Purchases of one customer on one day become one order (as the panel's own summaries treat
them), at a seeded time of day between 08:00 and 22:00 (shop time, UTC-5); one line item per order with
the day's CD count as its quantity; paid and fulfilled, no refunds, discounts or product types (the panel
has none, so those features stay constant and the features stage says so). Customer ``00001`` becomes
email ``c00001@example.com`` and Shopify customer id ``7000001`` in the customers export.

    python bench/cdnow.py [DIR]      # writes DIR/orders_export.csv and DIR/customers_export.csv
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
WHEEL = "lifetimes==0.11.3"  # the last release; its wheel carries datasets/CDNOW_master.txt
MEMBER = "lifetimes/datasets/CDNOW_master.txt"
DEFAULT_DIR = BENCH / ".state" / "cdnow"
CUSTOMER_ID_BASE = 7_000_000
ORDER_ID_BASE = 5_000_000_000


def download(into: Path) -> Path:
    """The lifetimes wheel from the package index (pip's own configuration decides which), no dependencies."""
    into.mkdir(parents=True, exist_ok=True)
    found = sorted(into.glob("[Ll]ifetimes-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "-d", str(into), WHEEL], check=True)
        found = sorted(into.glob("[Ll]ifetimes-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {WHEEL} left no wheel in {into}")
    return found[-1]


def purchases(wheel: Path) -> pd.DataFrame:
    """One row per customer and day: cds and dollars summed."""
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as raw:
        panel = pd.read_csv(raw, sep=r"\s+", header=0, names=["customer", "date", "cds", "dollars"],
                            dtype={"customer": str, "date": str})
    days = panel.groupby(["customer", "date"], as_index=False).agg(cds=("cds", "sum"), dollars=("dollars", "sum"))
    return days.sort_values(["date", "customer"], ignore_index=True)


def exports(days: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The orders export (one line per order) and the customers export, in Shopify's column names."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(8 * 3600, 22 * 3600, len(days))
    created = (pd.to_datetime(days["date"], format="%Y%m%d") + pd.to_timedelta(seconds, unit="s")) \
        .dt.strftime("%Y-%m-%d %H:%M:%S -0500")
    email = "c" + days["customer"] + "@example.com"
    dollars = days["dollars"].round(2)
    orders = pd.DataFrame({
        "Name": [f"#{1001 + i}" for i in range(len(days))], "Email": email,
        "Financial Status": "paid", "Paid at": created, "Fulfillment Status": "fulfilled", "Fulfilled at": created,
        "Currency": "USD", "Subtotal": dollars, "Shipping": 0, "Taxes": 0, "Total": dollars,
        "Discount Code": "", "Discount Amount": 0, "Created at": created,
        "Lineitem quantity": days["cds"], "Lineitem name": "CD",
        "Lineitem price": (days["dollars"] / days["cds"].clip(lower=1)).round(2), "Lineitem sku": "CD",
        "Refunded Amount": 0, "Vendor": "", "Id": ORDER_ID_BASE + np.arange(len(days)),
    })
    customers = days["customer"].drop_duplicates()
    known = pd.DataFrame({"Customer ID": CUSTOMER_ID_BASE + customers.astype(int).to_numpy(),
                          "Email": "c" + customers.to_numpy() + "@example.com"})
    return orders, known


def write(directory: Path = DEFAULT_DIR) -> Path:
    """The two CSVs in ``directory`` (kept when already written); returns the directory to ingest."""
    directory.mkdir(parents=True, exist_ok=True)
    orders_csv, customers_csv = directory / "orders_export.csv", directory / "customers_export.csv"
    if not (orders_csv.exists() and customers_csv.exists()):
        orders, customers = exports(purchases(download(directory.parent / "wheels")))
        orders.to_csv(orders_csv, index=False)
        customers.to_csv(customers_csv, index=False)
    return directory


if __name__ == "__main__":
    target = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR)
    print(f"CDNOW as Shopify exports in {target}")
