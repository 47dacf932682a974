"""The cycle record's JSON form, and the decision "retrain? promote?" as a table."""
import json

import pytest

import cycle
from cycle import UNSET, CycleRecord, Gate, Retrained

SCORE_DRIFT = {"drift": True, "used": "raw", "reason": "new F1 0.6 is lower than the deployed 0.8", "new_f1": 0.6}
NO_SCORE_DRIFT = {**SCORE_DRIFT, "drift": False}
UNDECIDED = {**SCORE_DRIFT, "drift": None}
FEATURES_DRIFT = {"any": True, "drifted": ["lastmonth_activity"]}
FEATURES_CALM = {"any": False, "drifted": []}
LIVE_ACT = {"act": True}
LIVE_CALM = {"act": False}


@pytest.mark.parametrize(
    ("score", "feature", "live", "feature_triggers", "live_triggers", "drift", "decision"), [
        (SCORE_DRIFT, FEATURES_CALM, LIVE_CALM, True, True, True, None),
        (NO_SCORE_DRIFT, FEATURES_CALM, LIVE_CALM, True, True, False, cycle.NO_DRIFT),
        (UNDECIDED, FEATURES_CALM, LIVE_CALM, True, True, False, cycle.NOT_ENOUGH_EVIDENCE),
        (NO_SCORE_DRIFT, FEATURES_DRIFT, LIVE_CALM, True, False, True, None),
        (NO_SCORE_DRIFT, FEATURES_DRIFT, LIVE_CALM, False, False, False, cycle.NO_DRIFT),
        (UNDECIDED, FEATURES_DRIFT, LIVE_CALM, False, False, False, cycle.NOT_ENOUGH_EVIDENCE),
        (NO_SCORE_DRIFT, FEATURES_CALM, LIVE_ACT, False, True, True, None),
        (NO_SCORE_DRIFT, FEATURES_CALM, LIVE_ACT, False, False, False, cycle.NO_DRIFT),
        (None, None, LIVE_CALM, True, True, False, cycle.NO_USABLE_ROWS),  # no complete row, no reference
        (None, FEATURES_CALM, LIVE_CALM, True, True, False, cycle.NO_USABLE_ROWS),
        (None, FEATURES_DRIFT, LIVE_CALM, True, True, True, None),  # feature drift alone retrains
        (None, FEATURES_DRIFT, LIVE_CALM, False, True, False, cycle.NO_USABLE_ROWS),
        (None, None, LIVE_ACT, False, True, True, None),
        (SCORE_DRIFT, None, LIVE_ACT, False, False, True, None),
    ])
def test_drift_verdict(score, feature, live, feature_triggers, live_triggers, drift, decision):
    verdict = cycle.drift_verdict(score, feature, live, feature_triggers, live_triggers)
    assert (verdict.drift, verdict.decision, verdict.retrain) == (drift, decision, decision is None)


def test_drift_verdict_names_the_checks_that_triggered():
    verdict = cycle.drift_verdict(NO_SCORE_DRIFT, FEATURES_DRIFT, LIVE_ACT, True, True)
    assert (verdict.score, verdict.feature, verdict.live) == (False, True, True)


@pytest.mark.parametrize(("promotion_gate", "complete_rows", "applies"), [
    (True, 300, True), (True, 0, False), (False, 300, False), (False, 0, False)])
def test_gate_applies(promotion_gate, complete_rows, applies):
    assert cycle.gate_applies(promotion_gate, complete_rows) is applies


@pytest.mark.parametrize(("gate", "decision"), [
    (None, cycle.REDEPLOYED),
    (Gate(True, 0.8, 0.8, 300, "at least"), cycle.REDEPLOYED),
    (Gate(False, 0.7, 0.8, 300, "lower than"), cycle.GATE_KEPT),
])
def test_promotion_decision(gate, decision):
    assert cycle.promotion_decision(gate) == decision


