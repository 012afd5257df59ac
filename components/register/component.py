"""KFP component: register a new model version; move the champion alias only on a win."""

from storeflow.components.container import component


@component
def register(trained: str, evaluation: str, config_json: str = "{}") -> str:
    """Register the trained model as a new version; move the champion alias only when evaluation says so.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        trained: TrainResult JSON from the train task.
        evaluation: EvaluationResult JSON from the evaluate task (the promotion decision).

    Returns:
        The RegistrationResult as JSON (model name, version, whether it became champion).
    """
    from storeflow.components.config import load_settings
    from storeflow.components.evaluate import EvaluationResult
    from storeflow.components.register import register as run
    from storeflow.components.train import TrainResult

    result = run(load_settings(config_json), TrainResult.from_json(trained), EvaluationResult.from_json(evaluation))
    print(f"registered {result.model_name} v{result.version}; champion is v{result.champion_version}")
    return result.to_json()
