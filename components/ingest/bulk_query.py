"""The bulk queries whose output ingest reads, for the client that submits them to Shopify."""

from __future__ import annotations

import re
from importlib.resources import files

BULK_QUERY_FILE = "bulk_query.graphql"


def bulk_query_text() -> str:
    """The whole document: one named operation per resource."""
    return files("storeflow.components.ingest").joinpath(BULK_QUERY_FILE).read_text()


def bulk_queries() -> dict[str, str]:
    """Operation name -> the text of that operation, ready for ``bulkOperationRunQuery``.

    Shopify runs one top-level connection per bulk operation, so each is submitted on its own and
    its JSONL result saved into one directory for ingest.
    """
    text = bulk_query_text()
    starts = [match for match in re.finditer(r"^query (\w+)", text, flags=re.MULTILINE)]
    ends = [match.start() for match in starts[1:]] + [len(text)]
    return {match.group(1): text[match.start():end].strip() + "\n" for match, end in zip(starts, ends)}
