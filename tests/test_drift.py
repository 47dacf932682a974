"""Drift decisions with exact expectations: the raw and history tests (ties, fallback), the significance
test on constructed cases, the multiple-testing correction of feature drift, and the harness."""
import importlib.util
import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

import datagen
import drift
import measures
import training
from conftest import REPO

PARAMS = {"C": 1.0, "max_iter": 1000, "class_weight": None, "random_state": 0}


def rows_from_cells(tp, fp, fn, tn):
    """Labels and predictions with the given confusion counts, in a fixed order."""
    true = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn)
    pred = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn)
    return true, pred


# --- raw, parametric, nonparametric --------------------------------------------------------------

@pytest.mark.parametrize(("new_f1", "drift_", "words"), [
    (0.5, True, "lower than"),
    (0.75, False, "equal to"),  # a tie is not drift
    (0.875, False, "higher than"),
])
def test_raw(new_f1, drift_, words):
    out = drift.decide("raw", new_f1=new_f1, deployed_f1=0.75)
    assert out == {"test": "raw", "used": "raw", "new_f1": new_f1, "deployed_f1": 0.75, "fallback": None,
                   "history_size": 0, "drift": drift_, "threshold": 0.75,
                   "reason": f"new F1 {new_f1:.4f} is {words} the deployed score 0.7500"}


@pytest.mark.parametrize(("new_f1", "drift_", "words"), [(0.2, True, "below"), (0.25, False, "not below"),
                                                         (0.3, False, "not below")])
def test_parametric_mean_minus_two_sd(new_f1, drift_, words):
    # mean 0.75, sample sd 0.25: threshold 0.25 exactly.
    out = drift.decide("parametric", new_f1=new_f1, deployed_f1=0.9, history=[0.5, 0.75, 1.0])
    assert (out["used"], out["drift"], out["threshold"], out["fallback"]) == ("parametric", drift_, 0.25, None)
    assert out["reason"] == (f"new F1 {new_f1:.4f} is {words} mean - 2 sd of 3 scores "
                             f"(0.7500 - 2 x 0.2500 = 0.2500)")


@pytest.mark.parametrize(("new_f1", "drift_"), [(0.2, True), (0.25, False), (0.3, False)])
def test_nonparametric_q1_minus_1_5_iqr(new_f1, drift_):
    # Q1 0.625, Q3 0.875: threshold 0.625 - 1.5 x 0.25 = 0.25 exactly.
    out = drift.decide("nonparametric", new_f1=new_f1, deployed_f1=0.9, history=[1.0, 0.5, 0.875, 0.625, 0.75])
    assert (out["used"], out["drift"], out["threshold"]) == ("nonparametric", drift_, 0.25)
    assert out["reason"].endswith("Q1 - 1.5 IQR of 5 scores (0.6250 - 1.5 x 0.2500 = 0.2500)")


@pytest.mark.parametrize("test", ["parametric", "nonparametric"])
def test_too_little_history_falls_back_to_raw_and_says_so(test):
    out = drift.decide(test, new_f1=0.7, deployed_f1=0.8, history=[0.1, 0.2], min_history=3)
    assert (out["test"], out["used"], out["drift"], out["threshold"]) == (test, "raw", True, 0.8)
    assert out["fallback"] == f"2 score(s) of history, 3 needed for the {test} test: used the raw comparison"
    enough = drift.decide(test, new_f1=0.7, deployed_f1=0.8, history=[0.1, 0.2, 0.3], min_history=3)
    assert (enough["used"], enough["drift"], enough["fallback"]) == (test, False, None)


def test_unknown_test_and_missing_outcomes_are_clear_errors():
    with pytest.raises(ValueError, match=r"^unknown drift test 'fancy'$"):
        drift.decide("fancy", new_f1=0.5, deployed_f1=0.5)
    with pytest.raises(ValueError, match=r"^the significance test needs the row-level outcomes$"):
        drift.decide("significance", new_f1=0.5, deployed_f1=0.5)


# --- the significance test -----------------------------------------------------------------------

