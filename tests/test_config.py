"""The one config model: precedence, clear errors, and a lossless round trip through config_json."""

import re
from pathlib import Path

import pytest

from storeflow.components.config import ConfigError, load_settings


def test_file_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storeflow.yaml").write_text("features:\n  label:\n    horizon_days: 30\n    cutoff_every_days: 14\n")
    assert load_settings().features.label.horizon_days == 30
    monkeypatch.setenv("STOREFLOW_FEATURES__LABEL__HORIZON_DAYS", "45")
    settings = load_settings()
    assert settings.features.label.horizon_days == 45
    assert settings.features.label.cutoff_every_days == 14  # the file's sibling value survives
    assert load_settings({"features": {"label": {"horizon_days": 60}}}).features.label.horizon_days == 60


def test_unknown_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"train\.paramz"):
        load_settings({"train": {"paramz": {}}})


def test_bad_yaml_and_missing_file_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_settings(path=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(path=tmp_path / "nope.yaml")


def test_image_tag_must_be_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="image.tag"):
        load_settings({"image": {"tag": "latest"}})


def test_config_json_round_trip_and_absolute_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"project": {"state_dir": "rel/state"}, "train": {"params": {"max_iter": 3}}})
    assert settings.project.state_dir == tmp_path / "rel" / "state"
    assert load_settings(settings.to_json()) == settings
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'rel' / 'state' / 'mlflow.db'}"


def test_file_sources_need_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ingest.path is required"):
        load_settings({"ingest": {"source": "csv"}})


PASSWORD = "pw-7d1c0e9b2a"  # planted: it must appear in no message, no config_json


def test_a_password_in_its_own_variable_travels_as_the_variables_name(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's reproduction: config_json (a pipeline parameter) held the Redis password."""
    monkeypatch.chdir(tmp_path)
    variable = "STOREFLOW_FEATURES__FEAST__REDIS_CONNECTION_STRING"
    monkeypatch.setenv(variable, f"127.0.0.1:6379,password={PASSWORD}")
    settings = load_settings()
    assert settings.features.feast.redis_connection_string == f"${{{variable}}}"
    assert PASSWORD not in settings.to_json() and PASSWORD not in repr(settings)
    assert load_settings(settings.to_json()) == settings  # a task reads the reference back, and its env


@pytest.mark.parametrize("overrides, key", [
    ({"features": {"feast": {"redis_connection_string": f"redis:6379,password={PASSWORD}"}}},
     "features.feast.redis_connection_string"),
    ({"features": {"feast": {"registry": f"postgresql://feast:{PASSWORD}@db:5432/feast"}}}, "features.feast.registry"),
])
def test_a_written_out_password_is_refused_without_echoing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               overrides: dict, key: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"{key}: .*holds a password: write \$\{{VAR\}}") as refused:
        load_settings(overrides)
    assert PASSWORD not in str(refused.value) and PASSWORD not in str(refused.value.__cause__)
    (tmp_path / "storeflow.yaml").write_text(f"features:\n  feast:\n    redis_connection_string: h:1,password={PASSWORD}\n")
    with pytest.raises(ConfigError, match="features.feast.redis_connection_string: .*holds a password"):
        load_settings()


def test_passwords_by_reference_are_kept_as_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"features": {"feast": {"redis_connection_string": "redis:6379,password=${REDIS_PASSWORD}",
                                                     "registry": "postgresql://feast:${PGPASS}@db/feast"}}})
    assert settings.features.feast.redis_connection_string == "redis:6379,password=${REDIS_PASSWORD}"
    assert load_settings(settings.to_json()).features.feast.registry == "postgresql://feast:${PGPASS}@db/feast"


