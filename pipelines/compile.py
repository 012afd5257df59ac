"""Compile pipelines and components to the YAML checked in under ``manifests/``.

The YAML is what a cluster runs; CI fails when it is stale (``storeflow compile --check``).
"""

from __future__ import annotations

import contextlib
import difflib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storeflow.pipelines.packages import MANIFESTS, compiled, compiled_now

PIPELINES = ("training", "monitoring", "recommendations", "risk")


def _targets(settings=None) -> dict[str, object]:
    """What ``compile`` writes, built for ``settings`` (default: the config model's defaults)."""
    from storeflow.components.container import with_image
    from storeflow.components.deploy.component import deploy
    from storeflow.components.evaluate.component import evaluate
    from storeflow.components.features.component import features
    from storeflow.components.ingest.component import ingest
    from storeflow.components.register.component import register
    from storeflow.components.train.component import train
    from storeflow.components.monitor.component import monitor
    from storeflow.components.recommend.evaluate_component import evaluate_recommender
    from storeflow.components.recommend.product_features_component import product_features
    from storeflow.components.recommend.train_component import train_recommender
    from storeflow.components.risk.component import risk, risk_deploy
    from storeflow.components.validate.component import validate
    from storeflow.pipelines.monitoring import build_monitoring_pipeline, retrain
    from storeflow.pipelines.recommendations import build_recommendations_pipeline
    from storeflow.pipelines.risk import build_risk_pipeline
    from storeflow.pipelines.training import DEFAULTS, build_training_pipeline

    settings = settings or DEFAULTS
    targets: dict[str, object] = {"pipelines/training.yaml": build_training_pipeline(settings),
                                  "pipelines/monitoring.yaml": build_monitoring_pipeline(settings),
                                  "pipelines/recommendations.yaml": build_recommendations_pipeline(settings),
                                  "pipelines/risk.yaml": build_risk_pipeline(settings)}
    for op in (ingest, validate, features, train, evaluate, register, deploy, monitor, retrain, product_features,
               train_recommender, evaluate_recommender, risk,
               risk_deploy):
        targets[f"components/{op.name}.yaml"] = with_image(op, settings.image.reference)
    return targets


DOCS = "components/README.md"  # the components' reference, beside the stages' code


def docs_path(out_dir: Path) -> Path:
    """Where the components' reference goes: ``components/README.md`` of the source tree for the checked-in
    manifests, else beside the compiled components."""
    return out_dir.parent / DOCS if out_dir.resolve() == MANIFESTS.resolve() else out_dir / DOCS


def compile_to(out_dir: Path, settings=None) -> list[Path]:
    """Compile every pipeline and component for the cluster ``settings`` describe (image, volume, Secrets,
    resources, retries, timeouts); ``None``: the config model's defaults, which the checked-in YAML holds.
    Also writes the components' reference (:func:`docs_path`)."""
    from kfp import compiler

    from storeflow.pipelines import component_docs

    written = []
    targets = _targets(settings)
    for relative, target in targets.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(target, str(path))
        written.append(path)
    docs = docs_path(out_dir)
    docs.parent.mkdir(parents=True, exist_ok=True)
    ops = [target for relative, target in targets.items() if relative.startswith("components/")]
    written.append(component_docs.write(docs, ops))
    return written


@dataclass(frozen=True)
class Staleness:
    stale: list[str]
    diff: str


def check(out_dir: Path = MANIFESTS, settings=None) -> Staleness:
    """Compile into a temporary dir and compare with ``out_dir``; lists files that differ or are missing."""
    stale, diffs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in compile_to(Path(tmp), settings):
            relative = fresh.relative_to(tmp)
            current = docs_path(out_dir) if str(relative) == DOCS else out_dir / relative
            new_text = fresh.read_text()
            old_text = current.read_text() if current.exists() else ""
            if new_text != old_text:
                stale.append(str(relative))
                diffs.extend(difflib.unified_diff(old_text.splitlines(), new_text.splitlines(),
                                                  f"checked-in/{relative}", f"compiled/{relative}", lineterm="", n=1))
    return Staleness(stale, "\n".join(diffs[:200]))


def _known(name: str) -> str:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; pipelines are {', '.join(PIPELINES)}")
    return name


def pipeline_for(name: str, settings=None):
    """Pipeline ``name`` built for ``settings`` (default: the config model's defaults)."""
    _known(name)
    from storeflow.pipelines.monitoring import build_monitoring_pipeline
    from storeflow.pipelines.recommendations import build_recommendations_pipeline
    from storeflow.pipelines.risk import build_risk_pipeline
    from storeflow.pipelines.training import DEFAULTS, build_training_pipeline

    build = {"training": build_training_pipeline, "monitoring": build_monitoring_pipeline,
             "recommendations": build_recommendations_pipeline, "risk": build_risk_pipeline}[name]
    return build(settings or DEFAULTS)


def pipeline_package(name: str, manifests: Path = MANIFESTS) -> Path:
    """The compiled YAML of pipeline ``name``: the checked-in file, or, where the source tree is not
    (an installed package, the project image), the same pipeline compiled now into a temporary file
    (:func:`storeflow.pipelines.packages.compiled`)."""
    return compiled(f"pipelines/{_known(name)}.yaml", lambda: pipeline_for(name), manifests)


@contextlib.contextmanager
def package_for(name: str, settings) -> Iterator[Path]:
    """Pipeline ``name`` compiled for ``settings`` (image, volume, Secrets, resources, retries, timeouts), as
    ``storeflow compile --config`` writes it, in a temporary file for as long as the ``with`` lasts."""
    with compiled_now(f"pipelines/{_known(name)}.yaml", lambda: pipeline_for(name, settings)) as path:
        yield path
