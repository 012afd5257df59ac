"""How a storeflow stage becomes a KFP component: a lightweight Python component whose body imports
its stage from ``storeflow`` and runs in the one project image at a pinned version tag.

Lightweight (not ``target_image``) components, because ``kfp.local.SubprocessRunner`` runs only those,
so the same compiled pipeline runs on a laptop and on a cluster. ``install_kfp_package=False``: the
image already has kfp and storeflow, so a task starts without pip.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from kfp import dsl

from storeflow.components.config import load_settings


@lru_cache(maxsize=1)
def project_image() -> str:
    return load_settings().image.reference


def component(func: Callable) -> Callable:
    return dsl.component(func, base_image=project_image(), install_kfp_package=False)
