"""Compiled tree runtime for the served model: the same scores for a fraction of the per-call cost.

scikit-learn's HistGradientBoosting predicts tree by tree from Python: about 1 ms a call for 200 trees,
whether 1 or 32 rows. Treelite (GTIL) walks the same trees, imported with their float64 thresholds, in
one C++ call: ~45 us for one row, ~20 us per further row. A calibrated model (``CalibratedClassifierCV``
over trees, what ``train`` registers) walks its trees in Treelite and maps the result with scikit-learn's
own calibrators; a stack (``StackingClassifier``, ``train.stack``) walks its trees in Treelite and
leaves its linear parts and final estimator to scikit-learn. Treelite is used only when it reproduces the estimator's own ``predict_proba`` on probe
rows placed exactly at, just below and just above every split threshold (where a comparison-operator or precision difference would show) and on the input example
logged with the model. Otherwise scikit-learn scores, and :attr:`Scorer.reason` says why.

``serving.model_runtime``: ``auto`` (Treelite when it agrees, else scikit-learn), ``treelite`` (refuse to
start without it) or ``sklearn``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Scores must equal the registered model's to 1e-6 (the serving contract); Treelite's float64 walk
# agrees to ~1e-16, so anything past this is a real disagreement, not rounding.
AGREEMENT = 1e-9
PROBE_ROWS = 512


class RuntimeUnavailable(RuntimeError):
    """``serving.model_runtime: treelite`` was asked for and cannot score this model exactly."""


@dataclass
class Scorer:
    """P(class 1) per row of a float64 matrix; ``runtime`` names what computes it."""

    runtime: str
    score: Callable[[np.ndarray], np.ndarray]
    reason: str = ""


def sklearn_scorer(estimator, reason: str = "") -> Scorer:
    def score(rows: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.predict_proba(rows)[:, 1], dtype=np.float64)

    return Scorer("sklearn", score, reason)


def build_scorer(estimator, mode: str = "auto", examples: np.ndarray | None = None) -> Scorer:
    """The fastest runtime that scores exactly like ``estimator`` (see the module docstring)."""
    if mode == "sklearn":
        return sklearn_scorer(estimator, "serving.model_runtime is sklearn")
    try:
        scorer = _treelite_scorer(estimator, examples)
    except Exception as exc:  # noqa: BLE001 - any failure means: keep scikit-learn
        reason = f"Treelite cannot score {type(estimator).__name__} exactly: {exc}"
        if mode == "treelite":
            raise RuntimeUnavailable(f"serving.model_runtime is treelite, but {reason}") from exc
        log.info("%s; scoring with scikit-learn", reason)
        return sklearn_scorer(estimator, reason)
    return scorer


def _treelite_scorer(estimator, examples: np.ndarray | None) -> Scorer:
    """Treelite for a tree ensemble, for the trees under a binary ``CalibratedClassifierCV``, or for the
    trees inside a binary ``StackingClassifier`` (what ``train`` registers with ``train.stack``):
    Treelite gives the trees' response, scikit-learn's own calibrators or stack map it."""
    if type(estimator).__name__ == "StackingClassifier":
        score, dump, inputs = _stack_score(estimator)
    else:
        trees, calibrate, margin = _calibration_parts(estimator)
        response, dump, inputs = _treelite_response(trees, margin)

        def score(rows: np.ndarray) -> np.ndarray:
            return calibrate(response(rows))

    probes = probe_rows(dump, int(dump["num_feature"]))
    if examples is not None and len(examples):
        probes = np.vstack([probes, np.asarray(examples, dtype=np.float64)])
    expected = np.asarray(estimator.predict_proba(probes)[:, 1], dtype=np.float64)
    worst = float(np.max(np.abs(score(probes) - expected)))
    if worst > AGREEMENT:
        raise ValueError(f"scores differ by up to {worst:.3g} on {len(probes)} probe rows")
    return Scorer("treelite", score, f"{inputs} inputs, agrees to {worst:.1e} on {len(probes)} probe rows")


def _calibration_parts(estimator) -> tuple[object, Callable[[np.ndarray], np.ndarray], bool]:
    """The tree model to compile, what turns its response into P(class 1), and whether that response is
    the decision function (else P(class 1)).

    A binary ``CalibratedClassifierCV`` averages, over its calibrated classifiers, a calibrator applied to
    the base model's ``decision_function`` (else ``predict_proba``). Every classifier must share one base
    model (a ``FrozenEstimator`` fit), so the trees are walked once per row.
    """
    parts = getattr(estimator, "calibrated_classifiers_", None)
    if parts is None:
        return estimator, lambda values: values, False
    if len(estimator.classes_) != 2:
        raise ValueError(f"a calibrated model of {len(estimator.classes_)} classes is not binary")
    bases = {id(_unfrozen(part.estimator)) for part in parts}
    if len(bases) != 1:
        raise ValueError(f"{len(parts)} calibrated classifiers over {len(bases)} different models")
    calibrators = [part.calibrators[0] for part in parts]

    def calibrate(values: np.ndarray) -> np.ndarray:
        probabilities = np.mean([np.clip(c.predict(values), 0.0, 1.0) for c in calibrators], axis=0)
        return np.asarray(probabilities, dtype=np.float64)

    if all(type(c).__name__ == "_SigmoidCalibration" for c in calibrators):
        # Platt scaling (what ``train`` calibrates with): scikit-learn's ``expit(-(a * T + b))`` for all
        # calibrators in one array operation, not five calls that each validate their input (~60 of the
        # ~110 us a one-row call took). The probe rows check it against the estimator like the rest.
        from scipy.special import expit

        a = np.array([[c.a_] for c in calibrators], dtype=np.float64)
        b = np.array([[c.b_] for c in calibrators], dtype=np.float64)

        def calibrate(values: np.ndarray) -> np.ndarray:  # noqa: F811 - the faster equal form
            values = np.asarray(values, dtype=np.float64).reshape(1, -1)
            return np.asarray(np.mean(np.clip(expit(-(a * values + b)), 0.0, 1.0), axis=0), dtype=np.float64)

    trees = _unfrozen(parts[0].estimator)
    return trees, calibrate, hasattr(trees, "decision_function")


def _stack_score(stack) -> tuple[Callable[[np.ndarray], np.ndarray], dict, str]:
    """P(class 1) of a binary ``StackingClassifier`` with its tree part's decision function walked by
    Treelite; its other parts, the concatenation and the final estimator are scikit-learn's own.

    The stack's ``predict_proba`` walks the trees from Python (~1 ms a call); the rest is a few array
    operations, so with the trees in Treelite one call costs a fraction of that, whatever the batch.
    """
    if len(stack.classes_) != 2 or stack.passthrough:
        raise ValueError("only a binary stack without passthrough is compiled")
    walks, dump, inputs = [], None, ""
    for part, method in zip(stack.estimators_, stack.stack_method_):
        if part == "drop":
            continue
        if dump is None and method == "decision_function":
            try:
                response, dump, inputs = _treelite_response(_unfrozen(part), margin=True)
                walks.append(response)
                continue
            except Exception:  # noqa: BLE001 - not trees (a linear part): scikit-learn scores it
                dump = None
        try:  # a linear part: the same arithmetic without scikit-learn's input checks (~0.5 ms a call)
            walks.append(_linear_decision(_unfrozen(part)) if method == "decision_function" else getattr(part, method))
        except ValueError:
            walks.append(getattr(part, method))
    if dump is None:
        raise ValueError("the stack has no tree part scored by its decision function")
    final = stack.final_estimator_
    try:
        combine = _binary_logistic(final)
    except ValueError:
        def combine(meta: np.ndarray) -> np.ndarray:
            return final.predict_proba(meta)[:, 1]

    def score(rows: np.ndarray) -> np.ndarray:
        meta = stack._concatenate_predictions(rows, [walk(rows) for walk in walks])
        return np.asarray(combine(meta), dtype=np.float64)

    return score, dump, inputs


def _binary_logistic(model) -> Callable[[np.ndarray], np.ndarray]:
    """P(class 1) of a fitted binary ``LogisticRegression`` as its ``predict_proba`` computes it
    (``expit(X @ coef_.T + intercept_)``), without its input checks."""
    from scipy.special import expit

    if type(model).__name__ != "LogisticRegression" or len(model.classes_) != 2:
        raise ValueError(f"{type(model).__name__} is not a binary LogisticRegression")
    decision = _linear_steps([("logistic", model)])
    return lambda rows: expit(decision(rows))


def _linear_decision(model) -> Callable[[np.ndarray], np.ndarray]:
    """``decision_function`` of a ``Pipeline`` of imputers, scalers, function transformers and column
    selections ending in a binary ``LogisticRegression`` (train.stack's linear parts), as scikit-learn
    computes it step by step, without its per-step input validation; ValueError for anything else."""
    steps = getattr(model, "steps", None)
    if not steps:
        raise ValueError(f"{type(model).__name__} is not a pipeline")
    return _linear_steps(steps)


def _linear_steps(steps) -> Callable[[np.ndarray], np.ndarray]:
    *transforms, (_, last) = steps
    if type(last).__name__ != "LogisticRegression" or len(last.classes_) != 2:
        raise ValueError(f"a pipeline ending in {type(last).__name__} is not compiled")
    chain = [_transform(t) for _, t in transforms]
    coef_t, intercept = np.asarray(last.coef_, dtype=np.float64).T, np.asarray(last.intercept_, dtype=np.float64)

    def decision(rows: np.ndarray) -> np.ndarray:
        x = np.asarray(rows, dtype=np.float64)
        for step in chain:
            x = step(x)
        return (x @ coef_t + intercept).ravel()

    return decision


def _transform(step) -> Callable[[np.ndarray], np.ndarray]:
    """One fitted transformer's ``transform`` on a dense float64 matrix, as scikit-learn computes it."""
    kind = type(step).__name__
    if kind == "SimpleImputer":
        fill = np.asarray(step.statistics_, dtype=np.float64)
        missing = step.missing_values
        if step.add_indicator or np.isnan(fill).any() or not (isinstance(missing, float) and np.isnan(missing)):
            raise ValueError("an imputer with indicators, empty features or non-NaN missing values")
        return lambda x: np.where(np.isnan(x), fill, x)
    if kind == "StandardScaler":
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standardize(x: np.ndarray) -> np.ndarray:
            if mean is not None:
                x = x - mean
            if scale is not None:
                x = x / scale
            return x

        return standardize
    if kind == "FunctionTransformer":
        if step.validate or step.func is None or step.accept_sparse:
            raise ValueError("a FunctionTransformer that validates, is the identity or takes sparse input")
        func, kwargs = step.func, dict(step.kw_args or {})
        return lambda x: func(x, **kwargs)
    if kind == "ColumnTransformer":
        parts = []
        for _, part, columns in step.transformers_:
            if isinstance(part, str):
                if part == "drop":
                    continue
                raise ValueError(f"a column transformer part '{part}' is not compiled")
            index = np.asarray(columns)
            if index.dtype.kind not in "iu":
                raise ValueError("columns selected by name or mask are not compiled")
            inner = getattr(part, "steps", None)
            chain = [_transform(t) for _, t in inner] if inner else [_transform(part)]
            parts.append((index, chain))

        def columns(x: np.ndarray) -> np.ndarray:
            out = []
            for index, chain in parts:
                y = x[:, index]
                for fn in chain:
                    y = fn(y)
                out.append(y)
            return np.hstack(out)

        return columns
    raise ValueError(f"{kind} is not compiled")


def build_regressor(estimator, mode: str = "auto", examples: np.ndarray | None = None) -> Scorer:
    """The fastest runtime whose ``predict`` equals ``estimator.predict`` (a regressor's: the spend model,
    ``train.spend``), under the same rules as :func:`build_scorer`: Treelite only when it agrees on the
    threshold probes and ``examples`` (relative to the prediction's size, to :data:`AGREEMENT`)."""

    def sklearn_predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.predict(rows), dtype=np.float64).reshape(len(rows))

    if mode == "sklearn":
        return Scorer("sklearn", sklearn_predict, "serving.model_runtime is sklearn")
    try:
        predict, dump, inputs = _regressor_parts(estimator)
        probes = probe_rows(dump, int(dump["num_feature"]))
        if examples is not None and len(examples):
            probes = np.vstack([probes, np.asarray(examples, dtype=np.float64)])
        expected = sklearn_predict(probes)
        worst = float(np.max(np.abs(predict(probes) - expected) / np.maximum(1.0, np.abs(expected))))
        if not worst <= AGREEMENT:
            raise ValueError(f"predictions differ by up to {worst:.3g} (relative) on {len(probes)} probe rows")
    except Exception as exc:  # noqa: BLE001 - any failure means: keep scikit-learn
        reason = f"Treelite cannot predict {type(estimator).__name__} exactly: {exc}"
        if mode == "treelite":
            raise RuntimeUnavailable(f"serving.model_runtime is treelite, but {reason}") from exc
        log.info("%s; predicting with scikit-learn", reason)
        return Scorer("sklearn", sklearn_predict, reason)
    return Scorer("treelite", predict, f"{inputs} inputs, agrees to {worst:.1e} (relative) on {len(probes)} probe rows")


