"""Estimated live F1: what the serving model's own calibrated probabilities say its F1 is now.

Labels arrive months after the traffic. Confidence-based performance estimation (as NannyML's
CBPE does for batches) reads the expected confusion counts off calibrated probabilities: a row
predicted "exit" with calibrated probability c is a true positive with probability c and a false
positive with probability 1 - c; a row predicted "stay" is a false negative with probability c. So

    TP = sum of c over rows predicted 1      FP = (rows predicted 1) - TP
    FN = sum of c over rows predicted 0      TN = (rows predicted 0) - FN
    estimated F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + rows predicted 1 + FN)

Every term is a sum over rows, so a window keeps six running sums (window_sums) that add across
requests, workers and windows (add_sums); estimate_f1 turns them into the F1 and its interval.
The interval is the delta method's for the F1 the window's labels will show if the calibration is
right (each label a Bernoulli draw with its calibrated probability); it leaves out the
calibration's own error, which the reliability figures measure.

The calibration is fitted on labelled rows the model never trained on: the test data
(testdata.csv) and the deliveries that arrived after the model was trained (held out from it),
never the training rows (their probabilities are optimistic). As NannyML does: three stratified
half splits; on each, isotonic regression is fitted on one half and the expected calibration error
(ECE, ten equal-width bins) of the raw and of the calibrated probabilities measured on the other;
isotonic regression on all the rows is kept only when it lowers the mean ECE (and there are at
least MIN_ISOTONIC_ROWS rows: it overfits fewer), else the raw probabilities are used as they are
("identity": the logistic regression's own probabilities are usually close to calibrated). The table is plain JSON (breakpoints of a
piecewise-linear map), applied with numpy's interp alone: no scikit-learn in the API worker.

What it cannot see: a concept shift. When the relation between activity and leaving changes,
the probabilities are no longer calibrated and the estimate keeps telling the old story; only
labelled rows show it (the cycle's score-drift test on new deliveries). It holds under covariate
shift (the inputs move, P(exit | inputs) stays), within the range the calibration rows covered.

    fit_calibration(probabilities, labels)   the table (JSON-serialisable), with its check
    calibrate(table, probabilities)          calibrated probabilities (numpy only)
    ece(probabilities, labels)               expected calibration error
    reliability(table, probabilities, labels)   the reliability diagram's bins and the ECE
    window_sums(table, probabilities, predictions)   the additive sums of some rows
    add_sums(a, b)                           two sums as one
    estimate_f1(sums)                        expected confusion counts, F1 and its interval
"""
import math

import numpy as np

ECE_BINS = 10
SPLITS = 3
# Isotonic regression overfits small samples (scikit-learn's calibration guide warns below about
# 1,000 rows): with fewer held-out rows than this the check is still run and reported, but the raw
# probabilities are kept.
MIN_ISOTONIC_ROWS = 200
Z95 = 1.959963984540054
SUM_KEYS = ("rows", "predicted_positive", "c_pos", "c2_pos", "c_neg", "c2_neg")


def ece(probabilities, labels, bins=ECE_BINS) -> float:
    """Expected calibration error: over equal-width probability bins, the row-weighted mean of
    |mean probability - observed positive rate|."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        raise ValueError("no rows")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(idx, p, minlength=bins) - np.bincount(idx, y, minlength=bins))
    return float(gap.sum() / len(p))


def _isotonic(p, y):
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return {"kind": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_]}


def calibrate(table, probabilities) -> np.ndarray:
    """The calibrated probabilities of `probabilities` under `table` (numpy only)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if table["kind"] == "identity":
        return p
    if table["kind"] == "isotonic":
        return np.interp(p, table["x"], table["y"])
    raise ValueError(f"unknown calibration kind {table['kind']!r}")


