"""Ingest: Shopify data (bulk JSONL, orders CSV export, or a synthetic store) -> an immutable snapshot."""

from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.bulk_query import bulk_queries, bulk_query_text
from storeflow.components.ingest.errors import IngestError
from storeflow.components.ingest.orders_csv import read_orders_csv
from storeflow.components.ingest.stage import IngestResult, ingest, synthetic_store
from storeflow.components.ingest.synthetic import generate_store

__all__ = [
    "IngestError",
    "IngestResult",
    "bulk_queries",
    "bulk_query_text",
    "generate_store",
    "ingest",
    "read_bulk_jsonl",
    "read_orders_csv",
    "synthetic_store",
]
