"""storeflow serving: KServe transformer + predictor for Feast-enriched, Shopify-authenticated predictions.

Kept import-light on purpose (the CLI imports this package for ``--help``); the modules hold the work:
``server`` (``storeflow serve``), ``transformer``/``predictor`` (KServe models and cluster entry points),
``features`` (Feast online lookups), ``auth`` (Shopify verification), ``batching``, ``predlog``, ``metrics``.
"""
