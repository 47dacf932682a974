"""The status page: the whole system at a glance, in a browser.

    gather(cfg)       the page's facts as plain data: the summary (summary.py), the deployed model,
                      the last cycles, the schedule in force (schedule.in_force), the F1 and PSI
                      trends, slice flags, live traffic, links
    blueprint         GET / renders templates/status.html from gather(); GET /files/<name> serves
                      the latest report.pdf, apireturns.txt and modelcard.md (those names only)
    main              `python status.py --check`: is it running? (health.py's facts, one line each)

Screenshots of the running page (headless Chromium) are screenshots.py's.

Every fact is read defensively: a fresh install, a table or a manifest key that does not exist yet
shows as "no data yet" on the page, never as an error. The page reads the history database
read-only, with a handful of indexed queries, so it costs the same with 10 or 10,000 cycles.

Under the bearer-token option (DRAS_API_TOKEN) the page is protected like every other endpoint.
A browser cannot send an Authorization header from the address bar, so `/?token=TOKEN` checks the
token, stores it in an HttpOnly, SameSite=Strict cookie and redirects to `/`; the cookie is
accepted on this blueprint's routes only (never on /prediction).
"""
import hmac
import json
import logging
import math
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, send_file

import deployment
import health
import history
import lineage
import schedule
import summary
import traffic
from cycle import CycleRecord, Gate, known
from settings import FEATURES, ConfigError, load_config
from timetext import ago, shown_time
from timetext import epoch as _epoch
from timetext import iso as _iso

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BLUEPRINT = "status"
COOKIE = "dras_token"
# What a cookie may hold (RFC 6265 cookie-octets): printable ASCII but space, ", comma, ; and \.
COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]+")
REFRESH_SECONDS = 60
CYCLE_ROWS = 20
TREND_POINTS = 50
TRAFFIC_WINDOWS = 60
# The monitoring cycle's own log: a cycle with nothing to do is only logged there, not in the database.
CYCLE_LOG = "cycles.jsonl"
# The fixed files GET /files/<name> may serve: name -> (Config attribute of the folder, media type).
FILES = {
    "report.pdf": ("output_model_path", "application/pdf"),
    "apireturns.txt": ("output_model_path", "text/plain"),
    "modelcard.md": ("prod_deployment_path", "text/plain"),
}
PSI_WATCH, PSI_ACT = 0.1, 0.2  # display lines when no config is at hand (settings' defaults)

bp = Blueprint(BLUEPRINT, __name__, template_folder="templates")


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------

def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _dig(doc, *keys):
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def deployed_model(cfg):
    """The serving version's facts from its manifest: (facts or None, a reason when None)."""
    try:
        manifest = deployment.current_manifest(cfg.prod_deployment_path)
    except deployment.DeploymentError as exc:
        return None, f"the deployed version's manifest cannot be read: {exc}"
    if manifest is None:
        return None, "no model is deployed yet"
    metrics = manifest.get("metrics") or {}
    cv = _dig(manifest, "audit", "cross_validation") or _dig(manifest, "training", "cross_validation")
    cross = None
    if isinstance(cv, dict):
        cross = {"folds": cv.get("folds"), "note": cv.get("note"),
                 "f1_mean": _number(_dig(cv, "f1", "mean")), "f1_std": _number(_dig(cv, "f1", "std"))}
    training = manifest.get("training") or {}
    return {
        "version": manifest.get("version"),
        "deployed_at": manifest.get("deployed_at"),
        "f1": _number(metrics.get("f1")),
        "precision": _number(metrics.get("precision")),
        "recall": _number(metrics.get("recall")),
        "test_rows": metrics.get("rows"),
        "training_rows": training.get("training_rows"),
        "lineage": [{"name": d["name"], "sha256": lineage.short(d["sha256"])} for d in lineage.deliveries(manifest)],
        "cross_validation": cross,
        "drift_test": manifest.get("drift_test"),
        "cycle": manifest.get("cycle"),
    }, None


