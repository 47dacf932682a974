"""evidence.py: the sequential score-drift test, the held-out split, the paired comparison and the policy."""
import json
import math

import numpy as np
import pytest

import evidence

# A reference of 400 rows: 300 counted, 240 hits (rate 0.8, F1 0.889).
REFERENCE = {"rows": 400, "counted": 300, "hits": 240}


def outcomes(hits, misses_fp, misses_fn, negatives=0):
    """Labels and predictions with the given true positives, false positives, false negatives, true negatives."""
    y = [1] * hits + [0] * misses_fp + [1] * misses_fn + [0] * negatives
    p = [1] * hits + [1] * misses_fp + [0] * misses_fn + [0] * negatives
    return np.array(y), np.array(p)


def test_counts_and_bad_input():
    assert evidence.counts(*outcomes(3, 1, 2, 4)) == {"rows": 10, "counted": 6, "hits": 3}
    assert evidence.counts([], []) == {"rows": 0, "counted": 0, "hits": 0}
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        evidence.counts([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        evidence.counts([2], [1])


@pytest.mark.parametrize("reference", [
    {"rows": 10, "counted": 11, "hits": 1},
    {"rows": 10, "counted": 5, "hits": 6},
    {"rows": 10, "counted": 5, "hits": -1},
    {"rows": 10.0, "counted": 5, "hits": 1},
    {"rows": 10, "counted": 5},
])
def test_new_state_rejects_bad_reference(reference):
    with pytest.raises(ValueError, match="reference counts"):
        evidence.new_state(reference)


def test_new_state_is_the_reset_and_plain_json():
    state = evidence.new_state(REFERENCE)
    assert state == {"method": evidence.METHOD, "reference": REFERENCE,
                     "evidence": {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0}}
    grown = evidence.add_rows(state, *outcomes(5, 3, 2, 10))
    assert json.loads(json.dumps(grown)) == grown
    assert evidence.new_state(grown["reference"]) == state
    assert state["evidence"]["rows"] == 0  # add_rows returned a new state, the old one is untouched


def test_evidence_accumulates_across_not_enough_evidence_looks():
    state = evidence.new_state(REFERENCE)
    seen = []
    for _ in range(6):  # deliveries of 8 rows, 3 counted, 1 hit (rate 1/3): each alone too small to judge
        state = evidence.add_rows(state, *outcomes(1, 1, 1, 5))
        seen.append(evidence.look(state)["decision"])
    assert seen == ["not enough evidence"] * 3 + ["no drift"] * 2 + ["drift"]
    assert state["evidence"] == {"rows": 48, "counted": 18, "hits": 6, "deliveries": 6}
    d = evidence.look(state)
    assert d["drift"] is True and d["e_value"] >= d["threshold"] == 40.0
    assert d["reason"].startswith("drift: F1 0.50 on the 48 rows in 6 deliveries since the deployment, 18 of them")


def test_look_decision_table():
    ref = evidence.new_state(REFERENCE)
    m = evidence.clopper_pearson_lower(240, 300, 0.025)
    assert m == pytest.approx(0.7502, abs=1e-4)
    same = evidence.look(evidence.add_rows(ref, *outcomes(80, 10, 10, 100)))
    assert (same["decision"], same["drift"]) == ("no drift", False)
    assert same["evidence_rate"] == 0.8 and same["reference_bound"] == pytest.approx(m)
    assert same["e_value"] < 1
    drop = evidence.look(evidence.add_rows(ref, *outcomes(55, 25, 20, 100)))  # rate 0.55, F1 0.71
    assert (drop["decision"], drop["drift"]) == ("drift", True)
    assert drop["evidence_f1"] == pytest.approx(2 * 0.55 / 1.55)
    empty = evidence.look(ref)
    assert (empty["decision"], empty["drift"], empty["e_value"]) == ("not enough evidence", None, 1.0)
    blind = evidence.look(evidence.add_rows(evidence.new_state({"rows": 50, "counted": 5, "hits": 0}),
                                            *outcomes(0, 50, 50)))
    assert blind["decision"] == "not enough evidence" and blind["reference_bound"] == 0.0
    assert "too few to bound its F1 above 0" in blind["reason"]
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match="level must be between 0 and 1"):
            evidence.look(ref, level=bad)


def test_log_e_value_matches_the_closed_form_and_survives_a_million_rows():
    from scipy.special import betainc, betaln

    def closed(h, f, m, w=evidence.DROP_WIDTH):
        lo = max(0.0, m - w)
        return (betaln(h + 1, f + 1) + math.log(betainc(h + 1, f + 1, m) - betainc(h + 1, f + 1, lo))
                - math.log(m - lo) - h * math.log(m) - f * math.log(1 - m))

    for h, f in [(0, 3), (3, 0), (10, 10), (57, 43), (100, 100), (3000, 1000)]:
        assert evidence.log_e_value(h, f, 0.7) == pytest.approx(closed(h, f, 0.7), abs=2e-4)
    assert evidence.log_e_value(0, 0, 0.7) == 0.0
    assert evidence.log_e_value(400_000, 600_000, 0.7) > 1e5   # a clear drop, no underflow
    assert evidence.log_e_value(700_000, 300_000, 0.7) < 0     # the reference rate itself: no evidence


def test_anytime_guarantee_by_simulation():
    """200 sequences of 30 looks with nothing changed: the share with any drift call stays below the level."""
    rng = np.random.default_rng(15)
    level, sequences, looks, rate, share = 0.05, 200, 30, 0.75, 0.6
    alarms = 0
    for _ in range(sequences):
        counted = int(rng.binomial(200, share))
        state = evidence.new_state({"rows": 200, "counted": counted, "hits": int(rng.binomial(counted, rate))})
        for _ in range(looks):
            c = int(rng.binomial(40, share))
            h = int(rng.binomial(c, rate))
            ev = state["evidence"]
            state = {**state, "evidence": {"rows": ev["rows"] + 40, "counted": ev["counted"] + c,
                                           "hits": ev["hits"] + h, "deliveries": ev["deliveries"] + 1}}
            if evidence.look(state, level=level)["drift"]:
                alarms += 1
                break
    assert alarms / sequences <= level + 3 * math.sqrt(level * (1 - level) / sequences)
    # The test is not vacuous: the same looks after a drop to 0.55 call drift nearly always.
    state = evidence.new_state({"rows": 200, "counted": 120, "hits": 90})
    state = evidence.add_rows(state, *outcomes(330, 135, 135))
    assert evidence.look(state, level=level)["drift"] is True


def test_held_out_split_is_stratified_seeded_and_complete():
    labels = np.array([1] * 10 + [0] * 20)
    split = evidence.held_out_split(labels, share=0.3, seed=4)
    assert split == evidence.held_out_split(labels, share=0.3, seed=4)
    assert split["per_class"] == {"0": {"rows": 20, "held_out": 6}, "1": {"rows": 10, "held_out": 3}}
    assert sorted(split["held_out"] + split["training"]) == list(range(30))
    assert int(labels[split["held_out"]].sum()) == 3 and len(split["held_out"]) == 9
    assert split["held_out"] != evidence.held_out_split(labels, share=0.3, seed=5)["held_out"]
    one = evidence.held_out_split([1, 0, 0], share=0.9, seed=0)
    assert one["per_class"] == {"0": {"rows": 2, "held_out": 1}, "1": {"rows": 1, "held_out": 0}}
    with pytest.raises(ValueError, match="share must be between 0 and 1"):
        evidence.held_out_split(labels, share=1.0)


def comparison(serving_right, challenger_right, both_right, both_wrong, negatives=50, seed=0):
    """Rows (all true leavers) where only the serving model, only the challenger, both or neither predicts 1."""
    y = [1] * (serving_right + challenger_right + both_right + both_wrong) + [0] * negatives
    s = [1] * serving_right + [0] * challenger_right + [1] * both_right + [0] * both_wrong + [0] * negatives
    c = [0] * serving_right + [1] * challenger_right + [1] * both_right + [0] * both_wrong + [0] * negatives
    return evidence.paired_comparison(y, s, c, rounds=2000, seed=seed)


@pytest.mark.parametrize(("serving_right", "challenger_right", "verdict"), [
    (0, 30, "better"),
    (30, 0, "worse"),
    (5, 6, "no significant difference"),
    (0, 0, "no significant difference"),
])
def test_paired_comparison_verdicts(serving_right, challenger_right, verdict):
    out = comparison(serving_right, challenger_right, both_right=60, both_wrong=20)
    assert out["verdict"] == verdict
    assert out["rows"] == serving_right + challenger_right + 130
    assert out["difference"] == pytest.approx(out["challenger_f1"] - out["serving_f1"])
    low, high = out["interval"]
    assert low <= out["difference"] <= high
    assert out == comparison(serving_right, challenger_right, both_right=60, both_wrong=20)  # seeded


def test_paired_comparison_identical_models_and_no_leavers():
    same = comparison(0, 0, both_right=40, both_wrong=10)
    assert same["interval"] == [0.0, 0.0] and same["verdict"] == "no significant difference"
    none = evidence.paired_comparison([0, 0, 0], [0, 0, 0], [0, 0, 0])
    assert none["verdict"] == "not enough evidence" and none["interval"] is None
    with pytest.raises(ValueError, match="3 labels, 3 serving and 2 challenger predictions"):
        evidence.paired_comparison([0, 1, 0], [0, 1, 0], [0, 1])


def verdict(v, rows, difference, interval):
    return {"verdict": v, "rows": rows, "difference": difference, "interval": interval}


BETTER = verdict("better", 60, 0.10, [0.03, 0.18])
SAME = verdict("no significant difference", 60, 0.01, [-0.05, 0.06])


@pytest.mark.parametrize(("held_out", "test", "decision", "reason_starts"), [
    (BETTER, verdict("no significant difference", 200, 0.0, [-0.01, 0.01]), "promote", "promoted: the challenger"),
    (BETTER, verdict("better", 200, 0.05, [0.02, 0.08]), "promote", "promoted: the challenger"),
    (BETTER, verdict("no significant difference", 200, -0.01, [-0.04, 0.01]), "keep",
     "kept the serving model: the challenger is better on the 60 newest held-out rows (+0.10 F1), but it could"),
    (BETTER, verdict("worse", 200, -0.06, [-0.1, -0.02]), "needs review", "the challenger is better on the 60"),
    (SAME, verdict("better", 200, 0.05, [0.02, 0.08]), "keep",
     "kept the serving model: the challenger is not significantly better (no significant difference on the 60"),
    (verdict("worse", 60, -0.1, [-0.2, -0.01]), verdict("worse", 200, -0.1, [-0.2, -0.01]), "keep",
     "kept the serving model: the challenger is not significantly better (worse on the 60"),
    (None, SAME, "keep", "kept the serving model: the challenger is not significantly better (no held-out rows)"),
    (BETTER, None, "keep", "kept the serving model: no test data"),
])
def test_promotion_decision_table(held_out, test, decision, reason_starts):
    out = evidence.promotion_decision(held_out, test, margin=0.02)
    assert out["decision"] == decision
    assert out["promote"] is (decision == "promote")
    assert out["reason"].startswith(reason_starts)
    assert (out["held_out"], out["test"]) == (held_out, test)
    if decision == "needs review":
        assert out["action"] == ("refresh the test data with recently labelled rows (the next cycle re-scores both "
                                 "models on them), or promote the challenger by hand with "
                                 "`python deployment.py --promote`")
    else:
        assert out["action"] is None
