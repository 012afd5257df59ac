"""What storeflow's serving processes say to each other and to callers, beyond KServe's own protocol:
tensor names between the transformer and the predictor, and storeflow's HTTP headers.

One small module both sides import (the predictor, the transformer, the auth middleware and the ASGI
pieces around KServe), so a name is spelled once.
"""

# The predictor's V2 tensors: input FP64 [n, k] in training column order, output FP64 [n].
FEATURES_INPUT = "features"
SCORE_OUTPUT = "score"
# Expected spend in the label horizon (FP64 [n]) and its tier (BYTES [n]: LOW, MEDIUM or HIGH), beside the
# score when the version carries a spend model (train.spend): the predictor's V2 outputs and V1 answer keys,
# and the transformer's, V1 and V2 alike.
SPEND_OUTPUT = "expected_spend"
SPEND_TIER_OUTPUT = "spend_tier"

# The answering version, on every response. Behind a transformer it is how the version gets back:
# KServe's V2 REST client (InferResponse.from_bytes) drops the body's model_version.
VERSION_HEADER = "x-storeflow-model-version"
# Set by the version-pinning middleware from /v2/models/<name>/versions/<v>/... paths.
PIN_HEADER = "x-storeflow-pin-version"
# Set by the auth middleware (any sent by a client are dropped): the verified shop, and the one customer
# the caller may score.
SHOP_HEADER = "x-storeflow-shop"
CUSTOMER_HEADER = "x-storeflow-customer"
