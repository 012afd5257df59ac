"""The distribution ships every package: the image installs the wheel, not this working tree."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_folder_is_in_the_distribution() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in mapped.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *relative]))
    assert found == set(config["packages"])


def test_the_cli_starts_without_heavy_imports() -> None:
    import subprocess
    import sys

    code = ("import sys, storeflow.pipelines.cli; "
            "print(sorted(m for m in ('mlflow', 'evidently', 'feast', 'kserve', 'pandas', 'kfp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_dependency_is_pinned_in_the_lock() -> None:
    """`make install` takes versions from requirements.lock; a dependency missing there would float."""
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]

    def name(requirement: str) -> str:
        return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    pinned = {name(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith((" ", "#"))}
    missing = sorted({name(r) for r in wanted} - pinned)
    assert not missing, f"run `make lock`: not pinned in requirements.lock: {missing}"