def _regressor_parts(estimator) -> tuple[Callable[[np.ndarray], np.ndarray], dict, str]:
    """``predict`` of a tree regressor walked by Treelite, or of a ``StackingRegressor`` (without
    passthrough) whose tree parts are: the spend model is trees under a log-linked GLM (train.spend),
    whose final step is computed here as scikit-learn does it (``exp(log(trees) @ coef + intercept)``)
    and otherwise left to scikit-learn's own ``predict``."""
    if type(estimator).__name__ != "StackingRegressor":
        response, dump, inputs = _treelite_response(estimator, margin=False, reference=estimator.predict)
        return response, dump, inputs
    if estimator.passthrough:
        raise ValueError("a stack with passthrough is not compiled")
    walks, dump, inputs = [], None, ""
    for part in estimator.estimators_:
        if part == "drop":
            continue
        trees = _unfrozen(part)
        try:
            response, found, kind = _treelite_response(trees, margin=False, reference=trees.predict)
            walks.append(response)
            dump, inputs = dump or found, inputs or kind
        except Exception:  # noqa: BLE001 - not trees: scikit-learn predicts it
            walks.append(part.predict)
    if dump is None:
        raise ValueError("the stack has no tree part")
    final = _log_glm(estimator.final_estimator_)

    def predict(rows: np.ndarray) -> np.ndarray:
        meta = np.column_stack([walk(rows) for walk in walks])
        return np.asarray(final(meta), dtype=np.float64).reshape(len(rows))

    return predict, dump, inputs


