"""Shopify global ids (``gid://shopify/Order/123``) and the ids storeflow derives when a source has none."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

GID_PATTERN = r"^gid://shopify/(?P<type>[A-Za-z]+)/(?P<id>[0-9]{1,19})(?:\?.*)?$"
_INT64_MAX = str(2**63 - 1)  # 19 digits; digit strings of one length compare as their numbers


def split_gids(values: pa.Array | pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Split gids into (resource type, numeric id) arrow arrays; null where a value is null or malformed
    (a number beyond int64 too, so readers name its line instead of failing the whole cast)."""
    parts = pc.extract_regex(values, GID_PATTERN)
    kind, digits = pc.struct_field(parts, "type"), pc.struct_field(parts, "id")
    try:
        return kind, pc.cast(digits, pa.int64())
    except pa.ArrowInvalid:  # a 19-digit number beyond int64
        fits = pc.or_(pc.less(pc.utf8_length(digits), len(_INT64_MAX)), pc.less_equal(digits, _INT64_MAX))
        return pc.if_else(fits, kind, None), pc.cast(pc.if_else(fits, digits, None), pa.int64())


def stable_id(keys: pd.Series, namespace: str) -> pd.Series:
    """A positive int64 id from text keys: same key, same id, on every machine and run.

    Used where a source has no id of its own (the orders CSV export has no customer, line item or
    product ids). 63 bits of SHA-256 make a collision among a store's keys practically impossible.
    """
    out = pd.Series(pd.NA, index=keys.index, dtype="Int64")
    present = keys.notna()
    if present.any():
        digests = [
            int.from_bytes(hashlib.sha256(f"{namespace}:{key}".encode()).digest()[:8], "big") & (2**63 - 1)
            for key in keys[present]
        ]
        out[present] = np.asarray(digests, dtype=np.int64)
    return out
