"""Features: Feast point-in-time training sets that never see the future, and a fresh online store."""

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_snapshot
from storeflow.components.config import LabelConfig
from storeflow.components.features import FeatureError, build_features, feature_store
from storeflow.components.features.compute import customer_features
from storeflow.components.features.dataset import (
    HistoryError,
    constant_features,
    required_history_days,
    split_holdout,
)
from storeflow.components.features.repo import CUSTOMER_KEY, feature_refs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, store_tables):
    from storeflow.components.config import load_settings

    root = tmp_path_factory.mktemp("features")
    tables = {name: frame.copy() for name, frame in store_tables.items()}
    settings = load_settings({"project": {"state_dir": str(root / "state")},
                              "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30,
                                                     "min_history_days": 60}}})
    # A huge order placed one second after the first cutoff must not reach that cutoff's row.
    probe = build_features(settings, write_snapshot(tables, root / "plain"))
    cutoff = pd.Timestamp(probe.cutoffs[0])
    customer = int(tables["orders"]["customer_id"].iloc[0])
    late = tables["orders"].iloc[[0]].copy()
    late["order_id"] = 99_999_999
    late["created_at"] = late["updated_at"] = cutoff + timedelta(seconds=1)
    late["total_price"] = late["subtotal_price"] = 1_000_000.0
    tables["orders"] = pd.concat([tables["orders"], late], ignore_index=True)
    result = build_features(settings, write_snapshot(tables, root / "with-late-order"))
    return settings, tables, result, cutoff, customer


def test_no_feature_value_observed_after_a_cutoff_reaches_its_row(built) -> None:
    settings, tables, result, cutoff, customer = built
    training = pd.read_parquet(result.training_set)
    orders = tables["orders"]
    # Independently recount each row's history from raw orders strictly before its cutoff.
    merged = training.merge(orders[["customer_id", "created_at", "total_price"]], on="customer_id")
    before = merged[merged["created_at"] < merged["event_timestamp"]]
    expected = before.groupby(["customer_id", "event_timestamp"]).agg(
        frequency=("total_price", "size"), last=("created_at", "max"))
    got = training.set_index(["customer_id", "event_timestamp"])
    assert (got["frequency"] == expected["frequency"].reindex(got.index)).all()
    recency = (got.index.get_level_values(1) - expected["last"].reindex(got.index)).dt.total_seconds() / 86400
    assert got["recency_days"].to_numpy() == pytest.approx(recency.to_numpy())
    row = got.loc[(customer, cutoff)]
    assert row["monetary"] < 1_000_000  # the late order is invisible at this cutoff
    later = got.xs(customer, level=0)
    assert later[later.index > cutoff]["monetary"].max() > 1_000_000  # ...and visible afterwards


def test_training_set_is_labelled_and_hashed(built) -> None:
    settings, tables, result, cutoff, customer = built
    training = pd.read_parquet(result.training_set)
    assert set(settings.features.customer_features) <= set(training.columns)
    assert training["label"].isin([0, 1]).all() and 0 < result.positive_rate < 1
    assert result.rows == len(training) and len(result.dataset_hash) == 64
    assert result.feature_refs == feature_refs(settings)
    assert training[settings.features.customer_features].notna().all().all()
    assert result.constant_features == ["discount_share"]  # the test store gives no discounts: named
    assert (training["label_spend"] >= 0).all() and ((training["label_spend"] > 0) == (training["label"] == 1)).all()
    held = training[training["baseline_bgnbd"].notna()]  # the holdout rows carry every baseline
    assert not held.empty and (held["baseline_spend_bgnbd_gamma_gamma"] > 0).all()
    assert "gamma_gamma.p" in result.baseline_parameters


def test_a_feature_with_one_value_on_every_row_is_named() -> None:
    """A CSV export without refund times or product types made refund_rate and category_affinity
    constant, and nothing said so."""
    frame = pd.DataFrame({"refund_rate": [0.0, 0.0, 0.0], "frequency": [1, 2, 1], "gap": [np.nan] * 3,
                          "label": [0, 1, 1]})
    assert constant_features(frame, ["refund_rate", "frequency", "gap", "absent"]) == ["refund_rate", "gap"]


