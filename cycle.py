"""The cycle record: what one monitoring cycle found, decided and wrote, and the rule that decides.

fullprocess.py fills a `CycleRecord` as the cycle runs and writes its JSON form (`to_json`) to the
history database (`cycles.record`) and to log_folder_path/cycles.jsonl; the report, the model
card's drift section, the status page and `describe` read it back (`CycleRecord.from_dict`).

A field left UNSET is not in the JSON form: the step that sets it did not run. None is a step
that ran and found nothing (no reference rows for feature drift, no complete row to score).

`drift_verdict` and `promotion_decision` are the decision "retrain? promote?" as pure functions
of what the cycle measured and of the config's switches.
"""
import json
import logging
import time
from dataclasses import dataclass, field, fields

import history
import ingestion

logger = logging.getLogger(__name__)

NO_NEW_DATA = "no new data"
NO_DATA_YET = "no data yet"
COLD_START = "cold start: deployed"
NO_DRIFT = "no drift"
REDEPLOYED = "drift: redeployed"
GATE_KEPT = "drift: retrained, kept the deployed model (promotion gate)"
# The promotion policy on held-out evidence (evidence.promotion_decision), the default.
KEPT = "drift: retrained, kept the deployed model (not better on held-out rows)"
NEEDS_REVIEW = "drift: retrained, needs review"
POLICY_DECISIONS = {"promote": REDEPLOYED, "keep": KEPT, "needs review": NEEDS_REVIEW}
# A stale test set: the serving model's F1 on the rows delivered since its deployment is this far
# below its F1 on the test data, over at least STALE_MIN_COUNTED actual or predicted leavers.
STALE_MARGIN = 0.15
STALE_MIN_COUNTED = 30
NO_USABLE_ROWS = "no usable new rows"
NOT_ENOUGH_EVIDENCE = "not enough evidence: nothing redeployed"
PUBLISHED = "published the deployed version"
FAILED = "failed"
INTERRUPTED = "interrupted"
LOCKED = "locked"
LOG_NAME = "cycles.jsonl"  # in log_folder_path: one JSON line per cycle, idle ones included


class _Unset:
    """The marker of a field the cycle never set (falsy, so readers can test it like None)."""

    __slots__ = ()

    def __repr__(self):
        return "UNSET"

    def __bool__(self):
        return False


UNSET = _Unset()


def known(value, default=None):
    """`value`, or `default` when it is UNSET."""
    return default if value is UNSET else value


@dataclass
class Retrained:
    """What retraining produced: rows trained on, the model's hash, its test scores, a warning."""

    training_rows: int
    model_sha256: str
    test_metrics: dict
    warning: str = UNSET  # the retrained model scores below the serving one

    def to_dict(self):
        return _plain(self)


@dataclass
class Gate:
    """The promotion gate's verdict: the retrained and the deployed model's F1 on the new rows."""

    passed: bool
    retrained_f1: float
    deployed_f1: float
    rows: int
    reason: str

    def to_dict(self):
        return _plain(self)


_NESTED = {"retrained": Retrained, "gate": Gate}


