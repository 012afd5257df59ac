"""The training pipeline: ingest → validate → features → train → evaluate → register → deploy.

Every stage is a storeflow component in the project image. Settings travel as one ``config_json``
parameter, so a run on a cluster and a ``kfp.local`` run on a laptop read the same config model.
The champion alias moves inside ``register`` (decided by ``evaluate``), never by a pipeline branch,
and ``deploy`` rolls out only a version ``register`` made champion. No pipeline branch decides either:
kfp.local (measured on 2.17.0) fails to resolve a ``dsl.If`` on an upstream task's output and silently skips
the branch, so a decision made by a component holds the same on every runner.
"""

from kfp import dsl, kubernetes

from storeflow.components.config import load_settings
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


@dsl.pipeline(name=PIPELINE_NAME, description="Shopify store data to a registered, evaluated propensity model.")
def training_pipeline(config_json: str = "{}") -> str:
    ingested = shopify_credentials(on_cluster(ingest(config_json=config_json), "ingest"))
    validated = on_cluster(validate(config_json=config_json, snapshot=ingested.output), "validate")
    built = on_cluster(features(config_json=config_json, snapshot=validated.outputs["Output"]), "features")
    trained = on_cluster(train(config_json=config_json, features=built.output), "train")
    evaluated = on_cluster(evaluate(config_json=config_json, features=built.output, trained=trained.output),
                           "evaluate")
    registered = on_cluster(
        register(config_json=config_json, trained=trained.output, evaluation=evaluated.outputs["evaluation"]),
        "register",
    )
    on_cluster(deploy(config_json=config_json, registration=registered.output), "deploy")
    return registered.output