def _half_splits(labels, splits, seed):
    """`splits` stratified half splits of the rows: (fit indices, check indices)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    out = []
    for _ in range(splits):
        fit, check = [], []
        for cls in (0, 1):
            rows = rng.permutation(np.flatnonzero(y == cls))
            half = len(rows) // 2
            fit.append(rows[:half])
            check.append(rows[half:])
        out.append((np.concatenate(fit), np.concatenate(check)))
    return out


def fit_calibration(probabilities, labels, *, source="", splits=SPLITS, seed=0, bins=ECE_BINS,
                    min_isotonic_rows=MIN_ISOTONIC_ROWS) -> dict:
    """The calibration table of the model's probabilities of "exit" on labelled held-out rows.

    Returns {"kind": "isotonic" | "identity", "x": [...], "y": [...] (isotonic only), "rows",
    "positives", "source" (where the rows came from, in words), "check": {"splits", "bins",
    "ece_raw", "ece_isotonic" (means over the splits' check halves), "min_isotonic_rows",
    "chosen"}, "ece" (of the chosen map on all the rows: in-sample, so optimistic for isotonic)}.
    Isotonic is chosen when it lowers the split ECE and there are min_isotonic_rows rows. Raises ValueError with
    fewer than 4 rows of each class (nothing to split)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} probabilities but {len(y)} labels")
    positives = int(y.sum())
    if min(positives, len(y) - positives) < 4:
        raise ValueError(f"{positives} positive and {len(y) - positives} negative rows: at least 4 of each needed")
    raw, iso = [], []
    for fit, check in _half_splits(y, splits, seed):
        raw.append(ece(p[check], y[check], bins))
        iso.append(ece(calibrate(_isotonic(p[fit], y[fit]), p[check]), y[check], bins))
    ece_raw, ece_iso = float(np.mean(raw)), float(np.mean(iso))
    table = _isotonic(p, y) if ece_iso < ece_raw and len(y) >= min_isotonic_rows else {"kind": "identity"}
    return {**table, "rows": int(len(y)), "positives": positives, "source": source,
            "check": {"splits": splits, "bins": bins, "ece_raw": ece_raw, "ece_isotonic": ece_iso,
                      "min_isotonic_rows": min_isotonic_rows, "chosen": table["kind"]},
            "ece": ece(calibrate(table, p), y, bins)}


def reliability(table, probabilities, labels, bins=ECE_BINS) -> dict:
    """How well `table` calibrates these labelled rows: {"ece", "bins": [{"lower", "upper",
    "rows", "mean_probability", "observed_rate"}] (empty bins left out)}."""
    c = calibrate(table, probabilities)
    y = np.asarray(labels, dtype=np.float64)
    idx = np.minimum((c * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append({"lower": b / bins, "upper": (b + 1) / bins, "rows": int(mask.sum()),
                        "mean_probability": float(c[mask].mean()), "observed_rate": float(y[mask].mean())})
    return {"ece": ece(c, y, bins), "bins": out}


def window_sums(table, probabilities, predictions) -> dict:
    """The additive sums of some rows: rows, predicted_positive, and the sums of the calibrated
    probability c and of c squared over the rows predicted 1 (c_pos, c2_pos) and 0 (c_neg, c2_neg)."""
    c = calibrate(table, probabilities)
    pos = np.asarray(predictions) == 1
    cp, cn = c[pos], c[~pos]
    return {"rows": int(len(c)), "predicted_positive": int(pos.sum()),
            "c_pos": float(cp.sum()), "c2_pos": float(cp @ cp), "c_neg": float(cn.sum()), "c2_neg": float(cn @ cn)}


def add_sums(a, b) -> dict:
    """Two window_sums as one (rows of both)."""
    return {k: a[k] + b[k] for k in SUM_KEYS}


def empty_sums() -> dict:
    return {k: 0 if k in ("rows", "predicted_positive") else 0.0 for k in SUM_KEYS}


def estimate_f1(sums, z=Z95) -> dict:
    """Expected confusion counts and the estimated F1 of rows summed by window_sums.

    Keys: rows, expected {"tp", "fp", "fn", "tn"}, estimated_f1, sd, interval [low, high] (clipped
    to [0, 1]); estimated_f1, sd and interval are None when F1 is undefined (nothing predicted 1
    and nothing expected to be 1)."""
    n, n1 = sums["rows"], sums["predicted_positive"]
    tp, fn = sums["c_pos"], sums["c_neg"]
    expected = {"tp": tp, "fp": n1 - tp, "fn": fn, "tn": (n - n1) - fn}
    denom = tp + n1 + fn
    out = {"rows": n, "expected": expected, "estimated_f1": None, "sd": None, "interval": None}
    if denom <= 0:
        return out
    f1 = 2 * tp / denom
    # F1 = 2A / (A + n1 + B), A = TP and B = FN independent sums of Bernoulli(c) labels.
    var_a = max(sums["c_pos"] - sums["c2_pos"], 0.0)
    var_b = max(sums["c_neg"] - sums["c2_neg"], 0.0)
    # dF1/dA = 2 (n1 + B) / denom^2 = (2 - F1) / denom and dF1/dB = -F1 / denom, written without
    # denom^2 (it underflows to 0 for the tiny expected counts of a window of extreme inputs) and
    # with var <= its sum <= denom, so no term overflows either.
    d_a, d_b = (2 - f1) / denom, -f1 / denom
    sd = math.hypot(d_a * math.sqrt(var_a), d_b * math.sqrt(var_b))
    out.update(estimated_f1=f1, sd=sd, interval=[max(0.0, f1 - z * sd), min(1.0, f1 + z * sd)])
    return out