def slice_flags(cfg):
    """The deployed model's slices of the test data with their flags, or None when not recorded."""
    try:
        manifest = deployment.current_manifest(cfg.prod_deployment_path)
    except deployment.DeploymentError:
        return None
    slices = _dig(manifest, "audit", "slices") or _dig(manifest, "training", "evaluation", "slices")
    if not isinstance(slices, dict) or not isinstance(slices.get("slices"), list):
        return None
    rows = [{"label": s.get("label"), "rows": s.get("rows"), "f1": _number(s.get("f1")),
             "flag": s.get("flag")} for s in slices["slices"] if isinstance(s, dict)]
    return {"rows": rows, "overall_f1": _number(_dig(slices, "overall", "f1")),
            "margin": _number(slices.get("margin")), "min_rows": slices.get("min_rows"),
            "flagged": sum(1 for r in rows if r["flag"])}


def _cycle_summary(row):
    """One cycles row as the page shows it."""
    try:
        rec = json.loads(row["record"])
    except (TypeError, json.JSONDecodeError):
        rec = {}
    rec = CycleRecord.from_dict(rec if isinstance(rec, dict) else {})
    ingestion = rec.ingestion if isinstance(rec.ingestion, dict) else {}
    quarantined = ingestion.get("quarantined") or []
    score = rec.score_drift if isinstance(rec.score_drift, dict) else None
    feature = rec.feature_drift if isinstance(rec.feature_drift, dict) else None
    if score is not None:
        drift = f"{'drift' if score.get('drift') else 'no drift'} ({score.get('used') or '?'} test)"
    elif feature is not None:
        drift = "feature drift" if feature.get("any") else "no feature drift"
    else:
        drift = None
    previous, deployed = known(rec.previous_version), known(rec.deployed_version)
    evidence = []
    if score is not None and score.get("reason"):
        evidence.append(f"Score drift ({score.get('used')} test): {score['reason']}")
        if score.get("fallback"):
            evidence.append(str(score["fallback"]))
    if feature is not None:
        parts = []
        for name, v in (feature.get("features") or {}).items():
            if isinstance(v, dict) and _number(v.get("psi")) is not None:
                parts.append(f"{name} PSI {v['psi']:.3f}")
        drifted = feature.get("drifted") or []
        evidence.append(f"Feature drift: {', '.join(drifted) if drifted else 'none'}"
                        + (f" ({'; '.join(parts)})" if parts else ""))
    gate = rec.gate.to_dict() if isinstance(rec.gate, Gate) else rec.gate
    if isinstance(gate, dict) and gate.get("reason"):
        evidence.append(f"Promotion gate: {gate['reason']}")
    promotion = rec.promotion if isinstance(rec.promotion, dict) else {}
    for key, label in (("reason", "Promotion"), ("action", "What to do"), ("model", "Model")):
        if promotion.get(key):
            evidence.append(f"{label}: {promotion[key]}")
    test_data = rec.test_data if isinstance(rec.test_data, dict) else {}
    if test_data.get("stale"):
        evidence.append(f"Stale test data: {test_data.get('reason')}")
    for q in quarantined:
        if isinstance(q, dict):
            evidence.append(f"Quarantined {q.get('name')}: {q.get('reason')}")
    return {
        "id": row["id"],
        "at": _iso(row["started_at"]),
        "finished": _iso(row["finished_at"]),
        "decision": row["decision"] or rec.decision or "unfinished",
        "new_files": len(rec.new_files or []),
        "new_file_names": list(rec.new_files or []),
        "quarantined": len(quarantined),
        "drift": drift,
        "deployed": deployed if deployed is not None and deployed != previous else None,
        "serving": deployed,
        "errors": [str(e) for e in rec.errors or []],
        "evidence": evidence,
        "seconds": _number(known(rec.seconds)),
        "psi": {name: _number(v.get("psi")) for name, v in (feature.get("features") or {}).items()
                if isinstance(v, dict)} if feature else None,
    }


