"""Reading live traffic back: the windows online monitoring (monitoring.py) wrote, merged and summarized.

Each API worker writes its own row per time window and model version (traffic_windows in the
history database); a reader merges the rows of a window across workers, adds the PSI of each
feature's live histogram against the deployed version's training histogram (drift.psi_counts),
and reports the level against psi_watch and psi_act. Read-only: a reader never creates the
database.

    recent_windows(conn, cfg, ...)   the windows, newest first, merged and summarized
    windows(cfg, ...)                GET /monitoring's body: the recent windows per model version
    crossings_since(cfg, since)      what the monitoring cycle records (watch or act crossed?)
    report_data(cfg, since, previous)  the report's live-traffic section, as plain data
    summary_lines(cfg)               the latest windows in words
    last_cycle(cfg)                  when the last successful monitoring cycle finished

The aggregates' arithmetic (merge_feature, merge_aggregates, the latency buckets) is here too:
the write side folds a worker's traffic with it, the read side merges the workers'.
"""
import json
import math
import sqlite3
import time

import deployment
import history
from drift import LEVELS, model_reference, psi_counts, psi_level
from settings import FEATURES

# Latency buckets of the stored windows: 10 us to 100 s, 20 per decade (12% apart).
LATENCY_BOUNDS = [round(10 ** (k / 20), 9) for k in range(-100, 41)]
CYCLE_FAILURES = ("failed", "interrupted")
REPORT_WINDOWS = 2000  # at most this many windows are drawn


# ---------------------------------------------------------------------------------------------
# The aggregates' arithmetic
# ---------------------------------------------------------------------------------------------

def merge_feature(a, b):
    """Chan et al.'s pairwise merge of two (count, mean, m2, min, max, hist) aggregates."""
    n = a["count"] + b["count"]
    if b["count"] == 0:
        return dict(a, hist=list(a["hist"]))
    if a["count"] == 0:
        return dict(b, hist=list(b["hist"]))
    delta = b["mean"] - a["mean"]
    hist = [x + y for x, y in zip(a["hist"], b["hist"])] if len(a["hist"]) == len(b["hist"]) else a["hist"]
    return {"count": n, "mean": a["mean"] + delta * b["count"] / n,
            "m2": a["m2"] + b["m2"] + delta * delta * a["count"] * b["count"] / n,
            "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"]), "hist": hist}


def add_counts(into, more):
    """Add the counts of dict `more` into dict `into` (in place)."""
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def merge_aggregates(a, b):
    """The aggregates of two window rows (same window, same version) as one."""
    out = {"requests": {}, "latency": {}, "rows": a["rows"] + b["rows"], "exits": a["exits"] + b["exits"],
           "probability_sum": a["probability_sum"] + b["probability_sum"], "features": {}}
    for src in (a, b):
        for ep, by_status in src["requests"].items():
            add_counts(out["requests"].setdefault(ep, {}), by_status)
        for ep, buckets in src["latency"].items():
            add_counts(out["latency"].setdefault(ep, {}), buckets)
    for f in FEATURES:
        out["features"][f] = merge_feature(a["features"][f], b["features"][f])
    return out


def latency_quantile(buckets, q):
    """The q-quantile of a latency histogram {bucket index: count}: the upper bound of the bucket
    holding it (seconds), or None when empty."""
    items = sorted((int(k), v) for k, v in buckets.items())
    total = sum(v for _, v in items)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for k, v in items:
        seen += v
        if seen >= rank:
            return LATENCY_BOUNDS[k] if k < len(LATENCY_BOUNDS) else math.inf
    return LATENCY_BOUNDS[items[-1][0]]


# ---------------------------------------------------------------------------------------------
# Reading the windows back
# ---------------------------------------------------------------------------------------------

def model_references(cfg, versions, refs=None):
    """The monitoring references of the deployed `versions` (from their version folders)."""
    out = dict(refs or {})
    for v in versions:
        if v not in out:
            try:
                out[v] = model_reference(deployment.read_manifest(
                    cfg.prod_deployment_path / "versions" / deployment.version_name(v)))
            except deployment.DeploymentError:
                out[v] = None
    return out


