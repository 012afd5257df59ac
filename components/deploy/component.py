"""KFP component: roll a newly promoted champion out (KServe canary, or a canary on `storeflow serve`)."""

from storeflow.components.container import component


@component
def deploy(registration: str, config_json: str = "{}") -> str:
    """Roll a newly promoted champion out (KServe canary, or a canary on `storeflow serve`).

    The registration names the model: the propensity model (registry.model_name) rolls out to its
    InferenceService, judged on errors, latency and score shift; the product recommender
    (recommendations.model_name) to the recommender's, judged on errors, latency and click-through rate
    (locally on two `storeflow serve-recommendations` servers with replayed shoppers).

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        registration: The register task's JSON; a version that did not become champion is not rolled out.

    Returns:
        The rollout outcome as JSON.
    """
    import json

    from storeflow.components.config import load_settings

    settings = load_settings(config_json)
    registered = json.loads(registration)
    if registered.get("model_name") == settings.recommendations.model_name:
        from storeflow.components.recommend.deploy import deploy_recommender

        outcome = deploy_recommender(settings, registered)
        for step in outcome.get("steps") or []:
            print(f"  canary {step['percent']}%: {step['action']}: {'; '.join(step['reasons'])}")
        print(f"deploy {registered['model_name']} v{registered['version']}: {outcome.get('outcome')}"
              + (f" ({'; '.join(outcome['reasons'])})" if outcome.get("reasons") else ""))
        return json.dumps(outcome, default=str)
    if not registered["promoted"]:
        print(f"v{registered['version']} did not become champion: nothing to roll out")
        return json.dumps({"outcome": "skipped", "model_version": registered["version"]})
    if settings.deploy.target == "kserve":
        from storeflow.components.deploy import deploy_stage

        outcome = deploy_stage(settings, registered["version"], registered.get("run_id", ""))
    else:
        from storeflow.components.deploy.local import deploy_local

        outcome = deploy_local(settings, registered["version"], registered.get("run_id", ""),
                               registered.get("previous_champion"))
    for step in outcome.get("steps") or []:
        print(f"  canary {step['percent']}%: {step['action']}: {'; '.join(step['reasons'])}")
    print(f"deploy v{registered['version']}: {outcome.get('outcome')}")
    return json.dumps(outcome)
