"""Containers for tests, started as a cluster starts them: the project image `make image` builds, UID 1000,
host networking (the servers tests start listen on 127.0.0.1), state on a bind mount at its own path.

Everything here needs a Docker engine; :func:`unavailable` says why there is none, so a test can skip
loudly where containers cannot run at all (.ci/run starts dockerd, so CI runs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE_UID = 1000  # the Dockerfile's USER, and runAsUser of every kustomize container


def unavailable() -> str | None:
    """Why containers cannot run here, or None when a Docker engine answers."""
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # no socket, no daemon, no permission: all mean no containers
        return f"no Docker engine answers ({type(exc).__name__}: {exc}); .ci/run installs and starts dockerd"
    return None


def build_image() -> str:
    """`make image`'s script (a cache hit when nothing changed); returns the reference it built."""
    done = subprocess.run(["bash", str(ROOT / "docker" / "build-image.sh")], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "STOREFLOW_PYTHON": str(ROOT / ".venv" / "bin" / "python")})
    if done.returncode != 0:
        raise RuntimeError(f"make image failed:\n{done.stderr[-6000:]}")
    return done.stdout.strip().splitlines()[-1]


def docker_runner(state_dir: Path):
    """kfp.local's DockerRunner for storeflow tasks.

    Tasks hand each other KFP artifacts (under the pipeline root, which DockerRunner mounts itself), but
    with the embedded defaults MLflow's SQLite file and the Feast file registry are under the state dir, so
    it is mounted at the same path, as a cluster with ``kfp.state_pvc`` mounts its volume at
    ``kfp.state_mount_path``. tests/test_pipeline_artifacts.py runs with no state mount at all. Host networking: a local MLflow, Redis or
    Pushgateway on 127.0.0.1 is reachable from the task.
    """
    from docker.types import Mount
    from kfp import local

    path = str(state_dir)
    return local.DockerRunner(network_mode="host", mounts=[Mount(target=path, source=path, type="bind")])


