"""The audit of a model: cross-validated scores, performance on slices, the facts of the model card.

Plain functions that take data and return dicts. training.py records the facts (cross-validation,
slices of the test data, feature ranges, the files trained on, the code version); deployment.py
adds what is known at deployment (the drift decision, data outside the training range) and
writes `modelcard.md`, which modelcard.py renders from those facts.
"""
import logging
import re
import subprocess
from pathlib import Path

import numpy as np

import delivery
import measures
import progress
from settings import FEATURES

logger = logging.getLogger(__name__)

CV_METRICS = ("f1", "precision", "recall")
MODEL_TYPE = "scikit-learn Pipeline: StandardScaler, then LogisticRegression (binary classifier of `exited`)"
REPO = Path(__file__).resolve().parent


# ---------------------------------------------------------------- cross-validation

def choose_folds(y, asked):
    """(k, note) for stratified k-fold on labels `y`: k is None when cross-validation must be skipped.

    k is `asked`, or the largest k >= 2 that every class can fill when a class has fewer rows.
    """
    if asked == 0:
        return None, "cross-validation is off (cv_folds is 0)"
    counts = {int(label): int(n) for label, n in zip(*np.unique(np.asarray(y), return_counts=True))}
    if len(counts) < 2:
        return None, "the training data has a single class"
    label, smallest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if smallest < 2:
        return None, (f"class exited={label} has {smallest} row: stratified k-fold needs at least 2 rows "
                      f"of each class")
    if smallest < asked:
        return smallest, f"{asked} folds asked, {smallest} used: class exited={label} has only {smallest} rows"
    return asked, None


def cross_validation(estimator, X, y, folds=5, seed=0, max_rows=0) -> dict:
    """Stratified k-fold cross-validation of the unfitted `estimator` on X, y (shuffled, seeded).

    With `max_rows` > 0 and more rows than that, it runs on a stratified, seeded sample of
    `max_rows` rows: the spread over folds is as informative, and training a million-row model
    six times would not fit the monitoring cycle's time.

    Returns folds_asked, folds (None when skipped), seed, note (why fewer folds, or why skipped),
    per metric (f1, precision, recall) its mean, std (population, ddof=0) and per-fold values, and
    out_of_fold: the counts (evidence.counts' keys) of every fold's model on its own held-out fold.
    Never raises for data that cannot be cross-validated: it says why in `note`.
    """
    from sklearn.base import clone
    from sklearn.metrics import f1_score, make_scorer, precision_score, recall_score
    from sklearn.model_selection import StratifiedKFold, cross_validate

    out = {"folds_asked": int(folds), "folds": None, "seed": int(seed), "rows": int(len(y)), "note": None}
    sampled = None
    if max_rows and len(y) > max_rows and folds:
        from sklearn.model_selection import train_test_split

        try:
            X, _, y, _ = train_test_split(X, y, train_size=int(max_rows), stratify=y, random_state=seed)
            sampled = f"on a stratified sample of {int(max_rows)} of {out['rows']} rows"
            out["rows"] = int(len(y))
        except ValueError:  # a class too small to stratify a sample: use every row
            sampled = None
    k, note = choose_folds(y, folds)
    out["note"] = "; ".join(n for n in (sampled, note) if n) or None
    if k is None:
        out.update({m: None for m in CV_METRICS})
        return out
    f1 = make_scorer(f1_score, zero_division=0)
    done = []
    out_of_fold = np.zeros(4, dtype=np.int64)  # measures.COUNTS of every fold's model on its own held-out fold

    def f1_and_progress(fitted, X_fold, y_fold):  # called once a fold's model is fitted
        done.append(1)
        progress.show(f"training: cross-validation, fold {len(done)} of {k} done on {len(y):,} rows")
        out_of_fold[:] += measures.confusion(y_fold, fitted.predict(X_fold))
        return f1(fitted, X_fold, y_fold)

    scoring = {"f1": f1_and_progress,
               "precision": make_scorer(precision_score, zero_division=0),
               "recall": make_scorer(recall_score, zero_division=0)}
    progress.show(f"training: cross-validation, {k} folds on {len(y):,} rows")
    try:
        result = cross_validate(clone(estimator), X, y, cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed),
                                scoring=scoring, error_score="raise")
    except ValueError as exc:
        out["note"] = f"cross-validation failed: {exc}"  # replaces any sampling note: nothing was measured
        out.update({m: None for m in CV_METRICS})
        return out
    out["folds"] = k
    for m in CV_METRICS:
        values = result[f"test_{m}"]
        out[m] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "folds": [float(v) for v in values]}
    tp, fp, fn, _ = (int(v) for v in out_of_fold)
    # The drift test's reference takes these (decisions.reference_parts): rows no fold's model trained on.
    out["out_of_fold"] = {"rows": int(out_of_fold.sum()), "counted": tp + fp + fn, "hits": tp}
    return out


