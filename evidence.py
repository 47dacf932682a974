"""Evidence for the cycle's decisions: a sequential score-drift test and promotion on held-out rows.

Pure functions on counts and arrays: no file, no model, no config. The cycle keeps the drift
state (plain JSON data) in its record and passes it back at the next delivery.

Score drift, anytime-valid (`new_state`, `add_rows`, `look`). F1 = 2 TP / (2 TP + FP + FN) is
2p / (1 + p) with p = TP / (TP + FP + FN), the hit rate of the rows that are actual or predicted
leavers (the "counted" rows), so a drop in F1 is a drop in that Bernoulli rate. The reference
(the serving model's outcomes on its test data and on held-out rows it never trained on, frozen
when it is deployed) gives p_ref a one-sided Clopper-Pearson lower bound m at level alpha_ref
(Clopper and Pearson 1934). The evidence (every labelled row delivered since the deployment) is
tested against "p_new >= m" by a mixture likelihood ratio: with S hits and F misses on the counted
rows,

    E = integral of (q^S (1 - q)^F) / (m^S (1 - m)^F) dpi(q),   pi uniform on [m - w, m] (w = 0.2),

a mixture of likelihood ratios, each a nonnegative supermartingale with mean at most 1 whenever the
true rate is at least m (Robbins 1970, "Statistical methods related to the law of the iterated
logarithm", Ann. Math. Statist. 41; the beta-binomial mixture of Howard, Ramdas, McAuliffe and
Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49).
By Ville's inequality (1939) P(E ever reaches 1 / alpha_seq) <= alpha_seq, whenever and however
often one looks (Ramdas, Grunwald, Vovk and Shafer 2023, "Game-theoretic statistics and safe
anytime-valid inference", Statist. Sci. 38). Drift is called when E >= 1 / alpha_seq.

Guarantee: if the delivered rows come from the reference's distribution (no drift), the chance
that any look, over the whole unbounded sequence of deliveries until the next deployment, calls
drift is at most alpha_ref + alpha_seq = level (a union bound: the reference bound holds, then
the e-process crosses). E depends on the counts only, so the state is six integers.

Promotion (`held_out_split`, `paired_comparison`, `promotion_decision`): a seeded, stratified
slice of the newest labelled rows the challenger never trains on; a paired bootstrap of the F1
difference (challenger minus serving) on the same rows (Efron and Tibshirani 1993, ch. 16;
Koehn 2004); promote when better on the held-out slice and not worse on the test data beyond a
non-inferiority margin (MARGIN); "needs review" when better on the slice but worse on the test data.
"""
import math

import numpy as np

METHOD = "beta-binomial mixture e-process against a Clopper-Pearson reference bound"
DECISIONS = ("drift", "no drift", "not enough evidence")
# Fewer counted evidence rows than this and a look that calls no drift says "not enough evidence".
MIN_COUNTED_ROWS = 10
REFERENCE_SHARE = 0.5  # the share of `level` spent on the reference's own sampling uncertainty
# The mixture's alternatives: rates up to this far below the reference bound (0.2 in rate is about
# 0.15 in F1 near 0.85). Larger drops are still found (the likelihood ratio at m - w grows for them);
# a narrower mixture finds moderate drops sooner and a wider one dilutes it (bench/bench_decisions.py).
DROP_WIDTH = 0.2


def counts(y_true, y_pred) -> dict:
    """{"rows", "counted", "hits"}: all rows, rows that are actual or predicted leavers, true positives."""
    t = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    p = np.asarray(y_pred).astype(np.int64, copy=False).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) > 1):
        raise ValueError("labels and predictions must be 0 or 1")
    return {"rows": int(t.size), "counted": int(np.count_nonzero(t | p)), "hits": int(np.count_nonzero(t & p))}


def _checked(c, what):
    rows, counted, hits = (c.get(k) for k in ("rows", "counted", "hits"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rows, counted, hits)) \
            or not 0 <= hits <= counted <= rows:
        raise ValueError(f"{what} counts must be integers with 0 <= hits <= counted <= rows, not {c!r}")
    return {"rows": rows, "counted": counted, "hits": hits}


