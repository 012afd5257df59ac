"""KFP component: register a new model version; move the champion alias only on a win."""

from storeflow.components.container import component


@component
def register(config_json: str, trained: str, evaluation: str) -> str:
    """Returns the RegistrationResult as JSON (model name, version, whether it became champion)."""
    from storeflow.components.config import load_settings
    from storeflow.components.evaluate import EvaluationResult
    from storeflow.components.register import register as run
    from storeflow.components.train import TrainResult

    result = run(load_settings(config_json), TrainResult.from_json(trained), EvaluationResult.from_json(evaluation))
    print(f"registered {result.model_name} v{result.version}; champion is v{result.champion_version}")
    return result.to_json()
