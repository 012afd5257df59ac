"""The local deploy target: a real canary on `storeflow serve` (see :mod:`local_canary`), its outcome on
the MLflow aliases and version tags, and a record people read (``<state_dir>/serving/rollouts.jsonl``).

Locally the ``champion`` alias *is* the deployment (`storeflow serve` serves it), so promote and rollback
move that alias; the record keeps the history, including which version each promotion replaced, so a
rollback knows where to go back to. ``mlflow`` is imported only inside functions (the CLI stays quick).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storeflow.components.config import Settings
from storeflow.components.deploy.inference_service import DeployError
from storeflow.components.deploy.registry import record_rollout

if TYPE_CHECKING:
    from storeflow.components.deploy.local_canary import LocalCanaryResult

STEPS_TAG_LIMIT = 5000  # MLflow tag values are bounded; the record keeps the full steps

log = logging.getLogger(__name__)


def rollout_record(settings: Settings) -> Path:
    return settings.project.state_dir / "serving" / "rollouts.jsonl"


def _append(settings: Settings, entry: dict[str, Any]) -> dict[str, Any]:
    entry = {"model_name": settings.registry.model_name, **entry,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = rollout_record(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    _set_aside_torn_line(path)
    with path.open("a") as out:
        out.write(json.dumps(entry, default=str) + "\n")
    return entry


def _set_aside_torn_line(path: Path) -> None:
    """A record whose last line has no newline was cut short by a crash mid-append: the entry appended now
    would join that line and be unreadable too. The fragment moves to ``<record>.torn`` (nothing is lost)
    and the record ends at its last whole line."""
    if not path.exists():
        return
    with path.open("rb+") as record:
        data = record.read()
        if not data or data.endswith(b"\n"):
            return
        whole = data.rfind(b"\n") + 1
        with path.with_name(path.name + ".torn").open("ab") as torn:
            torn.write(data[whole:] + b"\n")
        record.truncate(whole)
    log.warning("%s: its last line was cut short (a rollout recorded when the process died?); moved to %s.torn",
                path, path.name)


def rollouts(settings: Settings) -> list[dict[str, Any]]:
    """The local rollout history of ``registry.model_name``, oldest first (the record holds every model's:
    the propensity model's and the recommender's version numbers are their own).

    A last line cut short (a crash mid-append) is skipped with a warning, so status and the emergency
    rollback still work; any other unreadable line is an error naming the file and line."""
    path = rollout_record(settings)
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    lines = text.splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                log.warning("%s, line %d: skipped, cut short (a rollout being recorded when the process died?)",
                            path, number)
                continue
            raise DeployError(f"{path}, line {number}: not a rollout record ({exc.msg}); fix or remove that line") from exc
        if not isinstance(entry, dict):
            raise DeployError(f"{path}, line {number}: not a rollout record (a JSON object); fix or remove that line")
        entries.append(entry)
    name = settings.registry.model_name
    return [entry for entry in entries if entry.get("model_name", name) == name]


def record_local_rollout(settings: Settings, model_version: str, run_id: str,
                         previous_champion: str | None = None) -> dict[str, Any]:
    """Record a version that became champion without a canary: the first one, or one of a model with no local
    canary (order risk), whose ``previous_champion`` a rollback returns to."""
    record_rollout(settings, str(model_version), {"storeflow.deploy.state": "promoted",
                                                  "storeflow.deploy.target": "local"})
    previous = str(previous_champion) if previous_champion and str(previous_champion) != str(model_version) else None
    return _append(settings, {"outcome": "promoted-locally", "model_version": str(model_version), "run_id": run_id,
                              "previous_champion": previous})


def _client(settings: Settings):
    from storeflow.components import tracking

    try:
        return tracking.connect(settings)
    except tracking.RegistryUnavailable as exc:  # status and rollback say so in one line, not a traceback
        raise DeployError(str(exc)) from exc


def deploy_local(settings: Settings, model_version: str, run_id: str, previous_champion: str | None,
                 canary: Callable[[Settings, str, str], LocalCanaryResult] | None = None) -> dict[str, Any]:
    """Roll out a new champion of ``registry.model_name`` locally: canary it against ``previous_champion``,
    then keep or undo the alias. ``canary`` runs the canary (default: `storeflow serve`'s,
    :func:`~storeflow.components.deploy.local_canary.run_local_canary`; the recommender passes its own).

    Promoted: the ``champion`` alias (set by register) stays. Rolled back: it returns to the previous
    version. Either way the outcome, each analysis and its reasons go to the record and the version's tags.
    """
    from storeflow.components.deploy.local_canary import run_local_canary

    version = str(model_version)
    if not previous_champion or str(previous_champion) == version:
        return record_local_rollout(settings, version, run_id)
    result = (canary or run_local_canary)(settings, version, str(previous_champion))
    reason = "; ".join(result.reasons)
    tags = {"storeflow.deploy.state": result.outcome, "storeflow.deploy.target": "local",
            "storeflow.deploy.reason": reason[:STEPS_TAG_LIMIT],
            "storeflow.deploy.steps": json.dumps(result.steps, default=str)[:STEPS_TAG_LIMIT]}
    if result.outcome == "rolled-back":
        _move_champion(settings, result.previous_champion)
    recorded = record_rollout(settings, version, tags)
    return _append(settings, {"outcome": result.outcome, "model_version": version, "run_id": run_id,
                              "previous_champion": result.previous_champion, "steps": result.steps,
                              "reasons": result.reasons, "seconds": result.seconds,
                              "recorded_in_mlflow": recorded})


# -- storeflow status | promote | rollback, when deploy.target is local ---------------------------------------
def _aliases(settings: Settings) -> dict[str, str | None]:
    """The champion and challenger versions (None: no such alias); a registry that fails to answer is a
    DeployError, never read as 'no champion'."""
    from mlflow.exceptions import MlflowException

    client, name, found = _client(settings), settings.registry.model_name, {}
    for alias in ("champion", "challenger"):
        try:
            found[alias] = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise DeployError(f"the {alias} of {name} could not be read from the registry at "
                                  f"{settings.tracking_uri}: {_first_line(exc)}") from exc
            found[alias] = None
    return found


def _move_champion(settings: Settings, version: str) -> None:
    """Point the ``champion`` alias at ``version``: what promote and rollback change. A registry that refuses
    the write (another process holding its database's write lock, a server error) is a DeployError saying
    nothing changed, not MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking

    name = settings.registry.model_name
    client = _client(settings)
    store_log = logging.getLogger("mlflow.store.db.utils")  # logs the refused write's traceback, then raises it
    level = store_log.level
    store_log.setLevel(logging.CRITICAL)
    try:
        client.set_registered_model_alias(name, tracking.CHAMPION, str(version))
    except MlflowException as exc:
        raise DeployError(f"the champion of {name} could not be moved to v{version} in the registry at "
                          f"{settings.tracking_uri}: {_first_line(exc)}; nothing was changed") from exc
    finally:
        store_log.setLevel(level)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _nothing_registered(settings: Settings, alias: str) -> str:
    return (f"{settings.registry.model_name} has no {alias} in the registry at {settings.tracking_uri}; train and "
            "register one first (storeflow run)")


def status(settings: Settings) -> dict[str, Any]:
    """What `storeflow serve` would serve now (the champion alias) and the last local rollout."""
    aliases = _aliases(settings)
    history = rollouts(settings)
    return {"target": "local", "model_name": settings.registry.model_name,
            "champion_version": aliases["champion"], "challenger_version": aliases["challenger"],
            "last_rollout": history[-1] if history else None, "rollouts": len(history),
            "record": str(rollout_record(settings))}


def promote(settings: Settings) -> dict[str, Any]:
    """Make the challenger champion now, without a canary (an operator's override of a rollback)."""
    aliases = _aliases(settings)
    challenger, champion = aliases["challenger"], aliases["champion"]
    if challenger is None:
        raise DeployError(f"nothing to promote: {_nothing_registered(settings, 'challenger')}")
    if challenger == champion:
        raise DeployError(f"nothing to promote: the challenger, v{challenger}, is already champion")
    _move_champion(settings, challenger)
    recorded = record_rollout(settings, challenger, {"storeflow.deploy.state": "promoted",
                                                     "storeflow.deploy.target": "local",
                                                     "storeflow.deploy.reason": "manual promote"})
    _append(settings, {"outcome": "promoted-manually", "model_version": challenger, "previous_champion": champion,
                       "reasons": ["manual promote"], "recorded_in_mlflow": recorded})
    return status(settings) | {"recorded_in_mlflow": recorded}


def rollback(settings: Settings, reason: str = "manual rollback") -> dict[str, Any]:
    """Give the champion alias back to the version the current champion's last promotion replaced: as the
    record says, else as the registry tagged it when it was made champion (its rollout stopped before the
    record got a line: the pipeline killed mid-canary)."""
    from storeflow.components import tracking

    champion = _aliases(settings)["champion"]
    promotion = next((r for r in reversed(rollouts(settings))
                      if r.get("model_version") == champion and r.get("outcome", "").startswith("promoted")), None)
    previous = (promotion.get("previous_champion") if promotion is not None else
                champion and tracking.replaced_champion(_client(settings), settings.registry.model_name, champion))
    if champion is None:
        raise DeployError(f"nothing to roll back to: {_nothing_registered(settings, 'champion')}")
    if not previous:
        raise DeployError(f"nothing to roll back to: champion v{champion} replaced no earlier version "
                          f"in {rollout_record(settings)}")
    _move_champion(settings, previous)
    recorded = record_rollout(settings, champion, {"storeflow.deploy.state": "rolled-back",
                                                   "storeflow.deploy.target": "local",
                                                   "storeflow.deploy.reason": reason[:STEPS_TAG_LIMIT]})
    _append(settings, {"outcome": "rolled-back-manually", "model_version": champion, "previous_champion": previous,
                       "reasons": [reason], "recorded_in_mlflow": recorded})
    return status(settings) | {"recorded_in_mlflow": recorded}
