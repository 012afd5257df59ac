"""How a storeflow stage becomes a KFP component: a lightweight Python component whose body imports
its stage from ``storeflow`` and runs in the one project image at a pinned version tag.

Lightweight (not ``target_image``) components, because ``kfp.local.SubprocessRunner`` runs only those,
so the same compiled pipeline runs on a laptop and on a cluster. ``install_kfp_package=False``: the
image already has kfp and storeflow, so a task starts without pip.

The base image compiled into a component is the config model's default (``image.*`` defaults, never the
environment or a config file): a pipeline built for a cluster sets its tasks' image from the settings it
is compiled with (``storeflow compile --config``; see ``storeflow.pipelines.training.on_cluster``).
"""

from __future__ import annotations

from typing import Callable

from kfp import dsl

from storeflow.components.config import ImageConfig


def project_image() -> str:
    """The default project image, at the pinned version of this package."""
    return ImageConfig().reference


def component(func: Callable) -> Callable:
    return dsl.component(func, base_image=project_image(), install_kfp_package=False)


def with_image(op, image: str):
    """The same component with another base image (a standalone component YAML compiled for a cluster)."""
    return dsl.component(op.python_func, base_image=image, install_kfp_package=False)
