"""History rows shaped as the monitoring cycle writes them, for the status page's tests and benchmark.

The shapes follow fullprocess.py: a `cycles` row per cycle with new data, its JSON `record`
(cycle.CycleRecord) holding decision, new_files, ingestion.quarantined, score_drift, feature_drift,
previous_version and deployed_version; a `deployments` row per deploy.
"""
import json

from cycle import CycleRecord
from settings import FEATURES

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def cycle_record(i, at, *, decision="no drift", previous=1, deployed=1, psi=(0.02, 0.05, 0.01),
                 new_files=("delivery.csv",), quarantined=(), drift=False, errors=()):
    """One cycle's record (its JSON form), as fullprocess.Cycle builds it."""
    return CycleRecord(
        cycle_id=i, decision=decision, started_at=at, finished_at=at,
        new_files=list(new_files),
        ingestion={"ingested": [{"name": n, "rows": 100} for n in new_files if n not in quarantined],
                   "quarantined": [{"name": n, "reason": "column 'exited' is missing", "moved_to": "q"}
                                   for n in quarantined],
                   "skipped": [], "total_rows": 100, "seconds": 0.01},
        score_drift={"test": "raw", "used": "raw", "drift": drift, "new_f1": 0.61 if drift else 0.83,
                     "deployed_f1": 0.79, "fallback": None, "new_rows": 100,
                     "reason": (f"new F1 {'0.6100 is lower than' if drift else '0.8300 is not lower than'}"
                                " the deployed 0.7900")},
        feature_drift={"features": {f: {"ks_statistic": 0.1, "p_value": 0.3, "psi": p, "rows": 100,
                                        "p_adjusted": 0.3, "drifted": p >= 0.2}
                                    for f, p in zip(FEATURES, psi)},
                       "drifted": [f for f, p in zip(FEATURES, psi) if p >= 0.2], "any": any(p >= 0.2 for p in psi),
                       "level": 0.05, "psi_threshold": 0.2, "correction": "benjamini-hochberg"},
        previous_version=previous, deployed_version=deployed,
        timings={"look": 0.001, "ingestion": 0.01}, errors=list(errors), seconds=0.42,
    ).to_dict()


def add_cycle(conn, i, at, **kw):
    """Insert one finished cycle at epoch `at`; returns its record."""
    from datetime import datetime, timezone

    iso = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    rec = cycle_record(i, iso, **kw)
    conn.execute("INSERT INTO cycles (id, started_at, finished_at, decision, record) VALUES (?, ?, ?, ?, ?)",
                 (i, at, at + 0.42, rec["decision"], json.dumps(rec, sort_keys=True)))
    return rec


def add_deployment(conn, version, at, f1):
    conn.execute("INSERT INTO deployments (at, version, action, model_sha256, f1) VALUES (?, ?, 'deploy', ?, ?)",
                 (at, version, f"{version:064x}", f1))


def fill_history(conn, cycles, start=T0, every=600.0):
    """`cycles` cycles ten minutes apart: every 7th drifts and redeploys; PSI rises slowly."""
    version = 1
    add_deployment(conn, 1, start - every, 0.79)
    conn.execute("BEGIN")
    for i in range(1, cycles + 1):
        at = start + i * every
        drift = i % 7 == 0
        previous = version
        if drift:
            version += 1
            add_deployment(conn, version, at + 0.3, round(0.70 + 0.2 * ((i * 37) % 11) / 10, 4))
        k = i % 13
        add_cycle(conn, i, at, decision="drift: redeployed" if drift else "no drift", previous=previous,
                  deployed=version, drift=drift, psi=(0.02 + 0.015 * k, 0.04 + 0.01 * (i % 5), 0.01 + 0.004 * k),
                  quarantined=("bad.csv",) if i % 10 == 0 else (),
                  new_files=(f"delivery{i}.csv", "bad.csv") if i % 10 == 0 else (f"delivery{i}.csv",))
    conn.execute("COMMIT")
    return version