def _log_glm(final) -> Callable[[np.ndarray], np.ndarray]:
    """The final estimator's ``predict``; for ``Pipeline(FunctionTransformer(np.log), <log-link GLM>)``
    the same arithmetic without scikit-learn's input checks on every call (~0.1-0.2 ms each)."""
    steps = getattr(final, "steps", None)
    if steps and len(steps) == 2:
        transform, glm = steps[0][1], steps[1][1]
        link = getattr(getattr(getattr(glm, "_base_loss", None), "link", None), "inverse", None)
        if (type(transform).__name__ == "FunctionTransformer" and transform.func is np.log
                and not transform.kw_args and getattr(glm, "coef_", None) is not None and link is not None):
            coef, intercept = np.asarray(glm.coef_, dtype=np.float64), float(glm.intercept_)
            return lambda meta: link(np.log(meta) @ coef + intercept)
    return final.predict


def _unfrozen(estimator):
    return getattr(estimator, "estimator", estimator) if type(estimator).__name__ == "FrozenEstimator" else estimator


def _treelite_response(trees, margin: bool, reference=None) -> tuple[Callable[[np.ndarray], np.ndarray], dict, str]:
    """Treelite's walk of ``trees`` giving their decision function (``margin``) or P(class 1) (or, with
    ``reference``, what that method of theirs answers: a regressor's ``predict``), checked against the
    model's own answer on threshold probes; with the input precision that agrees."""
    import treelite.sklearn

    model = treelite.sklearn.import_model(trees)
    dump = json.loads(model.dump_as_json(pretty_print=False))
    if dump.get("threshold_type") != "float64" or dump.get("leaf_output_type") != "float64":
        raise ValueError(f"imported with {dump.get('threshold_type')} thresholds, not float64")
    gtil = GTILWalk(model, margin)

    def walk(rows: np.ndarray, dtype) -> np.ndarray:
        return gtil(rows, dtype)[:, -1]

    probes = probe_rows(dump, int(dump["num_feature"]))
    if reference is not None:
        expected = np.asarray(reference(probes), dtype=np.float64).reshape(len(probes))
    else:
        expected = np.asarray(trees.decision_function(probes) if margin else trees.predict_proba(probes)[:, 1],
                              dtype=np.float64).reshape(len(probes))
    scale = np.maximum(1.0, np.abs(expected))  # a regressor's values may be large: agreement is relative to them
    worst = {}
    # float64 for HistGradientBoosting; scikit-learn's classic trees (forests, GradientBoosting) compare float32.
    for dtype, name in ((np.float64, "float64"), (np.float32, "float32")):
        worst[name] = float(np.max(np.abs(walk(probes, dtype) - expected) / scale))
        if worst[name] <= AGREEMENT:
            return (lambda rows, dtype=dtype: walk(rows, dtype)), dump, name
    raise ValueError(f"the trees' response differs by up to {min(worst.values()):.3g} on {len(probes)} probe rows")


