"""`make demo`'s recommendations step (storeflow demo, step 5): the recommendations pipeline trains and registers
the champion, which is then served by `storeflow serve-recommendations` over real HTTP on 127.0.0.1 and asked,
as the theme block asks, what to show beside the store's newest cart."""

from __future__ import annotations

import re

from storeflow.components.config import load_settings
from storeflow.pipelines.commands import _demo_recommendations
from tests.conftest import free_port, quick_overrides

STORE = {"customers": 2_000, "orders": 20_000, "products": 200}  # test_recommend's: big enough to promote


def test_the_demo_trains_registers_and_serves_the_recommender(tmp_path, capsys):
    settings = load_settings(quick_overrides(tmp_path, ingest={"source": "synthetic", "synthetic": STORE},
                                             recommendations={"port": free_port()}))
    _demo_recommendations(settings)
    said = capsys.readouterr().out
    flat = " ".join(said.split())
    assert "Registered storeflow-recommendations v1: champion" in flat
    cart = re.search(r"cart of order \d+: (.+)", said).group(1).split(", ")
    shown = re.search(r"recommended: (.+)", said).group(1).split(", ")
    assert len(shown) == 5 and not set(shown) & set(cart), said[-2000:]
    assert all(re.fullmatch(r".+\S", title) and not title.isdigit() for title in shown)  # titles, not bare ids
    assert "answered by storeflow-recommendations v1 (KServe V1, http://127.0.0.1:" in flat
