"""InferenceService reads and writes through the kubernetes client's CustomObjectsApi.

``kubernetes`` is imported when a connection is made, not when this module is, to keep the CLI fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy.inference_service import GROUP, PLURAL, VERSION, DeployError


CONFLICT_TRIES = 3


@dataclass
class InferenceServices:
    """The InferenceServices of one namespace (the pipeline runner may only get/patch/create there)."""

    api: Any  # kubernetes.client.CustomObjectsApi
    namespace: str

    def get(self, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist yet."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._error("read", name, exc) from exc

    def require(self, name: str) -> dict[str, Any]:
        found = self.get(name)
        if found is None:
            raise DeployError(f"InferenceService {self.namespace}/{name} does not exist: deploy a model version first")
        return found

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        except ApiException as exc:
            raise self._error("create", body["metadata"]["name"], exc) from exc

    def patch(self, name: str, merge_patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (the client sends application/merge-patch+json)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, merge_patch)
        except ApiException as exc:
            raise self._error("patch", name, exc) from exc

    def update(self, name: str, make_patch: Callable[[dict[str, Any]], dict[str, Any]],
               current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Read-modify-write without lost updates: the merge patch made from ``current`` (read if not
        given) carries its ``resourceVersion``, so the API server refuses it with 409 if the object
        changed in between (another rollout, an operator's edit); then the patch is made again from a
        fresh read, up to :data:`CONFLICT_TRIES` times (client-go's RetryOnConflict)."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(1, CONFLICT_TRIES + 1):
            current = current if current is not None else self.require(name)
            patch = make_patch(current)
            version = (current.get("metadata") or {}).get("resourceVersion")
            if version:
                patch = {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": version}}
            try:
                return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)
            except ApiException as exc:
                if exc.status != 409:
                    raise self._error("patch", name, exc) from exc
                if attempt == CONFLICT_TRIES:
                    raise DeployError(f"InferenceService {self.namespace}/{name} kept changing while storeflow "
                                      f"patched it ({CONFLICT_TRIES} conflicts); is another rollout running?") from exc
                current = None
        raise AssertionError("unreachable")

    def _error(self, verb: str, name: str, exc: Any) -> DeployError:
        return DeployError(
            f"cannot {verb} InferenceService {self.namespace}/{name}: HTTP {exc.status} {exc.reason}: {exc.body}"
        )


def connect(settings: Settings, api_client: Any = None) -> InferenceServices:
    """InferenceServices in ``deploy.namespace``; in a pod the service account, elsewhere ~/.kube/config."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as exc:
                raise DeployError(f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})") from exc
        api_client = client.ApiClient()
    return InferenceServices(client.CustomObjectsApi(api_client), settings.deploy.namespace)
