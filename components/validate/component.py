"""KFP component: the schema and quality gate; a failure stops the run before anything is trained."""

from kfp import dsl

from storeflow.components.container import component


@component
def validate(snapshot: dsl.Input[dsl.Dataset], report: dsl.Output[dsl.Markdown], config_json: str = "{}"):
    """Check the snapshot's schema and quality; fail the run before anything is trained.

    Later stages read the same snapshot and run after this task (``.after``), so the gate holds without
    copying the snapshot again.

    Args:
        snapshot: The snapshot Dataset written by ingest.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        report: The validation report (Markdown).
    """
    from storeflow.components.config import load_settings
    from storeflow.components.validate import ValidationFailed
    from storeflow.components.validate import validate as run

    settings = load_settings(config_json)
    try:
        result = run(snapshot.path, settings.validate_)
    except ValidationFailed as failed:
        print(str(failed))
        raise
    with open(report.path, "w") as out:
        out.write(f"```\n{result}\n```\n")
