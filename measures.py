"""Measures: confusion counts of 0/1 labels and predictions, and the F1, precision and recall they give.

One implementation for the whole project: the audit's test metrics and slices and the model card's
F1 swing (audit.py), and the drift test's permutations and bootstraps (drift.py) count and divide
here. Counts are an int64 array [tp, fp, fn, tn] (or rows of them); their recorded form is a dict
with those keys.
"""
import numpy as np

COUNTS = ("tp", "fp", "fn", "tn")
# Row code 2 * label + prediction: 0 true negative, 1 false positive, 2 false negative, 3 true positive.
_BY_CODE = [3, 1, 2, 0]  # the columns of a bincount by code, in COUNTS order


def confusion(y_true, y_pred, groups=None, n_groups=None):
    """Confusion counts [tp, fp, fn, tn] of 0/1 labels and predictions, as an int64 array.

    With `groups`, the counts of each group, in a single pass: an integer from 0 to `n_groups` - 1
    per row gives shape (n_groups, 4); k such rows of integers (shape (k, rows): k ways of grouping
    the same rows) give shape (k, n_groups, 4). Raises ValueError for arrays of different lengths
    or values other than 0 and 1.
    """
    t = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    p = np.asarray(y_pred).astype(np.int64, copy=False).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    if t.size and (t.min() < 0 or t.max() > 1 or p.min() < 0 or p.max() > 1):
        raise ValueError("labels and predictions must be 0 or 1")
    codes = 2 * t + p
    if groups is None:
        return np.bincount(codes, minlength=4)[_BY_CODE].astype(np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    ways = groups.shape[0] if groups.ndim == 2 else 1
    cells = groups * 4
    if groups.ndim == 2:  # each way of grouping gets its own cells, so that one bincount counts them all
        cells += (np.arange(ways, dtype=np.int64) * (4 * n_groups)).reshape(-1, 1)
    cells += codes
    table = np.bincount(cells.ravel(), minlength=4 * n_groups * ways)
    return table.reshape(groups.shape[:-1] + (n_groups, 4))[..., _BY_CODE].astype(np.int64)


def f1_precision_recall(counts):
    """(F1, precision, recall) of confusion counts [tp, fp, fn, tn], along the last axis.

    0 where undefined, as scikit-learn's zero_division=0. F1 is 2 tp / (2 tp + fp + fn), one
    division of whole numbers as in scikit-learn, so these are the same floats as f1_score's,
    precision_score's and recall_score's, without their cost per call.
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(den), where=den > 0)

    return ratio(2 * tp, 2 * tp + fp + fn), ratio(tp, tp + fp), ratio(tp, tp + fn)


def metrics_from_counts(counts) -> dict:
    """scoring.metrics' dict (F1, precision, recall, no ROC AUC, rows) from one set of confusion counts."""
    counts = np.asarray(counts)
    f1, precision, recall = f1_precision_recall(counts)
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
            "roc_auc": None, "rows": int(counts.sum())}


def as_record(counts) -> dict:
    """The recorded form of one set of confusion counts: {"tp": ..., "fp": ..., "fn": ..., "tn": ...}."""
    return dict(zip(COUNTS, np.asarray(counts).tolist()))