def test_urls_whose_clients_read_their_own_credentials_refuse_a_password(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOREFLOW_REGISTRY__TRACKING_URI", f"https://ci:{PASSWORD}@mlflow.example.com")
    with pytest.raises(ConfigError, match="registry.tracking_uri: .*MLFLOW_TRACKING_PASSWORD") as refused:
        load_settings()
    assert PASSWORD not in str(refused.value) and PASSWORD not in str(refused.value.__cause__)
    monkeypatch.delenv("STOREFLOW_REGISTRY__TRACKING_URI")
    with pytest.raises(ConfigError, match="kfp.host: .*STOREFLOW_KFP_TOKEN"):
        load_settings({"kfp": {"host": f"https://admin:{PASSWORD}@kubeflow.example.com/pipeline"}})
    assert load_settings({"registry": {"tracking_uri": "https://ci@mlflow.example.com"}})  # a user name is no secret


def test_a_config_dir_that_is_a_file_is_named(monkeypatch, tmp_path) -> None:
    """$STOREFLOW_CONFIG_DIR is where a task sees the storeflow-config ConfigMap; a file there is a mistake."""
    from storeflow.components.config import ConfigError, load_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cm").write_text("STOREFLOW_DEPLOY__MIN_REPLICAS=2")
    monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(tmp_path / "cm"))
    with pytest.raises(ConfigError, match="STOREFLOW_CONFIG_DIR names .*cm, which is not a directory"):
        load_settings()
    monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(tmp_path / "absent"))  # an optional ConfigMap: nothing
    deploy = load_settings().deploy
    assert deploy.min_replicas == type(deploy).model_fields["min_replicas"].default


def test_a_config_file_read_once_leaves_no_values_behind(monkeypatch, tmp_path) -> None:
    """The file's values lived on the Settings class (Settings._file_values) after a load, so any later
    construction saw a file it was never given."""
    from storeflow.components.config import Settings

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cluster.yaml"
    config.write_text("deploy:\n  min_replicas: 3\n")
    assert load_settings(path=config).deploy.min_replicas == 3
    assert Settings().deploy.min_replicas == load_settings().deploy.min_replicas != 3


def _refused(capsys: pytest.CaptureFixture, config: Path | None = None, overrides: list[str] | None = None) -> str:
    """What `storeflow <command> --config/--set` says of a bad config: one line, exit code 2, no traceback."""
    import typer

    from storeflow.components.cli_options import settings_from

    with pytest.raises(typer.Exit) as exited:
        settings_from(config, overrides)
    said = " ".join(capsys.readouterr().out.split())
    assert exited.value.exit_code == 2 and "Traceback" not in said
    return said


@pytest.mark.parametrize("where", ["environment", "configmap"])
def test_a_plain_value_for_a_list_setting_names_the_variable_and_the_json_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, where: str) -> None:
    """A plain value crashed every command (and on a cluster every task and pod) with pydantic-settings'
    traceback naming only `serving`."""
    monkeypatch.chdir(tmp_path)
    variable = "STOREFLOW_SERVING__ALLOWED_SHOPS"

    def given(value: str) -> None:
        if where == "environment":
            monkeypatch.setenv(variable, value)
        else:
            (tmp_path / "cm").mkdir(exist_ok=True)
            (tmp_path / "cm" / variable).write_text(value + "\n")
            monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(tmp_path / "cm"))

    given("shop1.myshopify.com")
    assert f"{variable} " in _refused(capsys) and "must be a JSON list" in _refused(capsys)
    given('["shop1.myshopify.com"]')
    assert load_settings().serving.allowed_shops == ["shop1.myshopify.com"]


@pytest.mark.parametrize("variable, says", [
    ("STOREFLOW_DEPLOYY__MAX_REPLICAS", "names no setting"),
    ("STOREFLOW_DEPLOY_MIN_REPLICAS", "two underscores: STOREFLOW_DEPLOY__MIN_REPLICAS"),
    ("STOREFLOW_SERVING_PORT", "two underscores: STOREFLOW_SERVING__PORT"),
])
@pytest.mark.parametrize("where", ["environment", "configmap"])
def test_a_misspelt_variable_is_named_not_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture, variable: str, says: str,
                                                  where: str) -> None:
    """The setting silently kept its default: a replica count or port the operator believed set."""
    monkeypatch.chdir(tmp_path)
    if where == "environment":
        monkeypatch.setenv(variable, "5")
    else:
        (tmp_path / "cm").mkdir()
        (tmp_path / "cm" / variable).write_text("5")
        monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(tmp_path / "cm"))
    said = _refused(capsys)
    assert said.startswith(variable) and says in said