# The sequential test's looks (evidence.look through drift.sequential_decision), as the cycle makes them:
# a reference of 100 leavers' rows with 80 hits, then the evidence gathered since the deployment.
def _looked(counted, hits, deliveries=1):
    import drift
    import evidence

    state = evidence.new_state({"rows": 300, "counted": 100, "hits": 80})
    state["evidence"] = {"rows": 3 * counted, "counted": counted, "hits": hits, "deliveries": deliveries}
    return drift.sequential_decision(evidence.look(state), new_f1=0.5, deployed_f1=0.89)


@pytest.mark.parametrize(("counted", "hits", "deliveries", "drift", "decision"), [
    (6, 2, 1, False, cycle.NOT_ENOUGH_EVIDENCE),   # one small delivery: too little to call anything
    (60, 20, 10, True, None),                       # ten small ones that together show the drop
    (200, 160, 8, False, cycle.NO_DRIFT),           # as good as the reference
    (200, 150, 8, False, cycle.NO_DRIFT),           # a little worse: not enough for drift at 0.05
    (200, 90, 4, True, None),
])
def test_drift_verdict_on_the_sequential_evidence(counted, hits, deliveries, drift, decision):
    verdict = cycle.drift_verdict(_looked(counted, hits, deliveries), FEATURES_CALM, LIVE_CALM, False, False)
    assert (verdict.drift, verdict.decision) == (drift, decision)


def _policy(decision):
    return {"decision": decision}


@pytest.mark.parametrize(("gate", "policy", "decision"), [
    (None, _policy("promote"), cycle.REDEPLOYED),
    (None, _policy("keep"), cycle.KEPT),
    (None, _policy("needs review"), cycle.NEEDS_REVIEW),  # better on the newest rows, worse on the test data
    (Gate(True, 0.8, 0.8, 300, "at least"), _policy("keep"), cycle.KEPT),  # the held-out policy decides
])
def test_promotion_decision_on_held_out_evidence(gate, policy, decision):
    assert cycle.promotion_decision(gate, policy) == decision
    assert decision.startswith("drift: ")


def test_the_held_out_policy_on_real_comparisons():
    import evidence

    better = {"verdict": "better", "rows": 60, "difference": 0.3, "interval": [0.1, 0.5]}
    worse = {"verdict": "worse", "rows": 40, "difference": -0.4, "interval": [-0.6, -0.2]}
    same = {"verdict": "no significant difference", "rows": 40, "difference": 0.0, "interval": [-0.01, 0.02]}
    assert cycle.promotion_decision(None, evidence.promotion_decision(better, same)) == cycle.REDEPLOYED
    assert cycle.promotion_decision(None, evidence.promotion_decision(better, worse)) == cycle.NEEDS_REVIEW
    assert cycle.promotion_decision(None, evidence.promotion_decision(same, same)) == cycle.KEPT


STATE = {"method": "m", "reference": {"rows": 40, "counted": 20, "hits": 15},
         "evidence": {"rows": 75, "counted": 30, "hits": 12, "deliveries": 3}, "test_sha256": "ab", "since_file_id": 4}
FRESH = {**STATE, "reference": {"rows": 50, "counted": 25, "hits": 20},
         "evidence": {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0}, "since_file_id": None}
RESTARTED = {**STATE, "evidence": {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0}, "since_file_id": None}


@pytest.mark.parametrize(("decision", "state", "fresh", "after"), [
    (cycle.NOT_ENOUGH_EVIDENCE, STATE, None, STATE),  # its rows stay in the evidence
    (cycle.NO_DRIFT, STATE, None, STATE),
    (cycle.REDEPLOYED, STATE, FRESH, FRESH),           # reset on deploy: the new model's reference
    (cycle.REDEPLOYED, STATE, None, None),             # the next delivery builds it from the test data
    (cycle.KEPT, STATE, None, RESTARTED),              # a decision was made: the evidence starts again
    (cycle.NEEDS_REVIEW, STATE, None, RESTARTED),
    (cycle.GATE_KEPT, STATE, None, RESTARTED),
    (cycle.NO_DRIFT, None, None, None),
])
def test_evidence_after(decision, state, fresh, after):
    assert cycle.evidence_after(decision, state, fresh) == after


