"""Drift decisions: has the deployed model's score dropped, and have the features moved?

Score drift compares the deployed model's F1 on newly arrived labelled rows with its reference by
the test named in config.json's `drift_test`:
- `raw`: drift when the new F1 is lower than the deployed score (ties are not drift);
- `parametric`: lower than the mean minus two standard deviations of the score history;
- `nonparametric`: lower than Q1 minus 1.5 IQR of the score history;
- `significance`: a drop that is statistically significant (see `significance_decision`).
With too little history the statistical tests fall back to `raw` and say so.

Feature drift: per feature, a two-sample Kolmogorov-Smirnov test and the population stability
index between the training data and the new rows, with the KS p-values corrected for testing
several features at once (Benjamini-Hochberg).

The PSI is one implementation for both the cycle's feature drift and live monitoring: bins at the
training data's quantiles (`quantile_edges`), counts per bin (`bin_counts`), the index from two
sets of counts with one floor for an empty bin (`psi_counts`, PSI_FLOOR). `reference_bins` is the
training histograms stored with a deployed model for live monitoring, `model_reference` reads them
back from a manifest, and `psi_level` turns PSI values into "ok", "watch" or "act".
"""
import numpy as np

import measures
from settings import FEATURES, TARGET

SCORE_TESTS = ("raw", "parametric", "nonparametric", "significance")


def _raw(new_f1, deployed_f1):
    drift = new_f1 < deployed_f1
    words = "lower than" if drift else ("equal to" if new_f1 == deployed_f1 else "higher than")
    return {"drift": drift, "threshold": deployed_f1,
            "reason": f"new F1 {new_f1:.4f} is {words} the deployed score {deployed_f1:.4f}"}


def decide(test, *, new_f1, deployed_f1, history=(), min_history=3, significance=None) -> dict:
    """The score-drift decision of `test` as a dict.

    Keys: test (asked), used (after any fallback), drift (True, False, or None for "not enough
    evidence"), new_f1, deployed_f1, threshold, reason (in words), fallback (why, or None), and
    for `significance` its statistic, p_value and interval. `history` is the deployed scores so
    far, oldest first. `significance` is a callable returning `significance_decision`'s dict.
    """
    if test not in SCORE_TESTS:
        raise ValueError(f"unknown drift test {test!r}")
    history = [float(h) for h in history]
    out = {"test": test, "used": test, "new_f1": float(new_f1), "deployed_f1": float(deployed_f1),
           "fallback": None, "history_size": len(history)}
    if test in ("parametric", "nonparametric") and len(history) < max(min_history, 2):
        out["used"] = "raw"
        out["fallback"] = (f"{len(history)} score(s) of history, {max(min_history, 2)} needed for the "
                           f"{test} test: used the raw comparison")
    if out["used"] == "raw":
        out.update(_raw(new_f1, deployed_f1))
    elif test == "parametric":
        mean, std = float(np.mean(history)), float(np.std(history, ddof=1))
        threshold = mean - 2 * std
        out.update(drift=new_f1 < threshold, threshold=threshold, reason=(
            f"new F1 {new_f1:.4f} is {'below' if new_f1 < threshold else 'not below'} mean - 2 sd of "
            f"{len(history)} scores ({mean:.4f} - 2 x {std:.4f} = {threshold:.4f})"))
    elif test == "nonparametric":
        q1, q3 = (float(q) for q in np.percentile(history, [25, 75]))
        threshold = q1 - 1.5 * (q3 - q1)
        out.update(drift=new_f1 < threshold, threshold=threshold, reason=(
            f"new F1 {new_f1:.4f} is {'below' if new_f1 < threshold else 'not below'} Q1 - 1.5 IQR of "
            f"{len(history)} scores ({q1:.4f} - 1.5 x {q3 - q1:.4f} = {threshold:.4f})"))
    else:
        if significance is None:
            raise ValueError("the significance test needs the row-level outcomes")
        out.update(significance())
        out.setdefault("threshold", None)
    return out


BINS = 10
# An empty bin would make the index infinite; a small floor on its share is the usual remedy.
PSI_FLOOR = 1e-4
LEVELS = ("ok", "watch", "act")


