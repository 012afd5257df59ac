"""The training pipeline: ingest → validate → features → train → evaluate → register → deploy.

Every stage is a storeflow component in the project image. Settings travel as one ``config_json``
parameter, so a run on a cluster and a ``kfp.local`` run on a laptop read the same config model.
The champion alias moves inside ``register`` (decided by ``evaluate``), never by a pipeline branch,
and ``deploy`` rolls out only a version ``register`` made champion. No pipeline branch decides either:
kfp.local (measured on 2.17.0) fails to resolve a ``dsl.If`` on an upstream task's output and silently skips
the branch, so a decision made by a component holds the same on every runner.
"""

from kfp import dsl, kubernetes

from storeflow.components.config import FEAST_REGISTRY_URL_ENV, REDIS_CONNECTION_STRING_ENV, load_settings
from storeflow.components.deploy.component import deploy

from storeflow.components.evaluate.component import evaluate
from storeflow.components.features.component import features
from storeflow.components.ingest.component import ingest
from storeflow.components.register.component import register
from storeflow.components.train.component import train
from storeflow.components.validate.component import validate

PIPELINE_NAME = "storeflow-training"
STAGES = ("ingest", "validate", "features", "train", "evaluate", "register", "deploy")


def on_cluster(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Cluster wiring kfp.local ignores: the shared state volume, the display name, no cache.

    Caching stays off: stages read external state (Feast, MLflow), so equal inputs need not mean
    equal results.
    """
    kfp_cfg = load_settings().kfp
    kubernetes.mount_pvc(task, pvc_name=kfp_cfg.state_pvc, mount_path=str(kfp_cfg.state_mount_path))
    return task.set_display_name(name).set_caching_options(False)


def shopify_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The Admin API token reaches the ingest task only, as env from a Secret: never a parameter or a log.

    Optional, so runs that ingest a synthetic store or files need no Secret.
    """
    shopify = load_settings().shopify
    return kubernetes.use_secret_as_env(
        task, secret_name=shopify.credentials_secret,
        secret_key_to_env={"shop-domain": shopify.shop_domain_env, "access-token": shopify.access_token_env},
        optional=True,
    )


def feast_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The online store's and the Feast registry's connection values reach the tasks that open Feast as env
    from their Secrets, under the names a cluster config refers to (``${REDIS_CONNECTION_STRING}``,
    ``${FEAST_REGISTRY_URL}``), so config_json carries only the names. Optional: the embedded stores need none.
    """
    settings = load_settings()
    kubernetes.use_secret_as_env(task, secret_name=settings.deploy.online_store_secret,
                                 secret_key_to_env={"connection-string": REDIS_CONNECTION_STRING_ENV}, optional=True)
    return kubernetes.use_secret_as_env(task, secret_name=settings.features.feast.registry_secret,
                                        secret_key_to_env={"url": FEAST_REGISTRY_URL_ENV}, optional=True)


def mlflow_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A tracking server's login reaches the tasks that use MLflow as the variables MLflow reads itself.

    Optional, so an unauthenticated tracking server (the kustomize base's) needs no Secret.
    """
    return kubernetes.use_secret_as_env(
        task, secret_name=load_settings().registry.credentials_secret,
        secret_key_to_env={"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
        optional=True,
    )


@dsl.pipeline(name=PIPELINE_NAME, description="Shopify store data to a registered, evaluated propensity model.")
def training_pipeline(config_json: str = "{}") -> str:
    ingested = shopify_credentials(on_cluster(ingest(config_json=config_json), "ingest"))
    validated = on_cluster(validate(config_json=config_json, snapshot=ingested.output), "validate")
    built = feast_credentials(on_cluster(features(config_json=config_json, snapshot=validated.outputs["Output"]),
                                         "features"))
    trained = mlflow_credentials(on_cluster(train(config_json=config_json, features=built.output), "train"))
    evaluated = mlflow_credentials(on_cluster(
        evaluate(config_json=config_json, features=built.output, trained=trained.output), "evaluate"))
    registered = mlflow_credentials(on_cluster(
        register(config_json=config_json, trained=trained.output, evaluation=evaluated.outputs["evaluation"]),
        "register",
    ))
    # deploy target local serves through Feast; kserve only reads MLflow.
    feast_credentials(mlflow_credentials(on_cluster(deploy(config_json=config_json, registration=registered.output),
                                                    "deploy")))
    return registered.output
