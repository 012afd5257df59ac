"""One customer's rows in Parquet files, found and removed a batch of rows at a time.

The privacy webhooks are applied in the webhook applier's process, in a pod of 2 GiB. They read every snapshot's
tables and every other Parquet file whole: a ``customers/redact`` on a 500,000-customer store (5M orders, a 5.2M-row
feature history) peaked at 3,697 MB of heap. The pod would be killed in it, and its applier would apply it again
on restart and be killed again, with every event journaled after it waiting. Here a file is read
:data:`BATCH_ROWS` rows at a time, and written again, batch by batch, only when it holds the customer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storeflow.components.tables import email_key

BATCH_ROWS = 65_536
Mask = Callable[[pa.Table], np.ndarray]  # a batch's rows that are the customer's


def batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """``path``'s rows (``columns`` of them), a batch at a time, with the file's schema and its metadata."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow if columns is None else pa.schema(
        [parquet.schema_arrow.field(c) for c in columns], metadata=parquet.schema_arrow.metadata)
    found = False
    for batch in parquet.iter_batches(BATCH_ROWS, columns=columns):
        found = True
        yield pa.Table.from_batches([batch], schema=schema)
    if not found:
        yield schema.empty_table()


def find(path: Path, mask: Mask, columns: list[str] | None = None) -> pa.Table:
    """The rows of ``path`` that ``mask`` picks (``columns`` of them; every column when None)."""
    parts = [batch.filter(pa.array(mask(batch))) for batch in batches(path, columns)]
    return pa.concat_tables(parts)


def count(path: Path, mask: Mask, columns: list[str]) -> int:
    """How many rows ``mask`` picks, reading only ``columns`` (those it looks at)."""
    return sum(int(mask(batch).sum()) for batch in batches(path, columns))


def rewrite_without(path: Path, mask: Mask) -> None:
    """``path`` without the rows ``mask`` picks: written beside it batch by batch, then put in its place."""
    scratch = path.with_name(f".{path.name}.redact")
    parquet = pq.ParquetFile(path)
    with pq.ParquetWriter(scratch, parquet.schema_arrow) as writer:
        for batch in batches(path):
            writer.write_table(batch.filter(pa.array(~mask(batch))))
    os.replace(scratch, path)


def is_in(values: pa.ChunkedArray, wanted: Iterable[int]) -> np.ndarray:
    """Rows whose value is one of ``wanted`` (a null is none of them). A column of another type than the ids (any
    Parquet under the state dir is searched: all nulls, dictionary-encoded, text) is compared value by value."""
    wanted = sorted(wanted)
    try:
        found = pc.is_in(values, pa.array(wanted, values.type))
    except (pa.ArrowException, TypeError, ValueError):
        members = set(wanted)
        return np.fromiter((value in members for value in values.to_pylist()), bool, len(values))
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def email_is(values: pa.ChunkedArray, email: str | None) -> np.ndarray:
    """Rows whose email is ``email`` (an :func:`~storeflow.components.tables.email_key`) as every store compares
    emails; none when it is None. Python's own ``strip`` and ``lower`` per row: Arrow's case mapping differs from
    them on a few letters, and an erasure must miss none."""
    if email is None:
        return np.zeros(len(values), bool)
    return np.fromiter((email_key(value) == email for value in values.to_pylist()), bool, len(values))