def summarize(start, seconds, version, agg, ref, cfg, workers):
    """One window as the API shows it."""
    rows = agg["rows"]
    psi = {}
    if ref is not None:
        for j, f in enumerate(FEATURES):
            hist = agg["features"][f]["hist"]
            if agg["features"][f]["count"] and len(hist) == len(ref["edges"][j]) + 1:
                psi[f] = round(psi_counts(ref["features"][f]["counts"], hist), 6)
    all_lat = {}
    for buckets in agg["latency"].values():
        add_counts(all_lat, buckets)
    pred_lat = agg["latency"].get("/prediction", {})
    errors = {}
    for ep, by_status in agg["requests"].items():
        for status, n in by_status.items():
            if int(status) >= 400:
                errors[status] = errors.get(status, 0) + n
    features = {}
    for f in FEATURES:
        a = agg["features"][f]
        features[f] = {"count": a["count"], "mean": a["mean"] if a["count"] else None,
                       "variance": a["m2"] / (a["count"] - 1) if a["count"] > 1 else None,
                       "min": a["min"], "max": a["max"], "histogram": a["hist"]}
    share = agg["exits"] / rows if rows else None
    ref_share = ref.get("predicted_exit_share") if ref else None
    return {
        "window_start": start, "window_seconds": seconds, "model_version": version, "workers": workers,
        "requests": sum(sum(s.values()) for s in agg["requests"].values()),
        "requests_by_endpoint": {ep: dict(sorted(s.items())) for ep, s in sorted(agg["requests"].items())},
        "errors": dict(sorted(errors.items())),
        "rows": rows, "exits": agg["exits"], "exit_share": share,
        "exit_share_shift": (share - ref_share) if share is not None and ref_share is not None else None,
        "mean_probability": agg["probability_sum"] / rows if rows else None,
        "latency_p50": latency_quantile(all_lat, 0.5), "latency_p99": latency_quantile(all_lat, 0.99),
        "prediction_latency_p50": latency_quantile(pred_lat, 0.5),
        "prediction_latency_p99": latency_quantile(pred_lat, 0.99),
        "features": features, "psi": psi,
        "level": psi_level(psi.values(), cfg.psi_watch, cfg.psi_act) if rows >= cfg.monitoring_min_rows else "ok",
    }


def _merged(conn, where, args, limit):
    """{(window_start, version): (window_seconds, aggregates merged across workers, workers)}."""
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    try:
        keys = conn.execute(f"SELECT DISTINCT window_start, model_version FROM traffic_windows {clause}"
                            " ORDER BY window_start DESC, model_version DESC LIMIT ?", (*args, limit)).fetchall()
    except sqlite3.OperationalError:  # no traffic recorded yet: the table is not there
        return {}
    if not keys:
        return {}
    oldest = keys[-1][0]
    rows = conn.execute(f"SELECT window_start, window_seconds, model_version, worker, aggregates FROM traffic_windows"
                        f" {clause + ' AND' if clause else 'WHERE'} window_start >= ?"
                        " ORDER BY window_start DESC, worker", (*args, oldest)).fetchall()
    wanted = {(k[0], k[1]) for k in keys}
    merged = {}
    for r in rows:
        key = (r[0], r[2])
        if key not in wanted:
            continue
        agg = json.loads(r[4])
        if key in merged:
            seconds, so_far, workers = merged[key]
            merged[key] = (seconds, merge_aggregates(so_far, agg), workers + 1)
        else:
            merged[key] = (r[1], agg, 1)
    return merged


def recent_windows(conn, cfg, version=None, limit=60, since=None, until=None, refs=None):
    """The windows (newest first, at most `limit`), each merged across workers and summarized."""
    where, args = [], []
    if version is not None:
        where.append("model_version = ?")
        args.append(version)
    if since is not None:
        where.append("window_start >= ?")
        args.append(since)
    if until is not None:
        where.append("window_start < ?")
        args.append(until)
    merged = _merged(conn, where, args, limit)
    refs = model_references(cfg, {k[1] for k in merged}, refs)
    out = [summarize(start, seconds, version, agg, refs.get(version), cfg, workers)
           for (start, version), (seconds, agg, workers) in merged.items()]
    out.sort(key=lambda w: (w["window_start"], w["model_version"]), reverse=True)
    return out


def windows(cfg, limit=60, refs=None):
    """GET /monitoring's body: the recent windows grouped per model version, newest first."""
    conn = history.connect_ro(cfg.history_db)
    if conn is None:
        found = []
    else:
        try:
            found = recent_windows(conn, cfg, limit=limit, refs=refs)
        finally:
            conn.close()
    by_version = {}
    for w in found:
        by_version.setdefault(str(w["model_version"]), []).append(w)
    return {"thresholds": {"psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act,
                           "min_rows": cfg.monitoring_min_rows},
            "window_seconds": cfg.monitoring_window_seconds, "versions": by_version}


def last_cycle(cfg):
    """finished_at of the last successful monitoring cycle, or None."""
    conn = history.connect_ro(cfg.history_db)
    if conn is None:
        return None
    try:
        row = conn.execute("SELECT MAX(finished_at) FROM cycles WHERE finished_at IS NOT NULL"
                           f" AND decision NOT IN ({','.join('?' * len(CYCLE_FAILURES))})",
                           CYCLE_FAILURES).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return row[0] if row else None


# ---------------------------------------------------------------------------------------------
# For the monitoring cycle, the report and the command
# ---------------------------------------------------------------------------------------------