# ---------------------------------------------------------------- slices

def slice_definitions(spec, X) -> list:
    """Resolve config's `slices` ({feature: {"bands": n} or {"edges": [...]}}) into inner band edges.

    Quantile bands are taken from X (the training features), so the same edges serve the test data
    and every later delivery. Repeated quantiles collapse, so a feature may get fewer bands than asked.
    """
    out = []
    for feature, how in spec.items():
        if "edges" in how:
            edges = sorted({float(e) for e in how["edges"]})
            out.append({"feature": feature, "source": "fixed edges", "edges": edges})
            continue
        values = np.asarray(X[feature].dropna(), dtype="float64")
        n = int(how["bands"])
        edges = np.unique(np.quantile(values, np.linspace(0, 1, n + 1)[1:-1])).tolist() if len(values) else []
        out.append({"feature": feature, "source": f"{n} quantile bands of the training data",
                    "edges": [float(e) for e in edges]})
    return out


def _num(x) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.2f}"


def band_label(feature, edges, i) -> str:
    """The words for band `i` of `edges`: bands are [lower, upper), the first open below, the last above."""
    if not edges:
        return f"all {feature}"
    if i == 0:
        return f"{feature} < {_num(edges[0])}"
    if i == len(edges):
        return f"{feature} >= {_num(edges[-1])}"
    return f"{_num(edges[i - 1])} <= {feature} < {_num(edges[i])}"


def slice_performance(y_true, y_pred, X, definitions, margin=0.1, min_rows=10) -> dict:
    """F1, precision, recall and row count per slice of X, with flags.

    A slice's flag: "too small" (fewer than `min_rows` rows: not judged), "no exits" (no row with
    exited=1: F1 undefined, not judged), "below overall" (F1 more than `margin` below the overall
    F1), or None.
    """
    widths = [len(d["edges"]) + 1 for d in definitions]
    # A last row with every row in band 0: the overall counts come from the same pass as the slices'.
    bands = np.zeros((len(definitions) + 1, len(y_true)), dtype="int64")
    for band, d in zip(bands, definitions):
        values = np.asarray(X[d["feature"]], dtype="float64")
        # band i holds edges[i-1] <= value < edges[i]: the count of edges at or below the value.
        # A comparison per edge is several times faster than a binary search for a few edges.
        for e in d["edges"]:
            band += values >= e
    # One pass: the confusion counts of every band of every definition at once.
    tables = measures.confusion(y_true, y_pred, bands, max(widths, default=1))
    overall = measures.metrics_from_counts(tables[-1, 0]) if len(y_true) else None
    f1, precision, recall = measures.f1_precision_recall(tables)
    slices = []
    for k, d in enumerate(definitions):
        edges = d["edges"]
        for i in range(widths[k]):
            tp, fp, fn, tn = tables[k, i].tolist()
            rows = tn + fp + fn + tp
            entry = {"feature": d["feature"], "band": i, "label": band_label(d["feature"], edges, i),
                     "lower": edges[i - 1] if i > 0 else None, "upper": edges[i] if i < len(edges) else None,
                     "rows": rows, "exits": tp + fn, "f1": None, "precision": None, "recall": None}
            if rows:
                entry.update(f1=float(f1[k, i]), precision=float(precision[k, i]), recall=float(recall[k, i]))
            if rows < min_rows:
                entry["flag"] = "too small"
            elif entry["exits"] == 0:
                entry["flag"] = "no exits"
            elif overall is not None and overall["f1"] - entry["f1"] > margin:
                entry["flag"] = "below overall"
            else:
                entry["flag"] = None
            slices.append(entry)
    return {"overall": overall, "margin": float(margin), "min_rows": int(min_rows), "slices": slices,
            "below_overall": [s["label"] for s in slices if s["flag"] == "below overall"],
            "not_judged": [s["label"] for s in slices if s["flag"] in ("too small", "no exits")]}


def slices_for_rows(model, df, definitions, margin=0.1, min_rows=10) -> dict:
    """`model`'s performance on the slices of labelled rows `df` (a new delivery, the test data).

    Rows with a missing value are left out, as in training and scoring.
    """
    X, y = delivery.training_frame(df)
    pred = model.predict(X) if len(X) else np.array([], dtype="int64")
    return slice_performance(y.to_numpy(), pred, X, definitions, margin, min_rows)


