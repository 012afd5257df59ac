"""The transformer: Shopify customer id in, Feast features joined, score out.

Requests (``customer_id`` is ``gid://shopify/Customer/123`` or ``123``; ``cart`` is optional context,
validated and logged for monitoring and future models, not a model input today):

* V1 ``POST /v1/models/<name>:predict``
  ``{"instances": [{"customer_id": "gid://shopify/Customer/123", "cart": {"subtotal": 42.5, "item_count": 2}}]}``
  → ``{"predictions": [{"customer_id": ..., "score": 0.73, "fallback": false, "model_name": ...,
  "model_version": "3"}]}``
* V2 ``POST /v2/models/<name>/infer`` (``/versions/<v>/infer`` pins a version): input ``customer_id``
  BYTES or INT64 ``[n]``, optional ``cart_subtotal`` FP64 ``[n]`` and ``cart_item_count`` INT64 ``[n]``
  → outputs ``score`` FP64 ``[n]``, ``model_version`` BYTES ``[n]``, ``fallback`` BOOL ``[n]``;
  the response's ``model_version`` is the answering version (comma-joined if a request was split).

When the answering versions carry a spend model (train.spend), both answers add the expected spend in the
label horizon, rounded to cents, and its tier (LOW, MEDIUM or HIGH, Shopify's predicted spend tiers): V1
``"expected_spend": 182.4, "spend_tier": "HIGH"`` per prediction, V2 outputs ``expected_spend`` FP64 ``[n]``
and ``spend_tier`` BYTES ``[n]``. Behind a ``--predictor_host`` the predictor computes them and sends them
back with the scores.

Every response carries the ``x-storeflow-model-version`` header. Locally (``storeflow serve``) the
predictors run in this process behind micro-batchers (with scores remembered by exact feature row, see
:mod:`storeflow.serving.batching`), with a sticky canary split (hash of the customer id); in the cluster, ``python -m storeflow.serving.transformer --model_name <name> --predictor_host
<host>`` sends the feature rows to the predictor container over V2 (or V1 with
``--predictor_protocol v1``) and the InferenceService does the canary split.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from storeflow.serving import metrics
from storeflow.serving.errors import ForbiddenCustomer, PredictorUnavailable, UnknownVersion, answered_by
from storeflow.serving.features import BadCustomerId, OnlineFeatures, parse_customer_id
from storeflow.serving.predictor import StoreflowPredictor
from storeflow.serving.predlog import PredictionLog, now_iso
from storeflow.serving.protocol import (
    CUSTOMER_HEADER,
    FEATURES_INPUT,
    PIN_HEADER,
    SCORE_OUTPUT,
    SHOP_HEADER,
    SPEND_OUTPUT,
    SPEND_TIER_OUTPUT,
    VERSION_HEADER,
)
from storeflow.serving.v1 import v1_request
from storeflow.serving.v2 import check_json_data, check_outputs

V2_INPUTS = {"customer_id", "cart_subtotal", "cart_item_count"}
MAX_CART_SUBTOTAL = 1e9
MAX_CART_ITEMS = 100_000


def check_customers(ids: list[int], allowed: str | None) -> None:
    """Raise ForbiddenCustomer unless every id is the ``allowed`` customer (None: any customer)."""
    if allowed is None:
        return
    if not allowed:
        raise ForbiddenCustomer("this storefront session has no logged-in customer, so it can score none "
                                "(a staff or server-side caller can)")
    own = parse_customer_id(allowed)
    others = sorted({cid for cid in ids if cid != own})
    if others:
        raise ForbiddenCustomer(f"this storefront session may score only its logged-in customer {own}, "
                                f"not {', '.join(map(str, others[:5]))}")


def canary_bucket(customer_id: int) -> int:
    """0..99, stable per customer across processes and restarts (so the split is sticky)."""
    return int.from_bytes(hashlib.sha256(str(customer_id).encode()).digest()[:4], "big") % 100


@dataclass
class Scoring:
    """One request on its way through preprocess → predict → postprocess."""

    v2_request: InferRequest | None
    refs: list[str]
    ids: list[int]
    carts: list[dict | None]
    pinned: str | None
    shop: str | None
    rows: np.ndarray | None = None
    fallback: np.ndarray | None = None
    scores: np.ndarray | None = None
    versions: list[str] = field(default_factory=list)
    spend: np.ndarray | None = None  # expected spend in the horizon and its tier, when every version has a spend model
    spend_tiers: np.ndarray | None = None


def _cart(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("cart must be an object like {\"subtotal\": 42.5, \"item_count\": 2}")
    unknown = set(value) - {"subtotal", "item_count", "currency"}
    if unknown:
        raise InvalidInput(f"cart has unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    cart = {}
    if "subtotal" in value:
        sub = value["subtotal"]
        if isinstance(sub, bool) or not isinstance(sub, (int, float)) or not math.isfinite(sub) \
                or not 0 <= sub <= MAX_CART_SUBTOTAL:
            raise InvalidInput(f"cart.subtotal must be a finite number in [0, {MAX_CART_SUBTOTAL:g}]")
        cart["subtotal"] = float(sub)
    if "item_count" in value:
        items = value["item_count"]
        if isinstance(items, bool) or not isinstance(items, int) or not 0 <= items <= MAX_CART_ITEMS:
            raise InvalidInput(f"cart.item_count must be an integer in [0, {MAX_CART_ITEMS}]")
        cart["item_count"] = items
    if "currency" in value:
        currency = value["currency"]
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
            raise InvalidInput("cart.currency must be a 3-letter ISO 4217 code")
        cart["currency"] = currency.upper()
    return cart


def _ref(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class StoreflowTransformer(Model):
    """Feast-enriched propensity scores; see the module docstring for the wire format."""

    def __init__(self, name: str, features: OnlineFeatures, predictors: dict[str, StoreflowPredictor] | None = None,
                 main_version: str | None = None, canary_version: str | None = None, canary_percent: int = 0,
                 registered_name: str | None = None, prediction_log: PredictionLog | None = None,
                 max_instances: int = 64, batch_max_rows: int = 64, batch_max_wait_s: float = 0.0,
                 score_memo_rows: int = 100_000):
        super().__init__(name, return_response_headers=True)
        from storeflow.serving.batching import MicroBatcher, ScoreMemo

        self.features = features
        self.predictors = predictors or {}
        self.main_version = main_version or next(iter(self.predictors), None)
        self.canary_version = canary_version if canary_version in self.predictors else None
        self.canary_percent = canary_percent if self.canary_version else 0
        self.registered_name = registered_name or name
        self.log = prediction_log
        self.max_instances = max_instances
        # A Treelite model is scored on the event loop (~45 us a call); scikit-learn's ~1 ms on a thread.
        self.batchers = {v: ScoreMemo(MicroBatcher(p.score, batch_max_rows, batch_max_wait_s, name=f"v{v}",
                                                   inline=getattr(p.scorer, "runtime", None) == "treelite"),
                                      score_memo_rows)
                         for v, p in self.predictors.items()}
        # Spend beside the score: Treelite's walk (~50 us) inline like the score, for every request that asked
        # during the same loop iteration; scikit-learn's (a Python loop over the trees) on a thread. Memoized
        # by feature row like the score: a returning customer's spend cost a Treelite walk of every tree part
        # on each request (py-spy, 400-customer bench store, all scores memoized: a fifth of a worker's time).
        self.spend_batchers = {v: ScoreMemo(MicroBatcher(lambda rows, p=p: p.expected_spend(rows)[0], batch_max_rows,
                                                         batch_max_wait_s, name=f"spend-v{v}",
                                                         inline=getattr(p.spend_scorer, "runtime", None) == "treelite"),
                                            score_memo_rows, name="spend")
                               for v, p in self.predictors.items() if getattr(p, "spend", None) is not None}
        self._score_histograms: dict = {}
        self.ready = True

    @property
    def versions(self) -> list[str]:
        return list(self.predictors)

    def load(self) -> bool:
        self.ready = True
        return True

    # -- preprocess -----------------------------------------------------------------------------------
    async def preprocess(self, payload, headers=None) -> Scoring:
        headers = headers or {}
        try:
            if isinstance(payload, InferRequest):
                refs, ids, carts = self._parse_v2(payload)
            else:
                refs, ids, carts = self._parse_v1(payload)
        except BadCustomerId as exc:
            raise InvalidInput(str(exc)) from exc
        try:
            check_customers(ids, headers.get(CUSTOMER_HEADER))
        except BadCustomerId as exc:  # a token whose sub is not a customer gid
            raise ForbiddenCustomer(f"this storefront session's customer is not a Shopify customer id: {exc}") from exc
        scoring = Scoring(payload if isinstance(payload, InferRequest) else None, refs, ids, carts,
                          headers.get(PIN_HEADER), headers.get(SHOP_HEADER))
        if scoring.pinned is not None and self.predictors and scoring.pinned not in self.predictors:
            raise UnknownVersion(f"model {self.name} version {scoring.pinned} is not served here "
                                 f"(serving {', '.join(self.versions)})")
        started = time.perf_counter()
        try:
            scoring.rows, scoring.fallback = await self.features.rows(ids)
        except Exception as exc:  # noqa: BLE001 - Feast down is a server problem, said plainly
            raise answered_by(InferenceError(f"feature lookup failed: {type(exc).__name__}: {exc}"),
                              self._answering(scoring)) from exc
        metrics.FEATURE_LOOKUP.observe(time.perf_counter() - started)
        return scoring

    def validate(self, payload):
        # preprocess validated the request and returns a Scoring; KServe's check of the predictor
        # protocol's shape ("inputs" in payload) would raise TypeError on it behind a --predictor_host.
        return payload if isinstance(payload, Scoring) else super().validate(payload)

    def _check_count(self, n: int) -> None:
        if not 1 <= n <= self.max_instances:
            raise InvalidInput(f"send 1 to {self.max_instances} customers per request, got {n}")

    def _parse_v1(self, payload) -> tuple[list[str], list[int], list[dict | None]]:
        payload = v1_request(payload, 'a JSON object {"instances": [{"customer_id": "gid://shopify/Customer/1"}]}')
        unknown = set(payload) - {"instances", "parameters"}
        if unknown:
            raise InvalidInput(f"unknown top-level field(s): {', '.join(sorted(map(str, unknown)))}")
        instances = payload["instances"]
        self._check_count(len(instances))
        refs, ids, carts = [], [], []
        for i, item in enumerate(instances):
            if isinstance(item, dict):
                extra = set(item) - {"customer_id", "cart"}
                if extra:
                    raise InvalidInput(f"instances[{i}] has unknown field(s): {', '.join(sorted(map(str, extra)))}")
                if "customer_id" not in item:
                    raise InvalidInput(f"instances[{i}].customer_id is required")
                value, cart = item["customer_id"], _cart(item.get("cart"))
            else:
                value, cart = item, None
            try:
                ids.append(parse_customer_id(value))
            except BadCustomerId as exc:
                raise InvalidInput(f"instances[{i}]: {exc}") from exc
            refs.append(_ref(value))
            carts.append(cart)
        return refs, ids, carts

    def _parse_v2(self, request: InferRequest) -> tuple[list[str], list[int], list[dict | None]]:
        tensors = {}
        for tensor in request.inputs:
            if tensor.name not in V2_INPUTS:
                raise InvalidInput(f"unknown input '{tensor.name}'; inputs are {', '.join(sorted(V2_INPUTS))}")
            if tensor.name in tensors:
                raise InvalidInput(f"input '{tensor.name}' given twice")
            tensors[tensor.name] = tensor
        if "customer_id" not in tensors:
            raise InvalidInput("input 'customer_id' (BYTES or INT64 [n]) is required")
        allowed = {"customer_id": {"BYTES", "INT64", "INT32", "UINT64", "UINT32"},
                   "cart_subtotal": {"FP64", "FP32"}, "cart_item_count": {"INT64", "INT32"}}
        arrays = {}
        for name, tensor in tensors.items():
            if tensor.datatype not in allowed[name]:
                raise InvalidInput(f"input '{name}' must be {' or '.join(sorted(allowed[name]))}, got {tensor.datatype}")
            shape = list(tensor.shape or [])
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(
                    not isinstance(d, int) or d < 0 for d in shape):
                raise InvalidInput(f"input '{name}' must have shape [n], got {shape}")
            check_json_data(tensor)
            try:
                arrays[name] = tensor.as_numpy().reshape(-1)
            except InvalidInput:
                raise
            except Exception as exc:  # noqa: BLE001 - numpy says many things about bad data
                raise InvalidInput(f"input '{name}' data does not match datatype {tensor.datatype} "
                                   f"and shape {shape}: {exc}") from exc
        n = len(arrays["customer_id"])
        self._check_count(n)
        for name, array in arrays.items():
            if len(array) != n:
                raise InvalidInput(f"input '{name}' has {len(array)} values for {n} customers")
        refs, ids = [], []
        for i, value in enumerate(arrays["customer_id"]):
            try:
                ids.append(parse_customer_id(value.item() if isinstance(value, np.generic) else value))
            except BadCustomerId as exc:
                raise InvalidInput(f"customer_id[{i}]: {exc}") from exc
            refs.append(_ref(value.item() if isinstance(value, np.generic) else value))
        carts: list[dict | None] = [None] * n
        if "cart_subtotal" in arrays or "cart_item_count" in arrays:
            carts = []
            for i in range(n):
                raw = {}
                if "cart_subtotal" in arrays:
                    raw["subtotal"] = float(arrays["cart_subtotal"][i])
                if "cart_item_count" in arrays:
                    raw["item_count"] = int(arrays["cart_item_count"][i])
                carts.append(_cart(raw))
        return refs, ids, carts

    # -- predict -------------------------------------------------------------------------------------
    def version_for(self, customer_id: int) -> str:
        if self.canary_percent and canary_bucket(customer_id) < self.canary_percent:
            return self.canary_version
        return self.main_version

    def _answering(self, scoring: Scoring) -> str | None:
        """The version(s) answering ``scoring`` ("1", "1,2"), for its error answer's version header; None when
        not known (a predictor elsewhere that did not say)."""
        versions = scoring.versions
        if not versions and self.predictors:
            versions = [scoring.pinned or self.version_for(cid) for cid in scoring.ids]
        return ",".join(dict.fromkeys(versions)) or None

    async def predict(self, scoring: Scoring, headers=None, response_headers=None) -> Scoring:
        try:
            if self.predictors:
                await self._predict_local(scoring)
            else:
                await self._predict_remote(scoring, headers, response_headers)
        except Exception as exc:
            raise answered_by(exc, self._answering(scoring))
        return scoring

    async def _predict_local(self, scoring: Scoring) -> None:
        import asyncio

        versions = [scoring.pinned or self.version_for(cid) for cid in scoring.ids]
        if len(set(versions)) == 1:  # the common case: one version, one batcher call
            version = versions[0]
            spend_memo = self.spend_batchers.get(version)
            # Score and spend sent to their models in the same loop iteration, then waited for: a miss gets
            # both in one model pass (see ScoreMemo.begin), not the spend one pass after the score.
            try:
                score_job = self.batchers[version].begin(scoring.rows)
                spend_job = spend_memo.begin(scoring.rows) if spend_memo is not None else None
                scoring.scores = await self.batchers[version].finish(score_job)
            except Exception as exc:  # noqa: BLE001 - a model failure is ours: 500 with the reason
                raise InferenceError(f"model failed: {type(exc).__name__}: {exc}") from exc
            scoring.versions = versions
            if spend_job is not None:
                from storeflow.components.train.spend import spend_tiers

                scoring.spend = await spend_memo.finish(spend_job)
                scoring.spend_tiers = spend_tiers(scoring.spend, self.predictors[version].spend[1])
            return
        scores = np.empty(len(versions), dtype=np.float64)
        groups: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            groups.setdefault(version, []).append(i)
        try:
            results = await asyncio.gather(*(self.batchers[v](scoring.rows[idx]) for v, idx in groups.items()))
        except Exception as exc:  # noqa: BLE001 - a model failure is ours: 500 with the reason
            raise InferenceError(f"model failed: {type(exc).__name__}: {exc}") from exc
        for (version, idx), result in zip(groups.items(), results):
            scores[idx] = result
        scoring.scores, scoring.versions = scores, versions
        await self._spend(scoring)

    async def _spend(self, scoring: Scoring) -> None:
        """Expected spend and spend tier beside the score, from each version's spend model (none unless
        every answering version has one)."""
        from storeflow.components.train.spend import spend_tiers

        versions = list(dict.fromkeys(scoring.versions))
        if any(v not in self.spend_batchers for v in versions):
            return
        spend, tiers = np.empty(len(scoring.versions)), np.empty(len(scoring.versions), dtype=object)
        for version in versions:
            idx = [i for i, v in enumerate(scoring.versions) if v == version]
            spend[idx] = await self.spend_batchers[version](scoring.rows[idx])
            tiers[idx] = spend_tiers(spend[idx], self.predictors[version].spend[1])
        scoring.spend, scoring.spend_tiers = spend, tiers

    async def _predict_remote(self, scoring: Scoring, headers, response_headers) -> None:
        rows = scoring.rows
        if self.predictor_config.protocol == "v1":
            payload = {"instances": rows.tolist()}
        else:
            tensor = InferInput(FEATURES_INPUT, list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows, binary_data=False)
            payload = InferRequest(self.name, [tensor], request_id=headers.get("x-request-id") if headers else None)
        # The predictor's own response headers (date, server, content-length...) stay out of ours.
        upstream: dict[str, str] = {}
        try:
            answer = await super().predict(payload, headers, upstream)
        except httpx.TransportError as exc:  # not reached at all: down, restarting, timed out
            raise PredictorUnavailable(f"predictor {self.predictor_config.predictor_host} is unavailable: "
                                       f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the predictor answered with an error
            answered = getattr(getattr(exc, "response", None), "headers", {}).get(VERSION_HEADER)  # it said who
            raise answered_by(InferenceError(f"predictor failed: {type(exc).__name__}: {exc}"), answered) from exc
        if isinstance(answer, InferResponse):
            output = answer.get_output_by_name(SCORE_OUTPUT)
            scores, version = output.as_numpy().astype(np.float64).reshape(-1), answer.model_version
            spend, tiers = ([None if o is None else o.as_numpy().reshape(-1).tolist()
                             for o in map(answer.get_output_by_name, (SPEND_OUTPUT, SPEND_TIER_OUTPUT))])
        else:
            scores, version = np.asarray(answer["predictions"], dtype=np.float64), answer.get("model_version")
            spend, tiers = answer.get(SPEND_OUTPUT), answer.get(SPEND_TIER_OUTPUT)
        if len(scores) != len(rows):
            raise InferenceError(f"predictor answered {len(scores)} scores for {len(rows)} customers")
        version = upstream.get(VERSION_HEADER) or version
        scoring.scores = scores
        scoring.versions = [str(version or "unknown")] * len(scores)
        if spend is not None or tiers is not None:  # the version carries a spend model (train.spend)
            if spend is None or tiers is None or len(spend) != len(rows) or len(tiers) != len(rows):
                raise InferenceError(f"predictor answered {SPEND_OUTPUT} and {SPEND_TIER_OUTPUT} for "
                                     f"{'no' if spend is None else len(spend)} and "
                                     f"{'no' if tiers is None else len(tiers)} of {len(rows)} customers")
            scoring.spend = np.asarray(spend, dtype=np.float64)
            scoring.spend_tiers = np.array([_ref(t) for t in tiers], dtype=object)

    # -- postprocess ---------------------------------------------------------------------------------
    async def postprocess(self, scoring: Scoring, headers=None, response_headers=None):
        try:
            return self._answer(scoring, headers, response_headers)
        except Exception as exc:
            raise answered_by(exc, self._answering(scoring))

    def _answer(self, scoring: Scoring, headers, response_headers):
        answered = ",".join(dict.fromkeys(scoring.versions))
        if response_headers is not None:
            response_headers[VERSION_HEADER] = answered
        if scoring.v2_request is not None:  # before any score is counted or logged
            check_outputs(scoring.v2_request, [SCORE_OUTPUT, "model_version", "fallback",
                                               *((SPEND_OUTPUT, SPEND_TIER_OUTPUT) if scoring.spend is not None else ())])
        scores = scoring.scores.tolist()
        for score, version in zip(scores, scoring.versions):
            self._score_histogram(version).observe(score)
        fallbacks = int(scoring.fallback.sum())
        if fallbacks:
            metrics.FALLBACK_ROWS.inc(fallbacks)
        if self.log is not None:
            self._log(scoring, headers or {})
        spend = tiers = None  # the same values in V1 and V2 answers: spend rounded to cents, tiers as str
        if scoring.spend is not None:
            spend = [round(float(amount), 2) for amount in scoring.spend]
            tiers = [str(tier) for tier in scoring.spend_tiers]
        if scoring.v2_request is None:
            answers = [
                {"customer_id": ref, "score": float(score), "fallback": bool(fb), "model_name": self.registered_name,
                 "model_version": version}
                for ref, score, fb, version in zip(scoring.refs, scoring.scores, scoring.fallback, scoring.versions)]
            if spend is not None:
                for answer, amount, tier in zip(answers, spend, tiers):
                    answer[SPEND_OUTPUT], answer[SPEND_TIER_OUTPUT] = amount, tier
            return {"predictions": answers}
        request = scoring.v2_request
        n = len(scoring.ids)
        if not request.use_binary_outputs and not request.request_outputs:
            # What InferResponse.to_rest() would give for these JSON outputs, without building it.
            outputs = [{"name": SCORE_OUTPUT, "shape": [n], "datatype": "FP64", "data": scores},
                       {"name": "model_version", "shape": [n], "datatype": "BYTES", "data": scoring.versions},
                       {"name": "fallback", "shape": [n], "datatype": "BOOL", "data": scoring.fallback.tolist()}]
            if spend is not None:
                outputs += [{"name": SPEND_OUTPUT, "shape": [n], "datatype": "FP64", "data": spend},
                            {"name": SPEND_TIER_OUTPUT, "shape": [n], "datatype": "BYTES", "data": tiers}]
            return orjson.dumps({"id": request.id or "", "model_name": self.name, "model_version": answered,
                                 "outputs": outputs, "parameters": {"registered_model": self.registered_name}})
        outputs = [InferOutput(SCORE_OUTPUT, [n], "FP64"), InferOutput("model_version", [n], "BYTES"),
                   InferOutput("fallback", [n], "BOOL")]
        outputs[0].set_data_from_numpy(scoring.scores.astype(np.float64), binary_data=False)
        outputs[1].set_data_from_numpy(np.array([v.encode() for v in scoring.versions], dtype=np.object_),
                                       binary_data=False)
        outputs[2].set_data_from_numpy(scoring.fallback.astype(bool), binary_data=False)
        if spend is not None:
            outputs += [InferOutput(SPEND_OUTPUT, [n], "FP64"), InferOutput(SPEND_TIER_OUTPUT, [n], "BYTES")]
            outputs[3].set_data_from_numpy(np.array(spend, dtype=np.float64), binary_data=False)
            outputs[4].set_data_from_numpy(np.array([t.encode() for t in tiers], dtype=np.object_), binary_data=False)
        response = InferResponse(request.id or "", self.name, outputs, model_version=answered,
                                 parameters={"registered_model": self.registered_name},
                                 use_binary_outputs=request.use_binary_outputs,
                                 requested_outputs=request.request_outputs)
        # Serialized here: KServe would turn a JSON answer into a pydantic model and FastAPI walk it
        # with jsonable_encoder (~100 us a request); bytes go out as they are, as binary answers do.
        body, json_length = response.to_rest()
        if json_length is not None and response_headers is not None:
            response_headers["inference-header-content-length"] = str(json_length)
        return body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    def _score_histogram(self, version: str):
        histogram = self._score_histograms.get(version)
        if histogram is None:
            histogram = self._score_histograms[version] = metrics.SCORES.labels(version)
        return histogram

    def _log(self, scoring: Scoring, headers) -> None:
        ts = now_iso()
        columns = self.features.columns
        request_id = headers.get("x-request-id")
        records = [
            {"ts": ts, "request_id": request_id, "model_name": self.registered_name, "model_version": version,
             "customer_id": cid, "fallback": bool(fb), "score": float(score),
             "features": dict(zip(columns, row.tolist())), "cart": cart, "shop": scoring.shop}
            for cid, row, fb, score, version, cart in zip(scoring.ids, scoring.rows, scoring.fallback,
                                                          scoring.scores, scoring.versions, scoring.carts)]
        if scoring.spend is not None:  # what the answer said: spend in cents, the tier
            for record, amount, tier in zip(records, scoring.spend, scoring.spend_tiers):
                record[SPEND_OUTPUT], record[SPEND_TIER_OUTPUT] = round(float(amount), 2), str(tier)
        self.log.append(records)

    # -- metadata ------------------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": "customer_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "cart_subtotal", "datatype": "FP64", "shape": [-1], "parameters": {"optional": True}},
                {"name": "cart_item_count", "datatype": "INT64", "shape": [-1], "parameters": {"optional": True}}]

    def get_output_types(self) -> list[dict]:
        return [{"name": SCORE_OUTPUT, "datatype": "FP64", "shape": [-1]},
                {"name": "model_version", "datatype": "BYTES", "shape": [-1]},
                {"name": "fallback", "datatype": "BOOL", "shape": [-1]},
                # when the answering version carries a spend model (train.spend)
                {"name": SPEND_OUTPUT, "datatype": "FP64", "shape": [-1], "parameters": {"optional": True}},
                {"name": SPEND_TIER_OUTPUT, "datatype": "BYTES", "shape": [-1], "parameters": {"optional": True}}]

    def stop(self) -> None:
        for batcher in [*self.batchers.values(), *self.spend_batchers.values()]:
            batcher.close()
        self.features.close()
        if self.log is not None:
            self.log.close()
        super().stop()


def main(argv: list[str] | None = None) -> None:
    """Cluster entry point: Feast lookup here, the model in the predictor container."""
    import argparse
    import sys

    from kserve import ModelServer, model_server
    from kserve.predictor_config import PredictorConfig

    from storeflow.components.config import load_settings
    from storeflow.serving.logs import quiet_logging
    from storeflow.serving.app import install
    from storeflow.serving.predlog import prediction_log

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    args, _ = parser.parse_known_args(argv)
    settings = load_settings()
    quiet_logging(settings.serving.quiet)
    model = StoreflowTransformer(args.model_name, OnlineFeatures(settings), registered_name=settings.registry.model_name,
                                 prediction_log=prediction_log(settings), max_instances=settings.serving.max_instances)
    # KServe defaults to v1; our predictor speaks both, and V2 keeps tensors typed, so v2 unless asked.
    argv = sys.argv[1:] if argv is None else argv
    asked = any(a.startswith(("--predictor_protocol", "--protocol")) for a in argv)
    protocol = (args.predictor_protocol if args.predictor_protocol != "v1" else args.protocol) if asked else "v2"
    config = PredictorConfig(predictor_host=args.predictor_host, predictor_protocol=protocol,
                             predictor_use_ssl=args.predictor_use_ssl,
                             predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
                             predictor_request_retries=args.predictor_request_retries,
                             predictor_health_check=args.enable_predictor_health_check)
    server = ModelServer(http_port=args.http_port, workers=1, enable_grpc=False, enable_latency_logging=False,
                         predictor_config=config)
    quiet_logging(settings.serving.quiet)  # ModelServer() re-applied KServe's logging config
    install(server, settings, served_versions=None)
    server.start([model])


if __name__ == "__main__":
    # `python -m` runs this file as __main__, a second copy of the module: run the imported one, so the
    # process holds one copy of its classes.
    from storeflow.serving.transformer import main as _main

    _main()
