"""One run of a compiled pipeline on a Kubeflow Pipelines API, with ``kfp.Client``.

The run gets the submitter's settings as its ``config_json``, with the state dir moved to where tasks
mount the state volume. Passwords are never in it: connection settings refer to the variables the tasks get
from Kubernetes Secrets (``${REDIS_CONNECTION_STRING}``, ``${FEAST_REGISTRY_URL}``). A token comes from ``--token`` or, in-cluster, the projected service-account
token file; otherwise the client's own auth applies (e.g. a port-forwarded, unauthenticated API).

Which package to run is the caller's: :mod:`storeflow.pipelines.submit` by pipeline name, monitoring's
retraining (:mod:`storeflow.pipelines.retraining`) the training pipeline.
"""

from __future__ import annotations

import json
import warnings

from dataclasses import dataclass
from pathlib import Path

from storeflow.components.config import FEAST_REGISTRY_URL_ENV, REDIS_CONNECTION_STRING_ENV, Settings
from storeflow.components.features.repo import connection_settings
from storeflow.components.secrets import references
from storeflow.pipelines.api_errors import api_errors, not_the_api, probe

CLUSTER_VARIABLES = frozenset({REDIS_CONNECTION_STRING_ENV, FEAST_REGISTRY_URL_ENV})  # see training.feast_credentials


@dataclass(frozen=True)
class Submitted:
    run_id: str
    url: str


def cluster_config_json(settings: Settings) -> str:
    """The settings a run's tasks get as ``config_json``: the values the submitter set, state on the
    mounted volume; the rest comes from the namespace's storeflow-config ConfigMap, then the defaults.

    Fails, before anything is sent, when a connection setting refers to a variable the tasks will not have
    (e.g. the submitter's own ``${STOREFLOW_...}``): the run would fail later, deep in a task.
    """
    for key, value in connection_settings(settings):
        if unknown := [name for name in references(value) if name not in CLUSTER_VARIABLES]:
            raise ValueError(f"{key} refers to {', '.join(unknown)}, which cluster tasks do not have; on a "
                             f"cluster refer to {' or '.join(f'${{{v}}}' for v in sorted(CLUSTER_VARIABLES))} "
                             f"(Secrets {settings.deploy.online_store_secret}, {settings.features.feast.registry_secret})")
    # Only what the submitter set (config file, environment, --set): everything else is the cluster's own,
    # from the storeflow-config ConfigMap every task mounts, which a full dump of defaults would override.
    sent = json.loads(settings.model_dump_json(by_alias=True, exclude_none=True, exclude_unset=True))
    sent.setdefault("project", {})["state_dir"] = str(settings.kfp.state_mount_path)
    return json.dumps(sent)


def client(settings: Settings, host: str | None = None, token: str | None = None):
    import kfp

    host = host or settings.kfp.host
    if not host:
        raise ValueError("no Kubeflow Pipelines host: pass --host or set kfp.host")
    kwargs: dict = {"host": host, "namespace": settings.kfp.namespace}
    token_file = Path(settings.kfp.token_path)
    if token:
        kwargs["existing_token"] = token
    elif token_file.exists():
        kwargs["credentials"] = kfp.client.ServiceAccountTokenVolumeCredentials(path=str(token_file))
    probe(host, token or (token_file.read_text().strip() if token_file.exists() else None),
          settings.kfp.connect_timeout_seconds, settings.kfp.answer_timeout_seconds)
    with api_errors(host), warnings.catch_warnings():
        # kfp.Client warns on every construction that it needs KFP 2.0.0-beta.2 or later: two lines of
        # stderr each submit, about nothing the user did (the API's answers are checked instead).
        warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline",
                                category=FutureWarning)
        return _timed(kfp.Client(**kwargs), (settings.kfp.connect_timeout_seconds, settings.kfp.answer_timeout_seconds))


def _timed(kfp_client, timeout: tuple[float, float]):
    """``kfp_client`` with ``timeout`` (to connect, to answer) on every call. kfp.Client passes kfp_server_api no
    ``_request_timeout``, so an API that accepts the connection and never answers held ``submit`` forever;
    a call past it is urllib3's timeout error, which :func:`api_errors` says in one line."""
    rest = kfp_client._run_api.api_client.rest_client  # the one ApiClient all of the client's services share
    request = rest.request

    def timed(*args, **kwargs):
        kwargs["_request_timeout"] = kwargs.get("_request_timeout") or timeout
        return request(*args, **kwargs)

    rest.request = timed
    return kfp_client


def start_run(settings: Settings, package: Path, host: str | None = None, token: str | None = None,
              run_name: str | None = None, parameters: dict | None = None) -> Submitted:
    """Start one run of the compiled pipeline ``package``."""
    if not package.exists():
        raise FileNotFoundError(f"{package} does not exist: run `storeflow compile` first")
    host = host or settings.kfp.host
    config_json = cluster_config_json(settings)
    kfp_client = client(settings, host, token)
    with api_errors(str(host)):
        result = kfp_client.create_run_from_pipeline_package(
            str(package),
            arguments={"config_json": config_json, **(parameters or {})},
            run_name=run_name,
            experiment_name=settings.kfp.experiment,
            namespace=settings.kfp.namespace,
            service_account=settings.kfp.service_account,
            enable_caching=settings.kfp.enable_caching,
        )
    if not result.run_id:  # kfp reads any 2xx as a run; the API always gives one an id
        raise not_the_api(str(host), "POST /apis/v2beta1/runs", "no run id")
    return Submitted(run_id=result.run_id, url=f"{str(host).rstrip('/')}/#/runs/details/{result.run_id}")
