"""Is it running? The facts `python status.py --check` prints, one line each, and its verdict.

    check(cfg, now=None, url=None, timeout=API_TIMEOUT)   the facts, as [Fact(level, what, text)]
    render(facts)                                          the screen: one line per fact, then the verdict
    healthy(facts)                                         whether all is well (the exit code 0)

The facts: the schedule in force (schedule.in_force: the crontab line, a live daemon and its last
heartbeat, or none), the last cycle (when, its decision, late when older than two schedule periods),
the API (does `api_url`/health answer, with which model version), the serving model (its hash
checked against its manifest and its pickle against the allow-list, by deployment.load_version) and
the files quarantined since the last cycle began.

Levels: `ok`; `note`, beside a schedule in force, what a person may want to know (a dead daemon's
record); `warn`, it runs but a person should look (no cycle yet, a late one, quarantined files, a
degraded API); `FAIL`, a part is down (no schedule, a failed cycle, the API silent, the serving
model refused). All is well when every fact is `ok` or `note`.
"""
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone

import deployment
import history
import modelfile
import schedule
from cycle import FAILED, INTERRUPTED, LOG_NAME, last_logged
from timetext import ago, epoch, shown_time, span

API_TIMEOUT = 2.0  # seconds the API's /health may take before it counts as not answering
SHOWN_FILES = 3  # quarantined files named on the line; the rest are counted
GOOD = ("ok", "note")


@dataclass(frozen=True)
class Fact:
    level: str  # ok, note, warn or FAIL
    what: str
    text: str


def _when(at, now):
    return f"{shown_time(at)} ({ago(at, now)})"


def schedule_facts(cfg, now):
    """The schedule in force, one fact per schedule (or one FAIL: none), and the notes beside it; with the
    shortest period of those in force (None when none, or none has a period)."""
    found = schedule.in_force(cfg.path, cfg.log_folder_path, now)
    if not found["schedules"]:
        return [Fact("FAIL", "schedule", found["none"])], None
    facts = []
    for entry in found["schedules"]:
        text = entry["text"] + (f"; next run {_when(entry['next'], now)}" if entry["next"] else "")
        facts.append(Fact("ok", "schedule", text))
    facts += [Fact("note", "schedule", note) for note in found["notes"]]
    periods = [e["period_seconds"] for e in found["schedules"] if e["period_seconds"]]
    return facts, min(periods, default=None)


def _rows(cfg, sql, args=()):
    """The rows of a read-only query of the history database; none when it, or the table, does not exist yet."""
    try:
        conn = history.connect_ro(cfg.history)
    except history.Error:
        return []
    if conn is None:
        return []
    try:
        return conn.execute(sql, args).fetchall()
    except history.Error:
        return []
    finally:
        conn.close()


def last_cycle(cfg):
    """The newest finished cycle, from the cycle log's last line or the history database, whichever is newer:
    {started_at, finished_at, decision, errors} (times as ISO text or epoch), or None when none has run."""
    found = []
    logged = last_logged(cfg.log_folder_path / LOG_NAME)
    if logged and logged.get("decision"):
        found.append({k: logged.get(k) for k in ("started_at", "finished_at", "decision")}
                     | {"errors": logged.get("errors") or []})
    for row in _rows(cfg, "SELECT started_at, finished_at, decision, record FROM cycles"
                          " WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"):
        try:
            errors = json.loads(row["record"]).get("errors") or []
        except (TypeError, ValueError, AttributeError):
            errors = []
        found.append({"started_at": row["started_at"], "finished_at": row["finished_at"],
                      "decision": row["decision"], "errors": errors})
    return max(found, key=lambda c: epoch(c["started_at"]) or 0.0, default=None)


def cycle_fact(last, period, now):
    """The last cycle's fact: FAIL when it failed, warn when none ran, it was interrupted or it is late."""
    if last is None:
        return Fact("warn", "last cycle", "none has run yet")
    at = last["finished_at"] or last["started_at"]
    text = f"{_when(at, now)}: {last['decision']}"
    if last["errors"]:
        text += f" ({'; '.join(str(e) for e in last['errors'])})"
    if last["decision"] == FAILED or last["errors"]:
        return Fact("FAIL", "last cycle", text)
    if period is not None and epoch(now) - (epoch(at) or 0.0) > 2 * period:
        return Fact("warn", "last cycle", f"{text}; late: older than two schedule periods ({span(2 * period)})")
    return Fact("warn" if last["decision"] == INTERRUPTED else "ok", "last cycle", text)