def test_the_projects_other_variables_are_no_typos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables storeflow reads that are no setting, and one a `*_env` setting names, still load."""
    monkeypatch.chdir(tmp_path)
    for name in ("STOREFLOW_MODEL_VERSION", "STOREFLOW_MODEL_NAME", "STOREFLOW_MODEL_DIR", "STOREFLOW_KFP_TOKEN",
                 "STOREFLOW_SERVING_PLAN", "STOREFLOW_GIT_COMMIT", "STOREFLOW_PYTHON"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("STOREFLOW_SHOPIFY_TOKEN", "shpat_x")
    monkeypatch.setenv("STOREFLOW_SHOPIFY__ACCESS_TOKEN_ENV", "STOREFLOW_SHOPIFY_TOKEN")
    monkeypatch.setenv("STOREFLOW_KFP__RESOURCES__TRAIN__CPU_LIMIT", "4")
    settings = load_settings()
    assert settings.shopify.access_token_env == "STOREFLOW_SHOPIFY_TOKEN"
    assert settings.kfp.resources["train"].cpu_limit == "4"


def test_unreadable_config_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"serving:\n  port: 8081\n# caf\xe9\n")
    assert "latin1.yaml, line 3: not UTF-8" in _refused(capsys, latin1)
    (tmp_path / "dir.yaml").mkdir()
    assert "dir.yaml cannot be read" in _refused(capsys, tmp_path / "dir.yaml")
    (tmp_path / "intkey.yaml").write_text("1: 2\n")
    assert "intkey.yaml: top-level key 1 is not a section name" in _refused(capsys, tmp_path / "intkey.yaml")


def test_set_mistakes_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    said = _refused(capsys, overrides=["ingest=x", "ingest.source=csv"])
    assert "--set ingest.source=csv: an earlier --set gave ingest a value" in said
    said = _refused(capsys, overrides=["project.state_dir=~nosuchuser-7f3a/s"])
    assert "project.state_dir" in said and "~nosuchuser-7f3a" in said


@pytest.mark.parametrize("overrides, says", [
    ({"memory_limit": "16GB"}, "kfp.resources.train.memory_limit: .*memory quantity"),
    ({"memory_limit": "16K"}, "kfp.resources.train.memory_limit: .*memory quantity"),  # kfp takes it, Kubernetes not
    ({"cpu_limit": "two"}, "kfp.resources.train.cpu_limit: .*CPU quantity"),
    ({"cpu_request": "8"}, "kfp.resources.train: .*cpu_request 8 is above cpu_limit 2"),
    ({"memory_request": "9Gi", "memory_limit": "8G"}, "kfp.resources.train: .*memory_request 9Gi is above memory_limit 8G"),
])
def test_task_resources_kubernetes_would_refuse_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          overrides: dict, says: str) -> None:
    """16GB passed config loading and died in compile with kfp's ValueError naming no key; a request above its
    limit compiled, and Kubernetes refused the pod once the run reached the task."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=says):
        load_settings({"kfp": {"resources": {"train": overrides}}})
    sized = load_settings({"kfp": {"resources": {"train": {"cpu_request": "1500m", "memory_limit": "16Gi"}}}})
    assert sized.kfp.resources["train"].memory_limit == "16Gi"