def recent_cycles(conn, limit=CYCLE_ROWS):
    """The last `limit` cycles recorded in the history database, newest first."""
    rows = conn.execute("SELECT id, started_at, finished_at, decision, record FROM cycles"
                        " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [_cycle_summary(r) for r in rows]


def last_check(cfg):
    """The last line of the cycle log (a cycle with nothing to do is only logged): {at, decision} or None."""
    path = cfg.log_folder_path / CYCLE_LOG
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("decision"):
            return {"at": rec.get("finished_at") or rec.get("started_at"), "decision": rec["decision"]}
    return None


def f1_per_deployment(conn, limit=TREND_POINTS):
    """The test F1 of the last `limit` deployments, oldest first: [{version, f1, at}]."""
    rows = conn.execute("SELECT version, f1, at FROM deployments WHERE action = 'deploy' AND f1 IS NOT NULL"
                        " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [{"version": r["version"], "f1": r["f1"], "at": _iso(r["at"])} for r in reversed(rows)]


def psi_per_cycle(conn, limit=TREND_POINTS):
    """Per feature, the PSI of each of the last `limit` cycles that measured feature drift, oldest first."""
    points = []
    for row in conn.execute("SELECT id, started_at, finished_at, decision, record FROM cycles ORDER BY id DESC LIMIT ?",
                            (limit,)).fetchall():
        c = _cycle_summary(row)
        if c["psi"] and any(v is not None for v in c["psi"].values()):
            points.append({"cycle": c["id"], "at": c["at"], "psi": c["psi"]})
    return list(reversed(points))


def traffic_summary(windows, watch=PSI_WATCH, act=PSI_ACT, alarm_rule=None):
    """Live traffic over `windows` (online monitoring's summarized windows, newest first), or None.

    Each window is a dict as traffic.summarize returns it: window_start, window_seconds,
    model_version, requests, hosts {host: {requests, rows}}, rows, exits, latency_p50 and
    latency_p99 (seconds), psi {feature: value}, level ("ok", "watch" or "act"), alarm and
    estimated_f1; `alarm_rule` is traffic.alarm_thresholds (the config's levels), shown as given.
    """
    windows = [w for w in windows or [] if isinstance(w, dict)]
    if not windows:
        return None
    latest = windows[0]
    rows = sum(int(w.get("rows") or 0) for w in windows)
    exits = sum(int(w.get("exits") or 0) for w in windows)
    starts = [_number(w.get("window_start")) for w in windows]
    ends = [(_number(w.get("window_start")) or 0) + (_number(w.get("window_seconds")) or 0) for w in windows
            if _number(w.get("window_start")) is not None]

    def ms(seconds):
        return None if _number(seconds) is None else seconds * 1000

    psi = latest.get("psi") if isinstance(latest.get("psi"), dict) else {}
    # The level is the alarm's latest judged look (alarms.py); PSI is the magnitude shown.
    judged = next((w for w in windows if isinstance(w.get("alarm"), dict) and w["alarm"].get("judged")), None)
    alarm = judged["alarm"] if judged else None
    estimated = next((w["estimated_f1"] for w in windows if (w.get("estimated_f1") or {}).get("value") is not None), None)
    return {
        "windows": len(windows),
        "since": _iso(min((t for t in starts if t is not None), default=None)),
        "until": _iso(max(ends, default=None)),
        "requests": sum(int(w.get("requests") or 0) for w in windows),
        "hosts": traffic.hosts_total(windows),
        "rows": rows,
        "exit_share": exits / rows if rows else None,
        "p50_ms": ms(latest.get("latency_p50")),
        "p99_ms": ms(latest.get("latency_p99")),
        "model_version": latest.get("model_version"),
        "level": latest.get("level"),
        "psi": {name: _number(v) for name, v in psi.items()},
        "watch": watch, "act": act,
        "alarm": None if alarm is None else {
            "level": alarm.get("level"), "rows": alarm.get("rows"), "window_start": _iso(judged.get("window_start")),
            "p_values": alarm.get("p_values") or {}, "p_act": (alarm.get("alpha") or {}).get("act"),
            "p_watch": (alarm.get("alpha") or {}).get("watch")},
        "alarm_rule": alarm_rule,
        "estimated_f1": estimated,
    }


def live_traffic(conn, cfg, limit=TRAFFIC_WINDOWS):
    """The last `limit` windows online monitoring (monitoring.py) recorded, summed; None before it has any."""
    try:
        found = traffic.recent_windows(conn, cfg, limit=limit)
    except (AttributeError, KeyError, ValueError, history.Error) as exc:
        logger.warning("status page: live traffic unreadable: %s", exc)
        return None
    return traffic_summary(found, cfg.psi_watch, cfg.psi_act, traffic.alarm_thresholds(cfg))


def links(cfg):
    """The report, the API returns, the model card and the API description, each with whether it exists."""
    out = []
    for name, (folder, _) in FILES.items():
        path = getattr(cfg, folder) / name
        try:
            st = path.stat()
        except OSError:
            out.append({"name": name, "href": f"files/{name}", "available": False, "at": None})
            continue
        out.append({"name": name, "href": f"files/{name}", "available": True, "at": _iso(st.st_mtime),
                    "bytes": st.st_size})
    out.append({"name": "openapi.json", "href": "openapi.json", "available": True, "at": None})
    return out


def gather(cfg, now=None) -> dict:
    """Everything the status page shows, as plain data (see the module docstring)."""
    now = datetime.now(timezone.utc) if now is None else now
    model, model_note = deployed_model(cfg)
    facts = {
        "now": now.isoformat(timespec="seconds"),
        "model": model, "model_note": model_note,
        "slices": slice_flags(cfg) if model else None,
        "cycles": [], "last_cycle": None, "last_check": last_check(cfg),
        "f1_trend": [], "psi_trend": [], "traffic": None,
        "schedule": schedule.in_force(cfg.path, cfg.log_folder_path, now),
        # the cycle's feature-drift rule: PSI at least this AND a significant KS test
        "feature_drift_rule": {"psi_threshold": cfg.feature_drift_psi_threshold, "level": cfg.drift_significance_level},
        "links": links(cfg),
        "history": "absent",
    }
    check, conn_finished = facts["last_check"], None
    try:
        conn = history.connect_ro(cfg.history)  # a GET never creates the database
    except history.Error as exc:
        logger.warning("status page: cannot open %s: %s", cfg.history, exc)
        conn = None
    if conn is None:
        return facts
    try:
        tables = history.tables(conn)
        facts["history"] = "present"
        if "cycles" in tables:
            facts["cycles"] = recent_cycles(conn)
            facts["last_cycle"] = facts["cycles"][0] if facts["cycles"] else None
            row = conn.execute("SELECT finished_at, started_at FROM cycles ORDER BY id DESC LIMIT 1").fetchone()
            conn_finished = (row[0] or row[1]) if row else None
            facts["psi_trend"] = psi_per_cycle(conn)
        if "deployments" in tables:
            facts["f1_trend"] = f1_per_deployment(conn)
        facts["traffic"] = live_traffic(conn, cfg)
        facts["summary"] = summary.page_summary(conn, facts)  # the report's summary, shorter (summary.SHORT)
    except history.Error as exc:
        logger.warning("status page: reading %s failed: %s", cfg.history, exc)
        facts["history"] = f"unreadable: {exc}"
    finally:
        conn.close()
    if check and facts["last_cycle"]:
        # Show the logged check only when it is newer than the last recorded cycle (the log's
        # times are whole seconds, the database's are not: the cycle's own line is never newer).
        last = conn_finished
        if _epoch(check["at"]) is None or last is None or _epoch(check["at"]) <= last:
            facts["last_check"] = None
    return facts


# ---------------------------------------------------------------------------------------------
# Presentation: charts and wording, from the facts
# ---------------------------------------------------------------------------------------------

def line_chart(series, y_max=None, thresholds=(), width=640, height=220):
    """Geometry of an SVG line chart: series is [(name, [(label, value or None), ...])], same labels.

    Returns the view box, one polyline and its points per series, y ticks, the first and last
    x labels and horizontal threshold lines, all in SVG user units; None when nothing to draw.
    """
    values = [v for _, pts in series for _, v in pts if v is not None]
    if not values:
        return None
    left, right, top, bottom = 58, 16, 12, 34
    n = max(len(pts) for _, pts in series)
    top_value = y_max if y_max is not None else max(max(values), *(t for t, _ in thresholds)) * 1.15 or 1.0
    step = _nice_step(top_value / 4)
    top_value = math.ceil(top_value / step - 1e-9) * step
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i):
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v):
        return top + plot_h * (1 - min(v, top_value) / top_value)

    lines = []
    for k, (name, pts) in enumerate(series):
        coords = [(round(x(i), 1), round(y(v), 1), label, v) for i, (label, v) in enumerate(pts) if v is not None]
        lines.append({"name": name, "index": k, "points": " ".join(f"{a},{b}" for a, b, _, _ in coords),
                      "dots": [{"x": a, "y": b, "label": lab, "value": v} for a, b, lab, v in coords]})
    labels = series[0][1]
    ticks = [{"y": round(y(t * step), 1), "text": _tick_text(t * step, step)}
             for t in range(int(round(top_value / step)) + 1)]
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top,
        "bottom": top + plot_h, "lines": lines, "ticks": ticks,
        "first": {"x": round(x(0), 1), "text": labels[0][0]} if labels else None,
        "last": {"x": round(x(len(labels) - 1), 1), "text": labels[-1][0]} if len(labels) > 1 else None,
        "thresholds": [{"y": round(y(t), 1), "text": text} for t, text in thresholds if t <= top_value],
    }