@contextmanager
def shared_with_image_user(state_dir: Path) -> Iterator[Path]:
    """The state dir as a cluster's volume is for its pods (owned by, or fsGroup of, UID 1000).

    The dir is handed to UID 1000, and while the block runs what this process creates in it stays writable
    for that user too (umask 0): a test runs as root here, and kfp.local creates task directories on the
    host before the container writes into them. Without it a task cannot write its outputs.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for path in [state_dir, *state_dir.rglob("*")]:
            os.chown(path, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
    previous = os.umask(0)
    try:
        yield state_dir
    finally:
        os.umask(previous)


# --- Pods from the rendered overlay -------------------------------------------------------------------
# A pod's containers started with Docker as the kubelet would start them: image, command (entrypoint) and
# args, env with envFrom/valueFrom resolved from the rendered ConfigMaps and test Secrets and $(VAR)
# expanded, volume mounts with their readOnly (ConfigMap and Secret volumes always read-only, as kubelet
# mounts them), runAsUser/runAsGroup/fsGroup, readOnlyRootFilesystem, dropped capabilities, no
# privilege escalation, the memory and CPU limits. What a cluster adds and Docker on one host cannot: each
# pod its own IP. Pods share the host network here, so a Service name is mapped to 127.0.0.1 (--add-host)
# and KServe containers, which all listen on 8080 in their own pods, get their own port through
# ModelServer's --http_port.

KUSTOMIZE = ROOT / "kustomize"
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer leaves the model, read-only
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def render(overlay: str) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)], capture_output=True,
                          text=True, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if not found:
        raise KeyError(f"the rendered overlay has no {kind} {name}")
    return found[0]


@dataclass(frozen=True)
class Pod:
    name: str
    containers: list[dict]
    volumes: list[dict] = field(default_factory=list)
    security: dict = field(default_factory=dict)  # the pod's securityContext


def workload_pod(objects: list[dict], kind: str, name: str) -> Pod:
    spec = find(objects, kind, name)["spec"]["template"]["spec"]
    return Pod(name, spec["containers"], spec.get("volumes", []), spec.get("securityContext", {}))


def transformer_pod(objects: list[dict], isvc: str) -> Pod:
    spec = find(objects, "InferenceService", isvc)["spec"]["transformer"]
    return Pod(f"{isvc}-transformer", spec["containers"], spec.get("volumes", []), spec.get("securityContext", {}))


def predictor_pod(objects: list[dict], isvc: str) -> Pod:
    """The ServingRuntime's container as KServe makes it for this InferenceService: ``{{.Name}}`` filled
    in, the model's env/resources/securityContext over the runtime's, the model at /mnt/models read-only."""
    predictor = find(objects, "InferenceService", isvc)["spec"]["predictor"]
    model = predictor["model"]
    runtime = find(objects, "ServingRuntime", model["runtime"])["spec"]
    container = json.loads(json.dumps(runtime["containers"][0]).replace("{{.Name}}", isvc))
    container["env"] = [*container.get("env", []), *model.get("env", [])]
    for key in ("resources", "securityContext"):
        if key in model:
            container[key] = model[key]
    container.setdefault("volumeMounts", []).append(
        {"name": "kserve-provision-location", "mountPath": KSERVE_MODEL_DIR, "readOnly": True})
    # the runtime's volumes (ServingRuntime spec.volumes) and the predictor's, as KServe puts both in the pod
    volumes = [*runtime.get("volumes", []), *predictor.get("volumes", []),
               {"name": "kserve-provision-location", "emptyDir": {}}]
    return Pod(f"{isvc}-predictor", [container], volumes, predictor.get("securityContext", {}))


@dataclass
class Kubelet:
    """Resolves a pod's references the way the kubelet does, from the rendered objects and test Secrets.

    ``claims`` maps a PVC name to a host dir; ``emptydirs`` may give an emptyDir volume's content (e.g. the
    model the storage initializer would download into ``kserve-provision-location``).
    """

    objects: list[dict]
    secrets: dict[str, dict[str, str]]
    workdir: Path
    claims: dict[str, Path] = field(default_factory=dict)
    emptydirs: dict[str, Path] = field(default_factory=dict)

    def _data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        if kind == "Secret":
            data = self.secrets.get(name)
        else:
            data = next((o.get("data", {}) for o in self.objects
                         if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name), None)
        if data is None and not optional:
            raise LookupError(f"{kind} {name} does not exist: the pod would not start (CreateContainerConfigError)")
        return data

    def env(self, container: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
            env.update({f"{source.get('prefix', '')}{k}": v
                        for k, v in (self._data(kind, ref["name"], ref.get("optional", False)) or {}).items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), str(item["value"]))
                continue
            source = item["valueFrom"]
            kind, ref = ("Secret", source["secretKeyRef"]) if "secretKeyRef" in source else ("ConfigMap", source["configMapKeyRef"])
            data = self._data(kind, ref["name"], ref.get("optional", False))
            if data is not None and ref["key"] in data:
                env[item["name"]] = data[ref["key"]]
            elif not ref.get("optional", False):
                raise LookupError(f"{kind} {ref['name']} has no key {ref['key']} ({item['name']} of {container['name']})")
        return env

    def _volume_source(self, pod: Pod, volume: dict) -> Path:
        """A host dir holding the volume's content, owned by the pod's user where it is writable."""
        target = self.workdir / pod.name / volume["name"]
        if "persistentVolumeClaim" in volume:
            return self.claims[volume["persistentVolumeClaim"]["claimName"]]
        if target.exists():
            return target
        target.mkdir(parents=True)
        for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if key in volume:
                ref = volume[key]
                data = self._data(kind, ref.get("name") or ref.get("secretName"), ref.get("optional", False)) or {}
                paths = {i["key"]: i["path"] for i in ref.get("items", [])} or {k: k for k in data}
                for k, path in paths.items():
                    (target / path).parent.mkdir(parents=True, exist_ok=True)
                    (target / path).write_text(data[k])
                return target
        if "emptyDir" in volume:
            if volume["name"] in self.emptydirs:
                shutil.copytree(self.emptydirs[volume["name"]], target, dirs_exist_ok=True)
            uid = pod.security.get("fsGroup", pod.security.get("runAsUser", IMAGE_UID))
            for path in [target, *target.rglob("*")]:
                os.chown(path, uid, uid) if os.geteuid() == 0 else None
            return target
        raise NotImplementedError(f"volume {volume['name']}: only PVC, ConfigMap, Secret and emptyDir are modelled")

    def docker_run(self, pod: Pod, container: dict, *, hosts: dict[str, str] | None = None,
                   extra_args: list[str] | None = None) -> list[str]:
        """The ``docker run`` command line that starts ``container`` of ``pod`` as the kubelet would."""
        security = {**pod.security, **container.get("securityContext", {})}
        volumes = {v["name"]: v for v in pod.volumes}
        cmd = ["docker", "run", "--detach", "--network", "host", "--name", f"{pod.name}-{container['name']}"]
        if "runAsUser" in security:
            cmd += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
        if "fsGroup" in pod.security:
            cmd += ["--group-add", str(pod.security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            cmd.append("--read-only")
        if "ALL" in security.get("capabilities", {}).get("drop", []):
            cmd += ["--cap-drop", "ALL"]
        if security.get("allowPrivilegeEscalation") is False:
            cmd += ["--security-opt", "no-new-privileges"]
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:  # the kubelet's cgroup: beyond it the container is OOM-killed
            cmd += ["--memory", _bytes(limits["memory"]), "--memory-swap", _bytes(limits["memory"])]
        if "cpu" in limits:
            cmd += ["--cpus", _cpus(limits["cpu"])]
        for name, address in (hosts or {}).items():
            cmd += ["--add-host", f"{name}:{address}"]
        env = self.env(container)
        for key, value in env.items():
            cmd += ["--env", f"{key}={value}"]
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            source = self._volume_source(pod, volume) / mount.get("subPath", "")
            read_only = mount.get("readOnly") or "configMap" in volume or "secret" in volume
            cmd += ["--mount", f"type=bind,source={source},target={mount['mountPath']}" + (",readonly" if read_only else "")]
        expand = lambda text: _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), str(text))  # noqa: E731
        command, args = [expand(c) for c in container.get("command", [])], [expand(a) for a in container.get("args", [])]
        if command:
            cmd += ["--entrypoint", command[0]]
        return [*cmd, container["image"], *command[1:], *args, *(extra_args or [])]


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _bytes(quantity: str) -> str:
    """A Kubernetes memory quantity (``512Mi``, ``1G``, ``1073741824``) in bytes, for docker --memory."""
    text = str(quantity)
    for suffix, factor in {**_BINARY, **_DECIMAL}.items():
        if text.endswith(suffix):
            return str(int(float(text[: -len(suffix)]) * factor))
    return str(int(float(text)))


def _cpus(quantity: str) -> str:
    """A Kubernetes CPU quantity (``500m``, ``2``) as docker --cpus."""
    text = str(quantity)
    return str(float(text[:-1]) / 1000 if text.endswith("m") else float(text))


def start(cmd: list[str]) -> str:
    """Runs a ``docker run --detach`` line; returns the container id."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"docker run failed: {done.stderr.strip()}")
    return done.stdout.strip()


def state(container: str) -> dict:
    done = subprocess.run(["docker", "inspect", "--format", "{{json .State}}", container], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def logs(container: str) -> str:
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    return done.stdout + done.stderr


def remove(container: str) -> None:
    subprocess.run(["docker", "rm", "--force", container], capture_output=True)
