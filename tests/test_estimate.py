"""The estimated live F1: exact sums on hand-made rows, the calibration table and its check, and the
estimate against the realized F1 of covariate-shifted traffic with known labels."""
import json
import math

import numpy as np
import pytest

import datagen
import delivery
import estimate
import training

IDENTITY = {"kind": "identity"}
PARAMS = {"C": 1.0, "max_iter": 1000, "class_weight": None, "random_state": 0}


def test_window_sums_and_f1_by_hand():
    sums = estimate.window_sums(IDENTITY, [0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert sums == {"rows": 4, "predicted_positive": 2, "c_pos": pytest.approx(1.7), "c2_pos": pytest.approx(1.45),
                    "c_neg": pytest.approx(0.4), "c2_neg": pytest.approx(0.1)}
    got = estimate.estimate_f1(sums)
    # TP 1.7, FP 2 - 1.7, FN 0.4, TN 2 - 0.4; F1 = 3.4 / (3.4 + 0.3 + 0.4) = 3.4 / 4.1
    assert got["expected"] == {"tp": pytest.approx(1.7), "fp": pytest.approx(0.3), "fn": pytest.approx(0.4),
                               "tn": pytest.approx(1.6)}
    assert got["estimated_f1"] == pytest.approx(3.4 / 4.1, abs=1e-12)
    # var TP = 1.7 - 1.45, var FN = 0.4 - 0.1; dF/dTP = 2 (2 + 0.4) / 4.1^2, dF/dFN = -2 x 1.7 / 4.1^2
    sd = math.sqrt((4.8 ** 2 * 0.25 + 3.4 ** 2 * 0.3) / 4.1 ** 4)
    assert got["sd"] == pytest.approx(sd, abs=1e-12)
    assert got["interval"] == [pytest.approx(3.4 / 4.1 - 1.959963984540054 * sd, abs=1e-12), 1.0]
    assert got["rows"] == 4


def test_f1_undefined_when_nothing_is_or_is_expected_positive():
    got = estimate.estimate_f1(estimate.window_sums(IDENTITY, [0.0, 0.0], [0, 0]))
    assert got == {"rows": 2, "expected": {"tp": 0.0, "fp": 0.0, "fn": 0.0, "tn": 2.0},
                   "estimated_f1": None, "sd": None, "interval": None}


def test_tiny_expected_counts_give_an_estimate_not_an_error():
    """Found by CI: extreme live inputs (schemathesis') gave probabilities near 1e-200; denom ** 2
    underflowed to 0 and /health answered 500 (ZeroDivisionError)."""
    got = estimate.estimate_f1(estimate.window_sums(IDENTITY, [1e-200, 1e-250], [0, 0]))
    assert got == {"rows": 2, "expected": {"tp": 0.0, "fp": 0.0, "fn": pytest.approx(1e-200, rel=1e-9),
                                           "tn": pytest.approx(2.0)},
                   "estimated_f1": 0.0, "sd": 0.0, "interval": [0.0, 0.0]}


def test_sums_add_across_windows():
    rng = np.random.default_rng(3)
    p = rng.random(500)
    pred = (p > 0.5).astype(int)
    whole = estimate.window_sums(IDENTITY, p, pred)
    parts = estimate.add_sums(estimate.window_sums(IDENTITY, p[:123], pred[:123]),
                              estimate.window_sums(IDENTITY, p[123:], pred[123:]))
    assert parts == {k: pytest.approx(v, rel=1e-12) for k, v in whole.items()}
    assert estimate.add_sums(estimate.empty_sums(), whole) == whole


def test_calibrate_interpolates_and_clips():
    table = {"kind": "isotonic", "x": [0.2, 0.8], "y": [0.1, 0.9]}
    assert estimate.calibrate(table, [0.0, 0.2, 0.35, 0.5, 1.0]).tolist() == pytest.approx([0.1, 0.1, 0.3, 0.5, 0.9])
    assert estimate.calibrate(IDENTITY, [0.25]).tolist() == [0.25]
    with pytest.raises(ValueError, match="unknown calibration kind 'platt'"):
        estimate.calibrate({"kind": "platt"}, [0.5])


def test_ece_by_hand():
    # bins 0, 1 and 9: |0.05 - 0| + |0.15 - 1| + |0.95 - 1| over 3 rows; 1.0 falls in the last bin
    assert estimate.ece([0.05, 0.15, 0.95], [0, 1, 1]) == pytest.approx(0.95 / 3, abs=1e-12)
    assert estimate.ece([1.0, 0.0], [1, 0]) == 0.0


def test_reliability_bins():
    got = estimate.reliability(IDENTITY, [0.05, 0.15, 0.12, 0.95], [0, 1, 0, 1])
    assert got["bins"] == [
        {"lower": 0.0, "upper": 0.1, "rows": 1, "mean_probability": 0.05, "observed_rate": 0.0},
        {"lower": 0.1, "upper": 0.2, "rows": 2, "mean_probability": pytest.approx(0.135), "observed_rate": 0.5},
        {"lower": 0.9, "upper": 1.0, "rows": 1, "mean_probability": 0.95, "observed_rate": 1.0},
    ]
    assert got["ece"] == pytest.approx((0.05 + 2 * 0.365 + 0.05) / 4)


def test_too_few_rows_of_a_class():
    with pytest.raises(ValueError, match="3 positive and 7 negative rows: at least 4 of each needed"):
        estimate.fit_calibration([0.5] * 10, [1, 1, 1] + [0] * 7)
    with pytest.raises(ValueError, match="3 probabilities but 2 labels"):
        estimate.fit_calibration([0.5] * 3, [1, 0])


def distorted(n, seed):
    """Labels with known probabilities, and a model's overconfident version of them (p^2 and the like)."""
    rng = np.random.default_rng(seed)
    true = rng.random(n)
    return true ** 2, (rng.random(n) < true).astype(int), true


def test_fit_calibration_repairs_a_miscalibrated_model_and_is_json():
    raw, y, _ = distorted(2000, seed=1)
    table = estimate.fit_calibration(raw, y, source="the test data and the held-out deliveries")
    assert table["kind"] == "isotonic"
    assert table["check"]["chosen"] == "isotonic"
    assert table["check"]["ece_isotonic"] < table["check"]["ece_raw"]
    assert (table["rows"], table["positives"], table["source"]) == (2000, int(y.sum()),
                                                                    "the test data and the held-out deliveries")
    assert json.loads(json.dumps(table)) == table
    fresh_raw, fresh_y, _ = distorted(20000, seed=2)
    assert estimate.ece(fresh_raw, fresh_y) > 0.1
    assert estimate.reliability(table, fresh_raw, fresh_y)["ece"] < 0.03


def test_fit_calibration_keeps_calibrated_or_few_rows_raw():
    rng = np.random.default_rng(4)
    p = rng.random(2000)
    y = (rng.random(2000) < p).astype(int)
    table = estimate.fit_calibration(p, y)  # already calibrated: whichever map the check picks stays calibrated
    assert table["kind"] == table["check"]["chosen"] == (
        "isotonic" if table["check"]["ece_isotonic"] < table["check"]["ece_raw"] else "identity")
    q = rng.random(20000)
    assert estimate.reliability(table, q, (rng.random(20000) < q).astype(int))["ece"] < 0.03
    raw, y, _ = distorted(40, seed=5)  # the project's test data is 40 rows: too few for isotonic
    small = estimate.fit_calibration(raw, y)
    assert small["kind"] == "identity"
    assert set(small) == {"kind", "rows", "positives", "source", "check", "ece"}


@pytest.fixture(scope="module")
def model_and_table():
    model = training.train(datagen.generate(2000, seed=11), PARAMS)
    X, y = delivery.training_frame(datagen.generate(1000, seed=12))  # held out: never trained on
    return model, estimate.fit_calibration(model.predict_proba(X)[:, 1], y.to_numpy(), source="held-out rows")


def window(model, table, rows, seed, **drift):
    X, y = delivery.training_frame(datagen.generate(rows, seed=seed, **drift))
    prob = model.predict_proba(X)[:, 1]
    pred = model.predict(X)
    est = estimate.estimate_f1(estimate.window_sums(table, prob, pred))
    tp = int(((pred == 1) & (y.to_numpy() == 1)).sum())
    return est, 2 * tp / (int(pred.sum()) + int(y.sum()))


def test_estimate_follows_realized_f1_under_covariate_shift(model_and_table):
    """Activity moves (datagen's covariate drift keeps P(exit | activity)); 20 windows of 1,000
    rows: the estimate is within 0.05 of the F1 the labels show, in every window."""
    model, table = model_and_table
    errors = []
    for k in range(20):
        est, real = window(model, table, 1000, seed=100 + k, drift="covariate", strength=0.5)
        errors.append(abs(est["estimated_f1"] - real))
    assert max(errors) <= 0.05
    # and the realized F1 did move from the undrifted one: the estimate followed a change
    steady = [window(model, table, 1000, seed=200 + k)[1] for k in range(5)]
    drifted = [window(model, table, 1000, seed=100 + k, drift="covariate", strength=0.5)[1] for k in range(5)]
    assert np.mean(steady) - np.mean(drifted) > 0.02


def test_a_concept_shift_is_invisible(model_and_table):
    """The relation reversed: the labels show a collapsed F1, the estimate does not see it."""
    model, table = model_and_table
    est, real = window(model, table, 1000, seed=300, drift="concept", strength=1.0)
    steady, _ = window(model, table, 1000, seed=301)
    assert real < 0.3
    assert abs(est["estimated_f1"] - steady["estimated_f1"]) < 0.05
    assert est["estimated_f1"] - real > 0.4