def _nice_step(raw):
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _tick_text(value, step):
    text = f"{step:g}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{decimals}f}"


def upper_first(text):
    """A sentence of the facts (they begin in lower case, as `status.py --check` prints them) as the page starts it."""
    return text[:1].upper() + text[1:]


def view(facts) -> dict:
    """The template's context: the facts plus the charts drawn from them."""
    f1 = facts["f1_trend"]
    f1_chart = line_chart([("test F1", [(f"v{p['version']}", p["f1"]) for p in f1])], y_max=1.0) if f1 else None
    psi = facts["psi_trend"]
    psi_chart = None
    if psi:
        names = [n for n in FEATURES if any(n in p["psi"] for p in psi)]
        names += sorted({n for p in psi for n in p["psi"]} - set(names))
        line = facts["feature_drift_rule"]["psi_threshold"]
        psi_chart = line_chart([(n, [(f"cycle {p['cycle']}", p["psi"].get(n)) for p in psi]) for n in names],
                               thresholds=((line, f"PSI {line:g} (with KS)"),))
    return {"facts": facts, "f1_chart": f1_chart, "psi_chart": psi_chart, "refresh": REFRESH_SECONDS}


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------

def bearer_from_browser(req):
    """The Authorization value a browser stands for on this blueprint's routes (the cookie or ?token=)."""
    if req.blueprint != BLUEPRINT:
        return None
    token = req.args.get("token") or req.cookies.get(COOKIE)
    return f"Bearer {token}" if token else None