def bin_counts(values, edges) -> np.ndarray:
    """Counts of `values` in the bins with inner `edges` (len(edges) + 1 bins; bin i holds
    edges[i-1] <= x < edges[i])."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _bin_counts_sorted(values_sorted, edges):
    """`bin_counts` of an ascending array, in O(bins log n)."""
    inner = np.searchsorted(values_sorted, edges, side="left")
    return np.diff(np.concatenate(([0], inner, [len(values_sorted)])))


def _bin_counts_counted(values, counts, edges):
    """`bin_counts` of `values` (ascending, distinct) each repeated by its count."""
    cum = np.concatenate(([0], np.cumsum(counts)))
    return np.diff(np.concatenate(([0], cum[np.searchsorted(values, edges, side="left")], [cum[-1]])))


def psi_counts(expected, actual) -> float:
    """Population stability index of the `actual` bin counts against the `expected` ones."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    e = np.clip(e / max(e.sum(), 1.0), PSI_FLOOR, None)
    a = np.clip(a / max(a.sum(), 1.0), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(expected, actual, edges) -> float:
    """Population stability index of `actual` against `expected` over bins with inner `edges`."""
    return psi_counts(bin_counts(expected, edges), bin_counts(actual, edges))


def psi_sorted(expected_sorted, actual_sorted, edges) -> float:
    """`psi` of two ascending arrays, equal to it, without binning every value."""
    return psi_counts(_bin_counts_sorted(expected_sorted, edges), _bin_counts_sorted(actual_sorted, edges))


def quantile_edges(values, bins=BINS):
    """Inner bin edges at the deciles (or other quantiles) of `values`, without repeats."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def value_counts(values_sorted):
    """(distinct values, their counts) of an ascending array."""
    starts = np.flatnonzero(_first_of_each(values_sorted))
    return values_sorted[starts], np.diff(np.append(starts, len(values_sorted))).astype(np.int64)


def quantile_edges_counted(values, counts, bins=BINS):
    """`quantile_edges` of `values` (ascending, distinct) each repeated by its count, equal to it
    without repeating them: numpy's own interpolation between the two order statistics around each
    quantile (np.quantile of those two, at the same fraction)."""
    n = int(np.sum(counts))
    virtual = (n - 1) * np.linspace(0, 1, bins + 1)[1:-1]
    below = np.floor(virtual)
    cum = np.cumsum(counts)
    lo = values[np.searchsorted(cum, below.astype(np.int64), side="right")]
    hi = values[np.searchsorted(cum, np.minimum(below.astype(np.int64) + 1, n - 1), side="right")]
    qs = [np.quantile(np.array([a, b]), g) for a, b, g in zip(lo, hi, virtual - below)]
    return np.unique(np.array(qs, dtype=np.float64))


def psi_level(psi_values, watch, act) -> str:
    """"act", "watch" or "ok" for the largest of the PSI values (None ones ignored)."""
    worst = max((v for v in psi_values if v is not None), default=None)
    if worst is None:
        return "ok"
    return "act" if worst >= act else ("watch" if worst >= watch else "ok")


def reference_bins(X, exit_share, exit_share_on, bins=BINS) -> dict:
    """The training histograms of the feature matrix X (rows x FEATURES): fixed bins at the
    quantiles of each feature, their counts, and the reference predicted exit share."""
    X = np.asarray(X, dtype=np.float64)
    features = {}
    for j, name in enumerate(FEATURES):
        col = X[:, j][np.isfinite(X[:, j])]
        edges = quantile_edges(col, bins) if len(col) else np.array([])
        features[name] = {"edges": [float(e) for e in edges], "counts": bin_counts(col, edges).tolist()}
    return {"bins": bins, "rows": int(len(X)), "features": features,
            "predicted_exit_share": None if exit_share is None else float(exit_share),
            "exit_share_on": exit_share_on}


def model_reference(manifest):
    """The `reference_bins` stored with a deployed version (its manifest), with numpy edges; or None."""
    ref = (manifest or {}).get("training", {}).get("monitoring")
    if not isinstance(ref, dict) or "features" not in ref:
        return None
    return {**ref, "edges": [np.asarray(ref["features"][f]["edges"], dtype=np.float64) for f in FEATURES]}


# scipy's ks_2samp computes exact p-values up to this sample size and Smirnov's asymptotic ones above.
KS_EXACT_MAX_N = 10000


def ks_2samp(x, y):
    """Two-sample Kolmogorov-Smirnov statistic and p-value, equal to scipy's ks_2samp (method 'auto')."""
    return ks_2samp_sorted(np.sort(x), np.sort(y))


def ks_2samp_sorted(xs, ys):
    """`ks_2samp` of two ascending arrays.

    Above scipy's exact-method size, the statistic is evaluated at the distinct values only (the
    empirical CDFs are flat between them, so the maximum is the same), which turns a million
    searches into a few thousand for integer counts, and the p-value is scipy's asymptotic one.
    """
    return ks_2samp_counted(*value_counts(xs), ys)


def ks_2samp_counted(values, counts, ys):
    """`ks_2samp_sorted` of `values` (ascending, distinct) each repeated by its count against the
    ascending array `ys`: the same statistic and p-value, in O(distinct values) for the first."""
    from scipy import stats

    n1, n2 = int(np.sum(counts)), len(ys)
    if max(n1, n2) <= KS_EXACT_MAX_N:
        result = stats.ks_2samp(np.repeat(values, counts), ys)
        return float(result.statistic), float(result.pvalue)
    points = np.concatenate((values, _distinct_sorted(ys)))
    cum = np.concatenate(([0], np.cumsum(counts)))
    diffs = cum[np.searchsorted(values, points, side="right")] / n1 - np.searchsorted(ys, points, side="right") / n2
    d = float(max(np.clip(-diffs.min(), 0, 1), diffs.max()))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    p = float(np.clip(stats.distributions.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))
    return d, p


def _first_of_each(values_sorted):
    """Whether each element of an ascending array is the first of its value."""
    keep = np.empty(len(values_sorted), dtype=bool)
    keep[:1] = True
    np.not_equal(values_sorted[1:], values_sorted[:-1], out=keep[1:])
    return keep


def _distinct_sorted(values_sorted):
    return values_sorted[_first_of_each(values_sorted)]


def benjamini_hochberg(pvalues):
    """Benjamini-Hochberg adjusted p-values, in the given order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def feature_drift(reference, new, features=FEATURES, psi_threshold=0.2, level=0.05) -> dict:
    """Per-feature KS test and PSI of `new` rows against `reference` (the rows ingested before them).

    `reference`: a frame of the reference rows, or per feature (distinct values ascending, counts)
    as columnstats.Profile.reference gives them (the same results, without a row to sort).
    A feature has drifted when its corrected KS p-value is below `level` and its PSI reaches
    `psi_threshold`: with a million rows KS alone calls the tiniest shift significant.
    """
    per = {}
    for col in features:
        if isinstance(reference, dict):
            values, counts = reference[col]
        else:
            values, counts = value_counts(np.sort(reference[col].dropna().to_numpy(dtype="float64")))
        cur = np.sort(new[col].dropna().to_numpy(dtype="float64"))
        if len(values) == 0 or len(cur) == 0:
            per[col] = {"ks_statistic": None, "p_value": None, "psi": None, "rows": int(len(cur))}
            continue
        d, p = ks_2samp_counted(values, counts, cur)
        edges = quantile_edges_counted(values, counts)
        psi = psi_counts(_bin_counts_counted(values, counts, edges), _bin_counts_sorted(cur, edges))
        per[col] = {"ks_statistic": d, "p_value": p, "psi": psi, "rows": int(len(cur))}
    tested = [c for c in features if per[c]["p_value"] is not None]
    for col, adj in zip(tested, benjamini_hochberg([per[c]["p_value"] for c in tested])):
        per[col]["p_adjusted"] = adj
        per[col]["drifted"] = bool(adj < level and per[col]["psi"] >= psi_threshold)
    for col in features:
        per[col].setdefault("p_adjusted", None)
        per[col].setdefault("drifted", False)
    drifted = [c for c in features if per[c]["drifted"]]
    return {"features": per, "drifted": drifted, "any": bool(drifted), "level": level,
            "psi_threshold": psi_threshold, "correction": "benjamini-hochberg"}


# Rows that are actual or predicted leavers are the only ones F1 counts; with fewer than this in
# either sample a non-significant result says nothing, so it is reported as "not enough evidence".
MIN_COUNTED_ROWS = 10


def _f1(counts):
    """F1 of confusion counts, along the last axis (measures.f1_precision_recall)."""
    return measures.f1_precision_recall(counts)[0]


def significance_decision(reference_true, reference_pred, new_true, new_pred, level=0.05, rounds=2000, seed=0,
                          min_counted_rows=MIN_COUNTED_ROWS) -> dict:
    """Whether the drop in F1 from the reference rows to the new rows is statistically significant.

    A one-sided permutation test over rows: under "nothing changed" the reference and new rows are
    exchangeable, so splitting the pooled rows at random into groups of the two observed sizes gives the
    drop's null distribution; p is the share of splits with a drop at least the observed one (plus one,
    so it is never 0). The interval is a percentile bootstrap of the drop, resampling each sample at its
    own size. Both work on the four confusion counts, so the cost does not grow with the rows.

    Returns drift (True, False, or None for "not enough evidence"), statistic (the drop, reference F1
    minus new F1), p_value, interval ([low, high] at confidence 1 - level), reference_f1, new_f1,
    reference_rows, new_rows, level, rounds, method and reason (in words).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds!r}")
    ref, new = measures.confusion(reference_true, reference_pred), measures.confusion(new_true, new_pred)
    n_ref, n_new = int(ref.sum()), int(new.sum())
    counted_ref, counted_new = int(ref[:3].sum()), int(new[:3].sum())
    out = {"drift": None, "statistic": None, "p_value": None, "interval": None, "reference_f1": None,
           "new_f1": None, "reference_rows": n_ref, "new_rows": n_new, "level": float(level),
           "rounds": int(rounds), "method": "permutation test, bootstrap interval"}
    ref_f1, new_f1 = float(_f1(ref)), float(_f1(new))
    out.update(reference_f1=ref_f1, new_f1=new_f1)
    if counted_ref == 0 or counted_new == 0:
        which = "reference" if counted_ref == 0 else "new"
        out["reason"] = (f"not enough evidence: the {which} rows hold no actual or predicted leaver, "
                         f"so F1 is undefined ({n_ref} reference rows, {n_new} new rows)")
        return out
    drop = ref_f1 - new_f1
    rng = np.random.default_rng(seed)
    perm_ref = rng.multivariate_hypergeometric(ref + new, n_ref, size=rounds)
    perm_drop = _f1(perm_ref) - _f1(ref + new - perm_ref)
    # A split that ties the observed drop counts against drift; the tolerance absorbs rounding.
    p_value = float((1 + np.count_nonzero(perm_drop >= drop - 1e-12)) / (rounds + 1))
    boot = (_f1(rng.multinomial(n_ref, ref / n_ref, size=rounds))
            - _f1(rng.multinomial(n_new, new / n_new, size=rounds)))
    low, high = (float(q) for q in np.quantile(boot, [level / 2, 1 - level / 2]))
    significant = p_value < level
    out.update(statistic=drop, p_value=p_value, interval=[low, high])
    moved = f"stayed at {ref_f1:.2f}" if drop == 0 else \
        f"{'fell' if drop > 0 else 'rose'} from {ref_f1:.2f} to {new_f1:.2f}"
    shown = "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"
    words = f"F1 {moved} (drop {drop:.2f}, {1 - level:.0%} interval {low:.2f} to {high:.2f}, {shown})"
    if significant:
        out.update(drift=True, reason=f"{words}: significant at {level:g}")
    elif min(counted_ref, counted_new) < min_counted_rows:
        out["reason"] = (f"not enough evidence: {words}, not significant at {level:g}, and only "
                         f"{min(counted_ref, counted_new)} {'reference' if counted_ref <= counted_new else 'new'} "
                         f"rows are actual or predicted leavers ({min_counted_rows} needed to call it no drift)")
    else:
        out.update(drift=False, reason=f"{words}: not significant at {level:g}")
    return out