def test_online_store_serves_the_newest_snapshot(built) -> None:
    settings, tables, result, cutoff, customer = built
    store = feature_store(settings)
    online = store.get_online_features(features=feature_refs(settings),
                                       entity_rows=[{CUSTOMER_KEY: customer}, {CUSTOMER_KEY: 424242}]).to_df()
    newest = customer_features(tables, [pd.Timestamp(result.served_as_of).to_pydatetime()])
    expected = newest.set_index(CUSTOMER_KEY).loc[customer]
    assert online.loc[0, "frequency"] == expected["frequency"]
    assert online.loc[0, "monetary"] == pytest.approx(expected["monetary"])
    assert pd.isna(online.loc[1, "frequency"])  # unknown customer: no row, not an error


def test_too_little_history_is_a_clear_error(settings, store_tables, tmp_path: Path) -> None:
    orders = store_tables["orders"]
    recent = orders[orders["created_at"] > orders["created_at"].max() - timedelta(days=70)]
    tables = {**store_tables, "orders": recent}
    with pytest.raises(FeatureError, match="need at least .* days"):
        build_features(settings, write_snapshot(tables, tmp_path / "short"))


def _cutoff_frame(cutoffs: int, every_days: int = 30) -> pd.DataFrame:
    times = pd.date_range("2026-01-01", periods=cutoffs, freq=f"{every_days}D", tz="UTC")
    return pd.DataFrame({"customer_id": np.tile([1, 2], cutoffs), "event_timestamp": np.repeat(times, 2),
                         "label": np.tile([0, 1], cutoffs)})


def test_no_training_label_window_overlaps_calibration_or_holdout() -> None:
    label = LabelConfig(horizon_days=60, cutoff_every_days=30, min_history_days=60, holdout_cutoffs=2)
    split = split_holdout(_cutoff_frame(6), label)
    horizon = timedelta(days=label.horizon_days)
    calibration = split.calibration["event_timestamp"].unique()
    assert len(calibration) == 1 and not split.train.empty
    assert (split.train["event_timestamp"] + horizon <= calibration[0]).all()
    assert calibration[0] + horizon <= split.holdout["event_timestamp"].min()


def test_history_too_short_for_an_honest_holdout_stops_and_says_what_is_needed() -> None:
    # Four cutoffs 30 days apart with 60-day labels: no training label closes before the calibration
    # cutoff does, and with three no calibration label closes before the holdout. This used to train
    # silently on label windows that overlap the holdout.
    label = LabelConfig(horizon_days=60, cutoff_every_days=30, min_history_days=60, holdout_cutoffs=2)
    for cutoffs in (3, 4):
        with pytest.raises(HistoryError, match=r"need at least 270 days.*features\.label\.horizon_days"):
            split_holdout(_cutoff_frame(cutoffs), label)
    assert required_history_days(label) == 270


def test_features_computed_later_score_with_the_saved_btyd_model(built) -> None:
    """The webhook applier and simulations recompute features after the stage ran: their BG/NBD
    features come from the model the stage fitted, so a live row matches what the stage served."""
    from storeflow.components.features.btyd import BTYD_FEATURES, LiveScorer
    from storeflow.components.features.repo import btyd_model_path

    settings, tables, result, cutoff, customer = built
    newest = customer_features(tables, [pd.Timestamp(result.served_as_of).to_pydatetime()])
    live = newest.join(LiveScorer(btyd_model_path(settings)).features(newest, settings.features.label.horizon_days))
    online = feature_store(settings).get_online_features(
        features=feature_refs(settings), entity_rows=[{CUSTOMER_KEY: customer}]).to_df()
    row = live.set_index(CUSTOMER_KEY).loc[customer]
    for name in BTYD_FEATURES:
        assert online.loc[0, name] == pytest.approx(row[name])
    assert live[list(BTYD_FEATURES)].notna().all().all()
    assert 0 < live["btyd_p_alive"].min() and live["btyd_p_alive"].max() <= 1