def crossings_since(cfg, since, until=None) -> dict:
    """Whether live traffic crossed the watch or act threshold in the windows that end after `since`
    (epoch seconds): a window still open when the last cycle finished counts for the next one."""
    conn = history.connect_ro(cfg.history_db)
    found = []
    if conn is not None:
        try:
            found = recent_windows(conn, cfg, since=since - cfg.monitoring_window_seconds, until=until,
                                   limit=1_000_000)
        finally:
            conn.close()
    found = [w for w in found if w["window_start"] + w["window_seconds"] > since]
    worst = "ok"
    features = {}
    for w in found:
        if LEVELS.index(w["level"]) > LEVELS.index(worst):
            worst = w["level"]
        if w["level"] != "ok":
            for f, v in w["psi"].items():
                features[f] = max(features.get(f, 0.0), v)
    return {"since": since, "windows": len(found), "rows": sum(w["rows"] for w in found), "level": worst,
            "watch": worst in ("watch", "act"), "act": worst == "act",
            "max_psi": dict(sorted(features.items())), "psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act}


def _latency(merged):
    """p50 and p99 (seconds) of all requests and of /prediction over merged windows."""
    every, pred = {}, {}
    for _, agg, _ in merged.values():
        for ep, buckets in agg["latency"].items():
            add_counts(every, buckets)
            if ep == "/prediction":
                add_counts(pred, buckets)
    return {"p50": latency_quantile(every, 0.5), "p99": latency_quantile(every, 0.99),
            "prediction_p50": latency_quantile(pred, 0.5), "prediction_p99": latency_quantile(pred, 0.99),
            "requests": sum(every.values())}


def report_data(cfg, since=None, previous_since=None, until=None) -> dict:
    """The report's live-traffic section as plain data: the traffic since `since` (the previous
    report; None: everything recorded) per day, exit share and PSI per window, latency percentiles,
    and the latency of the period before (`previous_since` to `since`) to compare with."""
    until = time.time() if until is None else until
    conn = history.connect_ro(cfg.history_db)
    current, previous = {}, {}
    if conn is not None:
        try:
            # A window belongs to the period it ends in: one still open at the previous report is this one's.
            slack = cfg.monitoring_window_seconds
            where, args = ["window_start < ?"], [until]
            if since is not None:
                where.append("window_start >= ?")
                args.append(since - slack)
            current = {k: v for k, v in _merged(conn, where, args, 1_000_000).items()
                       if since is None or k[0] + v[0] > since}
            if since is not None:
                where, args = ["window_start < ?"], [since]
                if previous_since is not None:
                    where.append("window_start >= ?")
                    args.append(previous_since - slack)
                previous = {k: v for k, v in _merged(conn, where, args, 1_000_000).items()
                            if k[0] + v[0] <= since and (previous_since is None or k[0] + v[0] > previous_since)}
        finally:
            conn.close()
    refs = model_references(cfg, {k[1] for k in current}, None)
    windows = sorted((summarize(start, seconds, version, agg, refs.get(version), cfg, workers)
                      for (start, version), (seconds, agg, workers) in current.items()),
                     key=lambda w: (w["window_start"], w["model_version"]))
    days = {}
    for w in windows:
        day = time.strftime("%Y-%m-%d", time.gmtime(w["window_start"]))
        d = days.setdefault(day, {"day": day, "requests": 0, "rows": 0, "exits": 0, "errors": 0})
        d["requests"] += w["requests"]
        d["rows"] += w["rows"]
        d["exits"] += w["exits"]
        d["errors"] += sum(w["errors"].values())
    for d in days.values():
        d["exit_share"] = d["exits"] / d["rows"] if d["rows"] else None
    crossed = {lvl: sum(1 for w in windows if w["level"] == lvl) for lvl in ("watch", "act")}
    return {
        "since": since, "until": until, "previous_since": previous_since,
        "thresholds": {"psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act, "min_rows": cfg.monitoring_min_rows},
        "days": [days[k] for k in sorted(days)],
        "windows": [{k: w[k] for k in ("window_start", "model_version", "rows", "exit_share", "exit_share_shift",
                                       "psi", "level")} for w in windows[-REPORT_WINDOWS:]],
        "windows_crossing": crossed,
        "latency": _latency(current) if current else None,
        "previous_latency": _latency(previous) if previous else None,
    }


def summary_lines(cfg, limit=5):
    """The latest windows in words, newest first."""
    body = windows(cfg, limit=limit)
    lines = []
    for version, found in sorted(body["versions"].items()):
        for w in found:
            psi = ", ".join(f"{f} {v:.3f}" for f, v in sorted(w["psi"].items())) or "no reference"
            share = "n/a" if w["exit_share"] is None else f"{w['exit_share']:.3f}"
            lines.append(f"v{int(version):04d} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(w['window_start']))} UTC"
                         f"  {w['requests']} requests, {w['rows']} rows, exit share {share}, PSI {psi}: {w['level']}")
    return lines or ["no live traffic recorded yet"]

