"""Scoring: F1 (and precision, recall, ROC AUC) of a model on the test data.

latestscore.txt holds the F1 as a bare number at full precision: a rounded score would turn
ties into differences in the drift check.
"""
import argparse
import logging
import pickle
import sys
import time

from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

import atomicfiles
import delivery
import history
import locks
import modelfile
import words
from settings import ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)


class ScoringError(Exception):
    """The model or the test data cannot be used."""


def read_test_data(path):
    """The features and target of the test data's complete rows (delivery.read_labelled); raises ScoringError."""
    try:
        return delivery.read_labelled(path)
    except delivery.BadFile as exc:
        raise ScoringError(str(exc)) from None


def metrics(y_true, y_pred, y_prob=None) -> dict:
    """F1, precision, recall (0 where undefined) and ROC AUC (None with a single class)."""
    out = {
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "roc_auc": None,
        "rows": int(len(y_true)),
    }
    if y_prob is not None and len(set(y_true)) == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, y_prob))
    return out


def score_model(model, X, y) -> dict:
    """The model's metrics on features X and labels y."""
    if len(X) == 0:
        raise ScoringError("no complete labelled rows to score on")
    return metrics(y.to_numpy(), model.predict(X), model.predict_proba(X)[:, 1])


def load_pickle(path):
    """The trained model in `path`, through modelfile's allow-list (a pickle is never run); raises ScoringError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScoringError(f"{path} does not exist: run training.py first") from None
    try:
        return modelfile.load_model(data)
    except modelfile.Refused as exc:
        raise ScoringError(f"{path} is refused: {exc}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
        raise ScoringError(f"{path} is not a readable model: {words.error_text(exc)}") from None


def run(cfg, conn=None) -> dict:
    """Score output_model_path/trainedmodel.pkl on the test data; write latestscore.txt; return the metrics.
    Holds the writer lock throughout (locks.py; raises locks.Busy when another writer keeps it too long)."""
    with locks.writer(cfg.writer_lock, "scoring.py", cfg.writer_wait_seconds):
        return _run(cfg, conn)


def _run(cfg, conn):
    started = time.perf_counter()
    model = load_pickle(cfg.model_file)
    X, y = read_test_data(cfg.test_data_file)
    result = score_model(model, X, y)
    atomicfiles.write_text(cfg.score_file, f"{result['f1']!r}\n")
    digest = atomicfiles.sha256_file(cfg.model_file)
    own = conn is None
    conn = conn or history.connect(cfg.history)
    try:
        with history.transaction(conn):
            history.record_score(conn, "test", result["rows"], digest, result)
            history.record_timing(conn, "scoring", time.perf_counter() - started)
    finally:
        if own:
            conn.close()
    logger.info("F1 %.4f on %d test rows", result["f1"], result["rows"])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="Score the trained model on the test data.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config)
        result = run(cfg)
    except (ConfigError, ScoringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except locks.Busy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return locks.EXIT_BUSY
    print(f"{cfg.score_file}: F1 {result['f1']!r} (precision {result['precision']:.4f}, "
          f"recall {result['recall']:.4f}, {result['rows']} test rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
