"""The one storeflow configuration model, read by every stage, pipeline, server and CLI command.

Values come, lowest precedence first, from the defaults below, a YAML file (``storeflow.yaml`` in the
working directory, or the path in ``STOREFLOW_CONFIG``), environment variables (``STOREFLOW_`` prefix,
``__`` between nesting levels, e.g. ``STOREFLOW_REGISTRY__TRACKING_URI``) and explicit overrides (the
pipeline passes its ``config_json`` parameter that way, so a cluster run and a local run see the same
settings). Embedded defaults need no servers; production parts are reached by changing values only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from contextvars import ContextVar
from typing import Annotated, Any, Literal, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SerializationInfo, SerializerFunctionWrapHandler,
                      ValidationError, field_validator, model_serializer, model_validator)
from pydantic_core import core_schema
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)


from storeflow.components.secrets import PasswordOf, is_literal, redis_password, reference, url_password
from storeflow.components.version import __version__

CONFIG_ENV = "STOREFLOW_CONFIG"
# A directory of STOREFLOW_* files (the storeflow-config ConfigMap mounted into a pipeline task: one file
# per key), read exactly as the environment is, just below it. kfp-kubernetes has no envFrom for tasks.
CONFIG_DIR_ENV = "STOREFLOW_CONFIG_DIR"
DEFAULT_CONFIG_FILE = "storeflow.yaml"
ENV_PREFIX = "STOREFLOW_"
ENV_DELIMITER = "__"
# Where cluster tasks and the serving containers find the online store's and the Feast registry's
# connection values (Kubernetes Secrets given as env); a cluster config refers to them as ${NAME}.
REDIS_CONNECTION_STRING_ENV = "REDIS_CONNECTION_STRING"
FEAST_REGISTRY_URL_ENV = "FEAST_REGISTRY_URL"


@dataclass(frozen=True)
class Credential:
    """Marks a connection setting: where its password goes it holds ``${VAR}``, never the password.

    A literal password is an error (naming the setting), except when the whole value is the setting's own
    ``STOREFLOW_*`` variable: then the setting becomes a reference to that variable (see
    :meth:`Settings._env_values_by_reference`). So settings, config_json and logs never hold a secret.
    """

    password_of: PasswordOf

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def check(self, value: str | None) -> str | None:
        if value is not None and is_literal(self.password_of(value)):
            raise ValueError("holds a password: write ${VAR} where the password goes and set VAR in the "
                             "environment, or give the whole value in its STOREFLOW_ variable")
        return value


@dataclass(frozen=True)
class NoPassword:
    """Marks a URL setting whose client reads credentials from its own environment variables (``hint``)."""

    hint: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def check(self, value: str | None) -> str | None:
        if value is not None and url_password(value):
            raise ValueError(f"must not carry a password: {self.hint}")
        return value


RedisConnection = Annotated[str, Credential(redis_password)]
CredentialUrl = Annotated[str | None, Credential(url_password)]
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def _kubernetes_name(kind: str, pattern: str, characters: str, longest: int, empty: bool = False):
    """A check that a setting names a Kubernetes object as the API server takes it. Compiled into a pipeline or
    patched into an InferenceService, a name it refuses (Storeflow_Config) failed only on the cluster: the first
    task's pod refused at creation, or the deploy step's API call, after a whole training run."""
    valid = re.compile(rf"^{pattern}$")

    def check(value: str | None) -> str | None:
        if value is None or (empty and value == ""):
            return value
        if len(value) > longest or not valid.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes {kind}: {characters}, starting and ending with a letter "
                             f"or digit, at most {longest} characters")
        return value
    return AfterValidator(check)


_OBJECT_NAME = (rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", "lowercase letters, digits, '-' and '.'", 253)
K8sName = Annotated[str, _kubernetes_name("object name", *_OBJECT_NAME)]
K8sNameOrEmpty = Annotated[str, _kubernetes_name("object name", *_OBJECT_NAME, empty=True)]
K8sNamespace = Annotated[str, _kubernetes_name("namespace", _DNS_LABEL, "lowercase letters, digits and '-'", 63)]

MLFLOW_CREDENTIALS = ("MLflow reads a tracking server's credentials from MLFLOW_TRACKING_USERNAME / "
                      "MLFLOW_TRACKING_PASSWORD, a database driver its own (PGPASSWORD for PostgreSQL), "
                      "S3 clients AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently becomes a default."""

    # Errors never echo the value: a rejected setting may hold a password.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


MAX_DAYS = 36_500
"""The longest window, history or retention any setting may ask for: a century. Windows are taken from real
timestamps, and one far past any history (a horizon of 10**9 days) leaves the calendar: the stage failed with
'date value out of range' naming no setting."""


class ProjectConfig(Section):
    state_dir: Path = Field(Path(".storeflow"), validate_default=True, description="Local state: data, Feast repo, MLflow db, logs.")
    shop_domain: str = Field("demo-store.myshopify.com", description="The store this project models.")

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Absolute so that pipeline tasks (separate processes, other working dirs) find the same state.
        try:
            return value.expanduser().resolve()
        except RuntimeError as exc:  # ~name of a user without a home (or no home at all): a ValueError names the key
            raise ValueError(f"cannot expand {value.parts[0]}: no such user's home directory") from exc


class ImageConfig(Section):
    repository: str = "ghcr.io/storeflow/storeflow"
    tag: str = __version__

    @field_validator("tag")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if not value or value == "latest":
            raise ValueError("image.tag must be a pinned version, never empty or 'latest'")
        return value

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


