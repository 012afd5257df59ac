"""A Kubeflow Pipelines API that cannot be used from here, said in one line naming the host and what to check.

kfp.Client answers an unreachable API with a urllib3 traceback and an unauthorized one with half a minute
of healthz retries, then a traceback; ``submit`` and ``schedule`` probe once and translate instead.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

HEALTHZ = "/apis/v2beta1/healthz"
EXAMPLE_HOST = "https://kubeflow.example.com/pipeline"


class KfpApiError(ValueError):
    """A ValueError, so the CLI prints the one line (exit 2) and monitoring's retrain retries next window."""


def unreachable(host: str, exc: Exception) -> KfpApiError:
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = re.sub(r"\[Errno -?\d+\] ", "", first_line)
    return KfpApiError(f"cannot reach the Kubeflow Pipelines API at {host} ({cause}): check --host / kfp.host "
                       "and that this machine reaches it (VPN, kubectl port-forward)")


def refused(host: str, status: int, reason: str) -> KfpApiError:
    check = {401: "check the token (--token / STOREFLOW_KFP_TOKEN, or kfp.token_path in-cluster)",
             403: "the token is not allowed this: check that its service account or profile may use "
                  "kfp.namespace and kfp.experiment"}.get(
        status, f"check that --host / kfp.host is the pipelines API itself, e.g. {EXAMPLE_HOST}")
    return KfpApiError(f"the Kubeflow Pipelines API at {host} answered HTTP {status} {reason}: {check}")


def failed(host: str, status: int, reason: str, body: object) -> KfpApiError:
    """Any other error answer, with the API's own message (``{"error": ..., "message": ...}``) when it gave one."""
    import json

    try:
        answer = json.loads(body) if isinstance(body, (str, bytes)) else {}
    except ValueError:
        answer = {}
    said = answer.get("message") or answer.get("error") if isinstance(answer, dict) else None
    said = str(said).strip().splitlines()[0][:300] if said and str(said).strip() else "no message"
    return KfpApiError(f"the Kubeflow Pipelines API at {host} answered HTTP {status} {reason}: {said}")


def not_the_api(host: str, request: str, answer: str) -> KfpApiError:
    """A 2xx that is not the API's JSON: a sign-in page or a proxy's answer, which kfp would take as success."""
    return KfpApiError(f"the answer of {host} to {request} is not from the Kubeflow Pipelines API ({answer}): "
                       f"check that --host / kfp.host is the pipelines API itself, e.g. {EXAMPLE_HOST}, "
                       "and that no sign-in page stands before it")


def probe(host: str, bearer: str | None, connect_timeout: float = 10, answer_timeout: float = 60) -> None:
    """One GET of the API's healthz with the caller's token; raises :class:`KfpApiError` unless it answers 2xx
    with a JSON object, as the API's healthz does."""
    import httpx

    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        answer = httpx.get(f"{host.rstrip('/')}{HEALTHZ}", headers=headers,
                           timeout=httpx.Timeout(answer_timeout, connect=connect_timeout))
    except httpx.HTTPError as exc:
        raise unreachable(host, exc) from exc
    if not answer.is_success:
        raise refused(host, answer.status_code, answer.reason_phrase)
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = answer.headers.get("content-type", "no content type").split(";")[0]
        raise not_the_api(host, f"GET {HEALTHZ}", f"HTTP {answer.status_code} {kind}")


@contextlib.contextmanager
def api_errors(host: str) -> Iterator[None]:
    """kfp's connection failures and the API's error answers as :class:`KfpApiError`."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        if exc.status in (401, 403, 404):
            raise refused(host, exc.status, exc.reason) from exc
        raise failed(host, exc.status, exc.reason, exc.body) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise KfpApiError(f"the Kubeflow Pipelines API at {host} accepted the connection but did not answer "
                          f"({str(exc).split(': ', 1)[-1]}): check that it is up; a run or recurring run "
                          "may have been created, so look in the KFP UI before trying again") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(host, exc) from exc