@dataclass
class CycleRecord:
    """One cycle's record. Field order is the order the cycle sets them (the JSON's key order before sorting)."""

    started_at: str = UNSET
    config: str = UNSET
    decision: str = None
    new_files: list = UNSET
    duplicates: list = UNSET  # copies of ingested files in the input folder (ingestion.look), when any
    waiting: list = UNSET  # files still settling (ingest_settle_seconds), when any
    timings: dict = UNSET
    errors: list = field(default_factory=list)
    recorded_missing_deployment: int = UNSET
    recovered: list = UNSET
    cycle_id: int = UNSET
    previous_version: int = UNSET
    deployed_version: int = UNSET
    published_version: int = UNSET
    ingested_through: int = UNSET
    ingestion: dict = UNSET
    pending_files: list = UNSET
    held_out_rows: int = UNSET
    new_rows: dict = UNSET
    feature_drift: dict = UNSET
    score_drift: dict = UNSET
    slices_new: dict = UNSET
    live_drift: dict = UNSET
    drift: bool = UNSET
    retrained: Retrained = UNSET
    gate: Gate = UNSET
    promotion: dict = UNSET  # evidence.promotion_decision, and which model was deployed or kept
    test_data: dict = UNSET  # the test data's hash, whether it changed, the serving F1 on it, stale or not
    evidence: dict = UNSET  # the sequential test's state this cycle leaves (also in drift_evidence)
    published: dict = UNSET
    alerts: list = UNSET  # the webhook deliveries (alerts.py): event, delivered, attempts, error, seconds
    finished_at: str = UNSET
    seconds: float = UNSET

    @classmethod
    def start(cls, started_at, config):
        """The record of a cycle that has just begun."""
        return cls(started_at=started_at, config=config, new_files=[], timings={})

    @classmethod
    def locked(cls):
        """The record of a cycle that found another one running."""
        return cls(decision=LOCKED)

    def to_dict(self) -> dict:
        """The JSON form: every set field, nested parts as dicts."""
        return _plain(self)

    def to_json(self, sort_keys=True) -> str:
        return json.dumps(self.to_dict(), sort_keys=sort_keys, default=str)

    @classmethod
    def from_dict(cls, data) -> "CycleRecord":
        """A record from its JSON form; keys it does not know are left out."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key, part in _NESTED.items():
            if isinstance(values.get(key), dict):
                try:
                    values[key] = part(**values[key])
                except TypeError:  # a record of another shape: keep it as it was written
                    pass
        return cls(**values)


def _plain(obj) -> dict:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is UNSET:
            continue
        out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def last_logged(path):
    """The last cycle record of the log at `path` (cycles.jsonl) as a dict, or None: read from the
    end, so an idle cycle reads a few kilobytes, not the whole log."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            chunk = 8192
            while True:
                f.seek(max(0, size - chunk))
                lines = f.read().rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or chunk >= size:
                    break
                chunk *= 4
    except OSError:
        return None
    try:
        last = json.loads(lines[-1]) if lines[-1] else None
    except ValueError:  # a line cut by a full disk
        return None
    return last if isinstance(last, dict) else None


# ---------------------------------------------------------------- what a cycle owes (from the history)


def last_state(conn):
    """What the last finished cycle left: (ingested_through, published_version), or None if none finished."""
    row = conn.execute("SELECT record FROM cycles WHERE finished_at IS NOT NULL AND decision != ?"
                       " ORDER BY id DESC LIMIT 1", (INTERRUPTED,)).fetchone()
    if row is None:
        return None
    rec = json.loads(row["record"])
    return rec.get("ingested_through", 0), rec.get("published_version")


def covered_id(conn, state) -> int:
    """The highest ingested_files id already decided on: by a finished cycle or by a later deployment.

    A deployment made by hand (ingestion.py, training.py, ... deployment.py) covers what was
    ingested before it.
    """
    by_cycle = state[0] if state else 0
    row = conn.execute("SELECT max(id) FROM ingested_files WHERE at <= "
                       "(SELECT max(at) FROM deployments WHERE action = 'deploy')").fetchone()
    return max(by_cycle or 0, row[0] or 0)


def pending_files(conn, covered) -> list:
    """Ingested files no cycle has decided on yet, oldest first, as dicts."""
    return [dict(r) for r in conn.execute(
        "SELECT id, name, sha256, rows, folder, at FROM ingested_files WHERE id > ? ORDER BY id", (covered,))]


def max_ingested_id(conn) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM ingested_files").fetchone()[0]