class SyntheticStoreConfig(Section):
    customers: int = Field(5_000, gt=0)
    orders: int = Field(50_000, gt=0)
    days: int = Field(730, gt=30, le=MAX_DAYS, description="Length of the order history.")
    products: int = Field(400, gt=0)
    end: datetime = Field(datetime(2026, 11, 1), description="Time of the last possible order (UTC).")
    seed: int = 7
    fraud_rate: float = Field(
        0.0, ge=0.0, le=0.02,
        description="Share of extra, fraudulent orders (new accounts with high-value orders, country mismatches, bursts "
                    "from one customer or address, discount abuse; about 0.003 is realistic), with what a store records "
                    "of them (chargebacks, fraud cancellations, refunds after a dispute) and the order fields a risk "
                    "model reads (addresses, gateway, cancel reason, disputes). 0 writes the store without them.")
    co_purchase: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Co-purchase structure for recommenders: every product has a few complements in other categories "
                    "(a grinder's beans, a tea's mug); this share of a basket's further items are complements of its "
                    "first product, and of a repeat order's first item complements of the previous order's. 0 writes "
                    "the store without them (the default store's bytes, which the propensity benchmarks use).")
    seasonal: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Seasonal products (the least sold of each category: winter gifts, summer cold brew) sell only in "
                    "their season (November-December, June-August), where this share of the items are theirs. 0: none.")

    @model_serializer(mode="wrap")
    def _without_fraud_when_off(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict:
        # A store without fraud (co-purchase, seasons) dumps as before the switch existed, so the cached stores
        # keyed by this dump (ingest.synthetic_store) and the snapshots named by their bytes stay valid.
        data = handler(self)
        for switch in ("fraud_rate", "co_purchase", "seasonal"):
            if getattr(self, switch) == 0.0:
                data.pop(switch, None)
        return data


class IngestConfig(Section):
    source: Literal["synthetic", "jsonl", "csv", "shopify"] = "synthetic"
    path: Path | None = Field(None, description="Input file for jsonl/csv sources.")
    synthetic: SyntheticStoreConfig = SyntheticStoreConfig()

    @model_validator(mode="after")
    def _path_for_files(self) -> IngestConfig:
        if self.source in ("jsonl", "csv") and self.path is None:
            raise ValueError(f"ingest.path is required when ingest.source is '{self.source}'")
        return self


class ValidateConfig(Section):
    currencies: list[str] = Field(
        default_factory=lambda: ["USD", "EUR", "GBP", "CAD", "AUD", "JPY", "CHF", "SEK", "DKK", "NZD"],
        description="ISO 4217 codes the store accepts; anything else fails the gate.",
    )
    max_clock_skew_minutes: int = Field(10, ge=0, description="Timestamps later than now + skew are 'future'.")
    earliest: datetime = Field(datetime(1990, 1, 1), description="Timestamps before this (UTC) are 'ancient': a "
                               "placeholder date (0001-01-01, 1900-01-01) no order has. Before 1677 the features stage "
                               "could not even hold one (OutOfBoundsDatetime, naming nothing).")
    max_failures_listed: int = Field(20, gt=0, description="Rows named per rule in the report.")
    warn_only: list[str] = Field(
        default_factory=lambda: ["missing_customer_ids"],
        description="Rules reported as warnings instead of stopping the pipeline. Guest checkouts (orders "
                    "without a customer) are normal in a store and features leave them out.")


class FeastConfig(Section):
    project: str = "storeflow"
    repo_dir: Path | None = Field(None, description="Feature repo; default <state_dir>/feature_repo.")
    registry: CredentialUrl = Field(
        None, description="Registry path or SQL URL (password as ${VAR}); default file in repo_dir.")
    registry_secret: K8sName = Field("storeflow-feast-registry", description="Secret (key url) given to the tasks "
                                 f"that use Feast on a cluster, as {FEAST_REGISTRY_URL_ENV}; optional.")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: RedisConnection = Field(
        "127.0.0.1:6379", description="Feast's host:port[,key=value...]; password as password=${VAR}, or the whole "
                                      f"value as ${{{REDIS_CONNECTION_STRING_ENV}}} on a cluster.")
    redis_timeout_seconds: float = Field(10.0, gt=0, description="Redis socket connect and read timeout (Feast's "
                                         "socket_timeout and socket_connect_timeout, unless the connection string "
                                         "gives its own): a Redis that accepts and never answers (hung, or a "
                                         "failover's old address black-holed) held its caller for ever.")
    ttl_days: int = Field(400, gt=0, le=MAX_DAYS, description="How old a feature row may be and still join.")
    online_write_batch_size: int = Field(
        10_000, gt=0, description="Materialization writes the online store this many entity rows at a time "
                                  "(Feast's materialization.online_write_batch_size): memory bounded at any store size.")


class LabelConfig(Section):
    horizon_days: int = Field(90, gt=0, le=MAX_DAYS, description="Label: the customer orders again within this many days.")
    cutoff_every_days: int = Field(28, gt=0, le=MAX_DAYS, description="Spacing of training cutoffs (and feature snapshots).")
    min_history_days: int = Field(90, ge=0, le=MAX_DAYS, description="First cutoff is this long after the first order.")
    holdout_cutoffs: int = Field(2, gt=0, description="The latest cutoffs are held out for evaluation.")


class FeaturesConfig(Section):
    feast: FeastConfig = FeastConfig()
    label: LabelConfig = LabelConfig()
    customer_features: list[str] = Field(
        default_factory=lambda: [
            "recency_days",
            "frequency",
            "monetary",
            "avg_order_value",
            "refund_rate",
            "days_since_first_order",
            "category_affinity",
            "orders_last_90d",
            "discount_share",
            # counts and spend in recent windows, and their trend (features.compute.RECENT_WINDOW_DAYS)
            "orders_30d",
            "orders_180d",
            "orders_365d",
            "spend_30d",
            "spend_90d",
            "spend_180d",
            "spend_365d",
            "order_trend",
            "inter_purchase_days_mean",
            "inter_purchase_days_std",
            "recency_over_gap",
            # the BG/NBD baseline's own outputs (features.btyd), fitted before the holdout
            "btyd_p_alive",
            "btyd_expected_purchases",
            "btyd_p_order",  # BG/NBD's P(an order within the horizon): what train.stack builds on
        ]
    )
    duckdb_memory_mb: int = Field(2048, ge=256, description="DuckDB's memory while it computes the feature rows; "
                                                             "past it, it spills to disk under the state directory.")
    btyd_fit_customers: int = Field(
        20_000, ge=1_000, description="The BTYD baselines (BG/NBD, Pareto/NBD, Gamma-Gamma) are fitted on a uniform "
                                      "sample of at most this many customers; every customer is still scored.")


class TrainConfig(Section):
    estimator: str = Field(
        "sklearn.ensemble.HistGradientBoostingClassifier", description="Import path of a scikit-learn estimator."
    )
    params: dict[str, Any] = Field(
        default_factory=lambda: {"max_iter": 300, "learning_rate": 0.03, "max_leaf_nodes": 8, "min_samples_leaf": 200,
                                 "random_state": 0}
    )
    max_rows: int = Field(1_000_000, ge=10_000, description="The models are fitted on a seeded uniform sample of at "
                                                           "most this many training-cutoff rows (calibration and "
                                                           "holdout rows are never sampled).")
    stack: bool = Field(True, description="Stack the estimator, a logistic regression on the same features and "
                                          "BG/NBD's own P(an order) (feature btyd_p_order) with a logistic fit on the "
                                          "calibration cutoff (train.stack); off: Platt scaling of the estimator alone.")


class EvaluateConfig(Section):
    metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    margin: float = Field(0.002, ge=0, description="A challenger must beat the champion by this much.")
    bootstrap_samples: int = Field(400, ge=50)
    baseline_gate: bool = Field(True, description="A challenger that a baseline (BG/NBD, Pareto/NBD, order count "
                                                  "then recency) beats is never promoted. Off only where the "
                                                  "gate is not under test (stores too small to judge).")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0


class RegistryConfig(Section):
    tracking_uri: Annotated[str | None, NoPassword(MLFLOW_CREDENTIALS)] = Field(
        None, description="Default: sqlite:///<state_dir>/mlflow.db")
    artifact_location: Annotated[str | None, NoPassword(MLFLOW_CREDENTIALS)] = Field(
        None, description="Default: <state_dir>/mlartifacts")
    artifacts_destination: Annotated[str | None, NoPassword(MLFLOW_CREDENTIALS)] = Field(
        None, description="The tracking server's --artifacts-destination (e.g. s3://mlflow): where its proxied "
        "mlflow-artifacts:/ locations are, so the deploy step gives KServe a URI it can download.")
    credentials_secret: K8sName = Field(
        "storeflow-mlflow-client", description="Secret (keys username, password) given to the tasks that use "
        "MLflow on a cluster, as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; optional.")
    experiment: str = "storeflow-training"
    model_name: str = "storeflow-repeat-purchase"


class TaskResources(Section):
    """Kubernetes requests and limits and a timeout for one pipeline task (quantities as Kubernetes writes them)."""

    cpu_request: str = Field("250m", description="CPU the scheduler reserves for the task, e.g. 500m or 2.")
    cpu_limit: str = Field("1", description="CPU the task may use at most.")
    memory_request: str = Field("512Mi", description="Memory the scheduler reserves, e.g. 512Mi or 4Gi.")
    memory_limit: str = Field("1Gi", description="Memory above which the task is OOM-killed.")
    timeout_seconds: int = Field(3600, gt=0, description="The task fails when it runs longer than this.")

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> Any:
        # `--set kfp.resources.train.cpu_limit=4` parses as a number; Kubernetes quantities are strings.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, value: str) -> str:
        # What kfp's compiler accepts (it fails otherwise naming no key), which Kubernetes accepts too.
        if not CPU_QUANTITY.match(value):
            raise ValueError("a CPU quantity is a number of cores (2, 0.5) or millicores (500m)")
        return value

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        # kfp's compiler takes "K", which Kubernetes refuses, and refuses "k" and "16GB": both must accept it.
        if not MEMORY_QUANTITY.match(value):
            raise ValueError("a memory quantity is a whole number of bytes, or one with a suffix Ki, Mi, Gi, Ti, Pi, "
                             "Ei (powers of 1024) or M, G, T, P, E (powers of 1000): 512Mi, 4Gi")
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> TaskResources:
        # Kubernetes refuses a pod whose request is above its limit, only once the run reaches the task.
        for kind, size in (("cpu", _cpu_cores), ("memory", _memory_bytes)):
            request, limit = getattr(self, f"{kind}_request"), getattr(self, f"{kind}_limit")
            if size(request) > size(limit):
                raise ValueError(f"{kind}_request {request} is above {kind}_limit {limit} (Kubernetes refuses such a pod)")
        return self


CPU_QUANTITY = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
MEMORY_QUANTITY = re.compile(r"^[0-9]+(Ei|Pi|Ti|Gi|Mi|Ki|E|P|T|G|M)?$")
_MEMORY_UNITS = {"": 1, **{suffix: 1000 ** (i + 2) for i, suffix in enumerate("MGTPE")},
                 **{f"{suffix}i": 1024 ** (i + 1) for i, suffix in enumerate("KMGTPE")}}


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _memory_bytes(quantity: str) -> int:
    digits = quantity.rstrip("EPTGMKi")
    return int(digits) * _MEMORY_UNITS[quantity[len(digits):]]


# Per-stage defaults: features (point-in-time join, materialization) and train (the estimator) hold the
# training set in memory; the others move small records or talk to a service.
DEFAULT_TASK_RESOURCES: dict[str, dict[str, Any]] = {
    "ingest": {"memory_request": "1Gi", "memory_limit": "2Gi"},
    "validate": {"memory_request": "1Gi", "memory_limit": "2Gi"},
    "features": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "4Gi", "memory_limit": "8Gi"},
    "train": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "4Gi", "memory_limit": "8Gi"},
    "evaluate": {"cpu_request": "500m", "memory_request": "1Gi", "memory_limit": "2Gi"},
    "register": {},
    "deploy": {"timeout_seconds": 7200},  # a canary waits at every traffic step
    "monitor": {"memory_request": "1Gi", "memory_limit": "2Gi"},
    "retrain": {"timeout_seconds": 7200},  # retrain: local runs the whole training pipeline in this task
    # the recommender's product features (a row per product and time), its own train and evaluate, which fit
    # the item-item model (evaluate twice, on the split, and the champion's settings: register and deploy are
    # the shared tasks above)
    "product_features": {"memory_request": "1Gi", "memory_limit": "2Gi"},
    "train_recommender": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "4Gi"},
    "evaluate_recommender": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "4Gi"},
    "risk": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "4Gi"},
    "risk_deploy": {"timeout_seconds": 7200},  # the risk champion's canary, as deploy's
}


