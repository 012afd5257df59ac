"""Where a pipeline's compiled YAML is: the file checked in under ``manifests/``, or, where the source
tree is not (an installed package, the project image), the pipeline compiled now into a temporary file.

The two are the same bytes: ``storeflow compile --check`` fails CI whenever the checked-in YAML differs
from a compile (:mod:`storeflow.pipelines.compile`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def compiled(relative: str, build: Callable[[], object], manifests: Path = MANIFESTS) -> Path:
    """``manifests / relative`` when it exists, else what ``build()`` returns compiled to a temporary file."""
    checked_in = manifests / relative
    if checked_in.exists():
        return checked_in
    from kfp import compiler

    fresh = Path(tempfile.mkdtemp(prefix="storeflow-pipeline-")) / relative
    fresh.parent.mkdir(parents=True)
    compiler.Compiler().compile(build(), str(fresh))
    return fresh


@contextmanager
def compiled_now(relative: str, build: Callable[[], object]) -> Iterator[Path]:
    """What ``build()`` returns compiled to a temporary file, removed after: a pipeline built for settings of
    the caller's, which the checked-in YAML (built from the defaults) does not hold."""
    from kfp import compiler

    with tempfile.TemporaryDirectory(prefix="storeflow-pipeline-") as tmp:
        fresh = Path(tmp) / relative
        fresh.parent.mkdir(parents=True)
        compiler.Compiler().compile(build(), str(fresh))
        yield fresh
