"""The training pipeline: ingest → validate → features → train → evaluate → register.

Every stage is a storeflow component in the project image. Settings travel as one ``config_json``
parameter, so a run on a cluster and a ``kfp.local`` run on a laptop read the same config model.
The champion alias moves inside ``register`` (decided by ``evaluate``), never by a pipeline branch,
so no runner's condition handling can promote a losing challenger.
"""

from kfp import dsl

from storeflow.components.evaluate.component import evaluate
from storeflow.components.features.component import features
from storeflow.components.ingest.component import ingest
from storeflow.components.register.component import register
from storeflow.components.train.component import train
from storeflow.components.validate.component import validate

PIPELINE_NAME = "storeflow-training"


@dsl.pipeline(name=PIPELINE_NAME, description="Shopify store data to a registered, evaluated propensity model.")
def training_pipeline(config_json: str = "{}") -> str:
    ingested = ingest(config_json=config_json).set_display_name("ingest")
    validated = validate(config_json=config_json, snapshot=ingested.output).set_display_name("validate")
    built = features(config_json=config_json, snapshot=validated.outputs["Output"]).set_display_name("features")
    trained = train(config_json=config_json, features=built.output).set_display_name("train")
    evaluated = evaluate(config_json=config_json, features=built.output, trained=trained.output)
    evaluated.set_display_name("evaluate")
    registered = register(
        config_json=config_json, trained=trained.output, evaluation=evaluated.outputs["evaluation"]
    ).set_display_name("register")
    return registered.output


STAGES = ("ingest", "validate", "features", "train", "evaluate", "register")