class TaskRetry(Section):
    """Retry policy of the tasks that call a network service (the pipelines name which)."""

    num_retries: int = Field(3, ge=0, description="Retries after a failed attempt; 0 disables retrying.")
    backoff_duration: str = Field("30s", description="Wait before the first retry (a Go duration, e.g. 30s, 2m).")
    backoff_factor: float = Field(2.0, ge=1.0, description="Each further wait is the previous one times this.")
    backoff_max_duration: str = Field("10m", description="No wait between retries is longer than this.")


class KfpConfig(Section):
    host: Annotated[str | None, NoPassword("a token comes from --token / STOREFLOW_KFP_TOKEN or kfp.token_path")] = None
    namespace: K8sNamespace = "kubeflow"
    experiment: str = "storeflow"
    service_account: K8sName | None = "storeflow-pipeline-runner"
    pipeline_root: str | None = None
    token_path: Path = Field(Path("/var/run/secrets/kfp/token"),
                             description="Projected service-account token, used when present (in-cluster).")
    state_pvc: K8sNameOrEmpty = Field("storeflow-state", description="PVC mounted into every task on a cluster at "
                           "state_mount_path; empty: each task gets a private emptyDir there instead (stages pass "
                           "KFP artifacts, so training needs no shared volume; see kustomize/README.md for what "
                           "still reads the volume).")
    state_mount_path: Path = Field(Path("/var/lib/storeflow"), description="Where tasks see project.state_dir.")
    config_mount_path: Path = Field(Path("/etc/storeflow/config"), description="Where tasks see the deploy.config_map "
                                    "ConfigMap (the overlay's STOREFLOW_* values), read as $STOREFLOW_CONFIG_DIR.")
    enable_caching: bool | None = Field(None, description="A run's caching: None keeps each task's compiled "
                                         "setting (on only where the inputs determine the output), false turns it "
                                         "off for the run, true on for every task.")
    resources: dict[str, TaskResources] = Field(
        default_factory=lambda: {stage: TaskResources(**values) for stage, values in DEFAULT_TASK_RESOURCES.items()},
        description="Per pipeline task (ingest, validate, features, train, evaluate, register, deploy, monitor, "
        "retrain, product_features, train_recommender, evaluate_recommender, risk, risk_deploy): cpu/memory requests and limits and timeout_seconds; a value set here overrides that stage's "
        "default, the other values keep theirs.")
    retry: TaskRetry = Field(TaskRetry(), description="Retries with backoff of the tasks that call network services.")
    connect_timeout_seconds: float = Field(10, gt=0, le=600, description="How long each Kubeflow Pipelines API call "
                                           "(submit, schedule, runs) waits to connect.")
    answer_timeout_seconds: float = Field(60, gt=0, le=3600, description="How long each Kubeflow Pipelines API call "
                                          "waits for its answer; past it the command fails saying the API did not "
                                          "answer (kfp.Client waits forever).")

    @field_validator("resources", mode="before")
    @classmethod
    def _stage_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(DEFAULT_TASK_RESOURCES))
        if unknown:
            raise ValueError(f"unknown pipeline task(s) {', '.join(unknown)}; tasks are "
                             f"{', '.join(DEFAULT_TASK_RESOURCES)}")
        merged = {}
        for stage, defaults in DEFAULT_TASK_RESOURCES.items():
            given = value.get(stage, {})
            if isinstance(given, TaskResources):
                given = given.model_dump(exclude_unset=True)
            merged[stage] = {**defaults, **given}
        return merged


def _replicas_in_order(section: str, minimum: int, maximum: int) -> None:
    """KServe's webhook refuses an InferenceService whose minReplicas is above its maxReplicas: the deploy step's
    patch failed at the end of a training run; the config fails first, naming both."""
    if minimum > maximum:
        raise ValueError(f"{section}.min_replicas {minimum} is above {section}.max_replicas {maximum} (KServe refuses "
                         "such an InferenceService)")