def score_drift(test, model, new_rows, reference_rows, *, deployed_f1, history=(), level=0.05, rounds=2000,
                min_history=3, seed=0, extra_reference_rows=None) -> dict:
    """The cycle's score-drift decision for the deployed `model` on the labelled `new_rows`.

    `reference_rows` are the labelled rows the deployed score stands for (the test data); the
    `significance` test compares the model's outcomes on them, plus on `extra_reference_rows` when
    given (labelled rows the model was not trained on, or its training rows: see the README's drift
    section), with its outcomes on the new rows. All are DataFrames with the features and `exited`,
    complete rows only.
    """
    new_pred = model.predict(new_rows[list(FEATURES)].astype("float64"))
    # The same value as sklearn's f1_score(zero_division=0), from four counts: a hundred times faster.
    new_f1 = float(_f1(measures.confusion(new_rows[TARGET].to_numpy(dtype="int64"), new_pred)))

    def significance():
        parts = [reference_rows] if extra_reference_rows is None else [reference_rows, extra_reference_rows]
        ref_true = np.concatenate([p[TARGET].to_numpy(dtype="int64") for p in parts])
        ref_pred = np.concatenate([model.predict(p[list(FEATURES)].astype("float64")) for p in parts if len(p)]
                                  or [np.zeros(0, dtype="int64")])
        return significance_decision(ref_true, ref_pred, new_rows[TARGET].to_numpy(), new_pred,
                                     level=level, rounds=rounds, seed=seed)

    out = decide(test, new_f1=new_f1, deployed_f1=deployed_f1, history=history, min_history=min_history,
                 significance=significance)
    out["new_rows"] = int(len(new_rows))
    return out


def sequential_decision(look, new_f1, deployed_f1) -> dict:
    """The `sequential` test's look (evidence.look) in the form of `decide`'s dict, its fields kept."""
    return {"test": "sequential", "used": "sequential", "fallback": None, "new_f1": float(new_f1),
            "deployed_f1": float(deployed_f1), "threshold": look["threshold"], **look}
