"""The project image `make image` builds: every installed version is the locked one, nothing of the test
extras is in it, it runs as UID 1000 and its entry points start (`python -m storeflow.serving.transformer`,
as KServe runs it). Needs a Docker engine; skips loudly only where none can run."""

from __future__ import annotations

import json
import subprocess

import pytest

import containers

pytestmark = pytest.mark.slow

NO_CONTAINERS = containers.unavailable()
if NO_CONTAINERS:
    pytest.skip(f"!!! CONTAINER TESTS NOT RUN: {NO_CONTAINERS} !!!", allow_module_level=True)

# Run inside the image on the lock read from stdin: what is installed against what the lock pins for
# this interpreter (markers evaluated there, as pip evaluated them in the build).
COMPARE = """
import json, sys
from importlib.metadata import distributions
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
pinned = {}
for line in sys.stdin:
    line = line.split("#")[0].strip()
    if line:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            pinned[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
print(json.dumps({"pinned": pinned, "installed": installed}))
"""


@pytest.fixture(scope="module")
def image() -> str:
    return containers.build_image()


def _run(image: str, *command: str, stdin: str | None = None) -> str:
    done = subprocess.run(["docker", "run", "--rm", "-i", "--network", "none", image, *command], input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_every_installed_version_is_the_locked_one(image: str) -> None:
    found = json.loads(_run(image, "python", "-c", COMPARE, stdin=(containers.ROOT / "requirements.lock").read_text()))
    pinned, installed = found["pinned"], found["installed"]
    base_tools = {"pip", "wheel", "storeflow"}  # the base image's installer, and the project itself
    differing = {name: (version, pinned.get(name)) for name, version in installed.items()
                 if name not in base_tools and pinned.get(name) != version}
    assert not differing, f"installed (version, locked) that differ: {differing}"
    assert {"kfp", "kserve", "mlflow", "feast"} <= installed.keys()
    assert not {"pytest", "hypothesis", "kubernetes-validate", "tritonclient"} & installed.keys()  # test extras


def test_the_image_runs_as_uid_1000_and_its_entry_points_start(image: str) -> None:
    assert _run(image, "id", "-u").strip() == str(containers.IMAGE_UID)
    assert "--predictor_host" in _run(image, "python", "-m", "storeflow.serving.transformer", "--help")
    assert "submit" in _run(image)  # the default command: storeflow --help


def test_the_btyd_models_compiled_ops_ship_in_the_image_for_its_user(image: str) -> None:
    """Without them every features task compiled PyTensor's ops with g++ in its fresh container first,
    wherever the runner points HOME (tests/test_pipeline_artifacts.py sets HOME=/tmp)."""
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "-e", "HOME=/tmp", image, "sh", "-c",
                           "d=$(python -c 'import pytensor; print(pytensor.config.compiledir)' 2>/dev/null); "
                           "echo $d; ls $d | grep -c '^tmp'; test -w $d && echo writable"],
                          capture_output=True, text=True, timeout=300)
    found = done.stdout.split()
    assert len(found) == 3 and int(found[1]) >= 40, f"compiled ops in the image user's cache: {done.stdout}"
    assert found[0].startswith("/var/cache/pytensor/")
    assert found[2] == "writable"  # ops that embed a store's data are compiled (and kept) at run time