class DeployConfig(Section):
    """KServe rollout of a registered model version; canary steps and the bounds that gate them."""

    target: Literal["local", "kserve"] = Field(
        "local", description="kserve: roll out to the InferenceService; local: record it for `storeflow serve`."
    )
    namespace: K8sNamespace = Field("storeflow", description="Namespace of the InferenceService.")
    inference_service: str = Field("storeflow-repeat-purchase", pattern=r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$")
    mode: Literal["Serverless", "Standard"] = Field(
        "Serverless", description="serving.kserve.io/deploymentMode; an existing InferenceService's annotation wins."
    )
    serving_runtime: K8sName = "storeflow-predictor"
    model_format: str = "storeflow"
    service_account: K8sName = "storeflow-serving"
    config_map: K8sName = Field("storeflow-config", description="STOREFLOW_* variables of the namespace: envFrom of the "
                            "serving containers, mounted into every pipeline task (kfp.config_mount_path).")
    feast_config_map: K8sName = Field("storeflow-feast", description="feature_store.yaml for the transformer.")
    online_store_secret: K8sName = Field("storeflow-online-store", description="Secret with the Redis connection-string.")
    shopify_app_secret: K8sName = Field("storeflow-shopify-app", description="Secret (keys client-id, api-secret) with "
                                                                       "which the transformer checks session tokens.")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(3, ge=1)
    predictor_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    )
    transformer_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}
    )
    canary_steps: list[int] = Field(default_factory=lambda: [10, 50, 100], description="Canary traffic percents.")
    analysis_interval_seconds: float = Field(120, gt=0, description="Wait between canary analyses.")
    analysis_window: str = Field("5m", pattern=r"^[1-9][0-9]*[smh]$", description="PromQL range per analysis.")
    max_holds_per_step: int = Field(10, ge=1, description="Analyses without enough data before rolling back.")
    min_requests: int = Field(200, ge=1, description="Requests each version needs in the window to be judged.")
    max_error_rate_increase: float = Field(0.01, ge=0, le=1, description="Canary error rate minus champion's.")
    max_p99_latency_ratio: float = Field(1.25, ge=1, description="Canary p99 over champion p99.")
    min_p99_latency_increase_seconds: float = Field(
        0.02, ge=0, description="p99 increases smaller than this are noise, whatever the ratio (a few ms on "
        "a fast model would otherwise fail the ratio)."
    )
    max_score_psi: float = Field(0.2, ge=0, description="Population stability index of prediction scores.")
    max_ctr_drop: float = Field(0.1, ge=0, lt=1, description="Recommender canaries: click-through rate below the "
                                "champion's by more than this share, and significantly (one-sided Fisher exact "
                                "test, p < 0.05), rolls back.")
    min_impressions: int = Field(500, ge=1, description="Recommender canaries: impressions each version needs in "
                                 "the window for its click-through rate to be judged.")
    feast_transformer: bool = Field(True, description="A Feast transformer in front of the predictor (the "
                                    "propensity model's); the order risk rollout has none: its caller sends features.")
    error_status_regex: str = Field("5..|error", description="storeflow_requests_total status values that are errors.")
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    # target local: the same steps and bounds, judged on a `storeflow serve` the rollout starts itself.
    local_requests_per_step: int = Field(
        1000, ge=1, description="Local canary: synthetic requests per analysis (one customer each); a step "
                               "holds and sends another batch until both versions reach min_requests.")
    local_concurrency: int = Field(4, ge=1, le=32, description="Local canary: requests in flight at once.")
    local_step_timeout_seconds: float = Field(
        60, gt=0, description="Local canary: longest traffic time per step; still holding then means rollback. "
        "A step ends as soon as both versions have min_requests, so this bounds only a slow or starved step "
        "(at 10% the canary's 200 need ~2,000 requests: 15 s was too short on a loaded 2-core machine).")
    local_start_timeout_seconds: float = Field(
        180, gt=0, description="Local canary: longest server start (a bound, not a wait: a server is judged "
        "once ready; imports and the model load took over 90 s on a 2-core machine at load 6).")

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or value[-1] != 100 or any(not 0 < s <= 100 for s in value) or value != sorted(set(value)):
            raise ValueError(f"deploy.canary_steps must rise strictly within 1..100 and end at 100, got {value}")
        return value

    @field_validator("predictor_resources", "transformer_resources")
    @classmethod
    def _requests_and_limits(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(value.get(kind, {})):
                raise ValueError(f"resources need {kind} for cpu and memory, got {value}")
        # Checked here as for pipeline tasks (kfp.resources): KServe would take any string, and Kubernetes refuse
        # the InferenceService's pods only once the rollout created them.
        for kind, pattern, size in (("cpu", CPU_QUANTITY, _cpu_cores), ("memory", MEMORY_QUANTITY, _memory_bytes)):
            for bound in ("requests", "limits"):
                if not pattern.match(str(value[bound][kind])):
                    raise ValueError(f"{bound}.{kind} {value[bound][kind]!r} is not a Kubernetes {kind} quantity "
                                     f"(e.g. {'500m or 2' if kind == 'cpu' else '512Mi or 4Gi'})")
            if size(value["requests"][kind]) > size(value["limits"][kind]):
                raise ValueError(f"requests.{kind} {value['requests'][kind]} is above limits.{kind} "
                                 f"{value['limits'][kind]} (Kubernetes refuses such a pod)")
        return value

    @model_validator(mode="after")
    def _replicas(self) -> DeployConfig:
        _replicas_in_order("deploy", self.min_replicas, self.max_replicas)
        return self


class ServingConfig(Section):
    """``storeflow serve`` and the KServe transformer/predictor: model, auth, canary, batching, logs."""

    host: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 only when asked (in a pod).")
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Uvicorn worker processes, each with its own model copy.")
    model_alias: str = Field("champion", description="Registry alias served when model_version is unset.")
    model_version: str | None = Field(None, description="Pin a registered version instead of the alias.")
    canary_version: str | None = Field(None, description="A second version served beside the main one.")
    canary_percent: int = Field(0, ge=0, le=100, description="Share of customers (sticky by id) sent to the canary.")
    auth: Literal["shopify", "off"] = Field("shopify", description="'off' only for local development.")
    shopify_client_id: str = Field("", description="App client id: the session token's audience.")
    customer_scope: Literal["own", "shop"] = Field(
        "own", description="own: a storefront caller (checkout UI extension, app proxy) scores only its "
                           "logged-in customer, staff (admin UI extensions) any; shop: any caller, any customer "
                           "of its shop.")
    shopify_secret_env: str = Field("SHOPIFY_API_SECRET", description="Variable holding the app secret.")
    shopify_old_secret_env: str = Field("SHOPIFY_API_SECRET_OLD", description="Previous secret, during rotation.")
    allowed_shops: list[str] = Field(default_factory=list, description="Shop domains allowed; empty: project.shop_domain.")
    cors_origins: list[str] = Field(default_factory=lambda: ["https://extensions.shopifycdn.com"])
    max_body_bytes: int = Field(64 * 1024, gt=0, description="Larger request bodies get 413.")
    max_instances: int = Field(64, gt=0, description="Customers per request.")
    feature_cache_seconds: float = Field(60, ge=0, description="Online features kept in memory at most this long.")
    feature_cache_rows: int = Field(200_000, gt=0, description="Customers' feature rows kept in memory at most "
                                                               "(~250 bytes each, per worker).")
    feature_refresh_seconds: float = Field(10, gt=0, description="How often to check Feast for a new materialization.")
    model_runtime: Literal["auto", "treelite", "sklearn"] = Field(
        "auto", description="Tree models: Treelite when it reproduces scikit-learn's scores exactly (auto), "
                            "always (treelite: refuse to start otherwise) or never (sklearn).")
    batch_max_size: int = Field(64, ge=1, description="Micro-batch: rows per model call at most.")
    batch_max_wait_ms: float = Field(2, ge=0, description="Micro-batch: longest wait for more rows.")
    score_memo_rows: int = Field(100_000, ge=0, description="Scores remembered per model version by exact "
                                                            "feature row (pure function of it); 0 turns it off.")
    prediction_log: bool = True
    prediction_log_dir: Path | None = Field(None, description="Default <state_dir>/predictions.")
    prediction_log_store: str | None = Field(
        None, description="Object store the serving processes ship closed log files to and the monitor, data "
                          "requests and erasure read (s3://bucket/prefix; credentials and AWS_ENDPOINT_URL from the "
                          "AWS_* variables); unset: the local directory only.")
    prediction_log_ship_seconds: float = Field(300, gt=0, description="With a store: a file is closed and shipped "
                                                                      "at least this often, so monitoring sees it.")
    prediction_log_store_secret: K8sName = Field(
        "storeflow-artifact-store", description="Secret (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "MLFLOW_S3_ENDPOINT_URL: the MLflow server's) given to the transformer and the monitor task on a cluster; optional.")
    prediction_log_queue: int = Field(10_000, gt=0, description="Records waiting to be written; more are dropped.")
    prediction_log_rotate_bytes: int = Field(64 * 1024 * 1024, gt=0)
    prediction_log_keep_files: int = Field(20, gt=0)
    quiet: bool = Field(True, description="No per-request log lines (KServe logs ~6 by default).")
    request_log: bool = Field(False, description="One JSON log line per request (path, status, model version, "
                                                 "duration); error answers are logged either way.")


class ShopifyConfig(Section):
    """Live Shopify connection (components/shopify): bulk export, webhooks, privacy requests.

    Credentials are never settings: the shop domain and Admin API token are read from the variables
    named here (a Kubernetes Secret mounted as env on a cluster), so they never reach config_json or logs.
    """

    api_version: str = Field("2026-01", pattern=r"^20[0-9]{2}-(01|04|07|10)$",
                             description="Admin API version, pinned; bulkOperation(id:) needs 2026-01+.")
    shop_domain_env: str = Field("SHOPIFY_SHOP_DOMAIN", description="Variable with the shop; default project.shop_domain.")
    access_token_env: str = Field("SHOPIFY_ACCESS_TOKEN", description="Variable with the Admin API access token.")
    credentials_secret: K8sName = Field("storeflow-shopify", description="Secret (keys shop-domain, access-token) "
                                                                     "given to the ingest task on a cluster.")
    admin_origin: str | None = Field(None, description="Send Admin API calls here instead of https://<shop> "
                                                       "(a proxy or a recording server).")
    poll_interval_seconds: float = Field(5, gt=0, description="Wait between bulk operation status polls.")
    poll_timeout_seconds: float = Field(6 * 3600, gt=0, description="Give up on a bulk operation after this.")
    max_retries: int = Field(8, ge=0, description="Retries of a throttled or failed Admin API call.")
    max_backoff_seconds: float = Field(60, gt=0)
    overlap_seconds: int = Field(300, ge=0, description="Each incremental pull re-reads this much before the "
                                                        "watermark (late writes); merging by id makes it harmless.")
    webhook_host: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 only when asked (in a pod).")
    webhook_port: int = Field(8090, ge=0, le=65535)
    webhook_max_body_bytes: int = Field(2 * 1024 * 1024, gt=0, description="Larger webhook bodies get 413.")
    apply_batch_size: int = Field(1000, gt=0, description="Journaled events applied to Feast per batch at most.")
    apply_idle_seconds: float = Field(0.2, gt=0, description="How often the applier looks for new events.")
    apply_gather_seconds: float = Field(0.1, ge=0, le=5, description="Woken by a commit, the applier waits this "
                                        "long for more events before it applies them: a batch's cost (features "
                                        "recomputed, Feast writes, a journal transaction the receiver's commits "
                                        "wait on) is mostly the same for one event or hundreds.")
    baseline_refresh_seconds: float = Field(60, gt=0, description="How often the receiver asks MLflow which version "
                                                                  "is served, to score live BTYD features with its BG/NBD.")
    webhook_body_timeout_seconds: float = Field(10, gt=0, description="A body not fully received by then gets 408 "
                                                                      "and the connection closed (Shopify gives up after 5 s).")
    webhook_header_timeout_seconds: float = Field(10, gt=0, description="A connection whose request headers have "
                                                  "not all arrived by then (from the connection, or the request's "
                                                  "first byte) is closed: slow senders could hold every socket.")
    apply_max_lag_seconds: float = Field(120, gt=0, description="/healthz says 503 behind once the oldest pending "
                                                                "event waited longer than this.")
    applier_restart_seconds: float = Field(1, gt=0, description="Wait before restarting a dead applier process; "
                                                                "doubles per crash in a row.")
    applier_restart_max_seconds: float = Field(60, gt=0, description="Longest wait between applier restarts.")
    journal_gather_seconds: float = Field(0.002, ge=0, le=0.1, description="A journal commit waits this long after "
                                          "its first delivery for more, committed together: deliveries that arrive "
                                          "one by one share a commit's fsync and wake-ups (at 2,000 a second, 14 % "
                                          "less of the receiver's CPU a delivery for 2 ms more before each 200).")
    retention_days: float = Field(7, ge=1, le=MAX_DAYS, description="Deliveries applied (and scored) longer ago leave the webhook "
                                  "journal, and assessments written back longer ago the risk outbox. At least a "
                                  "day: Shopify retries a delivery for 4 hours, and the journal knows a retry by "
                                  "its id only while it holds the first.")
    prune_every_seconds: float = Field(3600, gt=0, description="How often the receiver removes what is past "
                                       "retention_days (in small transactions: deliveries keep being taken).")


class FeatureThreshold(Section):
    warning: float = Field(gt=0)
    critical: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FeatureThreshold:
        if self.critical < self.warning:
            raise ValueError(f"critical ({self.critical}) must not be below warning ({self.warning})")
        return self


class MonitorConfig(Section):
    """``storeflow monitor``: served traffic (prediction logs) against the served model's training set.

    Per column, PSI decides the level (0.1 / 0.25 are the usual "moderate" / "significant" shift); overall,
    the share of columns Evidently finds drifted. ``score`` in ``feature_thresholds`` sets prediction drift.
    Any critical level (drift or decay) starts one retraining per model version and window. The recommender's
    click-through rate and item popularity (``ctr_*``, ``popularity_products``) start the recommendations
    pipeline the same way.
    """

    window_hours: float = Field(24, gt=0, le=MAX_DAYS * 24, description="Trailing window of prediction logs; also the retraining cooldown.")
    min_rows: int = Field(100, ge=1, description="Fewer logged predictions: status insufficient-data, no verdict.")
    max_rows: int = Field(100_000, ge=1_000, description="Uniform sample of the window analysed (error is reported).")
    reference_rows: int = Field(100_000, ge=1_000, description="Sample of the training set used as reference.")
    reference_cutoffs: int | None = Field(
        2, ge=1, description="Reference = the training set's latest cutoffs (nearest to serving); None: all of it.")
    drift_method: str | None = Field(None, description="Evidently drift method for every column; None: by type and size.")
    psi_warning: float = Field(0.1, gt=0)
    psi_critical: float = Field(0.25, gt=0)
    feature_thresholds: dict[str, FeatureThreshold] = Field(default_factory=dict, description="PSI per column.")
    drift_share_warning: float = Field(0.3, gt=0, le=1, description="Share of drifted columns (Evidently).")
    drift_share_critical: float = Field(0.5, gt=0, le=1)
    min_labelled_rows: int = Field(200, ge=10, description="Matured, labelled predictions needed to judge decay.")
    auc_drop_warning: float = Field(0.03, ge=0, description="Holdout ROC-AUC minus served ROC-AUC.")
    auc_drop_critical: float = Field(0.07, ge=0)
    calibration_warning: float = Field(0.05, ge=0, description="Expected calibration error of served scores.")
    calibration_critical: float = Field(0.1, ge=0)
    ctr_baseline_hours: float = Field(168, gt=0, le=MAX_DAYS * 24, description="Recommendations: the window's click-through rate and "
                                      "the products asked about are compared with this many hours before it.")
    ctr_min_impressions: int = Field(500, ge=1, description="Impressions a CTR needs (in the window and in the "
                                     "baseline) before a drop is judged.")
    ctr_drop_warning: float = Field(0.2, gt=0, le=1, description="CTR drop, as a share of the baseline's CTR.")
    ctr_drop_critical: float = Field(0.4, gt=0, le=1)
    popularity_products: int = Field(50, ge=1, description="Item popularity PSI: the baseline's most asked-about "
                                     "products, one bin each, and one bin for the rest (psi_warning/psi_critical).")
    # order risk (components/monitor/risk.py): score and feature drift, alert rate, decay as disputes mature
    risk_alert_ratio_warning: float = Field(1.5, gt=1, description="Order risk: the window's share of orders scored "
                                            "HIGH or MEDIUM against the holdout's, as a ratio either way, at 95 % "
                                            "confidence (Wilson interval of the window's share).")
    risk_alert_ratio_critical: float = Field(2.0, gt=1)
    risk_decay_days: float = Field(30, gt=0, le=MAX_DAYS, description="Order risk decay: predictions logged in this many days "
                                   "before the labels' maturity line (risk.maturity_days before the window's end), "
                                   "judged on the labels the snapshot has by then.")
    risk_min_frauds: int = Field(10, ge=1, description="Matured fraud labels needed to judge order risk decay.")
    risk_pr_auc_drop_warning: float = Field(0.1, ge=0, description="Holdout PR-AUC minus served PR-AUC (order risk).")
    risk_pr_auc_drop_critical: float = Field(0.2, ge=0)
    risk_recall_drop_warning: float = Field(0.1, ge=0, description="Holdout recall at risk.fpr minus served (order risk).")
    risk_recall_drop_critical: float = Field(0.2, ge=0)
    retrain: Literal["off", "local", "cluster"] = Field(
        "local", description="On critical: kfp.local training run, a run on kfp.host, or report only.")
    pushgateway: str | None = Field(None, description="Prometheus Pushgateway; else a textfile beside the report.")
    job: str = Field("storeflow-monitoring", description="Pushgateway job label.")
    report_dir: Path | None = Field(None, description="Default <state_dir>/monitoring.")
    seed: int = 0

    @model_validator(mode="after")
    def _ordered(self) -> MonitorConfig:
        for name in ("psi", "drift_share", "auc_drop", "calibration", "ctr_drop", "risk_alert_ratio",
                     "risk_pr_auc_drop", "risk_recall_drop"):
            warning, critical = getattr(self, f"{name}_warning"), getattr(self, f"{name}_critical")
            if critical < warning:
                raise ValueError(f"monitor.{name}_critical ({critical}) must not be below {name}_warning ({warning})")
        return self


# The config file's values while load_settings builds one Settings (pydantic-settings asks the class, not
# the call, for its sources): set and reset around that one construction, so nothing outlives the call.
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("storeflow_file_values", default={})


class RecommendationsConfig(Section):
    """Product recommendations (item-item from purchases) and their time-ordered evaluation."""

    model_name: str = Field("storeflow-recommendations", description="Registered model name in MLflow.")
    port: int = Field(8081, gt=0, lt=65536, description="`storeflow serve-recommendations` listens here.")
    k: int = Field(10, gt=0, description="Products recommended per customer, product page or cart.")
    horizon_days: int = Field(90, gt=0, le=MAX_DAYS, description="Holdout: what customers newly buy this many days after "
                              "the cutoff (the last purchase minus this) is what they should have been shown.")
    neighbours: int = Field(50, gt=0, description="Similar products kept per product.")
    availability_refresh_seconds: float = Field(
        1.0, gt=0, description="Serving holds product availability in memory and reads the online store again "
        "this often when it changed (SQLite) or always (Redis): a product a webhook sold out is hidden within it.")
    inference_service: str = Field("storeflow-recommendations", pattern=r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$",
                                   description="The recommender's KServe InferenceService (kustomize/components/"
                                   "recommendations).")
    serving_runtime: K8sName = Field("storeflow-recommender", description="Its ServingRuntime.")
    model_format: str = Field("storeflow-recommender", description="The model format that runtime serves.")
    metric: Literal["recall", "ndcg", "map"] = Field("ndcg", description="Ranking metric (at k) the model must "
                                                     "beat the best baseline on, with a CI above zero.")
    bootstrap_samples: int = Field(1000, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class RiskConfig(Section):
    """Order risk (issue 16): the model, its time-split holdout and how it is judged (components/risk)."""

    model_name: str = Field("storeflow-order-risk", description="Registered model name in MLflow.")
    experiment: str = Field("storeflow-order-risk", description="MLflow experiment of the risk runs.")
    estimator: str = Field("sklearn.ensemble.HistGradientBoostingClassifier",
                           description="Import path of a scikit-learn classifier with predict_proba.")
    params: dict[str, Any] = Field(
        default_factory=lambda: {"class_weight": "balanced", "learning_rate": 0.05, "max_iter": 300,
                                 "max_leaf_nodes": 15, "min_samples_leaf": 40, "l2_regularization": 1.0,
                                 "random_state": 0})
    maturity_days: int = Field(90, gt=0, le=MAX_DAYS, description="Days after an order by which its fraud label is known "
                               "(chargebacks come up to ~11 weeks later): the holdout ends this long before the last "
                               "order, training orders this long before the holdout.")
    holdout_days: int = Field(180, gt=0, le=MAX_DAYS, description="The holdout: orders of this many days before the labels' "
                              "maturity line.")
    fpr: float = Field(0.01, gt=0, lt=1, description="Recall is reported at this false-positive rate.")
    shopify_level_as_input: bool = Field(
        False, description="Shopify's own risk level as one more model input. Off: on orders/create Shopify's "
        "analysis may still be PENDING, and the merchant's fraud cancellations mostly follow its HIGH.")
    bootstrap_samples: int = Field(200, ge=50)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0
    # real-time scoring of orders/create (components/risk/realtime.py, serving/risk.py)
    inference_service: str = Field("storeflow-order-risk", pattern=r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$",
                                   description="The risk model's name on its server: the KServe InferenceService "
                                   "(kustomize/base/risk-inference-service.yaml) and `storeflow serve-risk`'s model.")
    port: int = Field(8082, gt=0, lt=65536, description="`storeflow serve-risk` listens here.")
    max_body_bytes: int = Field(1024 * 1024, ge=64 * 1024, description="Larger requests to the risk server get "
                                "413 before anything parses them (local and on the cluster). The receiver's largest, "
                                "256 orders of 31 features, is ~300 KB.")
    endpoint: str | None = Field(None, description="Base URL of the risk model server (http://127.0.0.1:8082 "
                                 "locally; the InferenceService's URL on a cluster). Set, the webhook receiver scores "
                                 "every orders/create and writes the assessment back to Shopify; unset, it does not.")
    writeback_max_attempts: int = Field(10, ge=1, description="Attempts at writing an order's assessment back that "
                                        "Shopify ran and failed on that order alone (an error at its alias) before the "
                                        "order is set aside (risk_outbox state rejected, with why); outages do not count "
                                        "towards it as failures and never set an order aside.")
    scorer: Literal["process", "thread"] = Field(
        "process", description="Where `storeflow webhooks` scores orders and writes assessments back: `process`, a "
        "process for scoring and one for the write-back, which it starts and restarts like the applier (scoring "
        "never holds the receiver's GIL: in bench/risk_throughput.json the receiver acknowledged ~2.4x the "
        "deliveries a second on 2 cores), or `thread`, threads of the receiver's process.")
    request_timeout_seconds: float = Field(5.0, gt=0, description="How long the receiver waits for a score; an "
                                           "order not scored stays queued and is retried.")
    retry_seconds: float = Field(1.0, gt=0, description="First wait after the risk server or Shopify failed, "
                                 "doubling up to shopify.max_backoff_seconds.")
    snapshot_check_seconds: float = Field(60.0, gt=0, description="How often the scorer looks for a snapshot "
                                          "ingested (or rewritten by a redaction) after the one its history was "
                                          "built from, and rebuilds it from that one (seeding the ledgers with what "
                                          "they lack), between two passes.")
    seed_step_seconds: float = Field(0.5, ge=0, description="Seeding the ledgers from a newer snapshot (one that "
                                     "replaces another, whose ledgers are there), the scorer folds in chunks of "
                                     "customers for about this long, then scores what waits, until all are in.")
    velocity_max_orders: int = Field(1000, ge=1, description="Orders of the last week kept per customer, email and "
                                     "shipping address for the velocity features (components/risk/velocity.py), the "
                                     "newest; counts of a key past this many orders in a week stop at it, in training "
                                     "as in serving.")
    # rolling a new champion into the InferenceService (components/risk/deploy.py): deploy.*'s steps and bounds,
    # and these
    min_replicas: int = Field(1, ge=1, description="The risk InferenceService's replicas: never none on the checkout "
                              "path (kustomize/base/risk-inference-service.yaml).")
    max_replicas: int = Field(4, ge=1)
    canary_alert_ratio: float = Field(2.0, gt=1, description="A risk canary whose share of orders scored HIGH is "
                                      "more than this many times the champion's, or less than its inverse, in the same "
                                      "window, and significantly so (two-sided Fisher exact test, p < 0.05), rolls back.")
    canary_min_orders: int = Field(1000, ge=1, description="Orders each version needs to have scored in "
                                   "deploy.analysis_window (its storeflow_risk_assessments_total in Prometheus) for its "
                                   "alert rate to be judged.")
    canary_metrics_selector: str = Field("", description="PromQL label matchers added to the risk canary's request "
                                         "and alert queries (risk and propensity versions share numbers); '' selects the risk "
                                         "service's pods: pod=~\"<risk.inference_service>-.*\".")

    @model_validator(mode="after")
    def _replicas(self) -> RiskConfig:
        _replicas_in_order("risk", self.min_replicas, self.max_replicas)
        return self


class Settings(BaseSettings):
    """Everything storeflow reads. Construct with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    project: ProjectConfig = ProjectConfig()
    image: ImageConfig = ImageConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    kfp: KfpConfig = KfpConfig()
    deploy: DeployConfig = DeployConfig()
    serving: ServingConfig = ServingConfig()
    monitor: MonitorConfig = MonitorConfig()
    shopify: ShopifyConfig = ShopifyConfig()
    recommendations: RecommendationsConfig = RecommendationsConfig()
    risk: RiskConfig = RiskConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides beat the environment, which beats a mounted ConfigMap, which beats the YAML file,
        # which beats the defaults.
        return (init_settings, CheckedEnvSource(settings_cls), ConfigMapSource(settings_cls),
                InitSettingsSource(settings_cls, dict(_FILE_VALUES.get())))

    @model_validator(mode="before")
    @classmethod
    def _env_values_by_reference(cls, data: Any) -> Any:
        """A connection setting whose password came in its own ``STOREFLOW_*`` variable keeps only the
        reference ``${STOREFLOW_...}``: child processes (pipeline tasks, servers) inherit the variable, and
        config_json, feature_store.yaml and logs carry the name, not the password."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for path, marker in credential_fields(cls):
            *parents, leaf = path
            node = data
            for key in parents:
                if not isinstance(node.get(key), dict):
                    break
                node[key] = node = dict(node[key])
            else:
                value = node.get(leaf)
                if isinstance(value, str) and is_literal(marker.password_of(value)):
                    variable = _environment_name(path)
                    if variable is not None and os.environ[variable] == value:
                        node[leaf] = reference(variable)
        return data

    # Derived locations: one place decides where state lives.
    @property
    def data_dir(self) -> Path:
        return self.project.state_dir / "data"

    @property
    def feature_repo_dir(self) -> Path:
        return self.features.feast.repo_dir or self.project.state_dir / "feature_repo"

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.project.state_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Explicit, else next to the embedded store; None lets a tracking server choose (proxied artifacts)."""
        if self.registry.artifact_location:
            return self.registry.artifact_location
        if self.registry.tracking_uri and not self.registry.tracking_uri.startswith(("sqlite:", "file:")):
            return None
        return (self.project.state_dir / "mlartifacts").as_uri()

    def to_json(self) -> str:
        """Serialize for a pipeline parameter; :func:`load_settings` reads it back unchanged."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


def credential_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Credential]]:
    """The paths of every :class:`Credential` setting under ``model``, with its marker."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from credential_fields(field.annotation, path)
        for marker in field.metadata:
            if isinstance(marker, Credential):
                yield path, marker


def _environment_name(path: tuple[str, ...]) -> str | None:
    """The ``STOREFLOW_*`` variable (as spelled in the environment) that sets ``path``, if it is set."""
    wanted = (ENV_PREFIX + ENV_DELIMITER.join(path)).upper()
    return next((name for name in os.environ if name.upper() == wanted), None)


# STOREFLOW_* variables the project reads that are no setting (the config's location, the KFP token, what the
# deploy step and the server give serving processes, the image build's): never taken for a misspelt setting.
OTHER_VARIABLES = frozenset({CONFIG_ENV, CONFIG_DIR_ENV, "STOREFLOW_KFP_TOKEN", "STOREFLOW_MODEL_NAME",
                             "STOREFLOW_MODEL_VERSION", "STOREFLOW_MODEL_DIR", "STOREFLOW_MODEL_RUNTIME",
                             "STOREFLOW_SERVING_PLAN", "STOREFLOW_GIT_COMMIT", "STOREFLOW_PYTHON"})


def _section_names() -> list[str]:
    return [field.alias or name for name, field in Settings.model_fields.items()]


def _variable_field(name: str) -> tuple[bool, Any]:
    """Whether the ``STOREFLOW_*`` variable ``name`` sets a setting, and that setting's type (None where the
    variable sets a key of a dict setting, which the model itself checks)."""
    model: Any = Settings
    for part in name[len(ENV_PREFIX):].lower().split(ENV_DELIMITER):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return get_origin(model) is dict or model is dict, None
        field = next((f for n, f in model.model_fields.items() if part in (n, (f.alias or n).lower())), None)
        if field is None:
            return False, None
        model = field.annotation
    return True, model


def _variable_problem(name: str, value: str | None) -> str | None:
    """What is wrong with a ``STOREFLOW_*`` variable of the environment or the ConfigMap, else None.

    pydantic-settings drops a variable that names no setting without a word, and fails on a plain value
    for a list or object setting naming only the section: so a typo silently became the default."""
    if name.upper() in OTHER_VARIABLES:
        return None
    known, kind = _variable_field(name)
    if not known:
        rest = name[len(ENV_PREFIX):].upper()
        for section in _section_names():
            head = f"{section.upper()}_"
            if rest.startswith(head) and not rest.startswith(head + "_"):
                fixed = f"{ENV_PREFIX}{head}_{rest[len(head):]}"
                if _variable_field(fixed)[0]:
                    return f"names no setting; levels are separated by two underscores: {fixed}"
        return f"names no setting (sections: {', '.join(_section_names())}; levels are separated by __)"
    wanted = {list: (list, "a JSON list", '["a", "b"]'), dict: (dict, "a JSON object", '{"key": "value"}')}
    origin = get_origin(kind) or kind
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        origin = dict
    if origin in (tuple, set, frozenset):
        origin = list
    if origin in wanted and value is not None:
        of, form, example = wanted[origin]
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, of):
            return f"must be {form}, e.g. {example}"
    return None


def _check_variables(values: dict[str, str | None], where: str, exempt: frozenset[str] = frozenset()) -> None:
    for name, value in values.items():
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in exempt:
            if problem := _variable_problem(name, value):
                raise ConfigError(f"{name.upper()} ({where}) {problem}")


class CheckedEnvSource(EnvSettingsSource):
    """The environment's ``STOREFLOW_*`` values, refusing one a list or object setting cannot parse, naming
    the variable (pydantic-settings' own error names only the section, in a traceback)."""

    def _load_env_vars(self):
        values = super()._load_env_vars()
        _check_variables({name: value for name, value in values.items() if _variable_field(name)[0]}, "environment")
        return values


class ConfigMapSource(EnvSettingsSource):
    """``STOREFLOW_*`` values from the files of the directory ``$STOREFLOW_CONFIG_DIR`` names (a ConfigMap
    volume: one file per key, the file's text the value), parsed as pydantic-settings parses the
    environment (nested ``__`` names, JSON for lists and objects). No variable or no directory (a
    kfp.local run of a pipeline compiled with the mount): nothing, as an optional ConfigMap gives."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        found = os.environ.get(CONFIG_DIR_ENV)
        self.directory = Path(found) if found else None
        super().__init__(settings_cls)

    def _load_env_vars(self):
        values = _config_map_values(self.directory)
        _check_variables({name: value for name, value in values.items() if _variable_field(name)[0]},
                         f"file in {self.directory}")
        return values if self.case_sensitive else {name.lower(): value for name, value in values.items()}


def _config_map_values(directory: Path | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if directory is not None and directory.is_dir():
        for path in sorted(directory.iterdir()):  # ConfigMap volumes also hold ..data links: skipped
            if path.name.upper().startswith(ENV_PREFIX) and path.is_file():
                try:
                    values[path.name] = path.read_text(encoding="utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{path}: not UTF-8 text") from exc
    elif directory is not None and directory.exists():
        raise ConfigError(f"${CONFIG_DIR_ENV} names {directory}, which is not a directory")
    return values


def _variables_named_by(settings: BaseModel) -> frozenset[str]:
    """The variables ``*_env`` settings name (shopify.access_token_env...): the user's, whatever their prefix."""
    names = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            names |= _variables_named_by(value)
        elif name.endswith("_env") and isinstance(value, str):
            names.add(value.upper())
    return frozenset(names)


class ConfigError(ValueError):
    """A config file, variable or override is wrong; the message names the key and the problem."""


MAX_CONFIG_VALUES = 100_000
"""More values than any storeflow config holds. YAML aliases share one object however often they are named, so
a few lines of nested aliases load small, then grow to billions of values wherever the settings are written out
whole (``config_json`` of a submitted run): ``storeflow submit`` died out of memory on a 10-line file."""


def _expanded_values(node: Any, limit: int) -> int:
    """How many values ``node`` holds with every alias expanded, counting no further than just past ``limit``."""
    count, stack = 0, [node]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                          "save the file as UTF-8") from exc
    except OSError as exc:  # a directory, no permission
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if _expanded_values(data, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{path}: holds over {MAX_CONFIG_VALUES:,} values once its YAML aliases (*name) are "
                          "expanded; a config that size is an alias bomb, not settings")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: top-level key {key!r} is not a section name (sections are "
                              f"{', '.join(_section_names())})")
    return data


