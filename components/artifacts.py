"""Stage results as KFP artifacts: what one task hands the next goes through the pipeline's artifact store
(object storage on a cluster, the pipeline root with ``kfp.local``), never through a volume tasks share.

A result travels twice: as the artifact's files (a snapshot's tables, the training set, the model), and as
its JSON in the artifact's metadata under :data:`RESULT`, with a few readable figures beside it for the
KFP UI. The JSON is one string because KFP stores metadata as a protobuf ``Struct``, whose numbers all come
back as floats: a row count must survive the trip as the integer it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RESULT = "storeflow_result"  # metadata key of the stage result's JSON


def publish(source: Path, artifact_path: str,
            ignore: Callable[[str, list[str]], Iterable[str]] | None = None) -> Path:
    """Copy a stage's output (a file or a directory) to where the task's output artifact is uploaded from;
    ``ignore`` names what in a directory is not output (as for ``shutil.copytree``)."""
    source, target = Path(source), Path(artifact_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=ignore)
    else:
        shutil.copyfile(source, target)
    return target


def describe(metadata: dict, result_json: str, **readable: Any) -> None:
    """Record a stage result in an artifact's metadata: its JSON for the next task, figures for people."""
    metadata[RESULT] = result_json
    metadata.update(readable)


def result_of(metadata: dict, artifact: str) -> dict:
    """The stage result an upstream task recorded with :func:`describe`; a clear error when the artifact
    came from somewhere else (a foreign component's Dataset has no storeflow result)."""
    text = metadata.get(RESULT)
    if not text:
        raise ValueError(f"input artifact {artifact!r} carries no storeflow result in its metadata "
                         f"(key {RESULT!r}): pass the output of the storeflow component that makes it")
    return json.loads(text)