def slices_for_deployment(manifest):
    """The slices of the test data recorded for a deployed version (a manifest), or None."""
    return ((manifest or {}).get("audit") or {}).get("slices")


def cross_validation_for_deployment(manifest):
    """The cross-validated scores recorded for a deployed version (a manifest), or None."""
    return ((manifest or {}).get("audit") or {}).get("cross_validation")


def slices_for_config(cfg, model, df, manifest):
    """Slices of `df` for the deployed `model`, with the edges recorded at its training."""
    definitions = (manifest.get("training") or {}).get("slice_definitions")
    if definitions is None:
        return None
    return slices_for_rows(model, df, definitions, cfg.slice_margin, cfg.slice_min_rows)


# ---------------------------------------------------------------- facts recorded at training

def feature_ranges(X) -> dict:
    """Min and max of each feature in X (None for a feature with no value)."""
    out = {}
    for col in FEATURES:
        s = X[col].dropna()
        out[col] = {"min": float(s.min()), "max": float(s.max())} if len(s) else {"min": None, "max": None}
    return out


def out_of_range(training_ranges, ranges) -> list:
    """Features whose range in `ranges` (or a summary's stats) reaches outside `training_ranges`."""
    out = []
    for col, t in (training_ranges or {}).items():
        r = (ranges or {}).get(col) or {}
        if r.get("min") is None or t.get("min") is None:
            continue
        if r["min"] < t["min"] or r["max"] > t["max"]:
            out.append({"feature": col, "min": float(r["min"]), "max": float(r["max"]),
                        "training_min": float(t["min"]), "training_max": float(t["max"])})
    return out


def evaluate_test(model, test_file, definitions, margin=0.1, min_rows=10) -> dict:
    """Test metrics (with the confusion counts), slices and feature ranges of the test data.

    An unusable test file gives {"error": reason} rather than an exception: training goes on.
    """
    from sklearn.metrics import roc_auc_score  # lazy: the API imports this module, never scikit-learn

    try:
        X, y = delivery.read_labelled(Path(test_file))
    except delivery.BadFile as exc:
        return {"error": str(exc)}
    if len(X) == 0:
        return {"error": f"test data {test_file} has no complete labelled rows"}
    pred = model.predict(X)
    counts = measures.confusion(y.to_numpy(), pred)
    # scoring.metrics' very floats, from the counts: audit sits below scoring and does not import it.
    result = measures.metrics_from_counts(counts)
    if len(set(y.to_numpy())) == 2:
        result["roc_auc"] = float(roc_auc_score(y.to_numpy(), model.predict_proba(X)[:, 1]))
    result["confusion"] = measures.as_record(counts)
    return {"metrics": result, "slices": slice_performance(y.to_numpy(), pred, X, definitions, margin, min_rows),
            "ranges": feature_ranges(X)}


def code_version(repo=REPO, timeout=5.0) -> dict:
    """The git commit of the code (and whether it has uncommitted changes), or None values when unknown."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", head.stdout.strip()):
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": head.stdout.strip(), "dirty": dirty}


def f1_swing(counts) -> float:
    """The largest change of F1 one changed prediction can make, given the confusion counts."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]

    def f1(tp, fp, fn):
        return float(measures.f1_precision_recall([tp, fp, fn, tn])[0])

    base = f1(tp, fp, fn)
    moves = []
    if tp:
        moves.append(f1(tp - 1, fp, fn + 1))  # a caught exit missed
    if fn:
        moves.append(f1(tp + 1, fp, fn - 1))  # a missed exit caught
    if fp:
        moves.append(f1(tp, fp - 1, fn))      # a false alarm gone
    if tn:
        moves.append(f1(tp, fp + 1, fn))      # a new false alarm
    return max((abs(m - base) for m in moves), default=0.0)


# ---------------------------------------------------------------- facts added at deployment

def deployment_audit(training, recent=None) -> dict:
    """The audit section of a deployment's manifest, from the training metadata and recent data.

    `recent` is the latest summary of the ingested data (history.latest_summary), or None.
    """
    training = training or {}
    evaluation = training.get("evaluation") or {}
    ranges = training.get("feature_ranges")
    out = {"cross_validation": training.get("cross_validation"), "slices": evaluation.get("slices"),
           "out_of_range": {}}
    if recent is not None:
        out["out_of_range"]["ingested data"] = out_of_range(ranges, recent.get("stats"))
    if evaluation.get("ranges") is not None:
        out["out_of_range"]["test data"] = out_of_range(ranges, evaluation["ranges"])
    return out
