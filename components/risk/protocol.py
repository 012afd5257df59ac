"""What the webhook receiver and the risk model server say to each other (KServe V1 and V2), spelled once.

V1 ``POST /v1/models/<name>:predict``: ``{"instances": [{"order_id": "gid://shopify/Order/1", "total_price": 42.5,
…every name of ORDER_FEATURES…}]}`` → ``{"predictions": [{"order_id": …, "score": 0.91, "level": "HIGH",
"facts": [{"description": …, "sentiment": "NEGATIVE"}, …]}], "model_name": …, "model_version": "3"}``.

V2 ``POST /v2/models/<name>/infer``: input ``features`` FP64 ``[n, 31]`` (columns in the model's order: its
metadata names them) and optionally ``order_id`` BYTES ``[n]`` → outputs ``score`` FP64 ``[n]``, ``level``
BYTES ``[n]`` and ``facts`` BYTES ``[n]`` (each a JSON list of ``{"description", "sentiment"}``).

An ``order_id`` is a string or an integer of at most ``MAX_ORDER_ID_CHARS`` characters.
"""

ORDER_ID = "order_id"
FEATURES_INPUT = "features"
SCORE_OUTPUT = "score"
LEVEL_OUTPUT = "level"
FACTS_OUTPUT = "facts"
MAX_INSTANCES = 256  # orders per request
MAX_ORDER_ID_CHARS = 255  # an order id (a number or gid://shopify/Order/<number>) is far shorter; it is logged
LEVELS_METADATA = "risk_levels"  # MLmodel metadata: the HIGH/MEDIUM cut points (risk.assess.Levels)

# Prometheus counter the risk server exports and the risk canary queries (components.risk.deploy.alert_queries):
# ``storeflow_risk_assessments_total{model_version, level}``, orders assessed per served version and level
# (HIGH, MEDIUM, LOW). The canary's alert rate is its HIGH series over all of them.
ASSESSMENTS_METRIC = "storeflow_risk_assessments"
ALERT_LEVEL = "HIGH"
