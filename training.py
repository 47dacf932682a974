"""Training: fit the attrition model (scaling, then logistic regression) on the ingested data.

trainedmodel.pkl unpickles to the fitted scikit-learn Pipeline itself; trainedmodel.json beside it
holds the metadata (features, rows, data hash, parameters, library versions, time).
"""
import argparse
import json
import logging
import pickle
import pickletools
import platform
import sys
import time
from contextlib import closing
from datetime import datetime, timezone

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import atomicfiles
import audit
import delivery
import drift
import estimate
import history
import ingestion
import locks
import progress
from settings import FEATURES, TARGET, ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)


class TrainingError(Exception):
    """There is nothing usable to train on."""


def build_model(params):
    """An unfitted Pipeline: StandardScaler, then LogisticRegression with `params` (config's "model")."""
    return Pipeline([
        ("scale", StandardScaler()),
        ("classify", LogisticRegression(C=params["C"], max_iter=params["max_iter"],
                                        class_weight=params["class_weight"],
                                        random_state=params["random_state"])),
    ])


def train(df, params):
    """Fit and return the model on `df` (finaldata's columns). Raises TrainingError."""
    X, y = delivery.training_frame(df)
    if len(X) == 0:
        raise TrainingError("no complete rows to train on")
    if y.nunique() < 2:
        raise TrainingError(f"the training data has only one class (exited={int(y.iloc[0])})")
    progress.show(f"training: fitting the model on {len(X):,} rows")
    return build_model(params).fit(X, y)


def library_versions():
    import numpy
    import pandas
    import sklearn

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "pandas": pandas.__version__, "scikit-learn": sklearn.__version__}


def model_bytes(model) -> bytes:
    """The model pickled canonically: the same fitted model gives the same bytes in any process.

    Two things could vary between runs with the same coefficients: which string objects the
    feature names in `feature_names_in_` are (the pickle memo refers back to a string object seen
    twice, so shared or distinct objects give different opcodes), and the memo's numbering.
    Fresh copies of the names and `pickletools.optimize` (it drops unused memo entries) remove both.
    """
    import copy

    import numpy as np

    model = copy.deepcopy(model)
    for _, step in getattr(model, "steps", [("", model)]):
        names = getattr(step, "feature_names_in_", None)
        if names is not None:
            step.feature_names_in_ = np.array(["".join(list(str(n))) for n in names], dtype=object)
    return pickletools.optimize(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))


def save_model(model, path, metadata):
    """Write the pickled model (model_bytes) and its metadata (`trainedmodel.json`, which holds the
    time: the pickle holds none) atomically; return the pickle's SHA-256."""
    data = model_bytes(model)
    atomicfiles.write_bytes(path, data)
    digest = atomicfiles.sha256_file(path)
    meta = {**metadata, "model_sha256": digest}
    atomicfiles.write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return digest


def monitoring_reference(cfg, model, X):
    """drift.reference_bins of the training rows, with the predicted exit share on the test data
    (on the training rows when the test data cannot be read) and the calibration table of the
    estimated live F1 (estimate.py), fitted on the test data: labelled rows the model never
    trained on (None when they hold fewer than 4 rows of either class)."""
    try:
        X_test, y_test = delivery.read_labelled(cfg.test_data_file)
    except delivery.BadFile:
        X_test, y_test = X.iloc[:0], None
    share, on = (float(model.predict(X_test).mean()), "test data") if len(X_test) else (
        float(model.predict(X).mean()), "training data")
    ref = drift.reference_bins(X.to_numpy(), share, on)
    ref["calibration"] = None
    if len(X_test):
        try:
            ref["calibration"] = estimate.fit_calibration(
                model.predict_proba(X_test)[:, 1], y_test.to_numpy(),
                source=f"test data ({cfg.test_data_file.name}, {len(X_test)} rows)")
        except ValueError as exc:
            logger.warning("no calibration for the estimated live F1: %s", exc)
    return ref


def run(cfg, conn=None, rows=None, window=None):
    """Train on finaldata.csv (or on the frame `rows`, described by `window` in the metadata) and
    save trainedmodel.pkl; return the metadata written. Holds the writer lock throughout (locks.py;
    raises locks.Busy when another writer keeps it too long)."""
    with locks.writer(cfg.writer_lock, "training.py", cfg.writer_wait_seconds):
        try:
            return _run(cfg, conn, rows, window)
        finally:
            progress.clear()


