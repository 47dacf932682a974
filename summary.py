"""The summary a manager reads in ten seconds: what happened since the last report, the serving
model's health in words, and what, if anything, a person should do now.

The report opens with it (reporting.report_data gathers, reportpdf renders); the status page
heads with its shorter form (status.gather). Plain data and sentences, from the history database:

    last_report(conn)                 when the last report was written (its "report" timing), or None
    previous_deployment(conn, version)  the deployment event before the serving version's, and its test scores
    period(conn, since, current)      what the history recorded since `since`: deliveries ingested and
                                      quarantined, cycles and their decisions, deployments; the last
                                      drift check and the last cycle
    report_live(live), page_live(traffic)  live traffic, from the report's and the page's facts, in one shape
    summarize(period, serving, previous, live)  the sentences: happened, scores, drift, live, todo
    SHORT                             the sentences the status page shows

"What to do" is the last drift check's own (the cycle's `promotion.action`, cycle.describe's
"what to do"), while no deployment has come after it; with a failed last cycle or files
quarantined in the period, those come first.
"""
import json
from datetime import datetime, timezone

import history
from cycle import FAILED, CycleRecord, known

ORDER = ("happened", "scores", "drift", "live", "todo")
SHORT = ("happened", "scores", "live", "todo")  # the status page: its "Last cycle" shows the drift check
RECENT_CYCLES = 50  # the last drift check is looked for among this many cycles
LISTED_DEPLOYMENTS = 3  # more in the period are counted, the last one named
ACTIONS = {"deploy": "version {} deployed", "rollback": "rolled back to version {}", "restore": "version {} restored"}


def change(current, previous, digits=4) -> str:
    """'up', 'down' or 'same' for two numbers compared as shown (rounded to `digits`); 'first run' without a previous."""
    if current is None or previous is None:
        return "first run" if previous is None else "n/a"
    a, b = round(float(current), digits), round(float(previous), digits)
    return "up" if a > b else "down" if a < b else "same"


