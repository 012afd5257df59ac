"""The KServe transformer (the endpoint every Shopify extension calls) starts with what its rendered spec
gives it: every Secret key, ConfigMap value and mounted feature_store.yaml reference it needs is there.

Found running the production overlay's pods: the spec had neither the app secret nor the client id (the
transformer exited with "Shopify auth is on but $SHOPIFY_API_SECRET ... is not set") and no
FEAST_REGISTRY_URL for the SQL registry its mounted feature_store.yaml names."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from test_kustomize import OVERLAYS, needs_kubectl, render

from storeflow.components.config import load_settings
from storeflow.components.deploy.inference_service import transformer_spec
from storeflow.serving.auth import ShopifyVerifier

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _config_maps(objects) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def resolved_env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it, Secret values replaced by a marker."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"secret:{ref['name']}/{ref['key']}"
        else:
            env[var["name"]] = config_maps[var["valueFrom"]["configMapKeyRef"]["name"]][
                var["valueFrom"]["configMapKeyRef"]["key"]]
    return env


def _transformer(objects) -> tuple[dict[str, Any], dict[str, Any]]:
    isvc = next(o for o in objects if o["kind"] == "InferenceService" and o["metadata"]["name"] == "storeflow-repeat-purchase")
    return isvc["spec"]["transformer"], isvc["spec"]["transformer"]["containers"][0]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_transformer_has_the_app_secret_and_client_id(overlay: str, monkeypatch) -> None:
    objects = render(overlay)
    _, container = _transformer(objects)
    env = resolved_env(container, _config_maps(objects))
    for name in [n for n in os.environ if n.startswith(("STOREFLOW_", "SHOPIFY_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    verifier = ShopifyVerifier.from_settings(settings)  # raised ValueError before the spec carried them
    assert env[settings.serving.shopify_secret_env] == "secret:storeflow-shopify-app/api-secret"
    assert settings.serving.shopify_client_id == "secret:storeflow-shopify-app/client-id"
    assert verifier.app is not None


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_mounted_feature_store_yaml_names_is_set(overlay: str) -> None:
    objects = render(overlay)
    pod, container = _transformer(objects)
    config_maps = _config_maps(objects)
    env = resolved_env(container, config_maps)
    mounted = {m["name"] for m in container["volumeMounts"]}
    texts = [text for v in pod["volumes"] if v["name"] in mounted and "configMap" in v
             for text in config_maps[v["configMap"]["name"]].values()]
    named = {ref for text in texts for ref in REFERENCE.findall(text)}
    assert "FEAST_REGISTRY_URL" in named  # the SQL registry the transformer reads
    assert named <= set(env), f"unset in the transformer: {sorted(named - set(env))}"


def test_the_deploy_step_writes_the_same_secret_references() -> None:
    """What the pipeline's deploy task patches in must keep them too (test_kustomize compares it to the base)."""
    env = {var["name"]: var.get("valueFrom", {}).get("secretKeyRef") for var in
           transformer_spec(load_settings())["containers"][0]["env"]}
    assert env["SHOPIFY_API_SECRET"] == {"name": "storeflow-shopify-app", "key": "api-secret"}
    assert env["STOREFLOW_SERVING__SHOPIFY_CLIENT_ID"] == {"name": "storeflow-shopify-app", "key": "client-id"}
    assert env["FEAST_REGISTRY_URL"] == {"name": "storeflow-feast-registry", "key": "url"}
