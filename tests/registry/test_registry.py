"""The registry on SQLite and PostgreSQL: versions, stages, the audit trail, rollback, verified promotion."""

from __future__ import annotations

import shutil

import lightgbm as lgb
import numpy as np
import pytest

from tidal.errors import BundleIntegrityError, ModelNotFound, StateError
from tidal.features.pipeline import FeaturePipeline
from tidal.registry.bundle import write_bundle
from tidal.registry.registry import Registry


def _write_tiny_bundle(path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=120)
    y = (x + rng.normal(scale=0.5, size=120) > 0).astype(float)
    pipe = FeaturePipeline(features={"x": "numeric"}).fit({})
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5},
                        lgb.Dataset(pipe.transform({"x": x}), y, feature_name=pipe.output_names),
                        num_boost_round=5)
    return write_bundle(path, model_text=booster.model_to_string(), pipeline=pipe,
                        signature={"threshold": 0.5}, metrics={"test": {"auc": 0.8}}, reference={})


def _register(ws, n: int) -> list[int]:
    registry = Registry(ws)
    out = []
    for i in range(n):
        path = ws.bundles / f"run-{i}"
        sha = _write_tiny_bundle(path, seed=i)
        out.append(registry.register(run_id=f"run-{i}", bundle_path=str(path), manifest_sha256=sha,
                                     metrics={"auc": 0.7 + i / 100}, actor="trainer"))
    return out


def _stages(registry: Registry) -> dict[int, str]:
    return {r["version"]: r["stage"] for r in registry.list()}


def _tamper(path) -> None:
    model = path / "model.txt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))


def test_register_gives_consecutive_versions_as_candidates(workspace):
    assert _register(workspace, 3) == [1, 2, 3]
    registry = Registry(workspace)
    rows = registry.list()
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert {r["stage"] for r in rows} == {"candidate"}
    assert [r["run_id"] for r in rows] == ["run-0", "run-1", "run-2"]
    assert rows[1]["metrics"] == {"auc": pytest.approx(0.71)}
    assert all(r["created_at"].tzinfo is not None for r in rows)
    history = registry.history()
    assert [(e["version"], e["from_stage"], e["to_stage"], e["actor"]) for e in history] == [
        (1, None, "candidate", "trainer"), (2, None, "candidate", "trainer"), (3, None, "candidate", "trainer")]
    assert history[0]["reason"] == "registered from run run-0"


def test_promote_archives_the_old_production_and_audits(workspace):
    _register(workspace, 2)
    registry = Registry(workspace)
    row = registry.promote(1, actor="ana", reason="first model")
    assert row["version"] == 1 and row["stage"] == "production"
    row = registry.promote("2", actor="bob", reason="better cost")
    assert row["stage"] == "production"
    assert _stages(registry) == {1: "archived", 2: "production"}
    assert registry.resolve("production")["version"] == 2
    changes = [(e["version"], e["from_stage"], e["to_stage"], e["actor"], e["reason"])
               for e in registry.history()[2:]]
    assert changes == [
        (1, "candidate", "production", "ana", "first model"),
        (1, "production", "archived", "bob", "better cost"),
        (2, "candidate", "production", "bob", "better cost"),
    ]


def test_promote_without_actor_records_someone(workspace):
    _register(workspace, 1)
    registry = Registry(workspace)
    registry.promote(1)
    last = registry.history()[-1]
    assert last["to_stage"] == "production"
    assert last["actor"]  # the OS user name, or "unknown"
    assert last["reason"] == "promoted"


def test_promoting_production_again_is_refused(workspace):
    _register(workspace, 1)
    registry = Registry(workspace)
    registry.promote(1)
    n = len(registry.history())
    with pytest.raises(StateError, match="already in production"):
        registry.promote(1)
    assert len(registry.history()) == n


def test_latest_resolves_to_the_newest(workspace):
    registry = Registry(workspace)
    with pytest.raises(ModelNotFound):
        registry.resolve("latest")
    with pytest.raises(ModelNotFound, match="production"):
        registry.resolve("production")
    _register(workspace, 3)
    registry.promote(1)
    assert registry.resolve("latest")["version"] == 3
    assert registry.resolve("production")["version"] == 1
    assert registry.resolve(2)["version"] == 2
    row, bundle = registry.load("latest")
    assert row["version"] == 3
    assert bundle.manifest_sha256 == row["manifest_sha256"]


@pytest.mark.parametrize("version", [99, "99", "0", "best"])
def test_unknown_version_raises_model_not_found(workspace, version):
    _register(workspace, 1)
    registry = Registry(workspace)
    with pytest.raises(ModelNotFound) as info:
        registry.promote(version)
    assert isinstance(info.value, LookupError)
    assert info.value.status_code == 404
    assert _stages(registry) == {1: "candidate"}
    assert len(registry.history()) == 1


def test_rollback_restores_the_previous_production(workspace):
    _register(workspace, 3)
    registry = Registry(workspace)
    registry.promote(1)
    registry.promote(2)
    registry.promote(3)
    row = registry.rollback(actor="oncall", reason="latency spike")
    assert row["version"] == 2 and row["stage"] == "production"
    assert _stages(registry) == {1: "archived", 2: "production", 3: "archived"}
    last_two = [(e["version"], e["from_stage"], e["to_stage"], e["actor"], e["reason"])
                for e in registry.history()[-2:]]
    assert last_two == [(3, "production", "archived", "oncall", "latency spike"),
                        (2, "archived", "production", "oncall", "latency spike")]


def test_rollback_without_a_previous_production_is_refused(workspace):
    _register(workspace, 2)
    registry = Registry(workspace)
    with pytest.raises(StateError, match="nothing is in production"):
        registry.rollback()
    registry.promote(2)
    n = len(registry.history())
    with pytest.raises(StateError, match="only one ever in production"):
        registry.rollback()
    assert _stages(registry) == {1: "candidate", 2: "production"}
    assert len(registry.history()) == n


def test_promoting_a_tampered_bundle_changes_no_stage(workspace):
    _register(workspace, 2)
    registry = Registry(workspace)
    registry.promote(1)
    before_stages, before_history = _stages(registry), registry.history()
    _tamper(workspace.bundles / "run-1")
    with pytest.raises(BundleIntegrityError, match="model.txt"):
        registry.promote(2)
    assert _stages(registry) == before_stages == {1: "production", 2: "candidate"}
    assert registry.history() == before_history


def test_promoting_a_swapped_bundle_is_refused(workspace):
    """A whole, self-consistent bundle put in place of another fails the registry's manifest hash."""
    _register(workspace, 2)
    registry = Registry(workspace)
    target = workspace.bundles / "run-1"
    shutil.rmtree(target)
    shutil.copytree(workspace.bundles / "run-0", target)
    with pytest.raises(BundleIntegrityError, match="registry's hash"):
        registry.promote(2)
    with pytest.raises(BundleIntegrityError):
        registry.load(2)
    assert _stages(registry) == {1: "candidate", 2: "candidate"}


def test_rollback_to_a_tampered_bundle_changes_no_stage(workspace):
    _register(workspace, 2)
    registry = Registry(workspace)
    registry.promote(1)
    registry.promote(2)
    before = registry.history()
    _tamper(workspace.bundles / "run-0")
    with pytest.raises(BundleIntegrityError):
        registry.rollback()
    assert _stages(registry) == {1: "archived", 2: "production"}
    assert registry.history() == before
