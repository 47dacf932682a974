"""The cycle's evidence around evidence.py: the sequential test's state in the history database,
the test data's re-scoring, the rows since the deployment, and the challenger judged on held-out rows.

The state (evidence.new_state's JSON, with the test data's hash and the first delivery of its
window) is one row of `drift_evidence` per decided delivery, written in the same transaction as the
cycle's record (fullprocess._finish). A row belongs to the deployment (`deployments.id`) it was
gathered under: any deployment (a cycle's, deployment.py's, a rollback, a reconciled one) makes the
latest row another deployment's, so the next delivery starts from a fresh reference (the reset).

`challenge` is the one promotion path: the cycle and bench/bench_decisions.py call it.
"""
import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np

import atomicfiles
import evidence

HELD_OUT_SHARE = 0.3  # of the rows since the deployment, stratified by label, never trained on
CHALLENGER = "challenger.pkl"  # a kept challenger, under output_model_path, for `deployment.py --promote`
CHALLENGER_RECORD = "challenger-record.json"
CHALLENGER_SCORE = "challenger-score.txt"
PROMOTE_COMMAND = "python deployment.py --promote"


def deployment_id(conn):
    """The id of the latest deployment event (deploy or rollback), or None when there is none."""
    return conn.execute("SELECT max(id) FROM deployments").fetchone()[0]


def load_state(conn):
    """The drift state gathered under the serving deployment, or None (a new deployment: reset)."""
    row = conn.execute("SELECT deployment_id, state FROM drift_evidence ORDER BY id DESC LIMIT 1").fetchone()
    if row is None or row["deployment_id"] != deployment_id(conn):
        return None
    return json.loads(row["state"])


def write_state(conn, cycle_id, state):
    """Store `state` as the latest, under the serving deployment (inside the caller's transaction)."""
    conn.execute("INSERT INTO drift_evidence (at, cycle_id, deployment_id, state) VALUES (?, ?, ?, ?)",
                 (time.time(), cycle_id, deployment_id(conn), json.dumps(state, sort_keys=True)))


def out_of_fold(training_meta, use=True):
    """The out-of-fold counts of a model's cross-validation (its training metadata, or a manifest's
    "training"), for its reference; None when `use` is off (config drift_reference_cross_validation)
    or none was recorded (cross-validation off or skipped, or a model trained before they were kept)."""
    if not use:
        return None
    return ((training_meta or {}).get("cross_validation") or {}).get("out_of_fold") or None


def fresh_state(y, pred, test_sha256, out_of_fold_counts=None):
    """A new deployment's state: its reference is the model's outcomes (labels `y`, predictions
    `pred`) on its test data, plus its cross-validation's out-of-fold counts when given;
    `test_sha256` the test data's hash."""
    return reference_state({"test data": evidence.counts(y, pred), "cross-validation": out_of_fold_counts},
                           test_sha256)


def reference_state(parts, test_sha256):
    """A new deployment's state from the parts of its reference, {name: evidence.counts or None}:
    the reference is their sum, and the parts are kept (the record says what the reference holds)."""
    parts = {name: dict(c) for name, c in parts.items() if c}
    total = {k: sum(int(c[k]) for c in parts.values()) for k in ("rows", "counted", "hits")}
    return {**evidence.new_state(total), "reference_parts": parts, "test_sha256": test_sha256, "since_file_id": None}


def look_at_delivery(state, model, X_test, y_test, test_sha256, y_new, pred_new, first_file_id, level,
                     out_of_fold_counts=None):
    """One delivery's look: (new state, look, test-data facts).

    `state` None starts from the serving model on the test data (and `out_of_fold_counts`, its
    cross-validation's). A test set whose hash differs from the state's is evidence: the serving
    model's outcomes on it are added, once.
    """
    test_pred = model.predict(X_test)
    test_f1 = _f1(y_test, test_pred)
    facts = {"sha256": test_sha256, "rows": int(len(y_test)), "serving_f1": test_f1, "changed": False}
    if state is None:
        state = fresh_state(y_test, test_pred, test_sha256, out_of_fold_counts)
    elif state.get("test_sha256") != test_sha256:
        facts.update(changed=True, recorded_sha256=state.get("test_sha256"))
        state = {**evidence.add_rows(state, y_test, test_pred), "test_sha256": test_sha256}
    if state.get("since_file_id") is None:
        state = {**state, "since_file_id": first_file_id}
    state = evidence.add_rows(state, y_new, pred_new)
    return state, evidence.look(state, level=level), facts


