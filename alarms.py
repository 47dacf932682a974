"""Live-drift alarms: when a traffic window's feature histograms justify "watch" or "act".

PSI stays the magnitude shown, but it is not the decision: under no drift PSI grows like
(bins - 1) x (1/n_window + 1/n_reference), so fixed PSI thresholds cry wolf on small windows and
small references. The decision is a two-sample test per feature on the bin counts (the 2 x k
table: reference row, window row), which accounts for both sample sizes: Cressie and Read's
power-divergence statistic with lambda = 2/3, referred to the chi-square law with k - 1 degrees of
freedom. Their lambda holds the chi-square approximation best at small counts, and it matters
this far in the tail: simulated, 100-row windows against a large reference, at the per-look "act"
level (1.2e-5), Pearson's statistic rejected 1.8 times as often as it should, the G-test 1.6 times,
lambda = 2/3 1.04 times (4,000,000 windows each).

Beside it, on the same counts, a location test: Wilcoxon-Mann-Whitney's rank sum of the window's
rows among both samples' (ties at their bin's mid-rank; the normal approximation with the tie
correction of the variance, no continuity correction), two-sided. The bins are ordered (numeric
features, bins by value: the reference's edges ascend; judge leaves the rank test out of a
feature whose edges do not), so a scale change of one feature is a shift along them: the
chi-square spreads its power over all its degrees of freedom (about 9) where the rank test puts it
on the one direction such a shift takes. Simulated (bench/results/alarms.md), number_of_employees
x1.5 in 200-row windows was caught within two windows in 3-5% of trials by the chi-square alone.
The two are combined by Bonferroni within each look: each test gets its share of the look's level
(RANK_SHARE = 0.5 to the rank test, the rest to the chi-square), so the feature's p-value is
min(1, p_chi_square / (1 - RANK_SHARE), p_rank / RANK_SHARE), held against the look's level as
before: the bound needs no independence (the rank statistic's square is nearly a component of
the chi-square). An even split because the two see different shifts (the rank test is blind to a
change of spread, which the chi-square sees) and halving a level costs little this far in the
tail: the rank test's critical |z| moves from 4.39 to 4.53.

The levels hold over time, by Bonferroni's union bound, which needs no independence (every window
is compared with the same reference, and the features of a window are correlated):
- "act" when a feature's (combined) p-value is below act_per_day / (looks_per_day x features): on undrifted
  traffic the chance of any "act" in a day (1,440 one-minute looks) is at most act_per_day (0.05);
- "watch" when below watch_per_day / (looks_per_day x features): on undrifted traffic the expected
  number of "watch" looks a day is at most watch_per_day (1).
A look is one judgement of closed traffic: a window is judged once, when it closes. Judging a
window again as it grows would be another look each time and void the bound.

Pooling: a window with fewer than `min_rows` rows is not judged alone; consecutive windows' counts
are added until the pool holds `min_rows` rows, then the pool is judged once (as one look, so a day
still has at most looks_per_day looks) and emptied. A pool older than `pool_seconds` is dropped
unjudged rather than mixing old traffic with new. min_rows defaults to 100: ten bins then expect
about ten window rows each, where the chi-square tail is trustworthy.

The chi-square approximation also needs the reference's bins not too thin: adjacent bins are
merged, left to right, until each holds at least `min_reference` (5) reference rows. A 56-row
reference keeps its ten decile bins; it also bounds the power: no window size can make the test
see more than the reference holds (effective rows 1 / (1/n_window + 1/n_reference) < 56).

    chi_square(reference_counts, window_counts)   statistic, degrees of freedom, p-value
    chi_square_statistics(reference, windows)     the same statistic for many windows at once
    critical_value(dof, alpha)                    statistic > it exactly when p_value < alpha
    rank_test(reference_counts, window_counts)    the rank sum's z and two-sided p-value
    rank_statistics(reference, windows)           the same z for many windows at once
    normal_critical(alpha)                        |z| > it exactly when the rank p-value < alpha
    combined_p(p_chi_square, p_rank)              the feature's p-value (Bonferroni of the two)
    thresholds(features, ...)                     the per-look p-value levels
    judge(reference, window_counts, ...)          one look: per feature PSI, p-value, level; overall
    Pooler(...)                                   the pooling rule, window by window
    judge_stream(reference, windows, ...)         a sequence of closed windows through the pooler
Pure functions on plain data (the reference's JSON shape is monitoring.reference's); no I/O.
"""
import functools
import math