def reconcile_deployment(conn, manifest):
    """Record the serving version if the history lacks it (a cycle killed between the symlink swap
    and the history insert); return whether it did. The deployed model was trained on everything
    ingested so far, so it covers those files."""
    if manifest is None:
        return False
    sha = manifest["files"]["trainedmodel.pkl"]["sha256"]
    row = conn.execute("SELECT version, model_sha256 FROM deployments ORDER BY id DESC LIMIT 1").fetchone()
    if row is not None and (row["version"], row["model_sha256"]) == (manifest["version"], sha):
        return False
    history.record_json(conn, "deployments", at=time.time(), version=manifest["version"], action="deploy",
                        model_sha256=sha, f1=manifest["metrics"].get("f1"))
    logger.warning("version %d is serving but was not in the history (a cycle was killed): recorded it",
                   manifest["version"])
    return True


def mark_interrupted(conn):
    """Close the rows of cycles that were killed: their work is finished by this one."""
    rows = conn.execute("SELECT id FROM cycles WHERE finished_at IS NULL").fetchall()
    ids = [r["id"] for r in rows]
    if ids:
        conn.execute(f"UPDATE cycles SET finished_at = ?, decision = ? WHERE id IN ({','.join('?' * len(ids))})",
                     (time.time(), INTERRUPTED, *ids))
        logger.warning("cycle(s) %s did not finish (killed?): this cycle finishes their work", ids)
    return ids


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Verdict:
    """What the drift checks say: drift at all, which checks triggered, and the decision when not retraining."""

    drift: bool
    score: bool
    feature: bool
    live: bool
    decision: str = None  # None: retrain

    @property
    def retrain(self) -> bool:
        return self.decision is None


def drift_verdict(score_drift, feature_drift, live_drift, feature_triggers, live_triggers) -> Verdict:
    """Retrain? From the score-drift result (None without complete new rows), the feature-drift result
    (None without reference rows), the live crossings and the config's two switches
    (feature_drift_triggers_retrain, live_drift_triggers_retrain)."""
    score = bool(score_drift and score_drift["drift"])
    feature = bool(feature_triggers and feature_drift and feature_drift["any"])
    live = bool(live_triggers and live_drift["act"])
    drift = score or feature or live
    if score_drift is None and not (feature or live):
        decision = NO_USABLE_ROWS
    elif not drift:
        decision = NOT_ENOUGH_EVIDENCE if score_drift and score_drift["drift"] is None else NO_DRIFT
    else:
        decision = None
    return Verdict(drift, score, feature, live, decision)


def gate_applies(promotion_gate, complete_rows) -> bool:
    """Whether the promotion gate judges the retrained model: it is on and there are complete new rows."""
    return bool(promotion_gate and complete_rows)


def promotion_decision(gate, policy=None) -> str:
    """Promote? With the held-out `policy` (evidence.promotion_decision's dict): its decision as
    REDEPLOYED, KEPT or NEEDS_REVIEW. Without it: REDEPLOYED unless the gate ran (a Gate) and the
    retrained model failed it (the course's gate)."""
    if policy is not None:
        return POLICY_DECISIONS[policy["decision"]]
    return GATE_KEPT if gate is not None and not gate.passed else REDEPLOYED


def evidence_after(decision, state, fresh=None):
    """The sequential test's state a cycle leaves behind.

    A redeploy leaves `fresh` (the new model's reference, no evidence; None: the next cycle builds it
    from the test data); a retrain that kept the serving model starts its evidence again (a decision
    was made on it); any other decision, "not enough evidence" included, keeps every row gathered.
    """
    if state is None:
        return fresh if decision in (REDEPLOYED, COLD_START) else None
    if decision in (REDEPLOYED, COLD_START):
        return fresh
    if decision in (KEPT, NEEDS_REVIEW, GATE_KEPT):
        return {**state, "evidence": {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0},
                "since_file_id": None}
    return state