def test_confusion_cells_and_f1_match_sklearn():
    rng = np.random.default_rng(4)
    for n in (1, 7, 100, 1000):
        true, pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
        cells = measures.confusion(true, pred)
        assert cells.tolist() == [int(((true == 1) & (pred == 1)).sum()), int(((true == 0) & (pred == 1)).sum()),
                                  int(((true == 1) & (pred == 0)).sum()), int(((true == 0) & (pred == 0)).sum())]
        assert float(measures.f1_precision_recall(cells)[0]) == f1_score(true, pred, zero_division=0)
    assert float(measures.f1_precision_recall([0, 0, 0, 5])[0]) == 0.0
    with pytest.raises(ValueError, match=r"^3 labels but 2 predictions$"):
        measures.confusion([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"^labels and predictions must be 0 or 1$"):
        measures.confusion([0, 2], [0, 1])


def test_identical_samples_are_no_drift():
    true, pred = rows_from_cells(tp=400, fp=60, fn=40, tn=500)
    out = drift.significance_decision(true, pred, true, pred, seed=3)
    assert out["drift"] is False
    assert out["statistic"] == 0.0
    assert out["reference_f1"] == out["new_f1"] == 800 / 900
    assert out["p_value"] > 0.4  # about half the random splits do at least as badly
    low, high = out["interval"]
    assert low < 0 < high
    assert out["reason"] == (f"F1 stayed at 0.89 (drop 0.00, 95% interval {low:.2f} to {high:.2f}, "
                             f"p = {out['p_value']:.3f}): not significant at 0.05")
    assert (out["reference_rows"], out["new_rows"], out["level"], out["rounds"]) == (1000, 1000, 0.05, 2000)


def test_a_large_clear_drop_is_drift():
    ref_true, ref_pred = rows_from_cells(tp=450, fp=50, fn=50, tn=450)   # F1 0.9
    new_true, new_pred = rows_from_cells(tp=250, fp=250, fn=250, tn=250)  # F1 0.5
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred, rounds=2000, seed=0)
    assert out["drift"] is True
    assert out["statistic"] == pytest.approx(0.4, abs=1e-12)
    assert out["p_value"] == 1 / 2001  # no random split comes near a drop of 0.4
    low, high = out["interval"]
    assert 0.33 < low < 0.4 < high < 0.47
    assert out["reason"] == (f"F1 fell from 0.90 to 0.50 (drop 0.40, 95% interval {low:.2f} to {high:.2f}, "
                             f"p < 0.001): significant at 0.05")


def test_a_rise_is_not_drift():
    ref_true, ref_pred = rows_from_cells(tp=250, fp=250, fn=250, tn=250)
    new_true, new_pred = rows_from_cells(tp=450, fp=50, fn=50, tn=450)
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred)
    assert out["drift"] is False
    assert out["p_value"] == 1.0  # every split's drop is above -0.4
    assert out["reason"].startswith("F1 rose from 0.50 to 0.90 (drop -0.40, ")


def test_tiny_samples_are_not_enough_evidence():
    ref_true, ref_pred = rows_from_cells(tp=3, fp=1, fn=0, tn=1)
    new_true, new_pred = rows_from_cells(tp=1, fp=1, fn=1, tn=1)
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred)
    assert out["drift"] is None
    assert out["p_value"] > 0.05
    assert out["reason"].startswith("not enough evidence: F1 fell from 0.86 to 0.50 (drop 0.36, ")
    assert out["reason"].endswith(", not significant at 0.05, and only 3 new rows are actual or predicted "
                                  "leavers (10 needed to call it no drift)")


def test_a_tiny_sample_with_a_significant_drop_is_still_drift():
    # 1000 perfect reference rows against 8 new rows that are all wrong: small, but beyond doubt.
    ref_true, ref_pred = rows_from_cells(tp=500, fp=0, fn=0, tn=500)
    new_true, new_pred = rows_from_cells(tp=0, fp=4, fn=4, tn=0)
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred)
    assert (out["drift"], out["statistic"], out["p_value"]) == (True, 1.0, 1 / 2001)


@pytest.mark.parametrize(("new", "which"), [((0, 0, 0, 30), "new"), ((3, 3, 3, 3), None)])
def test_undefined_f1_is_not_enough_evidence(new, which):
    ref_true, ref_pred = rows_from_cells(0, 0, 0, 20) if which is None else rows_from_cells(10, 2, 2, 10)
    new_true, new_pred = rows_from_cells(*new)
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred)
    assert (out["drift"], out["statistic"], out["p_value"], out["interval"]) == (None, None, None, None)
    side = which or "reference"
    assert out["reason"] == (f"not enough evidence: the {side} rows hold no actual or predicted leaver, so F1 is "
                             f"undefined ({20 if which is None else 24} reference rows, {sum(new)} new rows)")


def test_seeded_and_deterministic():
    ref_true, ref_pred = rows_from_cells(tp=60, fp=20, fn=15, tn=80)
    new_true, new_pred = rows_from_cells(tp=50, fp=25, fn=25, tn=70)
    first = drift.significance_decision(ref_true, ref_pred, new_true, new_pred, seed=11)
    assert drift.significance_decision(ref_true, ref_pred, new_true, new_pred, seed=11) == first
    other = drift.significance_decision(ref_true, ref_pred, new_true, new_pred, seed=12)
    assert other["statistic"] == first["statistic"]
    assert other["p_value"] != first["p_value"]