def _get_health(url, timeout):
    """(HTTP status, JSON body or None) of GET url/health; raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    return status, body if isinstance(body, dict) else None


def api_fact(url, deployed_version, timeout=API_TIMEOUT):
    """Whether the API at `url` answers /health within `timeout`, how, and with which model version."""
    try:
        status, body = _get_health(url, timeout)
    except TimeoutError:
        return Fact("FAIL", "API", f"{url} does not answer within {timeout:g} s")
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        return Fact("FAIL", "API", f"{url} does not answer ({str(reason).lower()})")
    except OSError as exc:
        return Fact("FAIL", "API", f"{url} does not answer ({(exc.strerror or str(exc)).lower()})")
    if body is None or "status" not in body:
        return Fact("FAIL", "API", f"{url}/health answers HTTP {status}, not with the API's health")
    version = body.get("model_version")
    serving = f"serving version {version}" if version is not None else "serving no model"
    text = f"{url} answers {body['status']}, {serving}"
    if body.get("error"):
        text += f": {body['error']}"
    if body["status"] == "ok" and deployed_version is not None and version != deployed_version:
        return Fact("FAIL", "API", f"{text}, but version {deployed_version} is deployed")
    if body["status"] == "degraded":
        drift = body.get("live_drift")
        return Fact("warn", "API", text + (f" (live input drift at the {drift.get('level')} level)"
                                           if isinstance(drift, dict) else ""))
    return Fact("ok" if body["status"] == "ok" else "FAIL", "API", text)


def model_fact(prod):
    """The serving version read as every reader reads it (deployment.load_version: the hash against the
    manifest, the pickle against the allow-list); returns (fact, its version or None)."""
    vdir = deployment.current_dir(prod)
    if vdir is None:
        return Fact("FAIL", "serving model", f"no model is deployed yet (nothing in {prod})"), None
    try:
        _, manifest = deployment.load_version(vdir, loads=modelfile.load_fitted)
    except deployment.DeploymentError as exc:
        return Fact("FAIL", "serving model", str(exc)), None
    except OSError as exc:
        return Fact("FAIL", "serving model", f"{vdir} cannot be read: {exc.strerror}"), None
    digest, version = manifest["files"]["trainedmodel.pkl"]["sha256"], manifest.get("version")
    return Fact("ok", "serving model", f"version {version}: trainedmodel.pkl matches its manifest (sha256 "
                                      f"{digest[:12]}) and the model allow-list"), version


def quarantine_fact(cfg, last, now):
    """The files quarantined since the last cycle began (all of them before any cycle)."""
    since = epoch(last["started_at"]) if last else None
    rows = _rows(cfg, "SELECT name, reason FROM quarantined_files WHERE at >= ? ORDER BY id", (since or 0.0,))
    when = "since the last cycle began" if since is not None else "yet"
    if not rows:
        return Fact("ok", "quarantine", f"no file quarantined {when}")
    named = "; ".join(f"{r['name']} ({r['reason']})" for r in rows[:SHOWN_FILES])
    more = f"; and {len(rows) - SHOWN_FILES} more" if len(rows) > SHOWN_FILES else ""
    files = "1 file" if len(rows) == 1 else f"{len(rows)} files"
    return Fact("warn", "quarantine", f"{files} quarantined {when}, in {cfg.quarantine_folder_path}: {named}{more}")


def check(cfg, now=None, url=None, timeout=API_TIMEOUT) -> list:
    """Every fact of `status.py --check`, in the order shown."""
    now = datetime.now(timezone.utc) if now is None else now
    facts, period = schedule_facts(cfg, now)
    last = last_cycle(cfg)
    facts.append(cycle_fact(last, period, now))
    model, version = model_fact(cfg.prod_deployment_path)
    facts.append(api_fact(url or cfg.api_url, version, timeout))
    facts.append(model)
    facts.append(quarantine_fact(cfg, last, now))
    return facts


def healthy(facts) -> bool:
    """All is well: every fact is ok or a note."""
    return all(f.level in GOOD for f in facts)


def render(facts) -> str:
    """One line per fact (its level, what, the words), then `all is well` or what to look at."""
    lines = [f"{f.level:<5} {f.what}: {f.text}" for f in facts]
    if healthy(facts):
        lines.append("all is well")
    else:
        lines.append("not well: look at the " + ", the ".join(dict.fromkeys(f.what for f in facts
                                                                          if f.level not in GOOD)))
    return "\n".join(lines) + "\n"
