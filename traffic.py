"""Reading live traffic back: the windows online monitoring (monitoring.py) wrote, merged and summarized.

Each API worker writes its own row per time window and model version (traffic_windows in the
history database), naming its host; a reader merges the rows of a window across workers and hosts
(several API hosts may share one history: every reader shows all of them together, with each
host's requests and rows beside the sums), adds the PSI of each feature's live histogram against
the deployed version's training histogram (drift.psi_counts), the live-drift alarm (alarms.py:
each closed window judged once, small windows pooled) and the estimated F1 (estimate.py, from
the window's six calibrated sums). PSI is the magnitude shown;
psi_watch and psi_act are display lines only: a window's level is the alarm's. Read-only: a
reader never creates the database.

Pooling is anchored to the clock: a pool never spans an `alarm_pool_seconds` boundary (a pool
short of `monitoring_min_rows` rows when the period ends is dropped unjudged), so every reader
(each worker, the cycle, the report) judges the same windows the same way, reading at most one
period back.

    recent_windows(conn, cfg, ...)   the windows, newest first, merged and summarized
    windows(cfg, ...)                GET /monitoring's body: the recent windows per model version
    crossings_since(cfg, since)      what the monitoring cycle records (watch or act crossed?)
    report_data(cfg, since, previous)  the report's live-traffic section, as plain data
    summary_lines(cfg)               the latest windows in words
    hosts_total(windows)             each host's requests and rows over summarized windows
    last_cycle(cfg)                  when the last successful monitoring cycle finished

The aggregates' arithmetic (merge_feature, merge_aggregates, the latency buckets) is here too:
the write side folds a worker's traffic with it, the read side merges the workers'.
"""
import json
import math
import time

import alarms
import deployment
import estimate
import history
from drift import LEVELS, model_reference, psi_counts
from settings import FEATURES

# Latency buckets of the stored windows: 10 us to 100 s, 20 per decade (12% apart).
LATENCY_BOUNDS = [round(10 ** (k / 20), 9) for k in range(-100, 41)]
CYCLE_FAILURES = ("failed", "interrupted")
REPORT_WINDOWS = 2000  # at most this many windows are drawn
UNKNOWN_HOST = "unknown"  # the host of a window row written before rows named theirs


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
    sums = [src["estimate"] for src in (a, b) if src.get("estimate")]
    if sums:
        out["estimate"] = sums[0] if len(sums) == 1 else estimate.add_sums(*sums)
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


def summarize(start, seconds, version, agg, ref, cfg, who):
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
        "window_start": start, "window_seconds": seconds, "model_version": version, "workers": who["workers"],
        "hosts": dict(sorted(who["hosts"].items())),
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
        "estimated_f1": _estimated_f1(agg.get("estimate"), ref),
        # the alarm's, set by _judge (judged windows only): a PSI above psi_act is not an alarm by itself
        "level": "ok", "alarm": {"state": "no reference" if ref is None else "open", "judged": False},
    }


def _estimated_f1(sums, ref):
    """estimate.estimate_f1 of a window's sums, with where its calibration came from; None
    without sums (traffic written before the estimate, or a version with no calibration)."""
    if not sums or not sums.get("rows"):
        return None
    out = estimate.estimate_f1(sums)
    calibration = (ref or {}).get("calibration") or {}
    return {"value": out["estimated_f1"], "interval": out["interval"], "sd": out["sd"], "rows": out["rows"],
            "expected": out["expected"], "calibration": calibration.get("kind"),
            "calibration_source": calibration.get("source")}


def alarm_options(cfg) -> dict:
    """alarms.judge's options from the config: one look per window, the day's error rates."""
    return {"min_rows": cfg.monitoring_min_rows, "looks_per_day": max(1, round(86400 / cfg.monitoring_window_seconds)),
            "act_per_day": cfg.alarm_act_per_day, "watch_per_day": cfg.alarm_watch_per_day}