class GTILWalk:
    """``treelite.gtil.predict(model, rows, nthread=1, pred_margin=margin)``, one row of outputs per input
    row, through the same C function (``TreeliteGTILPredict``) with what does not change between calls
    prepared once: the parsed prediction config, the input and output types, the output width.

    ``gtil.predict`` builds its config anew on every call (a JSON text parsed in C++), looks the model's
    types and shape up through ctypes and validates its arguments: py-spy of a serving worker at 50,000
    customers (Redis, uniform, c=32) spent more of the call there than in the walk itself (a one-row call
    of the 50,000-customer bench store's 211 score trees: ~290 us through ``gtil.predict``, ~60 us the C
    walk alone; the 264 spend trees alike).
    """

    def __init__(self, model, margin: bool):
        import ctypes

        from treelite.gtil.gtil import GTILConfig
        from treelite.util import typestr_to_numpy_type

        self._ctypes = ctypes
        self.model = model
        self.config = GTILConfig(nthread=1, predict_type="raw" if margin else "default")
        self.num_feature = int(model.num_feature)
        self.input_type = model.input_type
        self.input_dtype = typestr_to_numpy_type(model.input_type)
        self.output_dtype = typestr_to_numpy_type(model.output_type)
        self._input_type = self.input_type.encode()
        shape = ctypes.POINTER(ctypes.c_uint64)()
        ndim = ctypes.c_uint64()
        from treelite.core import _LIB, _check_call

        self._lib, self._check = _LIB, _check_call
        _check_call(_LIB.TreeliteGTILGetOutputShape(model.handle, ctypes.c_uint64(1), self.config.handle,
                                                    ctypes.byref(shape), ctypes.byref(ndim)))
        self.width = int(np.prod([shape[i] for i in range(1, ndim.value)], dtype=np.int64))

    def __call__(self, rows: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The model's outputs for ``rows`` (first cast to ``dtype``, as the caller of gtil.predict would),
        a float64 matrix of one row per input row."""
        ctypes = self._ctypes
        # What gtil.predict does to its input: the caller's dtype, then the model's input type, C order.
        data = np.ascontiguousarray(np.asarray(rows, dtype=dtype), dtype=self.input_dtype)
        if data.ndim != 2 or data.shape[1] != self.num_feature:
            raise ValueError(f"rows must have shape [n, {self.num_feature}], got {list(data.shape)}")
        n = data.shape[0]
        out = np.zeros((n, self.width), dtype=self.output_dtype)
        if n:
            self._check(self._lib.TreeliteGTILPredict(
                self.model.handle, data.ctypes.data_as(ctypes.c_void_p), ctypes.c_char_p(self._input_type),
                ctypes.c_uint64(n), out.ctypes.data_as(ctypes.c_void_p), self.config.handle))
        return np.asarray(out, dtype=np.float64)


def probe_rows(dump: dict, num_feature: int, n: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows whose every value sits at, or one float step either side of, a split threshold of its column."""
    thresholds: list[set[float]] = [set() for _ in range(num_feature)]
    for tree in dump["trees"]:
        for node in tree["nodes"]:
            if node.get("node_type") == "numerical_test_node":
                thresholds[node["split_feature_id"]].add(float(node["threshold"]))
    rng = np.random.default_rng(seed)
    columns = []
    for values in thresholds:
        base = np.array(sorted(values) or [0.0])
        candidates = np.concatenate([base, np.nextafter(base, -np.inf), np.nextafter(base, np.inf)])
        candidates = candidates[np.isfinite(candidates)]
        columns.append(rng.choice(candidates, size=n))
    return np.column_stack(columns)