@pytest.mark.parametrize(("resources", "says"), [
    ({"requests": {"cpu": "250m", "memory": "512MB"}, "limits": {"cpu": "1", "memory": "1Gi"}},
     "requests.memory '512MB' is not a Kubernetes memory quantity"),
    ({"requests": {"cpu": "one", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
     "requests.cpu 'one' is not a Kubernetes cpu quantity"),
    ({"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
     "requests.cpu 2 is above limits.cpu 1"),
    ({"requests": {"cpu": "250m", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
     "requests.memory 2Gi is above limits.memory 1Gi"),
])
def test_inference_service_resources_kubernetes_would_refuse_are_named(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       resources: dict, says: str) -> None:
    """deploy.predictor_resources and transformer_resources took any string: KServe accepted the spec, and
    Kubernetes refused the InferenceService's pods only once a rollout created them."""
    monkeypatch.chdir(tmp_path)
    for field in ("predictor_resources", "transformer_resources"):
        with pytest.raises(ConfigError, match=says):
            load_settings({"deploy": {field: resources}})
    assert load_settings({"deploy": {"predictor_resources": {"requests": {"cpu": "1500m", "memory": "4Gi"},
                                                             "limits": {"cpu": "2", "memory": "4Gi"}}}})


def test_a_yaml_alias_bomb_is_refused_and_a_few_aliases_still_load(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten lines of nested aliases load as a few shared lists, and grew to 9**10 values where the settings are
    written out whole (storeflow submit's config_json): it died out of memory, now the file is refused by name."""
    monkeypatch.chdir(tmp_path)
    lines = ["train:", "  params:", '    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: holds over 100,000 values once its YAML aliases"):
        load_settings(path=bomb)
    shared = tmp_path / "shared.yaml"  # what aliases are for: one block named twice
    shared.write_text("train:\n  params:\n    grid: &g {max_iter: [100, 200]}\n    again: *g\n")
    settings = load_settings(path=shared)
    assert settings.train.params["again"] == {"max_iter": [100, 200]}
    assert '"again":{"max_iter":[100,200]}' in settings.model_dump_json()


@pytest.mark.parametrize("key", [
    "features.label.horizon_days", "features.label.cutoff_every_days", "features.label.min_history_days",
    "features.feast.ttl_days", "recommendations.horizon_days", "risk.maturity_days", "risk.holdout_days",
    "shopify.retention_days", "monitor.risk_decay_days", "monitor.window_hours", "monitor.ctr_baseline_hours",
    "ingest.synthetic.days",
])
def test_a_window_past_a_century_is_a_config_error_naming_it(key: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's typed input (label_horizon_days, window_hours) or a setting of 10**9 days went through, and the
    stage that used it failed with 'date value out of range' (or 'days=1000000000; must have magnitude <=
    999999999'), naming no setting. Found by testing from outside."""
    from storeflow.components.config import load_run_settings

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(key) + ": Input should be less than or equal to"):
        load_run_settings("{}", {key: 10**9})
    assert load_run_settings("{}", {key: 36_500 if key.endswith("days") else 36_500 * 24})  # a century is fine


@pytest.mark.parametrize(("section", "maximum"), [("deploy", 3), ("risk", 4)])
def test_min_replicas_above_max_replicas_is_a_config_error_naming_both(section: str, maximum: int, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy.min_replicas 5 with max_replicas 3 was taken, and KServe's webhook refused the InferenceService the
    deploy step patched ('MinReplicas cannot be greater than MaxReplicas'), at the end of a training run. Found by
    testing from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"STOREFLOW_{section.upper()}__MIN_REPLICAS", "5")
    with pytest.raises(ConfigError, match=rf"{section}\.min_replicas 5 is above {section}\.max_replicas {maximum}"):
        load_settings()
    monkeypatch.setenv(f"STOREFLOW_{section.upper()}__MAX_REPLICAS", "5")
    assert getattr(load_settings(), section).min_replicas == 5


@pytest.mark.parametrize(("key", "value"), [
    ("deploy.config_map", "Storeflow_Config"), ("kfp.state_pvc", "State Volume"), ("deploy.namespace", "shop.ml"),
    ("kfp.namespace", "Kubeflow"), ("kfp.service_account", "runner_sa"), ("deploy.online_store_secret", "-redis"),
    ("shopify.credentials_secret", "shop/admin"), ("registry.credentials_secret", "x" * 254),
    ("features.feast.registry_secret", "FEAST"), ("serving.prediction_log_store_secret", "s3 login"),
    ("deploy.service_account", ""), ("recommendations.serving_runtime", "Recommender"),
])
def test_a_kubernetes_name_the_api_server_would_refuse_is_a_config_error(key: str, value: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`storeflow compile --set deploy.config_map=Storeflow_Config` wrote a pipeline whose every task's pod the API
    server refuses at creation; a namespace or account name it refuses failed the deploy step's call after a whole
    training run. Found by testing from outside."""
    monkeypatch.chdir(tmp_path)
    *sections, leaf = key.split(".")
    overrides: dict = {}
    node = overrides
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    with pytest.raises(ConfigError, match=re.escape(key) + ": Value error, .* is not a Kubernetes (object name|namespace)"):
        load_settings(overrides)


def test_names_kubernetes_takes_are_kept_and_an_empty_state_pvc_means_scratch(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"kfp": {"state_pvc": "", "namespace": "team-ml", "service_account": None},
                              "deploy": {"config_map": "storeflow.config-2", "namespace": "shop-ml"}})
    assert (settings.kfp.state_pvc, settings.kfp.namespace, settings.kfp.service_account) == ("", "team-ml", None)
    assert (settings.deploy.config_map, settings.deploy.namespace) == ("storeflow.config-2", "shop-ml")