def alarm_thresholds(cfg) -> dict:
    """What /monitoring, the status page and the report show of the rule: the display lines and the alarm's levels."""
    opts = alarm_options(cfg)
    alpha = alarms.thresholds(len(FEATURES), opts["looks_per_day"], opts["act_per_day"], opts["watch_per_day"])
    return {"psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act, "min_rows": cfg.monitoring_min_rows,
            "alarm_act_per_day": cfg.alarm_act_per_day, "alarm_watch_per_day": cfg.alarm_watch_per_day,
            "alarm_pool_seconds": cfg.alarm_pool_seconds, "looks_per_day": opts["looks_per_day"],
            "p_act": alpha["act"], "p_watch": alpha["watch"]}


def _counts(agg):
    return {f: agg["features"][f]["hist"] for f in FEATURES if agg["features"][f]["count"]}


def _judge(cfg, found, context, refs, now):
    """Set each summarized window's alarm and level (in place). `context`: {(start, version):
    (rows, counts)} of the earlier windows of the same pool periods, not in `found`."""
    period = cfg.alarm_pool_seconds
    opts = alarm_options(cfg)
    by_pool = {}
    for w in found:
        by_pool.setdefault((w["model_version"], w["window_start"] // period), {})[w["window_start"]] = w
    for (version, _), mine in by_pool.items():
        ref = refs.get(version)
        if ref is None:
            continue
        first = min(mine)
        stream = {start: (w["rows"], {f: a["histogram"] for f, a in w["features"].items() if a["count"]}, w)
                  for start, w in mine.items()}
        for (start, v), (rows, counts) in context.items():
            if v == version and start // period == first // period and start not in stream:
                stream[start] = (rows, counts, None)
        pooler = alarms.Pooler(ref, min_rows=opts["min_rows"], pool_seconds=math.inf,
                               looks_per_day=opts["looks_per_day"], act_per_day=opts["act_per_day"],
                               watch_per_day=opts["watch_per_day"])
        for start in sorted(stream):
            rows, counts, w = stream[start]
            # closed: its end passed, and every worker has had a flush to write its last rows
            if start + cfg.monitoring_window_seconds + cfg.monitoring_flush_seconds > now:
                break
            result = pooler.add(start, rows, counts)
            if w is None:
                continue
            if result is None:
                w["alarm"] = {"state": "pooled", "judged": False, "pending_rows": pooler.rows,
                              "pool_start": pooler.first}
                continue
            w["level"] = result["level"]
            w["alarm"] = {"state": "judged", "judged": True, "level": result["level"], "rows": result["rows"],
                          "pooled_windows": result["pooled_windows"], "pool_start": result["pool_start"],
                          "alpha": result["alpha"],
                          "p_values": {f: v["p_value"] for f, v in sorted(result["features"].items())},
                          "tests": {f: {"chi_square": v["chi_square"]["p_value"], "rank": v["rank"]["p_value"]}
                                    for f, v in sorted(result["features"].items())},
                          "features": {f: v["level"] for f, v in sorted(result["features"].items())}}


def _summarized(conn, cfg, merged, refs, now=None):
    """The merged windows summarized and judged (oldest first), with the earlier windows of
    their pool periods read for the pools' sake."""
    now = time.time() if now is None else now
    period = cfg.alarm_pool_seconds
    found = [summarize(start, seconds, version, agg, refs.get(version), cfg, who)
             for (start, version), (seconds, agg, who) in merged.items()]
    context = {}
    for version in {w["model_version"] for w in found}:
        oldest = min(w["window_start"] for w in found if w["model_version"] == version)
        begin = oldest - oldest % period
        if begin < oldest and refs.get(version) is not None:
            earlier = _merged(conn, ["model_version = ?", "window_start >= ?", "window_start < ?"],
                              [version, begin, oldest], 1_000_000)
            context.update({k: (agg["rows"], _counts(agg)) for k, (_, agg, _) in earlier.items()})
    found.sort(key=lambda w: (w["window_start"], w["model_version"]))
    _judge(cfg, found, context, refs, now)
    return found


def _merged(conn, where, args, limit):
    """{(window_start, version): (window_seconds, aggregates merged across workers and hosts, who)}, who
    being {"workers": rows merged, "hosts": {host: {"requests", "rows"}}}."""
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    try:
        keys = conn.execute(f"SELECT DISTINCT window_start, model_version FROM traffic_windows {clause}"
                            " ORDER BY window_start DESC, model_version DESC LIMIT ?", (*args, limit)).fetchall()
    except history.OperationalError:  # no traffic recorded yet: the table is not there
        return {}
    if not keys:
        return {}
    oldest = keys[-1][0]
    rows = conn.execute(f"SELECT window_start, window_seconds, model_version, worker, aggregates, host, requests, rows"
                        f" FROM traffic_windows {clause + ' AND' if clause else 'WHERE'} window_start >= ?"
                        " ORDER BY window_start DESC, worker", (*args, oldest)).fetchall()
    wanted = {(k[0], k[1]) for k in keys}
    merged = {}
    for r in rows:
        key = (r[0], r[2])
        if key not in wanted:
            continue
        agg = json.loads(r[4])
        if key in merged:
            seconds, so_far, who = merged[key]
            merged[key] = (seconds, merge_aggregates(so_far, agg), who)
        else:
            who = {"workers": 0, "hosts": {}}
            merged[key] = (r[1], agg, who)
        who["workers"] += 1
        add_counts(who["hosts"].setdefault(r[5] or UNKNOWN_HOST, {}), {"requests": r[6], "rows": r[7]})
    return merged


def hosts_total(windows) -> dict:
    """{host: {"requests", "rows"}} added up over summarized `windows` (their "hosts"), by host name."""
    total = {}
    for w in windows:
        for host, counts in (w.get("hosts") or {}).items():
            add_counts(total.setdefault(host, {}), counts)
    return dict(sorted(total.items()))


def recent_windows(conn, cfg, version=None, limit=60, since=None, until=None, refs=None, now=None):
    """The windows (newest first, at most `limit`), each merged across workers, summarized and judged."""
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
    return _summarized(conn, cfg, merged, refs, now)[::-1]


def windows(cfg, limit=60, refs=None):
    """GET /monitoring's body: the recent windows grouped per model version, newest first."""
    conn = history.connect_ro(cfg.history)
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
    return {"thresholds": alarm_thresholds(cfg), "window_seconds": cfg.monitoring_window_seconds,
            "reference_rows": {v: (r or {}).get("rows") for v, r in sorted(
                model_references(cfg, {int(v) for v in by_version}, refs).items()) if str(v) in by_version},
            "note": reference_note(cfg, refs, by_version), "versions": by_version}


# Below this many reference rows a moderate shift (one feature x1.5) is out of the alarm's reach:
# bench/results/alarms.md, 56 rows: caught within two windows in at most 20% of trials.
SMALL_REFERENCE_ROWS = 500


def reference_note(cfg, refs, by_version):
    """A sentence when a version's reference is too small for the alarm to see a moderate shift, else None."""
    small = sorted(v for v, r in model_references(cfg, {int(v) for v in by_version}, refs).items()
                   if r is not None and r.get("rows", 0) < SMALL_REFERENCE_ROWS)
    if not small:
        return None
    rows = model_references(cfg, set(small), refs)
    return ("; ".join(f"model version {v} was trained on {rows[v]['rows']} rows" for v in small)
            + f": with fewer than {SMALL_REFERENCE_ROWS} reference rows the alarm cannot tell a moderate shift"
            " (one feature x1.5) from sampling noise at its false-alarm rate; only a gross shift reaches"
            " \"act\". Train on more rows for live drift detection.")


def last_cycle(cfg):
    """finished_at of the last successful monitoring cycle, or None."""
    conn = history.connect_ro(cfg.history)
    if conn is None:
        return None
    try:
        row = conn.execute("SELECT MAX(finished_at) FROM cycles WHERE finished_at IS NOT NULL"
                           f" AND decision NOT IN ({','.join('?' * len(CYCLE_FAILURES))})",
                           CYCLE_FAILURES).fetchone()
    except history.OperationalError:
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
    conn = history.connect_ro(cfg.history)
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
    above = sum(1 for w in found if w["level"] == "ok" and any(v >= cfg.psi_act for v in w["psi"].values()))
    return {"since": since, "windows": len(found), "rows": sum(w["rows"] for w in found), "level": worst,
            "hosts": hosts_total(found),
            "watch": worst in ("watch", "act"), "act": worst == "act",
            "judged": sum(1 for w in found if w["alarm"]["judged"]),
            "above_psi_act_not_alarmed": above,
            "max_psi": dict(sorted(features.items())), "psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act,
            "alarm_act_per_day": cfg.alarm_act_per_day, "alarm_watch_per_day": cfg.alarm_watch_per_day}


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
    conn = history.connect_ro(cfg.history)
    current, previous, windows = {}, {}, []
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
            refs = model_references(cfg, {k[1] for k in current}, None)
            windows = _summarized(conn, cfg, current, refs, until) if current else []
        finally:
            conn.close()
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
        "thresholds": alarm_thresholds(cfg),
        "days": [days[k] for k in sorted(days)],
        "windows": [{k: w[k] for k in ("window_start", "window_seconds", "model_version", "rows", "exit_share",
                                       "exit_share_shift", "psi", "level")}
                    | {"estimated_f1": (w["estimated_f1"] or {}).get("value"), "judged": w["alarm"]["judged"]}
                    for w in windows[-REPORT_WINDOWS:]],
        "windows_crossing": crossed,
        "hosts": hosts_total(windows),
        "judged": sum(1 for w in windows if w["alarm"]["judged"]),
        "above_psi_act_not_alarmed": sum(1 for w in windows if w["level"] == "ok"
                                         and any(v >= cfg.psi_act for v in w["psi"].values())),
        "estimated_f1": _period_f1(current, refs) if current else None,
        "latency": _latency(current) if current else None,
        "previous_latency": _latency(previous) if previous else None,
    }


def _period_f1(merged, refs):
    """The estimated F1 of all the period's rows of its newest version (its windows' sums added)."""
    version = max(k[1] for k in merged)
    sums = None
    for (_, v), (_, agg, _) in merged.items():
        if v == version and agg.get("estimate"):
            sums = agg["estimate"] if sums is None else estimate.add_sums(sums, agg["estimate"])
    return None if sums is None else {"model_version": version, **_estimated_f1(sums, refs.get(version))}


def summary_lines(cfg, limit=5):
    """The latest windows in words, newest first."""
    body = windows(cfg, limit=limit)
    lines = []
    for version, found in sorted(body["versions"].items()):
        for w in found:
            psi = ", ".join(f"{f} {v:.3f}" for f, v in sorted(w["psi"].items())) or "no reference"
            share = "n/a" if w["exit_share"] is None else f"{w['exit_share']:.3f}"
            state = w["alarm"]["state"]
            verdict = w["level"] if state == "judged" else "no rows" if not w["rows"] else (
                f"not judged ({state}" + (f", {w['alarm']['pending_rows']} rows pooled" if state == "pooled" else "") + ")")
            f1 = (w["estimated_f1"] or {}).get("value")
            lines.append(f"v{int(version):04d} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(w['window_start']))} UTC"
                         f"  {w['requests']} requests, {w['rows']} rows, exit share {share}, PSI {psi}"
                         + (f", estimated F1 {f1:.3f}" if f1 is not None else "") + f": {verdict}")
    return lines or ["no live traffic recorded yet"]

