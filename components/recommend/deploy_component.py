"""KFP component: roll the registered recommender champion out (KServe canary judged on CTR, or locally)."""

from storeflow.components.container import component


@component
def deploy_recommender(registration: str, config_json: str = "{}") -> str:
    """Roll a newly promoted recommender out: its KServe InferenceService (a canary through deploy.canary_steps,
    judged on errors, p99 latency and click-through rate) or, on target local, the same canary on two local
    `storeflow serve-recommendations` servers with replayed shoppers, the outcome on the champion alias and in
    the record `storeflow rollback` reads.

    Args:
        registration: The register_recommender task's JSON; a version that did not become champion is not
            rolled out.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.

    Returns:
        The rollout outcome as JSON.
    """
    import json

    from storeflow.components.config import load_settings
    from storeflow.components.recommend.deploy import deploy_recommender as run

    registered = json.loads(registration)
    outcome = run(load_settings(config_json), registered)
    for step in outcome.get("steps") or []:
        print(f"  canary {step['percent']}%: {step['action']}: {'; '.join(step['reasons'])}")
    print(f"deploy {registered['model_name']} v{registered['version']}: {outcome.get('outcome')}"
          + (f" ({'; '.join(outcome['reasons'])})" if outcome.get("reasons") else ""))
    return json.dumps(outcome, default=str)