import numpy as np

from drift import psi_counts

LEVELS = ("ok", "watch", "act")
ACT_PER_DAY = 0.05    # P(any "act" in a day of undrifted traffic) at most this
WATCH_PER_DAY = 1.0   # expected "watch" looks in a day of undrifted traffic at most this
LOOKS_PER_DAY = 1440  # one-minute windows
MIN_ROWS = 100
MIN_REFERENCE = 5
POOL_SECONDS = 3600.0
LAMBDA = 2 / 3  # Cressie-Read; 1 would be Pearson's X^2, 0 the G-test
RANK_SHARE = 0.5  # the rank test's share of each look's level; the chi-square has the rest


def chi2_sf(x, dof) -> float:
    """P(chi-square with integer `dof` >= x), in closed form (no scipy: the API worker runs it)."""
    if dof < 1:
        raise ValueError("dof must be at least 1")
    if x <= 0:
        return 1.0
    y = x / 2.0
    # The regularized upper gamma Q(dof/2, y) by its finite series (exact for integer and
    # half-integer shapes), summed in logs so a large y does not overflow.
    if dof % 2 == 0:
        total, term = 0.0, -y  # log of e^-y y^i / i!
        for i in range(dof // 2):
            if i:
                term += math.log(y) - math.log(i)
            total += math.exp(term)
        return min(1.0, total)
    total = math.erfc(math.sqrt(y))
    term = -y + 0.5 * math.log(y) - math.lgamma(1.5)  # log of e^-y y^(i+1/2) / Gamma(i+3/2)
    for i in range((dof - 1) // 2):
        if i:
            term += math.log(y) - math.log(i + 0.5)
        total += math.exp(term)
    return min(1.0, total)


def merged_bins(reference_counts, min_reference=MIN_REFERENCE) -> list:
    """Groups of adjacent bin indices, left to right, each holding at least `min_reference`
    reference rows (the last short group joins the one before); one group when the reference is
    too small for two."""
    groups, current, held = [], [], 0
    for i, c in enumerate(reference_counts):
        current.append(i)
        held += c
        if held >= min_reference:
            groups.append(current)
            current, held = [], 0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def chi_square_statistics(reference_counts, window_counts, min_reference=MIN_REFERENCE):
    """The power-divergence statistic (lambda = LAMBDA) and degrees of freedom of the 2 x k table (reference row, window row)
    over the merged bins, for one window (a vector of counts) or many (a matrix, one row each).

    Returns (statistic, dof) as arrays shaped like the windows; bins empty on both sides do not
    count, and a table with an empty side or fewer than two bins gets statistic 0 and dof 0."""
    r = np.asarray(reference_counts, dtype=np.float64)
    w = np.asarray(window_counts, dtype=np.float64)
    if r.shape[-1] != w.shape[-1]:
        raise ValueError(f"bin counts differ in length: {r.shape[-1]} and {w.shape[-1]}")
    starts = [g[0] for g in merged_bins(r, min_reference)]
    rg = np.add.reduceat(r, starts)
    wg = np.add.reduceat(w, starts, axis=-1)
    R, N = rg.sum(), wg.sum(axis=-1, keepdims=True)
    col = rg + wg
    total = R + N
    with np.errstate(divide="ignore", invalid="ignore"):
        er, ew = col * R / total, col * N / total
        cells = np.where(col > 0, _divergence(rg, er) + _divergence(wg, ew), 0.0)
    stat = cells.sum(axis=-1)
    dof = (col > 0).sum(axis=-1) - 1
    empty = (N[..., 0] == 0) | (R == 0) | (dof < 1)
    return np.where(empty, 0.0, stat), np.where(empty, 0, dof)


def _divergence(observed, expected):
    """Cressie-Read's 2 / (l (l + 1)) x O ((O / E)^l - 1), cell by cell (0 for an empty cell)."""
    lam = LAMBDA
    return 2.0 / (lam * (lam + 1.0)) * observed * ((observed / expected) ** lam - 1.0)


def chi_square(reference_counts, window_counts, min_reference=MIN_REFERENCE) -> dict:
    """The power-divergence (chi-square family) test of homogeneity of two count vectors over the same bins.

    Keys: statistic, dof, p_value (all None when there is nothing to compare: either side empty,
    or fewer than two merged bins with rows)."""
    stat, dof = chi_square_statistics(reference_counts, window_counts, min_reference)
    if dof == 0:
        return {"statistic": None, "dof": None, "p_value": None}
    return {"statistic": float(stat), "dof": int(dof), "p_value": chi2_sf(float(stat), int(dof))}


def rank_statistics(reference_counts, window_counts):
    """Wilcoxon-Mann-Whitney's z of the window's rows against the reference's over the same ordered
    bins, for one window (a vector of counts) or many (a matrix, one row each): the window's rank
    sum, ties at their bin's mid-rank, less its mean W (N + 1) / 2, over the square root of its
    variance R W / 12 x ((N + 1) - sum(t^3 - t) / (N (N - 1))) (t: a bin's rows on both sides).
    Positive when the window sits higher. Returns (z, defined) as arrays shaped like the windows;
    z is 0 and defined False when either side is empty or every row falls in one bin."""
    r = np.asarray(reference_counts, dtype=np.float64)
    w = np.asarray(window_counts, dtype=np.float64)
    if r.shape[-1] != w.shape[-1]:
        raise ValueError(f"bin counts differ in length: {r.shape[-1]} and {w.shape[-1]}")
    t = r + w
    mid = np.cumsum(t, axis=-1) - (t - 1.0) / 2.0  # the mid-rank of each bin's rows
    R, W = r.sum(), w.sum(axis=-1)
    N = R + W
    with np.errstate(divide="ignore", invalid="ignore"):
        ties = np.sum(t ** 3 - t, axis=-1) / (N * (N - 1.0))
        var = R * W / 12.0 * ((N + 1.0) - ties)
        z = (np.sum(w * mid, axis=-1) - W * (N + 1.0) / 2.0) / np.sqrt(var)
    defined = (R > 0) & (W > 0) & (var > 1e-9 * R * W * (N + 1.0))
    return np.where(defined, z, 0.0), defined


def rank_test(reference_counts, window_counts) -> dict:
    """The rank-sum (location) test of two count vectors over the same ordered bins, two-sided.

    Keys: z, p_value (both None when there is nothing to compare: either side empty, or every
    row in one bin)."""
    z, defined = rank_statistics(reference_counts, window_counts)
    if not defined:
        return {"z": None, "p_value": None}
    return {"z": float(z), "p_value": math.erfc(abs(float(z)) / math.sqrt(2.0))}


@functools.lru_cache(maxsize=64)
def normal_critical(alpha) -> float:
    """The z >= 0 with erfc(z / sqrt 2) == alpha (to 1e-12 relative): |z| > it exactly when the
    rank test's two-sided p-value is below alpha."""
    lo, hi = 0.0, 40.0
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erfc(mid / math.sqrt(2.0)) >= alpha else (lo, mid)
    return hi


def combined_p(p_chi_square, p_rank, rank_share=RANK_SHARE):
    """The feature's p-value: Bonferroni of its two tests, each held to its share of the level
    (below alpha exactly when p_chi_square < (1 - rank_share) alpha or p_rank < rank_share
    alpha); a test with nothing to compare (None) is left out; None when both are."""
    parts = [p / share for p, share in ((p_chi_square, 1.0 - rank_share), (p_rank, rank_share))
             if p is not None and share > 0]
    return min(1.0, min(parts)) if parts else None


def ordered(feature_reference) -> bool:
    """Whether a feature's bins are ordered by value: its reference's inner edges strictly ascend
    (a reference with counts only is taken as ordered, bin by bin)."""
    edges = feature_reference.get("edges")
    return edges is None or all(a < b for a, b in zip(edges, edges[1:]))


@functools.lru_cache(maxsize=256)
def critical_value(dof, alpha) -> float:
    """The x with chi2_sf(x, dof) == alpha (to 1e-9 relative): statistic > x exactly when
    p_value < alpha, so many windows can be judged at once by one comparison."""
    lo, hi = 0.0, float(dof) + 10.0
    while chi2_sf(hi, dof) >= alpha:
        hi *= 2
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi2_sf(mid, dof) >= alpha else (lo, mid)
    return hi


def thresholds(features, looks_per_day=LOOKS_PER_DAY, act_per_day=ACT_PER_DAY, watch_per_day=WATCH_PER_DAY) -> dict:
    """The per-look p-value levels: the day's levels split evenly over its looks and the features."""
    tests = looks_per_day * features
    return {"act": act_per_day / tests, "watch": watch_per_day / tests}


def psi(reference_counts, window_counts) -> float:
    """The displayed magnitude: PSI of the window's counts against the reference's (drift.psi's
    floor of 1e-4 for an empty bin)."""
    return psi_counts(reference_counts, window_counts)


def judge(reference, window_counts, *, looks_per_day=LOOKS_PER_DAY, act_per_day=ACT_PER_DAY,
          watch_per_day=WATCH_PER_DAY, min_rows=MIN_ROWS, min_reference=MIN_REFERENCE,
          rank_share=RANK_SHARE) -> dict:
    """One look at closed traffic: the window's (or pool's) counts {feature: [counts]} against
    `reference` ({"rows": n, "features": {feature: {"counts": [...], "edges": [...]}}}).

    Keys: rows, judged (False below min_rows: every level "ok"), level (the worst feature's),
    alpha ({"act", "watch"} per-look levels), features {feature: {psi, p_value (combined_p of the
    two tests), chi_square {statistic, dof, p_value}, rank {z, p_value}, level}}. Features missing
    from either side, or with different bins, are left out; a feature whose bins are not ordered
    gets no rank test (rank p_value None) and rank_share 0."""
    ref_features = reference["features"]
    names = [f for f in window_counts if f in ref_features
             and len(ref_features[f]["counts"]) == len(window_counts[f])]
    rows = max((int(sum(window_counts[f])) for f in names), default=0)
    alpha = thresholds(len(ref_features), looks_per_day, act_per_day, watch_per_day)
    judged = rows >= min_rows
    out = {}
    for f in names:
        ref_c, win_c = ref_features[f]["counts"], window_counts[f]
        chi = chi_square(ref_c, win_c, min_reference)
        if ordered(ref_features[f]):
            rank, share = rank_test(ref_c, win_c), rank_share
        else:
            rank, share = {"z": None, "p_value": None}, 0.0
        p = combined_p(chi["p_value"], rank["p_value"], share)
        lvl = "ok"
        if judged and p is not None:
            lvl = "act" if p < alpha["act"] else ("watch" if p < alpha["watch"] else "ok")
        out[f] = {"psi": round(psi(ref_c, win_c), 6) if sum(win_c) else None, "p_value": p,
                  "chi_square": chi, "rank": rank, "level": lvl}
    worst = max((LEVELS.index(v["level"]) for v in out.values()), default=0)
    return {"rows": rows, "judged": judged, "level": LEVELS[worst], "alpha": alpha, "features": out}


def add_counts(a, b) -> dict:
    """Two {feature: [counts]} added bin by bin (a feature missing from one side is copied)."""
    out = {f: list(c) for f, c in a.items()}
    for f, c in b.items():
        out[f] = [x + y for x, y in zip(out[f], c)] if f in out else list(c)
    return out


class Pooler:
    """The pooling rule, fed closed windows in time order: add() returns judge()'s result when
    the pool reaches min_rows rows (then empties it), else None."""

    def __init__(self, reference, *, min_rows=MIN_ROWS, pool_seconds=POOL_SECONDS, **levels):
        self.reference = reference
        self.min_rows = min_rows
        self.pool_seconds = pool_seconds
        self.levels = levels
        self.counts, self.rows, self.first, self.windows = {}, 0, None, 0
        self.dropped = 0  # windows dropped from stale pools

    def add(self, window_start, rows, counts):
        """One closed window (its start time, rows and {feature: [counts]})."""
        if self.first is not None and window_start - self.first >= self.pool_seconds:
            self.dropped += self.windows
            self.counts, self.rows, self.first, self.windows = {}, 0, None, 0
        if self.first is None:
            self.first = window_start
        self.counts = add_counts(self.counts, counts)
        self.rows += rows
        self.windows += 1
        if self.rows < self.min_rows:
            return None
        result = judge(self.reference, self.counts, min_rows=self.min_rows, **self.levels)
        result.update(pooled_windows=self.windows, pool_start=self.first)
        self.counts, self.rows, self.first, self.windows = {}, 0, None, 0
        return result


def judge_stream(reference, windows, **options) -> list:
    """Each closed window ({"window_start", "rows", "counts"}) in time order, through a Pooler:
    one entry per window, judge()'s result when that window completed a pool, else
    {"judged": False, "level": "ok", "pending_rows": rows pooled so far}."""
    pooler = Pooler(reference, **options)
    out = []
    for w in windows:
        result = pooler.add(w["window_start"], w["rows"], w["counts"])
        out.append(result if result is not None else
                   {"judged": False, "level": "ok", "pending_rows": pooler.rows})
    return out
