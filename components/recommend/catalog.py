"""What the recommender knows of a product beyond who bought it: its category (the product type, else the
vendor, as the customer features' category affinity reads it) and its price band within that category
(budget, mid, premium: terciles of the category's prices), as Feast features of the product entity (view
``product_catalog``).

The recommendations pipeline's product_features task computes them from the snapshot at two times, the
evaluation's cutoff and the serving time, registers the view, materializes the newest rows to the online
store and hands the tasks after it the rows Feast's point-in-time join returns (a Dataset): train fits on
the serving-time rows, evaluate judges on the cutoff's (what was known then). The model keeps each
product's category and band; the server asks the online store for the products a model has never seen (a
product created after training), so a new product's page still gets its category's best sellers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.features.repo import CATALOG_FEATURES, CATALOG_VIEW, PRODUCT_KEY, definitions, view_of

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

VIEW = CATALOG_VIEW
FEATURES = CATALOG_FEATURES  # category, price, price_band
PRICE_BANDS = 3  # budget, mid, premium within a category
COLUMNS = (PRODUCT_KEY, "event_timestamp", *FEATURES)


class CatalogError(ValueError):
    """Product features that cannot be used (missing columns, no products); the message says what."""


def product_catalog(tables: dict[str, pd.DataFrame], times: list[pd.Timestamp]) -> pd.DataFrame:
    """One row per (product, time): category, median price paid in orders before that time and its band
    within the category (0 budget, 1 mid, 2 premium; -1 when never sold before it), for every product of
    the products table and every product sold."""
    for table, columns in (("products", ("product_id", "product_type", "vendor")),
                           ("line_items", ("order_id", "product_id", "price")),
                           ("orders", ("order_id", "created_at", "cancelled_at"))):
        if table not in tables:
            raise CatalogError(f"product features need the snapshot's '{table}' table")
        if missing := [c for c in columns if c not in tables[table].columns]:
            raise CatalogError(f"table '{table}' lacks column(s) {', '.join(missing)} the product features need")
    products = tables["products"]
    named = categories(products["product_type"], products["vendor"])
    category = pd.Series(named.to_numpy(), index=products["product_id"].astype("int64")).groupby(level=0).first()
    orders = tables["orders"]
    kept = orders.loc[orders["cancelled_at"].isna(), ["order_id", "created_at"]]
    items = tables["line_items"].dropna(subset=["product_id", "price"]).merge(kept, on="order_id")
    items = items.astype({"product_id": "int64"})
    ids = np.union1d(category.index.to_numpy(), items["product_id"].unique())
    if len(ids) == 0:
        raise CatalogError("the snapshot has no products: nothing to describe")
    frames = []
    for at in times:
        at = pd.Timestamp(at)
        price = items[items["created_at"] < at].groupby("product_id")["price"].median().reindex(ids)
        frame = pd.DataFrame({PRODUCT_KEY: ids, "event_timestamp": at,
                              "category": category.reindex(ids).fillna("").to_numpy(), "price": price.to_numpy()})
        frame["price_band"] = _bands(frame)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    return out.astype({PRODUCT_KEY: "int64", "price_band": "int64", "price": "float64", "category": "str"})


def categories(product_type: pd.Series, vendor: pd.Series) -> pd.Series:
    """Each product's category: its product type, else its vendor ('' when it has neither)."""
    return product_type.replace("", np.nan).fillna(vendor).fillna("")


def _bands(frame: pd.DataFrame) -> np.ndarray:
    """Terciles of each category's prices (a category's own budget and premium, not the store's)."""
    bands = np.full(len(frame), -1, dtype=np.int64)
    for _, rows in frame[frame["price"].notna()].groupby("category"):
        prices = rows["price"].to_numpy()
        edges = np.quantile(prices, np.arange(1, PRICE_BANDS) / PRICE_BANDS)
        bands[rows.index.to_numpy()] = np.searchsorted(edges, prices, side="right")
    return bands


def view(settings: Settings) -> FeatureView:
    """The view as the feature repo declares it (:func:`storeflow.components.features.repo.definitions`)."""
    return view_of(settings, VIEW)


def source(settings: Settings):
    return settings.feature_repo_dir / "data" / f"{VIEW}.parquet"