def _service():
    return current_app.extensions["dras"]


@bp.after_request
def headers(resp):
    # Nothing from outside, ever: the page and its files may load only from this server.
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:;"
                                               " form-action 'none'; base-uri 'none'; frame-ancestors 'self'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/")
def page():
    service = _service()
    token = request.args.get("token")
    if token is not None:
        # Dropped from the address bar; kept in a cookie only if it is the token (the request may have been
        # let in by its Authorization header, or need no token) and only as characters a cookie may hold.
        right = bool(service.token) and hmac.compare_digest(token.encode(), service.token.encode())
        if not right or COOKIE_VALUE.fullmatch(token):
            resp = redirect(request.script_root + "/", code=303)
            if right:
                resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path=request.script_root or "/",
                                secure=request.is_secure)
            return resp
        # The right token, but one no cookie can hold: the page is served here, at this address.
    started = time.perf_counter()
    facts = gather(service.cfg)
    html = render_template("status.html", **view(facts), ago=ago, shown_time=shown_time,
                           upper_first=upper_first)
    logger.debug("status page in %.1f ms", (time.perf_counter() - started) * 1000)
    return html


@bp.get("/files/<name>")
def files(name):
    if name not in FILES:
        abort(404)
    folder, mimetype = FILES[name]
    cfg = _service().cfg
    path = getattr(cfg, folder) / name
    if not path.is_file():
        return jsonify(error=f"{name} has not been produced yet"), 404
    return send_file(path, mimetype=mimetype, max_age=0, conditional=True)


# ---------------------------------------------------------------------------------------------
# The command: is it running?
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    """`python status.py --check [--config PATH] [--url URL]`: one line per fact (health.py); exit 0 when all
    is well, 1 when not, 2 for a bad config or option."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Say whether the system is running: its schedule, last cycle, "
                                                 "API, serving model and quarantine (the page itself is the API's /).")
    parser.add_argument("--check", action="store_true", required=True, help="print the facts, one line each")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--url", help="the API's address (default: the config's api_url)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    facts = health.check(cfg, url=args.url)
    sys.stdout.write(health.render(facts))
    return 0 if health.healthy(facts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
