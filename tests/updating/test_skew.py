"""The skew check: logged serving requests give the same features through both paths, and
the version that answered them reproduces its logged scores; it runs in the promotion gate."""

from __future__ import annotations

from tests.serving.conftest import make_project
from tests.updating.test_retrain import _log_traffic
from tidal.updating.skew import skew_check


def test_logged_requests_have_no_skew(tmp_path):
    project = make_project(tmp_path / "p", versions=2)
    _log_traffic(project, 300, offset=1000)  # answered by version 1
    for version in (1, 2):
        _, bundle = project.registry.load(version)
        result = skew_check(project.ws, bundle, version)
        assert result["ok"], result
        assert result["rows"] == 300 and result["feature_mismatches"] == 0
    assert skew_check(project.ws, project.registry.load(1)[1], 1)["max_score_difference"] <= 1e-12
    project.close()


def test_a_wrong_logged_score_is_caught_and_blocks_promotion(tmp_path):
    project = make_project(tmp_path / "p", versions=2)
    _log_traffic(project, 200, offset=1000)
    # a serving path that drifted from training: version 1's logged scores are not what it computes
    import pyarrow.compute as pc

    log = project.ws.lake.read("predictions")
    forged = log.set_column(log.schema.get_field_index("_score"), "_score",
                            pc.add(log.column("_score"), 0.01))
    project.ws.lake.append("predictions", forged)
    result = skew_check(project.ws, project.registry.load(1)[1], 1)
    assert not result["ok"] and result["max_score_difference"] > 1e-6
    from tidal.updating.guardrails import promotion_gate

    # version 1 is in production: demote it to judge it as a candidate again
    project.ws.store.set_stages([(1, "production", "candidate")], actor="test", reason="re-judge")
    failures = promotion_gate(project.ws, project.spec, 1)
    assert any(f.startswith("skew:") for f in failures)
    project.close()