def publish(settings: Settings, rows: pd.DataFrame) -> tuple[FeatureStore, pd.DataFrame]:
    """Write ``rows`` as the view's source, register the view, materialize the newest time to the online
    store, and return the store with the rows Feast's point-in-time join gives back for each (product, time)."""
    from storeflow.components.features.repo import feature_store

    path = source(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows.loc[:, list(COLUMNS)].to_parquet(tmp, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)
    tmp.replace(path)
    store = feature_store(settings)
    (_, product, *_), _, _ = definitions(settings)
    store.apply([product, view(settings)])
    newest = rows["event_timestamp"].max().to_pydatetime()
    newer = _online_rows_newer_than(store, rows.loc[rows["event_timestamp"] == rows["event_timestamp"].max(),
                                                    PRODUCT_KEY], newest)
    store.materialize(start_date=newest - timedelta(seconds=1), end_date=newest + timedelta(seconds=1),
                      feature_views=[VIEW])
    if not newer.empty:  # the SQLite online store writes whatever it is given: put the newer rows back
        store.write_to_online_store(VIEW, newer)
    entities = rows[[PRODUCT_KEY, "event_timestamp"]]
    found = store.get_historical_features(entity_df=entities, features=[f"{VIEW}:{name}" for name in FEATURES]).to_df()
    found["event_timestamp"] = pd.to_datetime(found["event_timestamp"], utc=True)
    return store, found.sort_values(["event_timestamp", PRODUCT_KEY], kind="stable").reset_index(drop=True)


def _online_rows_newer_than(store: FeatureStore, product_ids: pd.Series, newest) -> pd.DataFrame:
    """The online rows of ``product_ids`` written at an event time after ``newest`` (a products webhook's
    recategorization that came after the snapshot's orders), to survive a materialization as of ``newest``.

    Redis keeps a key's newest event time by itself; Feast's SQLite online store (the embedded default)
    writes whatever a materialization gives it, so without this a pipeline run on an older snapshot gave a
    recategorized product its old category back.
    """
    from feast.online_response import TIMESTAMP_POSTFIX

    empty = pd.DataFrame(columns=list(COLUMNS))
    if product_ids.empty or VIEW not in {v.name for v in store.list_feature_views()}:
        return empty
    found = store.get_online_features(features=[f"{VIEW}:{name}" for name in FEATURES],
                                      entity_rows=[{PRODUCT_KEY: int(p)} for p in product_ids]
                                      ).to_dict(include_event_timestamps=True)
    seconds = np.asarray(found[f"category{TIMESTAMP_POSTFIX}"], dtype="int64")  # 0 where no row
    later = (seconds > pd.Timestamp(newest).timestamp()) & np.array([bool(c) for c in found["category"]])
    if not later.any():
        return empty
    frame = pd.DataFrame({name: np.asarray(found[name], dtype=object)[later] for name in (PRODUCT_KEY, *FEATURES)})
    frame["event_timestamp"] = pd.to_datetime(seconds[later], unit="s", utc=True)
    frame["price"] = pd.to_numeric(frame["price"]).astype("float64")  # None (never sold) as NaN
    frame["price_band"] = frame["price_band"].fillna(-1)
    return frame.loc[:, list(COLUMNS)].astype({PRODUCT_KEY: "int64", "category": "str", "price_band": "int64"})


def describe_online(store: FeatureStore, settings: Settings, named: pd.DataFrame) -> pd.DataFrame:
    """Push the categories a products webhook reported (``named``: ``product_id``, ``category``,
    ``event_timestamp``, the product's ``updated_at``) to the online store; returns the rows written.

    A product whose online row already has that category is left alone: its price and band (the
    product_features task's) stay. A new product, or one whose category changed, gets band -1, none, as
    product_catalog gives a product never sold in its category (a band is a tercile of the prices paid
    there), and keeps the median price paid it had, if any; the next product_features run gives its band.
    For a basket product of band -1 serving's fallback (:func:`~storeflow.components.recommend.model.fallback_order`)
    prefers no band: its category's best sellers by buyers. Written at the product's ``updated_at``: on Redis,
    which keeps the newest event time, a pipeline run that saw orders after the change overrides it, an
    older one does not."""
    named = named[named["category"] != ""]
    if named.empty:
        return named.assign(price=[], price_band=[])
    if VIEW not in {v.name for v in store.list_feature_views()}:
        (_, product, *_), _, _ = definitions(settings)
        store.apply([product, view(settings)])
    ids = named[PRODUCT_KEY].astype("int64").tolist()
    found = store.get_online_features(features=[f"{VIEW}:{name}" for name in FEATURES],
                                      entity_rows=[{PRODUCT_KEY: p} for p in ids]).to_dict()
    known = {int(p): (category, price) for p, category, price in zip(found[PRODUCT_KEY], found["category"],
                                                                      found["price"])}
    rows = named.assign(price=[known[p][1] if known[p][1] is not None else np.nan for p in ids], price_band=-1)
    rows = rows[[known[p][0] != category for p, category in zip(ids, rows["category"])]]
    if rows.empty:
        return rows
    frame = rows.loc[:, list(COLUMNS)].astype({PRODUCT_KEY: "int64", "category": "str", "price": "float64",
                                               "price_band": "int64"})
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    store.write_to_online_store(VIEW, frame)
    return frame.reset_index(drop=True)


def as_of(rows: pd.DataFrame, at: pd.Timestamp | None = None) -> pd.DataFrame:
    """The rows of time ``at`` (default: the newest), one per product: what was known then."""
    stamps = pd.to_datetime(rows["event_timestamp"], utc=True)
    at = stamps.max() if at is None else pd.Timestamp(at)
    picked = rows[stamps == at]
    if picked.empty:
        known = ", ".join(sorted({f"{s:%Y-%m-%d %H:%M:%S}" for s in stamps.unique()}))
        raise CatalogError(f"the product features hold no rows at {at:%Y-%m-%d %H:%M:%S} (they have {known}): "
                           "the product_features task was given another horizon_days than this task")
    return picked.drop_duplicates(PRODUCT_KEY, keep="last").reset_index(drop=True)


def lookup_online(store: FeatureStore, product_ids: list[int]) -> dict[int, tuple[str, int]]:
    """(category, price band) of each of ``product_ids`` the online store describes; the others left out."""
    if not product_ids:
        return {}
    found = store.get_online_features(features=[f"{VIEW}:category", f"{VIEW}:price_band"],
                                      entity_rows=[{PRODUCT_KEY: int(p)} for p in product_ids]).to_dict()
    return {int(p): (category, -1 if band is None else int(band))
            for p, category, band in zip(found[PRODUCT_KEY], found["category"], found["price_band"]) if category}