def test_p_value_agrees_with_the_exact_permutation_test():
    """Every split of 16 rows into 8 and 8, enumerated, against the Monte Carlo p-value."""
    ref_true, ref_pred = rows_from_cells(tp=4, fp=1, fn=1, tn=2)
    new_true, new_pred = rows_from_cells(tp=2, fp=2, fn=2, tn=2)
    true, pred = np.concatenate([ref_true, new_true]), np.concatenate([ref_pred, new_pred])
    observed = f1_score(ref_true, ref_pred) - f1_score(new_true, new_pred)
    masks = np.zeros((12870, 16), bool)
    for k, chosen in enumerate(itertools.combinations(range(16), 8)):
        masks[k, list(chosen)] = True

    def f1(mask):  # F1 of the rows picked by each mask, counted by hand
        tp = (mask & (true == 1) & (pred == 1)).sum(axis=1)
        wrong = (mask & (true != pred)).sum(axis=1)
        return np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)

    drops = f1(masks) - f1(~masks)
    assert drops[0] == pytest.approx(observed, abs=1e-12)  # the first split is the observed one
    hits, total = int(np.count_nonzero(drops >= observed - 1e-12)), len(drops)
    exact = hits / total
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred, rounds=40000, seed=1,
                                      min_counted_rows=0)
    assert out["statistic"] == pytest.approx(observed, abs=1e-12)
    assert out["p_value"] == pytest.approx(exact, abs=0.01)
    assert 0.1 < exact < 0.6  # a case where the answer is not trivially 0 or 1


def test_interval_agrees_with_resampling_rows():
    ref_true, ref_pred = rows_from_cells(tp=120, fp=30, fn=40, tn=110)
    new_true, new_pred = rows_from_cells(tp=40, fp=20, fn=25, tn=60)
    out = drift.significance_decision(ref_true, ref_pred, new_true, new_pred, rounds=4000, seed=2)
    rng = np.random.default_rng(9)

    def f1(true, pred, picks):  # F1 of each resample of rows, counted by hand
        t, p = true[picks], pred[picks]
        tp = (t & p).sum(axis=1)
        return 2 * tp / (2 * tp + (t != p).sum(axis=1))

    drops = f1(ref_true, ref_pred, rng.integers(0, 300, (4000, 300))) \
        - f1(new_true, new_pred, rng.integers(0, 145, (4000, 145)))
    low, high = np.quantile(drops, [0.025, 0.975])
    assert out["interval"][0] == pytest.approx(low, abs=0.015)
    assert out["interval"][1] == pytest.approx(high, abs=0.015)


@pytest.mark.parametrize(("kwargs", "message"), [({"level": 0}, r"^level must be between 0 and 1, not 0$"),
                                                 ({"rounds": 0}, r"^rounds must be at least 1, not 0$")])
def test_bad_arguments(kwargs, message):
    true, pred = rows_from_cells(5, 5, 5, 5)
    with pytest.raises(ValueError, match=message):
        drift.significance_decision(true, pred, true, pred, **kwargs)


# --- score_drift: the cycle's entry ------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return training.train(datagen.generate(400, seed=1), PARAMS)


def test_score_drift_new_f1_is_sklearns(model):
    for seed in range(5):
        new = datagen.generate(300, seed=50 + seed, drift="concept", strength=0.3)
        out = drift.score_drift("raw", model, new, new, deployed_f1=0.8)
        expected = f1_score(new["exited"], model.predict(new[list(drift.FEATURES)].astype("float64")))
        assert out["new_f1"] == expected
        assert out["new_rows"] == 300
        assert out["drift"] is (expected < 0.8)


def test_score_drift_significance_carries_the_report_keys(model):
    test = datagen.generate(200, seed=2)
    new = datagen.generate(1000, seed=3, drift="concept", strength=0.5)
    deployed = drift.score_drift("raw", model, test, test, deployed_f1=0.0)["new_f1"]
    out = drift.score_drift("significance", model, new, test, deployed_f1=deployed, rounds=500, seed=4)
    assert (out["test"], out["used"], out["drift"], out["threshold"]) == ("significance", "significance", True, None)
    assert out["reference_f1"] == deployed
    assert out["statistic"] == pytest.approx(deployed - out["new_f1"], abs=1e-12)
    assert out["p_value"] == 1 / 501
    assert (out["reference_rows"], out["new_rows"]) == (200, 1000)
    assert out["reason"].endswith("p = 0.002): significant at 0.05")
    held_out = datagen.generate(300, seed=5)
    wider = drift.score_drift("significance", model, new, test, deployed_f1=deployed, rounds=500, seed=4,
                              extra_reference_rows=held_out)
    both = pd.concat([test, held_out])
    expected = f1_score(both["exited"], model.predict(both[list(drift.FEATURES)].astype("float64")))
    assert wider["reference_rows"] == 500
    assert wider["reference_f1"] == pytest.approx(expected, abs=1e-12)


