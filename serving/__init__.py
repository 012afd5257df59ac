"""storeflow serving: KServe transformer + predictor for Feast-enriched, Shopify-authenticated predictions.

Kept import-light on purpose (the CLI imports this package for ``--help``); the modules hold the work:
``server`` (``storeflow serve``), ``transformer``/``predictor`` (KServe models and cluster entry points),
``app`` (what every server adds to KServe's app), ``http`` (those ASGI pieces), ``protocol`` (tensor names
and headers both sides use), ``features`` (Feast online lookups), ``auth`` (who may read what, on top of
Shopify's verification in :mod:`storeflow.components.shopify.verify`), ``errors``, ``batching``,
``predlog``, ``metrics``.
"""
