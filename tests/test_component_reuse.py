"""storeflow's components are a library: each compiled YAML loads with kfp's own loader, composes into a
pipeline someone else wrote and runs there with no storeflow config file; the reference in
components/README.md is the one `storeflow compile` writes."""

from pathlib import Path

import pytest
import yaml
from kfp import components, dsl, local

from storeflow.pipelines.packages import MANIFESTS

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted((MANIFESTS / "components").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_component_yaml_loads_with_kfps_loader(path: Path) -> None:
    op = components.load_component_from_file(str(path))
    assert op.name == path.stem
    # Only the upstream result is required; everything else has a default a foreign pipeline may leave.
    required = {name for name, spec in op.component_spec.inputs.items() if spec.default is None and not spec.optional}
    assert required <= {"snapshot", "training_set", "model", "evaluation", "registration", "summary"}, required


def test_a_foreign_pipeline_runs_two_storeflow_components_from_their_yaml(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no storeflow.yaml here: scratch state goes to ./.storeflow, the config's default
    ingest = components.load_component_from_file(str(MANIFESTS / "components" / "ingest.yaml"))
    validate = components.load_component_from_file(str(MANIFESTS / "components" / "validate.yaml"))

    @dsl.pipeline(name="someone-elses-pipeline")
    def theirs() -> dsl.Dataset:
        snapshot = ingest(source="synthetic",
                          config_json='{"ingest": {"synthetic": {"customers": 200, "orders": 1500}}}')
        validate(snapshot=snapshot.outputs["snapshot"])
        return snapshot.outputs["snapshot"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    snapshot = theirs().output
    # The snapshot travels as a Dataset artifact in their pipeline root, with its row counts for the KFP UI.
    path = Path(snapshot.path)
    assert path.is_relative_to(tmp_path / "root") and (path / "_manifest.json").exists()
    assert (path / "orders.parquet").exists() and snapshot.metadata["rows"]["orders"] > 0
    (report,) = (tmp_path / "root").glob("someone-elses-pipeline-*/validate/report")
    assert "passed" in report.read_text().lower()


def test_the_components_reference_is_what_compile_writes() -> None:
    from storeflow.pipelines.compile import check

    stale = check()
    assert "components/README.md" not in stale.stale, stale.diff
    text = (ROOT / "components" / "README.md").read_text()
    for path in sorted((MANIFESTS / "components").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        assert f"## {path.stem}" in text
        for name in spec["root"].get("inputDefinitions", {}).get("parameters", {}):
            assert f"| `{name}` |" in text, (path.stem, name)


def test_a_dataset_from_elsewhere_is_refused_with_a_message_naming_the_input() -> None:
    """train and evaluate need the features task's training set: a foreign Dataset (no storeflow result in
    its metadata) gets an error saying which input and what to pass, not a KeyError."""
    from storeflow.components.artifacts import result_of

    with pytest.raises(ValueError, match="'training_set' carries no storeflow result.*storeflow component"):
        result_of({"display_name": "their-table"}, "training_set")
