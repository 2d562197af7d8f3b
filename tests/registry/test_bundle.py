"""Model bundles: written atomically, verified file by file on load, never anything unlisted."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import lightgbm as lgb
import numpy as np
import pytest

import tidal.registry.bundle as bundle_mod
from tidal.data.ingest import ingest_file
from tidal.errors import BundleIntegrityError
from tidal.features.pipeline import FeaturePipeline
from tidal.registry.bundle import FILES, MANIFEST, load_bundle, write_bundle
from tidal.training.trainer import train


def _tiny_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 200
    x = rng.normal(size=n)
    c = rng.choice(["a", "b", "c"], n).tolist()
    y = (x + np.array([v == "a" for v in c]) + rng.normal(scale=0.5, size=n) > 0.5).astype(float)
    pipe = FeaturePipeline(features={"x": "numeric", "c": "categorical"}).fit({"c": c})
    X = pipe.transform({"x": x, "c": c})
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5,
                         "seed": seed}, lgb.Dataset(X, y, categorical_feature=pipe.categorical_indices,
                                                    feature_name=pipe.output_names), num_boost_round=10)
    return booster, pipe, X


def make_bundle(path, seed: int = 0):
    booster, pipe, X = _tiny_model(seed)
    sha = write_bundle(path, model_text=booster.model_to_string(), pipeline=pipe,
                       signature={"task": "binary", "threshold": 0.4, "features": pipe.output_names},
                       metrics={"test": {"auc": 0.9, "rows": 40}}, reference={"score": {"mean": 0.3}})
    return sha, booster, X


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundles" / "run-1"
    path.parent.mkdir()
    sha, booster, X = make_bundle(path)
    return path, sha, booster, X


def _flip(path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_bundle_loads_and_predicts_like_the_original(bundle):
    path, sha, booster, X = bundle
    loaded = load_bundle(path, expected_manifest_sha256=sha)
    assert loaded.manifest_sha256 == sha == hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    np.testing.assert_array_equal(loaded.booster.predict(X), booster.predict(X))
    assert loaded.signature == {"task": "binary", "threshold": 0.4, "features": ["x", "c"]}
    assert loaded.metrics == {"test": {"auc": 0.9, "rows": 40}}
    assert loaded.reference == {"score": {"mean": 0.3}}
    assert loaded.pipeline.vocabularies.keys() == {"c"}
    assert loaded.size_bytes == sum(f.stat().st_size for f in path.iterdir())


def test_manifest_lists_every_file_with_its_sha256(bundle):
    path, *_ = bundle
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "tidal-bundle/1"
    assert set(manifest["files"]) == set(FILES)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert {p.name for p in path.iterdir()} == {*FILES, MANIFEST}
    assert not list(path.glob("*.pkl"))


def test_trained_bundle_loads_and_predicts(sqlite_workspace, churn_spec, telco_csv):
    spec = churn_spec.model_copy(update={"training": churn_spec.training.model_copy(update={"num_boost_round": 30})})
    ingest_file(sqlite_workspace, spec, telco_csv)
    result = train(sqlite_workspace, spec)
    loaded = load_bundle(result.bundle_path)
    records = [{"gender": "Female", "SeniorCitizen": False, "Partner": "Yes", "tenure": 1,
                "InternetService": "Fiber optic", "Contract": "Month-to-month", "PaymentMethod": "Electronic check",
                "MonthlyCharges": 95.0, "TotalCharges": 95.0},
               {"gender": "Male", "SeniorCitizen": False, "Partner": "Yes", "tenure": 70,
                "InternetService": "DSL", "Contract": "Two year", "PaymentMethod": "Bank transfer (automatic)",
                "MonthlyCharges": 50.0, "TotalCharges": 3500.0}]
    scores = loaded.booster.predict(loaded.pipeline.transform_records(records))
    assert scores.shape == (2,)
    assert np.all((scores > 0) & (scores < 1))
    assert scores[0] > scores[1]  # a new month-to-month fibre customer churns more than a loyal two-year one
    assert loaded.signature["threshold"] == result.metrics["test"]["threshold"]
    assert loaded.metrics["test"] == result.metrics["test"]


@pytest.mark.parametrize("name", FILES)
def test_tampered_file_is_refused_naming_it(bundle, name):
    path, sha, *_ = bundle
    _flip(path / name)
    with pytest.raises(BundleIntegrityError, match=rf"{name} fails its sha256 check"):
        load_bundle(path)
    with pytest.raises(BundleIntegrityError, match=name):
        load_bundle(path, expected_manifest_sha256=sha)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_manifest_is_refused_naming_it(bundle, where):
    path, sha, *_ = bundle
    size = (path / MANIFEST).stat().st_size
    _flip(path / MANIFEST, {"first": 0, "middle": size // 2, "last": size - 1}[where])
    with pytest.raises(BundleIntegrityError, match=MANIFEST) as info:
        load_bundle(path, expected_manifest_sha256=sha)
    assert info.value.code == "bundle_integrity"


def test_manifest_that_is_not_json_is_refused_without_expected_hash(bundle):
    path, *_ = bundle
    _flip(path / MANIFEST, 0)  # '{' -> 'z'
    with pytest.raises(BundleIntegrityError, match=f"{MANIFEST} is not a tidal manifest"):
        load_bundle(path)


def test_manifest_hash_change_is_caught_by_the_file_check(bundle):
    path, *_ = bundle
    manifest = json.loads((path / MANIFEST).read_text())
    digest = manifest["files"]["model.txt"]
    manifest["files"]["model.txt"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(BundleIntegrityError, match="model.txt fails its sha256 check"):
        load_bundle(path)


def test_unlisted_extra_file_is_refused(bundle):
    path, sha, *_ = bundle
    (path / "model.pkl").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BundleIntegrityError, match="model.pkl"):
        load_bundle(path)
    with pytest.raises(BundleIntegrityError, match="model.pkl"):
        load_bundle(path, expected_manifest_sha256=sha)


def test_missing_file_is_refused(bundle):
    path, *_ = bundle
    (path / "reference.json").unlink()
    with pytest.raises(BundleIntegrityError, match="reference.json is missing"):
        load_bundle(path)


def test_missing_manifest_is_refused(bundle):
    path, *_ = bundle
    (path / MANIFEST).unlink()
    with pytest.raises(BundleIntegrityError, match=f"no {MANIFEST}"):
        load_bundle(path)


def test_wrong_expected_manifest_hash_is_refused(bundle):
    path, sha, *_ = bundle
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(BundleIntegrityError, match="does not match the registry's hash"):
        load_bundle(path, expected_manifest_sha256=wrong)


def test_foreign_but_consistent_bundle_is_refused_by_expected_hash(tmp_path):
    sha_a, *_ = make_bundle(tmp_path / "a", seed=0)
    sha_b, *_ = make_bundle(tmp_path / "b", seed=1)
    assert sha_a != sha_b
    load_bundle(tmp_path / "b")  # self-consistent on its own
    with pytest.raises(BundleIntegrityError, match="registry's hash"):
        load_bundle(tmp_path / "b", expected_manifest_sha256=sha_a)


def test_write_leaves_no_temporary_folder(bundle):
    path, *_ = bundle
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert not path.with_name(path.name + ".tmp").exists()


def test_failed_write_publishes_nothing_and_a_retry_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "run-2"
    real_fsync, calls = os.fsync, []

    def crashing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(bundle_mod.os, "fsync", crashing_fsync)
    with pytest.raises(OSError, match="disk full"):
        make_bundle(path)
    assert not path.exists()  # a reader never sees a half-written bundle
    monkeypatch.setattr(bundle_mod.os, "fsync", real_fsync)
    sha, *_ = make_bundle(path)
    assert load_bundle(path, expected_manifest_sha256=sha).manifest_sha256 == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-2"]


def test_rewriting_an_existing_bundle_leaves_no_temporary_folder(bundle):
    """Writing to a path that already holds a bundle must either replace it or fail cleanly,
    never leave the half-published ``.tmp`` folder behind."""
    path, sha, *_ = bundle
    from tidal.errors import StateError

    with pytest.raises(StateError, match="already exists"):  # bundles are immutable
        make_bundle(path, seed=1)
    assert not path.with_name(path.name + ".tmp").exists()
    assert load_bundle(path, expected_manifest_sha256=sha)  # the original is untouched


def test_copied_bundle_still_loads(bundle, tmp_path):
    path, sha, booster, X = bundle
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    np.testing.assert_array_equal(load_bundle(copy, expected_manifest_sha256=sha).booster.predict(X),
                                  booster.predict(X))
