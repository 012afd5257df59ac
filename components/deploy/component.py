"""KFP component: roll a newly promoted champion out (KServe canary, or a canary on `storeflow serve`)."""

from storeflow.components.container import component


@component
def deploy(registration: str, config_json: str = "{}") -> str:
    """Roll a newly promoted champion out (KServe canary, or a canary on `storeflow serve`).

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        registration: RegistrationResult JSON from the register task; a version that did not become
            champion is not rolled out.

    Returns:
        The rollout outcome as JSON.
    """
    import json

    from storeflow.components.config import load_settings

    settings = load_settings(config_json)
    registered = json.loads(registration)
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