def stamp(epoch) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM UTC'."""
    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _epoch(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        t = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def _rows(conn, sql, args=()):
    """The rows of a query; none when a table is missing (a history database older than its schema)."""
    try:
        return conn.execute(sql, args).fetchall()
    except history.OperationalError:
        return []


# ---------------------------------------------------------------------------------------------
# Facts from the history database
# ---------------------------------------------------------------------------------------------

def last_report(conn, skip=0):
    """When the last report was written (epoch seconds of its "report" timing; `skip` newer ones left out), or None."""
    found = _rows(conn, "SELECT at FROM step_timings WHERE step = 'report' ORDER BY id DESC LIMIT 1 OFFSET ?", (skip,))
    return found[0][0] if found else None


def previous_deployment(conn, version):
    """(the deployment event before the serving `version`'s last one, its test scores), or (None, None).

    The serving version's event is its last one (a rollback records the version it serves again);
    the scores are the latest test scores of that event's model, or its F1 as deployed."""
    deployments = [dict(r) for r in _rows(conn, "SELECT at, version, action, model_sha256, f1 FROM deployments"
                                                " ORDER BY id")]
    mine = [i for i, d in enumerate(deployments) if d["version"] == version]
    if not mine or mine[-1] == 0:
        return None, None
    previous = deployments[mine[-1] - 1]
    row = _rows(conn, "SELECT f1, precision, recall, roc_auc, rows FROM scores WHERE dataset = 'test'"
                      " AND model_sha256 = ? ORDER BY id DESC LIMIT 1", (previous["model_sha256"],))
    scores = dict(row[0]) if row else {"f1": previous["f1"], "precision": None, "recall": None, "roc_auc": None,
                                       "rows": None}
    return previous, scores


def _record(text):
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    return CycleRecord.from_dict(data) if isinstance(data, dict) else None


def _checked(rec):
    return isinstance(known(rec.score_drift), dict) or isinstance(known(rec.feature_drift), dict)


def period(conn, since=None, current=None) -> dict:
    """What the history recorded after `since` (epoch seconds; None: all of it), as plain data.

    `current` is the CycleRecord of a cycle still running (the one writing this report): its
    decision and drift check count although its row is not finished yet."""
    after = float("-inf") if since is None else since
    current_id = known(current.cycle_id) if current is not None else None
    # CAST: PostgreSQL's sum of a bigint is a numeric (a Decimal in Python), SQLite's an integer
    ingested = _rows(conn, "SELECT count(*), CAST(coalesce(sum(rows), 0) AS BIGINT) FROM ingested_files WHERE at > ?",
                     (after,))
    decisions = {}
    for decision, n in _rows(conn, "SELECT coalesce(decision, 'unfinished'), count(*) FROM cycles"
                                   " WHERE started_at > ? AND id IS NOT ? GROUP BY 1 ORDER BY min(id)",
                             (after, current_id)):
        decisions[decision] = n
    if current is not None and current.decision:
        decisions[current.decision] = decisions.get(current.decision, 0) + 1
    recent = [(r[0], r[1], _record(r[2])) for r in _rows(
        conn, "SELECT id, started_at, record FROM cycles WHERE id IS NOT ? ORDER BY id DESC LIMIT ?",
        (current_id, RECENT_CYCLES))]
    if current is not None:
        recent.insert(0, (current_id, _epoch(known(current.started_at)), current))
    recent = [(i, at, rec) for i, at, rec in recent if rec is not None]
    check = next(((at, rec) for _, at, rec in recent if _checked(rec)), None)
    last = recent[0][2] if recent else None
    deployed = _rows(conn, "SELECT at, version, action FROM deployments ORDER BY id")
    return {
        "since": since,
        "ingested": {"files": ingested[0][0], "rows": ingested[0][1]} if ingested else {"files": 0, "rows": 0},
        "quarantined": [{"name": r[0], "reason": r[1]} for r in _rows(
            conn, "SELECT name, reason FROM quarantined_files WHERE at > ? ORDER BY id", (after,))],
        "decisions": decisions,
        "deployments": [{"at": r[0], "version": r[1], "action": r[2]} for r in deployed if r[0] > after],
        "check": None if check is None else {"at": check[0], "record": check[1],
                                             "deployed_since": any(r[0] > (check[0] or 0) for r in deployed)},
        "last_failed": None if last is None or last.decision != FAILED else
        {"at": _epoch(known(last.started_at)), "errors": [str(e) for e in last.errors or []]},
    }


def report_live(live) -> dict:
    """The report's live traffic (traffic.report_data) in the summary's shape."""
    if not live or not live.get("windows"):
        return {"scope": "since the report of " + stamp(live["since"]) if live and live.get("since") else "yet",
                "rows": 0}
    judged, crossing = live.get("judged", 0), live["windows_crossing"]
    alarm = (f"the drift alarm judged {judged} look{'s' if judged != 1 else ''}: {crossing['act']} at act, "
             f"{crossing['watch']} at watch" if judged else "the drift alarm has judged no window yet")
    est = live.get("estimated_f1") or {}
    return {"scope": "since the report of " + stamp(live["since"]) if live.get("since") else "so far",
            "rows": sum(d["rows"] for d in live["days"]), "windows": len(live["windows"]), "alarm": alarm,
            "estimated": est if est.get("value") is not None else None}


def page_live(traffic) -> dict:
    """The status page's live traffic (status.traffic_summary: the latest windows) in the summary's shape."""
    if not traffic or not traffic.get("rows"):
        return {"scope": "yet", "rows": 0}
    alarm = traffic.get("alarm")
    est = traffic.get("estimated_f1") or {}
    since = _epoch(traffic.get("since"))
    return {"scope": f"since {stamp(since)}" if since is not None else "recently", "rows": traffic["rows"], "windows": traffic["windows"],
            "alarm": f"the latest look the drift alarm judged is at {alarm['level']}" if alarm
            else "the drift alarm has judged no window yet",
            "estimated": est if est.get("value") is not None else None}


# ---------------------------------------------------------------------------------------------
# The sentences
# ---------------------------------------------------------------------------------------------

def _count(n, one, many=None):
    return f"{n:,d} {one if n == 1 else many or one + 's'}"


def _happened(p):
    scope = f"Since the report of {stamp(p['since'])}" if p["since"] is not None else "Since the history began"
    files, bad = p["ingested"]["files"], len(p["quarantined"])
    if files or bad:
        deliveries = (f"{_count(files, 'delivery', 'deliveries')} ingested ({_count(p['ingested']['rows'], 'row')})"
                      if files else "no delivery ingested") + (f", {bad:,d} quarantined" if bad else ", none quarantined")
    else:
        deliveries = "no delivery ingested or quarantined"
    d = p["decisions"]
    if d:
        words = [f'"{k}"' + (f" ({n:,d})" if len(d) > 1 else "") for k, n in d.items()]
        cycles = (f"{_count(sum(d.values()), 'cycle')} decided "
                  + (", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]))
    else:
        cycles = "no cycle with new data"
    said = [ACTIONS.get(x["action"], "version {} " + str(x["action"])).format(x["version"]) for x in p["deployments"]]
    if len(said) > LISTED_DEPLOYMENTS:
        deps = f"{_count(len(said), 'deployment')}, the last: {said[-1]}"
    else:
        deps = ", then ".join(said) or "no deployment"
    return f"{scope}: {deliveries}; {cycles}; {deps}."


def _scores(serving, previous):
    if serving is None or serving.get("version") is None:
        return "No model is deployed yet: the first monitoring cycle with data trains and deploys one."
    f1 = serving.get("f1")
    head = f"Version {serving['version']} serves" + (f": test F1 {f1:.4f}" if f1 is not None else "")
    if previous is None or previous.get("f1") is None or f1 is None:
        return head + "; the first deployment in the history, nothing to compare with."
    word = {"up": "up from", "down": "down from", "same": "the same as"}[change(f1, previous["f1"])]
    return f"{head}, {word} {previous['f1']:.4f} for version {previous['version']} (the previous deployment)."


def _drift(check):
    if check is None:
        return "Drift: no check has run yet; the monitoring cycle checks every new delivery."
    rec = check["record"]
    sd, fd = known(rec.score_drift), known(rec.feature_drift)
    parts = []
    if isinstance(sd, dict):
        verdict = {True: "score drift", False: "no score drift"}.get(sd.get("drift"), "not enough evidence of score drift")
        if sd.get("new_f1") is not None and sd.get("deployed_f1") is not None:
            # the sequential test's rows are those delivered since the deployment; the others', the delivery's
            n = sd.get("new_rows") if sd.get("new_rows") is not None else (sd.get("evidence") or {}).get("rows")
            rows = f" on {n:,d} new rows" if isinstance(n, int) else ""
            verdict += f" (F1 {sd['new_f1']:.2f}{rows} against {sd['deployed_f1']:.2f} for the serving model)"
        parts.append(verdict)
    if isinstance(fd, dict):
        drifted = fd.get("drifted") or []
        parts.append(f"feature drift in {', '.join(drifted)}" if drifted else "no feature drift")
    when = f" ({stamp(check['at'])})" if check["at"] is not None else ""
    return f"Drift: the last check{when} found {' and '.join(parts)}; decided \"{rec.decision}\"."


def _live(live, serving):
    if not live["rows"]:
        return f"Live traffic: none recorded {live['scope']}."
    out = f"Live traffic {live['scope']}: {_count(live['rows'], 'row')} predicted in {_count(live['windows'], 'window')}; " \
          + live["alarm"]
    est, f1 = live.get("estimated"), (serving or {}).get("f1")
    if est:
        low, high = est["interval"]
        out += (f"; estimated F1 {est['value']:.3f} (95% interval {low:.3f} to {high:.3f})"
                + (f" beside the test F1 {f1:.3f}" if f1 is not None else ""))
    return out + "."


def _todo(p):
    items = []
    failed = p["last_failed"]
    if failed:
        when = f" ({stamp(failed['at'])})" if failed["at"] is not None else ""
        items.append(f"look into the last cycle's failure{when}: {'; '.join(failed['errors']) or 'no error recorded'}"
                     "; the next cycle tries again on schedule")
    if p["quarantined"]:
        names = "; ".join(f"{q['name']}: {q['reason']}" for q in p["quarantined"])
        one = len(p["quarantined"]) == 1
        items.append(f"correct the quarantined file{'' if one else 's'} ({names}) and deliver {'it' if one else 'them'} "
                     "again")
    check = p["check"]
    action = (known(check["record"].promotion) or {}).get("action") if check else None
    if action and not check["deployed_since"]:
        items.append(action)
    if not items:
        return "What to do: nothing."
    if len(items) == 1:
        return f"What to do: {items[0]}."
    return "What to do: " + " ".join(f"({i}) {item}." for i, item in enumerate(items, 1))


def summarize(p, serving, previous, live) -> dict:
    """The summary's sentences, by ORDER's names: `p` is period()'s, `serving` {version, f1} (or None),
    `previous` {version, f1} (or None), `live` report_live's or page_live's."""
    return {"happened": _happened(p), "scores": _scores(serving, previous), "drift": _drift(p["check"]),
            "live": _live(live, serving), "todo": _todo(p)}


def page_summary(conn, facts) -> list:
    """The status page's summary (SHORT's sentences) from status.gather's facts and the open history database."""
    model = facts.get("model") or None
    previous, scores = previous_deployment(conn, model["version"]) if model else (None, None)
    said = summarize(period(conn, last_report(conn)), model,
                     {"version": previous["version"], "f1": scores["f1"]} if previous else None,
                     page_live(facts.get("traffic")))
    return [said[k] for k in SHORT]