def new_state(reference) -> dict:
    """The drift state of a model just deployed: its frozen `reference` counts, no evidence yet.

    `reference` is `counts(...)` of the model's outcomes on its test data (plus held-out rows it
    never trained on). Calling this on every deployment is the reset; after a retrain that kept
    the serving model, `new_state(state["reference"])` starts its evidence again.
    """
    return {"method": METHOD, "reference": _checked(dict(reference), "reference"),
            "evidence": {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0}}


def add_rows(state, y_true, y_pred) -> dict:
    """A new state with one more delivery's outcomes (labels, serving model's predictions) in the evidence."""
    c = counts(y_true, y_pred)
    ev = state["evidence"]
    return {**state, "evidence": {"rows": ev["rows"] + c["rows"], "counted": ev["counted"] + c["counted"],
                                  "hits": ev["hits"] + c["hits"], "deliveries": ev["deliveries"] + 1}}


def f1_of_rate(p):
    """F1 = 2p / (1 + p) of the hit rate p of the counted rows."""
    return None if p is None else 2 * p / (1 + p)


def clopper_pearson_lower(hits, n, alpha) -> float:
    """One-sided lower confidence bound at level `alpha` for a Bernoulli rate from `hits` of `n` (0 when hits is 0)."""
    from scipy.special import betaincinv

    if n == 0 or hits == 0:
        return 0.0
    return float(betaincinv(hits, n - hits + 1, alpha))


def log_e_value(hits, misses, m, width=DROP_WIDTH) -> float:
    """log E of the mixture test of "rate >= m" after `hits` and `misses` (uniform mixture over q in [m - width, m])."""
    from scipy.special import xlog1py, xlogy

    if not 0 < m < 1:
        return 0.0
    lo = max(0.0, m - width)

    def loglik(q):
        return xlogy(hits, q) + xlog1py(misses, -q)

    # The integral in closed form (incomplete beta functions) underflows for a million rows; a
    # trapezoid in log space, dense where the integrand peaks, is within about 1e-4 of it at every size.
    n = hits + misses
    peak = min(max(hits / n if n else m, lo), m)
    spread = 12 * math.sqrt(max(peak * (1 - peak), 1e-12) / max(n, 1))
    grid = np.unique(np.concatenate((np.linspace(lo, m, 2001),
                                     np.linspace(max(lo, peak - spread), min(m, peak + spread), 2001))))
    top = float(loglik(peak))
    values = np.exp(loglik(grid) - top)
    integral = float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2)
    return float(top + math.log(integral) - math.log(m - lo) - loglik(m))