NOT_GIVEN_NUMBER = -1
"""A typed run input left at -1 (or "" for text) keeps the configured value: KFP's local runner cannot pass
``None`` parameters, and every storeflow knob that takes a number is non-negative."""


def _overrides_object(overrides: dict[str, Any] | str | None) -> dict[str, Any]:
    """Overrides as a dict: a dict as given, JSON text parsed (blank: none); anything else a ConfigError."""
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides) if overrides.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config JSON is not valid: {exc}") from exc
    if not isinstance(overrides or {}, dict):
        raise ConfigError("config JSON must be an object")
    return overrides or {}


def run_overrides(config_json: str | dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """``config_json`` with a run's typed inputs (dotted keys, e.g. ``ingest.source``) set over it; an input
    left at its not-given value ("" or :data:`NOT_GIVEN_NUMBER`) keeps what config_json, the environment,
    the mounted ConfigMap or the file say."""
    merged = json.loads(json.dumps(_overrides_object(config_json)))
    for key, value in inputs.items():
        if value is None or value == "" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                            and value == NOT_GIVEN_NUMBER):
            continue
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config JSON sets {part} to a value, but the run input {key} needs an object there")
        node[leaf] = value
    return merged


def load_run_settings(config_json: str, inputs: dict[str, Any]) -> Settings:
    """The settings of one pipeline task: :func:`run_overrides` loaded like any overrides."""
    return load_settings(run_overrides(config_json, inputs))


def load_settings(overrides: dict[str, Any] | str | None = None, path: Path | str | None = None) -> Settings:
    """Load settings from file, environment and ``overrides`` (a dict or its JSON text)."""
    file_path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    if file_path.exists():
        data = _read_file(file_path)
    elif path or os.environ.get(CONFIG_ENV):
        raise ConfigError(f"config file {file_path} does not exist")
    token = _FILE_VALUES.set(data)
    try:
        settings = Settings(**_overrides_object(overrides))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid storeflow config: {problems}") from exc
    except SettingsError as exc:  # what the checks before it did not foresee: still one line, with the cause
        raise ConfigError(f"invalid storeflow config: {exc}: {exc.__cause__ or ''}".rstrip(": ")) from exc
    finally:
        _FILE_VALUES.reset(token)
    # Typos last: a variable that names no setting would otherwise be dropped without a word.
    exempt = _variables_named_by(settings)
    _check_variables(dict(os.environ), "environment", exempt)
    directory = os.environ.get(CONFIG_DIR_ENV)
    _check_variables(_config_map_values(Path(directory) if directory else None), f"file in {directory}",
                     exempt)
    return settings