def stale_test_data(evidence_f1, test_f1, counted, margin=STALE_MARGIN, min_counted=STALE_MIN_COUNTED):
    """Whether the test data no longer represent the deliveries: the serving model's F1 on the rows
    delivered since its deployment (`evidence_f1`, over `counted` actual or predicted leavers) is
    at least `margin` below its F1 on the test data."""
    if evidence_f1 is None or test_f1 is None or counted < min_counted:
        return False
    return evidence_f1 <= test_f1 - margin


# ---------------------------------------------------------------- for a person


def missing_input(cfg):
    """The line that says the input folder does not exist, or None when it does: a user's mistake
    (a typo in the config), which fails the cycle (exit 2) rather than look like "no new data"."""
    if cfg.input_folder_path.is_dir():
        return None
    return f"input folder {cfg.input_folder_path} does not exist (config key input_folder_path in {cfg.path})"


def failure_text(step, reason, unexpected=False) -> str:
    """A cycle's failure in words: the step it happened in (None: between steps, where the reason
    is said alone, after the log's "cycle failed:") and why."""
    where = f"the {step.replace('_', ' ')} step failed" if step else ""
    if unexpected:
        where = f"{where} unexpectedly" if where else "unexpectedly"
        return f"{where}: {reason} (the log has the details)"
    return f"{where}: {reason}" if where else reason


def describe(rec) -> str:
    """The cycle's record in a few lines for a person: what it found, decided and where it wrote."""
    if rec.decision == LOCKED:
        return "another cycle is running: nothing done"
    lines = [f"decision: {rec.decision}"]
    if rec.new_files:
        lines.append(f"new files: {', '.join(rec.new_files)}")
    lines += [f"duplicate: {ingestion.duplicate_text(d)}" for d in rec.duplicates or []]
    lines += [f"waiting: {ingestion.waiting_text(w)}" for w in rec.waiting or []]
    for q in (rec.ingestion or {}).get("quarantined", []):
        lines.append(f"quarantined: {q['name']}: {q['reason']}")
    sd = rec.score_drift
    if sd:
        lines.append(f"score drift ({sd['used']} test): {sd['reason']}" + (f" [{sd['fallback']}]" if sd.get("fallback") else ""))
    fd = rec.feature_drift
    if fd:
        parts = [f"{c} KS {v['ks_statistic']:.3f} PSI {v['psi']:.3f}" for c, v in fd["features"].items()
                 if v["ks_statistic"] is not None]
        lines.append(f"feature drift: {', '.join(fd['drifted']) or 'none'} ({'; '.join(parts)})")
    if rec.gate:
        lines.append(f"promotion gate: {rec.gate.reason}")
    if rec.promotion:
        p = rec.promotion
        lines.append(f"promotion: {p['reason']}")
        for part in ("held_out", "test"):
            if p.get(part) and p[part].get("reason"):
                lines.append(f"  on the {'held-out rows' if part == 'held_out' else 'test data'}: {p[part]['reason']}")
        if p.get("action"):
            lines.append(f"what to do: {p['action']}")
        if p.get("model"):
            lines.append(f"model: {p['model']}")
    td = rec.test_data
    if td and td.get("stale"):
        lines.append(f"test data: {td['reason']}")
    if rec.retrained:
        lines.append(f"retrained on {rec.retrained.training_rows} rows: test F1 "
                     f"{rec.retrained.test_metrics['f1']:.4f}")
    previous, deployed = known(rec.previous_version), known(rec.deployed_version)
    if deployed is None:
        lines.append("serving: nothing deployed yet")
    elif previous != deployed:
        lines.append(f"deployed: version {deployed} " + (f"(was {previous})" if previous is not None
                                                         else "(the first: nothing was deployed before)"))
    else:
        lines.append(f"serving: version {deployed}")
    for what, where in (rec.published or {}).items():
        lines.append(f"{what}: {where}")
    for err in rec.errors:
        lines.append(f"error: {err}")
    lines.append(f"took {known(rec.seconds, 0):.3f}s")
    return "\n".join(lines)
