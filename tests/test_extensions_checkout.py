"""The checkout UI extension (extensions/checkout-ui-extension) type-checks against Shopify's own
@shopify/ui-extensions types for its API version (a wrong component, prop or API call is a tsc error), and
its shopify.extension.toml points at a module that exists, for the checkout block target."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).parents[1] / "extensions" / "checkout-ui-extension"


def test_the_extension_config_names_its_module_and_target():
    config = tomllib.loads((CHECKOUT / "shopify.extension.toml").read_text())
    (extension,) = config["extensions"]
    (target,) = extension["targeting"]
    assert target["target"] == "purchase.checkout.block.render"
    assert (CHECKOUT / target["module"]).is_file()
    assert extension["capabilities"]["network_access"] is True  # it fetches the recommender
    year, month = config["api_version"].split("-")
    types = json.loads((CHECKOUT / "package.json").read_text())["dependencies"]["@shopify/ui-extensions"]
    assert types.startswith(f"{year}.{int(month)}."), types  # the types of the API version it declares


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_extension_type_checks_against_shopifys_types():
    assert (CHECKOUT / "node_modules" / "@shopify" / "ui-extensions").is_dir(), \
        "run `npm ci` in extensions/checkout-ui-extension (.ci/run does)"
    out = subprocess.run(["npm", "run", "--silent", "typecheck"], cwd=CHECKOUT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
