"""KFP component: register a new model version; move the champion alias only on a win."""

from kfp import dsl

from storeflow.components.container import component


@component
def register(model: dsl.Input[dsl.Model], evaluation: str, registered_model: dsl.Output[dsl.Model],
             model_card: dsl.Output[dsl.Markdown], config_json: str = "{}") -> str:
    """Register the trained model as a new version; move the champion alias only when evaluation says so.

    One task for every model family the Model artifact names: the propensity model (train's Model, already
    logged to MLflow) or the product recommender (train_recommender's Model, kind recommendations in its
    metadata: its files are logged as a pyfunc and registered as recommendations.model_name).

    Args:
        model: The train task's Model (its MLflow model URI in the metadata), or train_recommender's (the
            fitted item-item files).
        evaluation: The evaluate task's JSON (EvaluationResult, or for a recommender evaluate_recommender's
            report and decision): the promotion decision.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        registered_model: The same model as the registered version: metadata has its models:/ URI, version
            and whether it became champion.
        model_card: The version's model card (Markdown): status, URI, training data, holdout evaluation.

    Returns:
        The RegistrationResult as JSON (model name, version, whether it became champion).
    """
    from storeflow.components.artifacts import describe, publish, result_of
    from storeflow.components.config import load_settings
    from storeflow.components.evaluate import EvaluationResult
    from storeflow.components.register import register as run
    from storeflow.components.register.card import model_card as card
    from storeflow.components.train import TrainResult

    found = result_of(model.metadata, "model")
    if found.get("kind") == "recommendations":
        import json
        from dataclasses import asdict
        from pathlib import Path

        from storeflow.components.config import load_run_settings
        from storeflow.components.recommend.registry import register_evaluated

        judged = json.loads(evaluation)
        settings = load_run_settings(config_json, {"recommendations.neighbours": int(found["neighbours"]),
                                                  "recommendations.k": int(judged.get("k", -1)),
                                                  "recommendations.horizon_days": int(judged.get("horizon_days", -1))})
        registered, text = register_evaluated(settings, Path(model.path), judged)
        publish(Path(model.path), registered_model.path)
        result = json.dumps({**asdict(registered), "beats_baselines": judged["beats_baselines"]})
        describe(registered_model.metadata, result, model_uri=f"models:/{registered.model_name}/{registered.version}",
                 version=registered.version, champion=registered.promoted, run_id=registered.run_id)
        with open(model_card.path, "w") as out:
            out.write(text)
        print(text.splitlines()[2])
        return result
    trained = TrainResult(**found)
    judged = EvaluationResult.from_json(evaluation)
    result = run(load_settings(config_json), trained, judged)
    publish(model.path, registered_model.path)
    describe(registered_model.metadata, result.to_json(), model_uri=f"models:/{result.model_name}/{result.version}",
             version=result.version, champion=result.promoted, run_id=trained.run_id)
    with open(model_card.path, "w") as out:
        out.write(card(result, trained, judged, model.metadata.get("dataset_hash", ""),
                       model.metadata.get("estimator", "")))
    print(f"registered {result.model_name} v{result.version}; champion is v{result.champion_version}")
    return result.to_json()