def _f1(y, pred):
    c = evidence.counts(y, pred)
    return evidence.f1_of_rate(c["hits"] / c["counted"]) if c["counted"] else 0.0


def promote_command(config_path) -> str:
    """The command that promotes a kept challenger, with `--config` unless it is the default config."""
    from settings import DEFAULT_CONFIG

    path = Path(config_path).resolve()
    return PROMOTE_COMMAND if path == DEFAULT_CONFIG.resolve() else f"{PROMOTE_COMMAND} --config {shlex.quote(str(path))}"


def challenge(serving, recent, X_test, y_test, fit, level=0.05, rounds=2000, seed=0, share=HELD_OUT_SHARE,
              command=PROMOTE_COMMAND):
    """Train a challenger on `recent` minus a seeded, stratified held-out slice and judge it.

    `recent`: labelled rows (finaldata's columns, complete) since the serving model's deployment;
    `fit(rows)` returns a fitted model; `command` is the one a person runs to promote it by hand
    (promote_command). Returns {"challenger", "split", "held_out", "test",
    "policy" (evidence.promotion_decision), "reference_parts" (the challenger's counts on the
    held-out slice and on the test data: its reference should it be deployed, with its
    cross-validation's out-of-fold counts)}.
    """
    from settings import FEATURES, TARGET

    y_recent = recent[TARGET].to_numpy()
    split = evidence.held_out_split(y_recent, share=share, seed=seed)
    held = recent.iloc[split["held_out"]]
    challenger = fit(recent.iloc[split["training"]].reset_index(drop=True))
    Xh, yh = held[list(FEATURES)].astype("float64"), held[TARGET].to_numpy()
    ch_held, ch_test = challenger.predict(Xh), challenger.predict(X_test)
    on_held = evidence.paired_comparison(yh, serving.predict(Xh), ch_held, level=level, rounds=rounds, seed=seed)
    on_test = evidence.paired_comparison(y_test, serving.predict(X_test), ch_test, level=level, rounds=rounds,
                                         seed=seed + 1)
    policy = evidence.promotion_decision(on_held, on_test, manual_command=command)
    split_facts = {k: split[k] for k in ("share", "seed", "per_class")}
    parts = {"held-out rows": evidence.counts(yh, ch_held), "test data": evidence.counts(y_test, ch_test)}
    return {"challenger": challenger, "split": split_facts, "held_out": on_held, "test": on_test,
            "policy": policy, "reference_parts": parts}


def keep_challenger(cfg, record):
    """Copy the kept challenger (trainedmodel.pkl, its metadata and score) under output_model_path,
    with `record` (why it was kept), for `deployment.py --promote`; return the pickle's path."""
    folder = cfg.model_file.parent
    shutil.copyfile(cfg.model_file, folder / (CHALLENGER + ".tmp"))
    (folder / (CHALLENGER + ".tmp")).replace(folder / CHALLENGER)
    meta = cfg.model_file.with_suffix(".json")
    if meta.exists():
        atomicfiles.write_bytes(folder / "challenger.json", meta.read_bytes())
    atomicfiles.write_bytes(folder / CHALLENGER_SCORE, cfg.score_file.read_bytes())
    record = {**record, "model_sha256": atomicfiles.sha256_file(folder / CHALLENGER)}
    atomicfiles.write_text(folder / CHALLENGER_RECORD, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return folder / CHALLENGER
