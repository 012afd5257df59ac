"""The package reads as layers: the CLI > pipelines, serving, the Shopify webhook receiver > stages > core.

The contracts are in pyproject.toml ([tool.importlinter]); `lint-imports` checks them. Every import
counts, a lazy one inside a function too (a KFP component's body, a command's): moving a module's import
into a function does not move the module.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
ROOTS = ("storeflow.components", "storeflow.pipelines", "storeflow.serving")


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*ROOTS, cache_dir=None)


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"{lint_imports} is missing: `make install` installs the test extra"
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    cycles = set()
    for module in graph.modules:
        # `python -m` entry points import their own module (see serving.predictor): not a cycle.
        for imported in graph.find_modules_directly_imported_by(module) - {module}:
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles (one shortest cycle through each module in one):\n" + "\n".join(sorted(cycles))


def test_every_module_sits_in_one_layer() -> None:
    """The layers contract names modules, not only packages (the CLI lives in pipelines, the receiver in
    components.shopify), so a module it does not name would go unchecked: every module is named, or
    inside one named module, or a package holding named ones."""
    contract = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                    if c["type"] == "layers")
    named = [name.strip().strip("()") for layer in contract["layers"]
             for name in layer.replace("|", ":").split(":") if name.strip()]
    assert len(named) == len(set(named)), "a module is named in two layers"

    def covered(module: str) -> bool:
        inside = [n for n in named if module == n or module.startswith(n + ".")]
        holds = any(n.startswith(module + ".") for n in named)
        return len(inside) == 1 or (not inside and holds)

    assert sorted(m for m in _graph().modules if not covered(m)) == []