@pytest.mark.parametrize(("evidence_f1", "test_f1", "counted", "stale"), [
    (0.40, 0.80, 60, True), (0.66, 0.80, 60, False), (0.65, 0.80, 60, True), (0.40, 0.80, 29, False),
    (None, 0.80, 60, False), (0.40, None, 60, False),
])
def test_stale_test_data(evidence_f1, test_f1, counted, stale):
    assert cycle.stale_test_data(evidence_f1, test_f1, counted) is stale


def test_unset_fields_are_not_in_the_json_none_ones_are():
    rec = CycleRecord.start("2026-01-01T00:00:00.000+00:00", "/c/config.json")
    rec.score_drift = None
    assert rec.to_dict() == {"started_at": "2026-01-01T00:00:00.000+00:00", "config": "/c/config.json",
                             "decision": None, "new_files": [], "timings": {}, "errors": [], "score_drift": None}
    assert CycleRecord.locked().to_dict() == {"decision": "locked", "errors": []}
    assert rec.feature_drift is UNSET and not rec.feature_drift and cycle.known(rec.feature_drift, 7) == 7


def test_the_json_form_round_trips_with_its_nested_parts():
    rec = CycleRecord.start("2026-01-01T00:00:00.000+00:00", "c.json")
    rec.cycle_id, rec.decision = 3, cycle.GATE_KEPT
    rec.retrained = Retrained(600, "ab" * 32, {"f1": 0.75})
    rec.retrained.warning = "below the serving model"
    rec.gate = Gate(False, 0.7, 0.8, 300, "lower")
    text = rec.to_json()
    assert json.loads(text)["retrained"] == {"training_rows": 600, "model_sha256": "ab" * 32,
                                             "test_metrics": {"f1": 0.75}, "warning": "below the serving model"}
    assert json.loads(text)["gate"] == {"passed": False, "retrained_f1": 0.7, "deployed_f1": 0.8, "rows": 300,
                                        "reason": "lower"}
    again = CycleRecord.from_dict(json.loads(text))
    assert again == rec and again.to_json() == text
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys, as the history has always held them
    assert list(json.loads(rec.to_json(sort_keys=False)))[:6] == ["started_at", "config", "decision", "new_files",
                                                                  "timings", "errors"]


def test_describe():
    rec = CycleRecord.start("t", "c")
    rec.decision, rec.new_files = cycle.REDEPLOYED, ["b.csv"]
    rec.ingestion = {"quarantined": [{"name": "x.csv", "reason": "empty"}]}
    rec.score_drift = {**SCORE_DRIFT, "fallback": "too few scores: raw test"}
    rec.feature_drift = {"features": {"a": {"ks_statistic": 0.5, "psi": 0.25}, "b": {"ks_statistic": None, "psi": None}},
                         "drifted": ["a"]}
    rec.gate = Gate(True, 0.9, 0.8, 10, "passed it")
    rec.retrained = Retrained(500, "x", {"f1": 0.81234})
    rec.previous_version, rec.deployed_version = 1, 2
    rec.published = {"report": "/m/report.pdf"}
    rec.errors.append("oops")
    rec.seconds = 1.5
    assert cycle.describe(rec).splitlines() == [
        "decision: drift: redeployed", "new files: b.csv", "quarantined: x.csv: empty",
        "score drift (raw test): new F1 0.6 is lower than the deployed 0.8 [too few scores: raw test]",
        "feature drift: a (a KS 0.500 PSI 0.250)", "promotion gate: passed it", "retrained on 500 rows: test F1 0.8123",
        "deployed: version 2 (was 1)", "report: /m/report.pdf", "error: oops", "took 1.500s"]
    calm = CycleRecord.start("t", "c")
    calm.decision, calm.previous_version, calm.deployed_version = cycle.NO_NEW_DATA, 1, 1
    assert cycle.describe(calm).splitlines() == ["decision: no new data", "serving: version 1", "took 0.000s"]
    assert cycle.describe(CycleRecord.locked()) == "another cycle is running: nothing done"