def _run(cfg, conn, rows, window):
    started = time.perf_counter()
    if not cfg.finaldata.exists():
        raise TrainingError(f"{cfg.finaldata} does not exist: run ingestion.py first")
    data_sha = atomicfiles.sha256_file(cfg.finaldata)
    if rows is None:
        progress.show(f"training: reading {cfg.finaldata.name}")
    df = ingestion.read_finaldata(cfg.finaldata) if rows is None else rows
    model = train(df, cfg.model)
    X, y = delivery.training_frame(df)
    cv = audit.cross_validation(build_model(cfg.model), X, y, cfg.cv_folds, seed=cfg.model["random_state"],
                                max_rows=cfg.cv_max_rows)
    definitions = audit.slice_definitions(cfg.slices, X)
    progress.show("training: scoring the test data and its slices")
    evaluation = audit.evaluate_test(model, cfg.test_data_file, definitions, cfg.slice_margin, cfg.slice_min_rows)
    if "error" in evaluation:
        logger.warning("no test metrics or slices recorded for this training run: %s", evaluation["error"])
    own = conn is None
    conn = conn or history.connect(cfg.history)
    try:
        metadata = {
            "model_type": audit.MODEL_TYPE,
            "features": list(FEATURES),
            "target": TARGET,
            "training_rows": int(len(X)),
            **({"training_window": window} if window else {}),
            "data_sha256": data_sha,
            "training_files": history.ingested_files(conn),
            # What --reproduce rebuilds the training set from: the deliveries in the order they were
            # ingested, each kept in the archive under its hash (archive.py).
            "lineage": [{"name": f["name"], "sha256": f["sha256"], "rows": f["rows"]}
                        for f in history.ingested_files(conn)],
            "feature_ranges": audit.feature_ranges(X),
            "params": cfg.model,
            "cross_validation": cv,
            "slice_definitions": definitions,
            "evaluation": evaluation,
            "code_version": audit.code_version(),
            "libraries": library_versions(),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # The training histograms the API's live inputs are compared with (monitoring.py).
            "monitoring": monitoring_reference(cfg, model, X),
        }
        digest = save_model(model, cfg.model_file, metadata)
        seconds = time.perf_counter() - started
        run_metrics = {"test": evaluation.get("metrics"), "cross_validation": cv, "slices": evaluation.get("slices")}
        with history.transaction(conn):
            history.record_json(conn, "training_runs", at=time.time(), rows=len(X), data_sha256=data_sha,
                                params=cfg.model, metrics=run_metrics, model_path=str(cfg.model_file),
                                model_sha256=digest)
            history.record_timing(conn, "training", seconds)
    finally:
        if own:
            conn.close()
    logger.info("trained on %d rows in %.2fs: %s", len(X), seconds, cfg.model_file)
    return {**metadata, "model_sha256": digest}


def training_runs(conn) -> list:
    """Every recorded training run, newest first, as dicts (params and metrics decoded)."""
    rows = conn.execute("SELECT id, at, rows, data_sha256, params, metrics, model_path, model_sha256"
                        " FROM training_runs ORDER BY id DESC").fetchall()
    return [{**dict(r), "params": json.loads(r["params"]), "metrics": json.loads(r["metrics"])} for r in rows]


def runs_table(runs) -> str:
    """The training runs as a plain-text table, one line each."""
    header = ("run", "trained (UTC)", "rows", "data sha256", "test F1", "CV F1 (mean ± std, folds)",
              "slices flagged", "model sha256", "model path")
    lines = []
    for r in runs:
        m = r["metrics"] or {}
        test, cv, slices = m.get("test"), m.get("cross_validation"), m.get("slices")
        if cv and cv.get("folds"):
            cv_text = f"{cv['f1']['mean']:.4f} ± {cv['f1']['std']:.4f}, {cv['folds']}"
        else:
            cv_text = "skipped" if cv else "-"
        flagged = "-" if not slices else str(len(slices["below_overall"]) + len(slices["not_judged"]))
        lines.append((str(r["id"]), datetime.fromtimestamp(r["at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                      str(r["rows"]), r["data_sha256"][:12], f"{test['f1']:.4f}" if test else "-", cv_text,
                      flagged, r["model_sha256"][:12], r["model_path"]))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *lines]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the attrition model on finaldata.csv.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--runs", action="store_true", help="list the recorded training runs, newest first")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config)
        if args.runs:
            if not history.exists(cfg.history):
                print(f"no training runs recorded: {cfg.history} does not exist")
                return 0
            with closing(history.connect(cfg.history)) as conn:
                runs = training_runs(conn)
            print(runs_table(runs) if runs else f"no training runs recorded in {cfg.history}\n", end="")
            return 0
        meta = run(cfg)
    except (ConfigError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except locks.Busy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return locks.EXIT_BUSY
    print(f"{cfg.model_file}: trained on {meta['training_rows']} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