def look(state, level=0.05, reference_share=REFERENCE_SHARE, min_counted_rows=MIN_COUNTED_ROWS) -> dict:
    """The score-drift decision on everything in `state`, as a dict.

    Keys: decision (one of DECISIONS), drift (True, False, or None for "not enough evidence"),
    e_value, threshold (1 / alpha_seq), level, alpha_reference, alpha_sequential, reference_rate,
    reference_bound (the rate's lower bound m), reference_f1, reference_f1_bound, evidence_rate,
    evidence_f1, reference (its counts), evidence (its counts), method and reason (in words).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level!r}")
    if not 0 < reference_share < 1:
        raise ValueError(f"reference_share must be between 0 and 1, not {reference_share!r}")
    ref = _checked(state["reference"], "reference")
    ev = state["evidence"]
    _checked(ev, "evidence")
    a_ref, a_seq = level * reference_share, level * (1 - reference_share)
    m = clopper_pearson_lower(ref["hits"], ref["counted"], a_ref)
    ref_rate = ref["hits"] / ref["counted"] if ref["counted"] else None
    ev_rate = ev["hits"] / ev["counted"] if ev["counted"] else None
    log_e = log_e_value(ev["hits"], ev["counted"] - ev["hits"], m)
    threshold = 1 / a_seq
    out = {"decision": None, "drift": None, "e_value": math.exp(min(log_e, 700.0)), "log_e_value": log_e,
           "threshold": threshold, "level": float(level), "alpha_reference": a_ref, "alpha_sequential": a_seq,
           "reference_rate": ref_rate, "reference_bound": m, "reference_f1": f1_of_rate(ref_rate),
           "reference_f1_bound": f1_of_rate(m), "evidence_rate": ev_rate, "evidence_f1": f1_of_rate(ev_rate),
           "reference": dict(ref), "evidence": dict(ev), "min_counted_rows": int(min_counted_rows),
           "method": METHOD}
    since = (f"{ev['rows']} rows in {ev['deliveries']} {'delivery' if ev['deliveries'] == 1 else 'deliveries'} since the deployment, "
             f"{ev['counted']} of them actual or predicted leavers")
    if m == 0:
        out.update(decision="not enough evidence", reason=(
            f"not enough evidence: the reference's {ref['counted']} actual or predicted leavers hold "
            f"{ref['hits']} true positives, too few to bound its F1 above 0 ({since})"))
        return out
    shown = f"evidence {out['e_value']:.3g}" if log_e < 700 else "evidence above 1e300"
    vs = (f"F1 {out['evidence_f1']:.2f} on the {since}" if ev_rate is not None else f"no F1 yet ({since})")
    ref_words = f"reference F1 {out['reference_f1']:.2f} (at least {out['reference_f1_bound']:.2f})"
    if log_e >= math.log(threshold):
        out.update(decision="drift", drift=True, reason=(
            f"drift: {vs} against the {ref_words}; {shown} reached {threshold:g} (level {level:g})"))
    elif ev["counted"] < min_counted_rows:
        out.update(decision="not enough evidence", reason=(
            f"not enough evidence: {vs} against the {ref_words}; {shown}, {threshold:g} needed for drift, "
            f"and {min_counted_rows} actual or predicted leavers needed to call it no drift"))
    else:
        out.update(decision="no drift", drift=False, reason=(
            f"no drift: {vs} against the {ref_words}; {shown}, {threshold:g} needed (level {level:g})"))
    return out


# Promotion on held-out evidence.

# A challenger is promoted only when the test data rule out its being worse than this in F1. With
# "not significantly worse" alone, a delivery with wrong labels makes its challenger look better on
# its own held-out rows and a 200-row test set rarely proves it worse (bench/bench_decisions.py).
MARGIN = 0.02

def held_out_split(labels, share=0.3, seed=0) -> dict:
    """A seeded split of rows stratified by label: {"held_out": positions, "training": positions, ...}.

    In each class, round(share x its rows) rows go to the held-out slice, but one row of a class
    always stays for training. Positions are sorted and index `labels` as given.
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1, not {share!r}")
    y = np.asarray(labels).astype(np.int64, copy=False).ravel()
    rng = np.random.default_rng(seed)
    held, per_class = [], {}
    for c in (0, 1):
        where = np.flatnonzero(y == c)
        k = min(int(round(share * len(where))), max(len(where) - 1, 0))
        held.append(rng.permutation(where)[:k])
        per_class[str(c)] = {"rows": int(len(where)), "held_out": int(k)}
    mask = np.zeros(len(y), dtype=bool)
    mask[np.concatenate(held)] = True
    return {"held_out": np.flatnonzero(mask).tolist(), "training": np.flatnonzero(~mask).tolist(),
            "share": float(share), "seed": int(seed), "per_class": per_class}


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)


def _pair_f1s(cells):
    """(serving F1, challenger F1) from counts of the 8 cells 4 t + 2 serving + challenger, along the last axis."""
    c = np.asarray(cells, dtype=np.float64)
    t1, t0 = c[..., 4:], c[..., :4]  # true 1: cells 4..7; true 0: cells 0..3
    s_tp, s_fn = t1[..., 2] + t1[..., 3], t1[..., 0] + t1[..., 1]
    s_fp = t0[..., 2] + t0[..., 3]
    c_tp, c_fn = t1[..., 1] + t1[..., 3], t1[..., 0] + t1[..., 2]
    c_fp = t0[..., 1] + t0[..., 3]
    return _f1(s_tp, s_fp, s_fn), _f1(c_tp, c_fp, c_fn)


