"""The training pipeline: ingest → validate → features → train → evaluate → register → deploy.

Every stage is a storeflow component in the project image. Settings travel as one ``config_json``
parameter, so a run on a cluster and a ``kfp.local`` run on a laptop read the same config model.
The champion alias moves inside ``register`` (decided by ``evaluate``), never by a pipeline branch,
and ``deploy`` rolls out only a version ``register`` made champion. No pipeline branch decides either:
kfp.local (measured on 2.17.0) fails to resolve a ``dsl.If`` on an upstream task's output and silently skips
the branch, so a decision made by a component holds the same on every runner.
"""

from kfp import dsl, kubernetes

from storeflow.components.config import CONFIG_DIR_ENV, FEAST_REGISTRY_URL_ENV, REDIS_CONNECTION_STRING_ENV, Settings
from storeflow.components.deploy.component import deploy

from storeflow.components.evaluate.component import evaluate
from storeflow.components.features.component import features
from storeflow.components.ingest.component import ingest
from storeflow.components.register.component import register
from storeflow.components.train.component import train
from storeflow.components.validate.component import validate

PIPELINE_NAME = "storeflow-training"
STAGES = ("ingest", "validate", "features", "train", "evaluate", "register", "deploy")

# Tasks that call a network service, so a failed attempt is often a passing outage worth retrying:
# ingest (the Shopify Admin API), train/evaluate/register (the MLflow tracking server and registry),
# deploy (KServe's API server, Prometheus and MLflow), monitor (MLflow, the prediction-log store),
# retrain (the KFP API), the recommender's evaluate (the shipped feedback logs, the MLflow registry), and the
# risk deploy (KServe, Prometheus, the risk log store). validate, features and the recommender's train read only the snapshot, the volume and Feast's
# stores; a failure there is a data error that a retry repeats.
RETRIED = frozenset({"ingest", "train", "evaluate", "register", "deploy", "monitor", "retrain", "evaluate_recommender",
                     "risk", "risk_deploy"})

# Tasks whose output their inputs determine, with no side effect a cache hit would skip (see on_cluster).
CACHED = frozenset({"validate"})

# Where the config is not given (kfp.local runs, the module-level pipelines), the config model's defaults:
# never the environment or a config file read at import time.
DEFAULTS = Settings.model_construct()


def on_cluster(task: dsl.PipelineTask, name: str, settings: Settings = DEFAULTS) -> dsl.PipelineTask:
    """Cluster wiring kfp.local ignores, from the settings the pipeline is compiled with: the project image,
    the state volume, the storeflow-config ConfigMap (read as the environment), the display name, CPU/memory
    requests and limits and a timeout
    (``kfp.resources.<name>``), retries with backoff for the tasks in :data:`RETRIED` (``kfp.retry``).

    Caching is on only where a task's inputs determine its output and it has no side effect: ``validate``
    (the snapshot artifact and the config decide the report; a failure is not cached). Off everywhere
    else: ``ingest`` reads a live store; ``features`` writes Feast's registry and online store, which a
    cache hit would skip; ``train`` and ``evaluate`` log runs to MLflow and compare with the *current*
    champion; ``register``, ``deploy``, ``monitor`` and ``retrain`` change or read registry, serving and
    log state. A run can still turn caching off for all (``kfp.enable_caching: false``).

    The state dir is task-private scratch (an emptyDir) when ``kfp.state_pvc`` is empty: stages hand each
    other KFP artifacts, and what outlives a run is in MLflow and Feast.
    """
    kfp_cfg = settings.kfp
    sized = kfp_cfg.resources[name]
    task.set_container_image(settings.image.reference)
    if kfp_cfg.state_pvc:
        kubernetes.mount_pvc(task, pvc_name=kfp_cfg.state_pvc, mount_path=str(kfp_cfg.state_mount_path))
    else:
        kubernetes.empty_dir_mount(task, volume_name="storeflow-state", mount_path=str(kfp_cfg.state_mount_path))
    # The overlay's STOREFLOW_* values (canary steps, replicas, URLs) reach every task; optional, so a
    # cluster without the ConfigMap runs on what the pipeline was compiled with and config_json.
    kubernetes.use_config_map_as_volume(task, config_map_name=settings.deploy.config_map,
                                        mount_path=str(kfp_cfg.config_mount_path), optional=True)
    task.set_env_variable(CONFIG_DIR_ENV, str(kfp_cfg.config_mount_path))
    task.set_cpu_request(sized.cpu_request).set_cpu_limit(sized.cpu_limit)
    task.set_memory_request(sized.memory_request).set_memory_limit(sized.memory_limit)
    kubernetes.set_timeout(task, sized.timeout_seconds)
    if name in RETRIED and kfp_cfg.retry.num_retries:
        retry = kfp_cfg.retry
        task.set_retry(num_retries=retry.num_retries, backoff_duration=retry.backoff_duration,
                       backoff_factor=retry.backoff_factor, backoff_max_duration=retry.backoff_max_duration)
    return task.set_display_name(name).set_caching_options(name in CACHED)


def shopify_credentials(task: dsl.PipelineTask, settings: Settings = DEFAULTS) -> dsl.PipelineTask:
    """The Admin API token reaches the ingest task only, as env from a Secret: never a parameter or a log.

    Optional, so runs that ingest a synthetic store or files need no Secret.
    """
    shopify = settings.shopify
    return kubernetes.use_secret_as_env(
        task, secret_name=shopify.credentials_secret,
        secret_key_to_env={"shop-domain": shopify.shop_domain_env, "access-token": shopify.access_token_env},
        optional=True,
    )


