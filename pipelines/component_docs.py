"""``components/README.md``: each component's inputs and outputs, as google-cloud-pipeline-components
documents its ops, written from the components themselves (types and defaults from their compiled spec,
descriptions from their docstrings) so the reference cannot drift from the YAML in ``manifests/``.
"""

from __future__ import annotations

from pathlib import Path

HEADER = """# storeflow components

Each stage is one KFP component in the project image; its YAML is `manifests/components/<name>.yaml`
(load it with `kfp.components.load_component_from_file` into any pipeline). Every input but the stage's
upstream result has a default: `config_json` is advanced (any storeflow settings as JSON, over the
task's environment and the mounted `storeflow-config` ConfigMap), `''` and `-1` keep the configured value.
On a cluster the tasks of one run share state through the `storeflow-state` volume (`kfp.state_pvc`).

Written by `storeflow compile` from the components' signatures and docstrings; do not edit by hand.
"""


def reference(ops) -> str:
    """Markdown for ``ops`` (KFP components), in the given order."""
    sections = [HEADER]
    for op in ops:
        sections.append(_section(op))
    return "\n".join(sections)


def _section(op) -> str:
    import docstring_parser

    spec = op.component_spec
    doc = docstring_parser.parse(op.python_func.__doc__ or "")
    described = {p.arg_name: _one_line(p.description) for p in doc.params}
    returned = _one_line(doc.returns.description) if doc.returns else ""
    lines = [f"## {spec.name}", "", _one_line(doc.short_description or ""), "",
             f"YAML: `manifests/components/{spec.name}.yaml`", "",
             "| input | type | default | description |", "|---|---|---|---|"]
    for name, given in (spec.inputs or {}).items():
        default = "" if given.default is None and not given.optional else f"`{given.default!r}`"
        lines.append(f"| `{name}` | {_type(given.type)} | {default} | {described.get(name, '')} |")
    lines += ["", "| output | type | description |", "|---|---|---|"]
    for name, given in (spec.outputs or {}).items():
        text = described.get(name) or given.description or (returned if name == "Output" else "")
        lines.append(f"| `{name}` | {_type(given.type)} | {_one_line(text or '')} |")
    return "\n".join(lines) + "\n"


def _type(kfp_type: str) -> str:
    return kfp_type.split("@")[0].removeprefix("system.")


def _one_line(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def write(path: Path, ops) -> Path:
    path.write_text(reference(ops))
    return path
