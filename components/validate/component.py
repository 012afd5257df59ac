"""KFP component: the schema and quality gate; a failure stops the run before anything is trained."""

from kfp import dsl

from storeflow.components.container import component


@component
def validate(config_json: str, snapshot: str, report: dsl.Output[dsl.Markdown]) -> str:
    """Returns the snapshot again once it passes, so later stages depend on the gate."""
    from storeflow.components.config import load_settings
    from storeflow.components.validate import ValidationFailed
    from storeflow.components.validate import validate as run

    settings = load_settings(config_json)
    try:
        result = run(snapshot, settings.validate_)
    except ValidationFailed as failed:
        print(str(failed))
        raise
    with open(report.path, "w") as out:
        out.write(f"```\n{result}\n```\n")
    return snapshot