def ingested_and_validated(config_json: str, source: str, path: str,
                           settings: Settings = DEFAULTS) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """Every pipeline's first two tasks: ingest (with the Admin API token) and validate of its snapshot.
    Later tasks read ``ingest.outputs["snapshot"]`` and run ``.after(validate)``: nothing is built from a
    snapshot validate has not passed."""
    ingested = shopify_credentials(on_cluster(ingest(config_json=config_json, source=source, path=path), "ingest",
                                              settings), settings)
    validated = on_cluster(validate(config_json=config_json, snapshot=ingested.outputs["snapshot"]), "validate",
                           settings)
    return ingested, validated


def feast_credentials(task: dsl.PipelineTask, settings: Settings = DEFAULTS) -> dsl.PipelineTask:
    """The online store's and the Feast registry's connection values reach the tasks that open Feast as env
    from their Secrets, under the names a cluster config refers to (``${REDIS_CONNECTION_STRING}``,
    ``${FEAST_REGISTRY_URL}``), so config_json carries only the names. Optional: the embedded stores need none.
    """
    kubernetes.use_secret_as_env(task, secret_name=settings.deploy.online_store_secret,
                                 secret_key_to_env={"connection-string": REDIS_CONNECTION_STRING_ENV}, optional=True)
    return kubernetes.use_secret_as_env(task, secret_name=settings.features.feast.registry_secret,
                                        secret_key_to_env={"url": FEAST_REGISTRY_URL_ENV}, optional=True)


def object_store_credentials(task: dsl.PipelineTask, settings: Settings = DEFAULTS) -> dsl.PipelineTask:
    """The object store's login and endpoint (the MLflow bucket's Secret) reach a task that reads the prediction
    log serving shipped there (``serving.prediction_log_store``). Optional: workload identity needs none."""
    from storeflow.components.deploy.inference_service import OBJECT_STORE_KEYS

    return kubernetes.use_secret_as_env(task, secret_name=settings.serving.prediction_log_store_secret,
                                        secret_key_to_env={key: key for key in OBJECT_STORE_KEYS}, optional=True)


def mlflow_credentials(task: dsl.PipelineTask, settings: Settings = DEFAULTS) -> dsl.PipelineTask:
    """A tracking server's login reaches the tasks that use MLflow as the variables MLflow reads itself.

    Optional, so an unauthenticated tracking server (the kustomize base's) needs no Secret.
    """
    return kubernetes.use_secret_as_env(
        task, secret_name=settings.registry.credentials_secret,
        secret_key_to_env={"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
        optional=True,
    )


def build_training_pipeline(settings: Settings = DEFAULTS):
    """The training pipeline wired for the cluster ``settings`` describe (image, volume, Secrets, resources)."""

    def cluster(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        return on_cluster(task, name, settings)

    def mlflow(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return mlflow_credentials(task, settings)

    def feast(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return feast_credentials(task, settings)

    @dsl.pipeline(name=PIPELINE_NAME, description="Shopify store data to a registered, evaluated propensity model.")
    def training_pipeline(ingest_source: str = "", ingest_path: str = "", estimator: str = "",
                          label_horizon_days: int = -1, promotion_margin: float = -1.0,
                          config_json: str = "{}") -> str:
        """Ingest, validate, build features, train, evaluate, register and deploy one model version.

        Every input left at its default ('' or -1) keeps the cluster's configured value (the storeflow-config
        ConfigMap each task mounts, then the compiled defaults).

        Args:
            ingest_source: Where the orders come from: shopify (the Admin API's bulk export), jsonl, csv
                (Shopify's orders CSV export) or synthetic.
            ingest_path: The export file or directory for jsonl/csv, as the tasks see it (on the state volume).
            estimator: A scikit-learn classifier as module.Class with predict_proba.
            label_horizon_days: A customer is a repeat buyer when they order within this many days after a cutoff.
            promotion_margin: How much the challenger must beat the champion by (with a CI above zero) to be promoted.
            config_json: Advanced: any storeflow settings as a JSON object (the storeflow config model, e.g.
                {"validate": {"warn_only": ["guest_orders"]}}), over the ConfigMap; the inputs above win over it.
        """
        horizon = {"label_horizon_days": label_horizon_days}
        ingested, validated = ingested_and_validated(config_json, ingest_source, ingest_path, settings)
        snapshot = ingested.outputs["snapshot"]
        built = feast(cluster(features(config_json=config_json, snapshot=snapshot, **horizon), "features"))
        built.after(validated)  # the gate: nothing is built from a snapshot validate has not passed
        training_set = built.outputs["training_set"]
        trained = mlflow(cluster(train(config_json=config_json, training_set=training_set, estimator=estimator,
                                       baseline_model=built.outputs["baseline_model"], **horizon), "train"))
        evaluated = mlflow(cluster(
            evaluate(config_json=config_json, training_set=training_set, model=trained.outputs["model"],
                     promotion_margin=promotion_margin, **horizon), "evaluate"))
        registered = mlflow(cluster(
            register(config_json=config_json, model=trained.outputs["model"],
                     evaluation=evaluated.outputs["evaluation"]),
            "register",
        ))
        registration = registered.outputs["Output"]
        # deploy target local serves through Feast; kserve only reads MLflow.
        feast(mlflow(cluster(deploy(config_json=config_json, registration=registration), "deploy")))
        return registration

    return training_pipeline


# kfp.local runs (`storeflow run`, tests) ignore the cluster wiring; compile builds from its own settings.
training_pipeline = build_training_pipeline()