def test_score_drift_same_distribution_is_no_drift(model):
    test = datagen.generate(2000, seed=6)
    new = datagen.generate(2000, seed=7)
    out = drift.score_drift("significance", model, new, test, deployed_f1=0.0, rounds=1000, seed=0)
    assert out["drift"] is False
    assert out["p_value"] > 0.05


# --- feature drift: Benjamini-Hochberg ----------------------------------------------------------

def test_benjamini_hochberg_by_hand():
    # Sorted: 0.01 (rank 1), 0.03 (2), 0.04 (3), 0.20 (4); p x 4 / rank = 0.04, 0.06, 0.0533, 0.20;
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.20.
    adjusted = drift.benjamini_hochberg([0.04, 0.01, 0.20, 0.03])
    assert adjusted == pytest.approx([0.16 / 3, 0.04, 0.20, 0.16 / 3], abs=1e-15)
    assert drift.benjamini_hochberg([0.05, 0.05, 0.9]) == pytest.approx([0.075, 0.075, 0.9], abs=1e-15)
    assert drift.benjamini_hochberg([0.6, 0.9]) == pytest.approx([0.9, 0.9], abs=1e-15)
    assert drift.benjamini_hochberg([0.7]) == [0.7]


def test_feature_drift_corrects_across_features():
    reference = datagen.generate(3000, seed=1)
    new = datagen.generate(3000, seed=2, drift="covariate", strength=0.6)
    out = drift.feature_drift(reference, new)
    raw = [out["features"][c]["p_value"] for c in drift.FEATURES]
    m = len(raw)
    order = sorted(range(m), key=lambda i: raw[i])
    by_hand = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # from the largest p-value down
        i = order[rank - 1]
        running = min(running, raw[i] * m / rank)
        by_hand[i] = running
    assert [out["features"][c]["p_adjusted"] for c in drift.FEATURES] == pytest.approx(by_hand, rel=1e-12)
    assert out["correction"] == "benjamini-hochberg"
    assert out["drifted"] == [c for c in drift.FEATURES if out["features"][c]["p_adjusted"] < 0.05
                              and out["features"][c]["psi"] >= 0.2]
    assert out["drifted"] == ["lastmonth_activity", "lastyear_activity"]
    same = drift.feature_drift(reference, datagen.generate(3000, seed=3))
    assert (same["drifted"], same["any"]) == ([], False)
    assert all(v["p_adjusted"] >= v["p_value"] for v in same["features"].values())


# --- the harness, in a fast small configuration -------------------------------------------------

def load_bench():
    spec = importlib.util.spec_from_file_location("bench_drift", REPO / "bench" / "bench_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_harness_small_configuration():
    bench = load_bench()
    sizes = ((2000, 200, 500),)
    conditions = (("none", 0.0), ("concept", 0.5))
    results = bench.simulate(trials=6, rounds=200, sizes=sizes, conditions=conditions, none_trials=8)
    assert list(results) == [(sizes[0], conditions[0]), (sizes[0], conditions[1])]
    strong = results[(sizes[0], ("concept", 0.5))]
    assert set(strong) == {"trials", *bench.COLUMNS}
    # F1 falls from about 0.85 to 0.45: every test, every reference, every trial sees it.
    assert strong["trials"] == 6
    assert all(strong[c] == (1.0, 0.0) for c in bench.COLUMNS)
    none = results[(sizes[0], ("none", 0.0))]
    assert none["trials"] == 8
    assert all(0 <= none[c][0] <= 1 and 0 <= none[c][1] <= 1 for c in bench.COLUMNS)
    assert bench.simulate(trials=6, rounds=200, sizes=sizes, conditions=conditions[:1], none_trials=8) == \
        {(sizes[0], conditions[0]): none}  # seeded: the same again
    text = bench.render(results, 6, 200, None, "cmd", 1.0)
    assert "| 2000, 200, 500 | concept 0.5 | 6 | 100.0% | 100.0% | 100.0% | 100.0% | 100.0% | 100.0% |" in text
    assert "| detection of concept 0.25 at least 95%" not in text  # concept 0.25 was not simulated