def paired_comparison(y_true, serving_pred, challenger_pred, level=0.05, rounds=2000, seed=0) -> dict:
    """Challenger against serving model on the same rows: a paired bootstrap of the F1 difference.

    Rows are resampled with replacement, the same rows for both models. verdict is "better" when
    the `level` quantile of the difference (challenger minus serving) is above 0, "worse" when the
    1 - `level` quantile is below 0, else "no significant difference"; "not enough evidence" when
    no row is an actual or predicted leaver. Also rows, serving_f1, challenger_f1, difference,
    interval ([low, high], the two quantiles), level, rounds, seed, reason.
    """
    if not 0 < level < 0.5:
        raise ValueError(f"level must be between 0 and 0.5, not {level!r}")
    t, s, c = (np.asarray(a).astype(np.int64, copy=False).ravel() for a in (y_true, serving_pred, challenger_pred))
    if not t.shape == s.shape == c.shape:
        raise ValueError(f"{t.size} labels, {s.size} serving and {c.size} challenger predictions")
    cells = np.bincount(4 * t + 2 * s + c, minlength=8)
    if len(cells) > 8:
        raise ValueError("labels and predictions must be 0 or 1")
    n = int(t.size)
    s_f1, c_f1 = (float(v) for v in _pair_f1s(cells))
    out = {"verdict": None, "rows": n, "serving_f1": s_f1, "challenger_f1": c_f1, "difference": c_f1 - s_f1,
           "interval": None, "level": float(level), "rounds": int(rounds), "seed": int(seed),
           "method": "paired bootstrap of the F1 difference"}
    counted = n - int(cells[0])  # all but true 0 predicted 0 by both
    if counted == 0:
        out.update(verdict="not enough evidence", reason=f"no actual or predicted leaver in the {n} rows")
        return out
    rng = np.random.default_rng(seed)
    s_b, c_b = _pair_f1s(rng.multinomial(n, cells / n, size=rounds))
    low, high = (float(q) for q in np.quantile(c_b - s_b, [level, 1 - level]))
    out["interval"] = [low, high]
    verdict = "better" if low > 0 else "worse" if high < 0 else "no significant difference"
    out["verdict"] = verdict
    out["reason"] = (f"challenger F1 {c_f1:.2f}, serving {s_f1:.2f} on the same {n} rows (difference "
                     f"{c_f1 - s_f1:+.2f}, {1 - 2 * level:.0%} interval {low:+.2f} to {high:+.2f}): {verdict}")
    return out


def promotion_decision(held_out, test, margin=MARGIN, manual_command="python deployment.py --promote") -> dict:
    """The default promotion policy on two `paired_comparison` results: the newest held-out rows and the test data.

    decision: "promote" when the challenger is better on the held-out rows and not worse on the test
    data, where "not worse" means the lower end of the test comparison's interval is above -`margin`
    (a non-inferiority margin in F1: a challenger that could be worse by more is kept out);
    "needs review" when better on the held-out rows but significantly worse on the test data;
    otherwise "keep". Also promote (bool), reason and action (what a person should do, or None),
    margin, and both comparisons.
    """
    out = {"decision": "keep", "promote": False, "action": None, "margin": float(margin), "held_out": held_out,
           "test": test}
    h = held_out["verdict"] if held_out else None
    t = test["verdict"] if test else None
    if h != "better":
        why = "no held-out rows" if h is None else f"{h} on the {held_out['rows']} newest held-out rows"
        out["reason"] = f"kept the serving model: the challenger is not significantly better ({why})"
    elif t is None:
        out["reason"] = "kept the serving model: no test data to check the challenger against"
    elif t == "worse":
        out.update(decision="needs review", reason=(
            f"the challenger is better on the {held_out['rows']} newest held-out rows "
            f"({held_out['difference']:+.2f} F1) but worse on the {test['rows']} test rows "
            f"({test['difference']:+.2f} F1): the world may have changed while the test data did not"),
            action=("refresh the test data with recently labelled rows (the next cycle re-scores both models on "
                    f"them), or promote the challenger by hand with `{manual_command}`"))
    elif t == "not enough evidence" or test["interval"][0] <= -margin:
        could = ("no actual or predicted leaver in the test rows" if t == "not enough evidence" else
                 f"it could be worse by up to {-test['interval'][0]:.2f} F1 on the {test['rows']} test rows, "
                 f"more than the margin {margin:g}")
        out["reason"] = (f"kept the serving model: the challenger is better on the {held_out['rows']} newest held-out "
                         f"rows ({held_out['difference']:+.2f} F1), but {could}")
    else:
        out.update(decision="promote", promote=True, reason=(
            f"promoted: the challenger is better on the {held_out['rows']} newest held-out rows "
            f"({held_out['difference']:+.2f} F1) and {t} on the {test['rows']} test rows "
            f"({test['difference']:+.2f} F1)"))
    return out