@pytest.fixture(scope="module")
def champion(built, tmp_path_factory):
    """A version trained on ``built``'s training set and made champion, in a registry of its own."""
    from storeflow.components import tracking
    from storeflow.components.train import train

    root = tmp_path_factory.mktemp("champion")
    settings, _, result, _, _ = built
    settings = settings.model_copy(update={"registry": settings.registry.model_copy(
        update={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_location": str(root / "artifacts")})})
    trained = train(settings, result)
    client = tracking.connect(settings)
    name = settings.registry.model_name
    client.create_registered_model(name)
    version = client.create_model_version(name, trained.model_uri, run_id=trained.run_id).version
    client.set_registered_model_alias(name, tracking.CHAMPION, version)
    return settings, str(version)


@pytest.fixture
def on_another_pod(built, tmp_path: Path):
    """What a pod other than the features and train tasks' sees: none of their files (RWO volumes)."""
    settings, _, result, _, _ = built
    moved = {path: tmp_path / f"elsewhere-{i}" for i, path in enumerate(
        [result.baseline_model, result.training_set, *sorted((settings.data_dir / "training").glob("*.parquet"))])}
    for path, away in moved.items():
        path.rename(away)
    try:
        yield moved
    finally:
        for path, away in moved.items():
            away.rename(path)


def test_the_receiver_scores_live_customers_with_the_served_versions_bgnbd_not_a_shared_file(
        built, champion, on_another_pod) -> None:
    """On a cluster the webhook receiver never sees the features task's files (ReadWriteOnce volumes, another
    pod): the BG/NBD travels inside the trained model version, and the receiver takes the served version's
    from MLflow. It used to read the features task's file only, so its live BTYD features were missing."""
    from storeflow.components.features.btyd import BTYD_FEATURES, LiveScorer
    from storeflow.components.shopify.apply import Applier

    _, tables, result, _, _ = built
    settings, version = champion
    newest = customer_features(tables, [pd.Timestamp(result.served_as_of).to_pydatetime()])
    horizon = settings.features.label.horizon_days
    expected = LiveScorer(on_another_pod[result.baseline_model]).features(newest, horizon)
    applier = Applier(settings)
    try:
        assert applier.btyd.features(newest, horizon).isna().all().all()  # nothing to score with yet
        assert applier.baseline.refresh() == version
        live = applier.btyd.features(newest, horizon)
    finally:
        applier.conn.close()
    assert live[list(BTYD_FEATURES)].notna().all().all()
    pd.testing.assert_frame_equal(live, expected)


def test_the_monitor_on_another_pod_takes_its_reference_from_the_training_run(built, champion, on_another_pod) -> None:
    """The monitoring reference (the latest cutoffs' training rows) is an artifact of the training run: it
    used to be read from the training set file the train task saw, so a monitor task on another pod found
    none and reported no drift at all."""
    from storeflow.components.features.dataset import latest_cutoffs_sample
    from storeflow.components.monitor.reference import load_reference

    _, _, result, _, _ = built
    settings, version = champion
    cfg = settings.monitor
    reference = load_reference(settings, version, cfg.reference_rows, cfg.seed, cfg.reference_cutoffs)
    training = pd.read_parquet(on_another_pod[result.training_set])
    expected = latest_cutoffs_sample(training, cfg.reference_cutoffs, cfg.reference_rows, cfg.seed)
    assert len(reference.frame) == len(expected) > 0
    assert reference.frame["frequency"].tolist() == expected["frequency"].tolist()
    assert reference.frame["score"].between(0, 1).all()


def test_before_any_features_run_live_btyd_features_are_missing_not_invented(tmp_path: Path, store_tables) -> None:
    from storeflow.components.features.btyd import BTYD_FEATURES, LiveScorer

    rows = customer_features(store_tables, [pd.Timestamp("2030-01-01", tz="UTC").to_pydatetime()])
    scored = LiveScorer(tmp_path / "absent.nc").features(rows, 60)
    assert list(scored.columns) == list(BTYD_FEATURES) and scored.isna().all().all() and len(scored) == len(rows)


def test_a_snapshot_is_read_by_duckdb_from_its_files_with_the_rows_of_the_in_memory_tables(
        store_tables, tmp_path: Path) -> None:
    """Large stores: the feature rows go from the snapshot's Parquet files to Parquet inside DuckDB, under
    a memory limit that spills, never through a pandas frame; the rows are those of the frames' path."""
    from storeflow.components.features.compute import write_customer_features

    snapshot = write_snapshot(store_tables, tmp_path / "snapshot")
    times = [pd.Timestamp("2025-10-01", tz="UTC").to_pydatetime(), pd.Timestamp("2026-06-01", tz="UTC").to_pydatetime()]
    out = tmp_path / "rows.parquet"
    written = write_customer_features(snapshot, times, out, memory_limit_mb=256, spill_dir=tmp_path / "spill")
    rows = pd.read_parquet(out)
    expected = customer_features(store_tables, times)
    assert written == len(expected) > 0
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)


def test_a_snapshot_missing_a_table_is_named(store_tables, tmp_path: Path) -> None:
    from storeflow.components.features.compute import write_customer_features

    snapshot = write_snapshot(store_tables, tmp_path / "snapshot")
    (snapshot / "refunds.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="table 'refunds' not found"):
        write_customer_features(snapshot, [pd.Timestamp("2024-06-01", tz="UTC").to_pydatetime()],
                                tmp_path / "rows.parquet", memory_limit_mb=256, spill_dir=tmp_path / "spill")


def test_a_training_set_written_in_parts_is_the_frame_with_its_hash_and_constant_features(tmp_path: Path) -> None:
    """The features stage writes a large store's training set a cutoff at a time; the file, its hash and
    the features named constant must be what the whole frame would give."""
    from storeflow.components.features import TrainingSetWriter, frame_hash

    times = pd.to_datetime(["2026-01-01", "2026-02-01", "2026-03-01"], utc=True).repeat(40)
    frame = pd.DataFrame({"customer_id": np.tile(np.arange(40), 3), "event_timestamp": times,
                          "label": np.arange(120) % 3 == 0, "same": 7.0, "missing": np.nan,
                          "varies_late": np.r_[np.zeros(80), np.ones(40)], "spend": np.arange(120) * 1.5})
    frame["label"] = frame["label"].astype("int64")
    features = ["same", "missing", "varies_late", "spend"]
    writer = TrainingSetWriter(tmp_path / "training", features)
    for _, part in frame.groupby("event_timestamp", sort=True):
        writer.append(part.reset_index(drop=True))
    out, digest = writer.close()

    assert digest == frame_hash(frame) and out.name == f"{digest[:16]}.parquet"
    assert writer.constant == constant_features(frame, features) == ["same", "missing"]
    assert (writer.rows, writer.positives) == (120, 40)
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame, check_dtype=False)


def test_a_run_after_a_materialization_that_was_killed_builds_and_serves(settings, store_tables, tmp_path: Path) -> None:
    """Feast marks a view MATERIALIZING while it materializes. A features task killed then (out of memory,
    a preempted node) left it so, and every later run failed: "Feature view 'customer_features' is in
    state 'MATERIALIZING' and cannot serve features" (seen on the 100x store after a killed run)."""
    from feast.feature_view import FeatureViewState

    from storeflow.components.features.repo import CUSTOMER_VIEW

    first = build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    store = feature_store(settings)
    view = store.get_feature_view(CUSTOMER_VIEW)
    view.state = FeatureViewState.MATERIALIZING  # what the killed task left in the registry
    store.registry.apply_feature_view(view, store.project, commit=True)

    again = build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    assert again.dataset_hash == first.dataset_hash
    customer = int(pd.read_parquet(again.training_set)[CUSTOMER_KEY].iloc[0])
    online = feature_store(settings).get_online_features(features=feature_refs(settings)[:1],
                                                         entity_rows=[{CUSTOMER_KEY: customer}]).to_dict()
    assert online[feature_refs(settings)[0].split(":")[1]][0] is not None


def test_materialization_writes_every_customer_a_batch_at_a_time(settings, store_tables, tmp_path: Path) -> None:
    """features.feast.online_write_batch_size reaches Feast (materialization.online_write_batch_size), so a
    large store's materialization holds one batch of value protos, not every row's (9.2 GB at 100x); every
    customer of the newest snapshot is still in the online store."""
    import yaml

    from storeflow.components.config import load_settings

    values = json.loads(settings.to_json())
    values["features"]["feast"]["online_write_batch_size"] = 7
    small = load_settings(values)
    result = build_features(small, write_snapshot(store_tables, tmp_path / "snapshot"))
    written = yaml.safe_load((small.feature_repo_dir / "feature_store.yaml").read_text())
    assert written["materialization"] == {"online_write_batch_size": 7}
    newest = customer_features(store_tables, [pd.Timestamp(result.served_as_of).to_pydatetime()])
    assert len(newest) > 7 * 3
    ref = feature_refs(small)[0]
    online = feature_store(small).get_online_features(
        features=[ref], entity_rows=[{CUSTOMER_KEY: int(c)} for c in newest[CUSTOMER_KEY]]).to_dict()
    assert all(value is not None for value in online[ref.split(":")[1]])
