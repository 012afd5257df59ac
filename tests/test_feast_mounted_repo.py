"""The transformer's Feast repo is the storeflow-feast ConfigMap, mounted read-only: opening the store there
must read the operator's feature_store.yaml, never try to rewrite it or make directories beside it.

The check runs in a child process with its own mount namespace (``unshare -m``) in which the repo is a
read-only bind mount, as the kubelet mounts a ConfigMap volume (0644 files, readOnly: true)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from storeflow.components.config import load_settings
from storeflow.components.features.repo import CUSTOMER_VIEW, apply, store_config

UNSHARE = shutil.which("unshare")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not UNSHARE, reason="needs root and unshare(1) to bind-mount")

OPEN_AS_POD = """
import json, sys
from storeflow.components.config import load_settings
from storeflow.components.features.repo import feature_store
settings = load_settings({"project": {"state_dir": sys.argv[2]}, "features": {"feast": {"repo_dir": sys.argv[1]}}})
print(json.dumps(sorted(v.name for v in feature_store(settings).list_feature_views())))
"""


@pytest.fixture
def world_readable_dir(tmp_path: Path):
    return tmp_path


def test_a_read_only_repo_is_opened_as_mounted_and_left_untouched(world_readable_dir: Path) -> None:
    built = load_settings({"project": {"state_dir": str(world_readable_dir / "built")}})
    apply(built)  # a registry holding the feature views, as the features stage leaves it
    for path in [world_readable_dir / "built", *(world_readable_dir / "built").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    mounted = world_readable_dir / "feast"
    mounted.mkdir(mode=0o755)
    operator_yaml = {**store_config(built), "registry": {**store_config(built)["registry"], "cache_ttl_seconds": 60}}
    text = yaml.safe_dump(operator_yaml, sort_keys=False)  # differs from what storeflow would write
    (mounted / "feature_store.yaml").write_text(text)
    (mounted / "feature_store.yaml").chmod(0o644)
    state = world_readable_dir / "state"
    script = world_readable_dir / "open_as_pod.py"
    script.write_text(OPEN_AS_POD)
    shell = (f'mount --bind "{mounted}" "{mounted}" && mount -o remount,ro,bind "{mounted}" && '
             f'"{sys.executable}" "{script}" "{mounted}" "{state}"')
    done = subprocess.run([UNSHARE, "-m", "--propagation", "private", "sh", "-c", shell], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FEAST_USAGE": "False"})
    if "mount:" in done.stderr and done.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert CUSTOMER_VIEW in json.loads(done.stdout.strip().splitlines()[-1])
    assert (mounted / "feature_store.yaml").read_text() == text  # the operator's file, as written
    assert sorted(p.name for p in mounted.iterdir()) == ["feature_store.yaml"]  # no data/ made beside it
