"""The status page: its facts against the recorded ones, its routes, and the page in a real browser."""
import json
import os
import pwd
import re
import struct
import subprocess
import sys
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from PIL import Image
from conftest import REPO, make_config
import helpers
from helpers import free_port
from status_world import T0, fill_history

import deployment
import history
import screenshots
import status
from app import TOKEN_ENV, create_app
from settings import FEATURES, load_config

NOW = datetime.fromtimestamp(T0 + 31 * 600, timezone.utc)
BACKGROUND = (0xF3, 0xF4, 0xF6)  # the page's --bg


@pytest.fixture(scope="module")
def running(shared):
    """An install that has been running: the module's deployed world (its manifest has the audit) and 30 cycles."""
    with closing(history.connect(shared.history)) as conn:
        fill_history(conn, 30)
    return shared


@pytest.fixture
def fresh(tmp_path):
    """A fresh install: a config and its data folders, nothing ingested, nothing deployed."""
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    return load_config(make_config(tmp_path))


def sha256_of(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(cfg):
    return deployment.current_manifest(cfg.prod_deployment_path)


# ---------------------------------------------------------------------------------------------
# The facts
# ---------------------------------------------------------------------------------------------

def test_fresh_install_facts(fresh, tmp_path, monkeypatch):
    for key, value in helpers.fake_cron(tmp_path).items():  # an empty crontab
        monkeypatch.setenv(key, value)
    facts = status.gather(fresh, now=NOW)
    assert facts == {
        "now": "2026-11-18T16:16:40+00:00", "model": None, "model_note": "no model is deployed yet",
        "slices": None, "cycles": [], "last_cycle": None, "last_check": None, "f1_trend": [],
        "psi_trend": [], "traffic": None, "history": "absent",
        "schedule": {"schedules": [], "next": None, "notes": [],
                     "none": f"no schedule installed: the crontab of {pwd.getpwuid(os.getuid()).pw_name} has no "
                             f"monitoring cycle for {fresh.path}; no daemon runs (fullprocess.py --daemon)"},
        "feature_drift_rule": {"psi_threshold": 0.2, "level": 0.05},
        "links": [{"name": "report.pdf", "href": "files/report.pdf", "available": False, "at": None},
                  {"name": "apireturns.txt", "href": "files/apireturns.txt", "available": False, "at": None},
                  {"name": "modelcard.md", "href": "files/modelcard.md", "available": False, "at": None},
                  {"name": "openapi.json", "href": "openapi.json", "available": True, "at": None}],
    }
    assert not fresh.history_db.exists()  # reading never creates the database


def test_the_deployed_model_as_its_manifest_records_it(running):
    m = manifest(running)
    model, note = status.deployed_model(running)
    cv = m["audit"]["cross_validation"]
    assert note is None
    assert model == {
        "version": 1, "deployed_at": m["deployed_at"], "f1": m["metrics"]["f1"],
        "precision": m["metrics"]["precision"], "recall": m["metrics"]["recall"], "test_rows": 40,
        "training_rows": m["training"]["training_rows"],
        "lineage": [{"name": "a.csv", "sha256": sha256_of(running.input_folder_path / "a.csv")[:12]}],
        "cross_validation": {"folds": 5, "note": None, "f1_mean": cv["f1"]["mean"], "f1_std": cv["f1"]["std"]},
        "drift_test": None, "cycle": None,
    }
    slices = status.slice_flags(running)
    recorded = m["audit"]["slices"]
    assert [(s["label"], s["rows"], s["f1"], s["flag"]) for s in slices["rows"]] == \
        [(s["label"], s["rows"], s["f1"], s["flag"]) for s in recorded["slices"]]
    assert slices["flagged"] == len(recorded["below_overall"]) + len(recorded["not_judged"])
    assert slices["overall_f1"] == recorded["overall"]["f1"]


def test_a_manifest_without_the_audit_keys(fresh):
    prod = fresh.prod_deployment_path
    (prod / "versions" / "v0001").mkdir(parents=True)
    (prod / "versions" / "v0001" / "manifest.json").write_text(json.dumps(
        {"version": 1, "deployed_at": "2026-11-01T10:00:00+00:00", "metrics": {"f1": 0.5}, "files": {}}))
    os.symlink("versions/v0001", prod / "current")
    model, _ = status.deployed_model(fresh)
    assert model["f1"] == 0.5 and model["cross_validation"] is None and model["precision"] is None
    assert status.slice_flags(fresh) is None
    html = create_app(fresh).test_client().get("/").get_data(as_text=True)
    assert "no data yet: not recorded for this version" in html
    assert "No data yet: the deployed model has no slice audit recorded." in html


def test_an_unreadable_manifest_is_said_in_words(fresh):
    prod = fresh.prod_deployment_path
    (prod / "versions" / "v0001").mkdir(parents=True)
    (prod / "versions" / "v0001" / "manifest.json").write_text("{not json")
    os.symlink("versions/v0001", prod / "current")
    model, note = status.deployed_model(fresh)
    assert model is None and note.startswith("the deployed version's manifest cannot be read: unreadable manifest in")
    resp = create_app(fresh).test_client().get("/")
    assert resp.status_code == 200
    assert "The deployed version&#39;s manifest cannot be read" in resp.get_data(as_text=True)


def test_the_last_cycles(running):
    facts = status.gather(running, now=NOW)
    cycles = facts["cycles"]
    assert [c["id"] for c in cycles] == list(range(30, 10, -1))
    assert facts["last_cycle"] is cycles[0]
    assert cycles[0] == {
        "id": 30, "at": "2026-11-18T16:06:40+00:00", "finished": "2026-11-18T16:06:40+00:00", "decision": "no drift", "new_files": 2,
        "new_file_names": ["delivery30.csv", "bad.csv"], "quarantined": 1, "drift": "no drift (raw test)",
        "deployed": None, "serving": 5, "errors": [], "seconds": 0.42,
        "psi": {"lastmonth_activity": 0.02 + 0.015 * 4, "lastyear_activity": 0.04, "number_of_employees": 0.01 + 0.004 * 4},
        "evidence": ["Score drift (raw test): new F1 0.8300 is not lower than the deployed 0.7900",
                     "Feature drift: none (lastmonth_activity PSI 0.080; lastyear_activity PSI 0.040; "
                     "number_of_employees PSI 0.026)",
                     "Quarantined bad.csv: column 'exited' is missing"],
    }
    c28 = next(c for c in cycles if c["id"] == 28)
    assert (c28["decision"], c28["drift"], c28["deployed"], c28["quarantined"]) == \
        ("drift: redeployed", "drift (raw test)", 5, 0)
    assert [p["version"] for p in facts["f1_trend"]] == [1, 1, 2, 3, 4, 5]  # build_world's deploy, then ours
    assert [p["f1"] for p in facts["f1_trend"][2:]] == [0.70 + 0.2 * ((i * 37) % 11) / 10 for i in (7, 14, 21, 28)]
    assert [p["cycle"] for p in facts["psi_trend"]] == list(range(1, 31))
    assert facts["psi_trend"][12]["psi"] == {"lastmonth_activity": 0.02 + 0.015 * 0, "lastyear_activity": 0.04 + 0.01 * 3,
                                             "number_of_employees": 0.01}


def test_a_broken_cycle_record_shows_its_decision(fresh):
    with closing(history.connect(fresh.history)) as conn:
        conn.execute("INSERT INTO cycles (started_at, finished_at, decision, record) VALUES (?, ?, ?, ?)",
                     (T0, T0 + 1, "failed", "{not json"))
        conn.execute("INSERT INTO cycles (started_at, record) VALUES (?, ?)", (T0 + 60, "[]"))
    facts = status.gather(fresh, now=NOW)
    assert [(c["id"], c["decision"], c["new_files"], c["drift"], c["evidence"]) for c in facts["cycles"]] == \
        [(2, "unfinished", 0, None, []), (1, "failed", 0, None, [])]
    assert facts["psi_trend"] == []
    assert create_app(fresh).test_client().get("/").status_code == 200


def test_a_newer_logged_check_shows_beside_the_last_recorded_cycle(running, tmp_path):
    cfg = load_config(make_config(tmp_path, output_folder_path=str(running.output_folder_path),
                                  prod_deployment_path=str(running.prod_deployment_path)))
    cfg.log_folder_path.mkdir()
    lines = [{"decision": "drift: redeployed", "finished_at": "2026-11-18T16:06:40+00:00"},
             {"decision": "no new data", "finished_at": "2026-11-18T16:16:00+00:00"}]
    (cfg.log_folder_path / "cycles.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{torn")
    facts = status.gather(cfg, now=NOW)
    assert facts["last_check"] == {"at": "2026-11-18T16:16:00+00:00", "decision": "no new data"}
    (cfg.log_folder_path / "cycles.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert status.gather(cfg, now=NOW)["last_check"] is None  # not newer than the recorded cycle


# Two windows as traffic.recent_windows summarizes them (branch `monitoring`), newest first.
WINDOWS = [
    {"window_start": T0 + 60, "window_seconds": 60.0, "model_version": 2, "requests": 30, "rows": 60, "exits": 30,
     "latency_p50": 0.00125, "latency_p99": 0.0035, "level": "act",
     "psi": {"lastmonth_activity": 0.31, "lastyear_activity": 0.12, "number_of_employees": 0.02},
     "hosts": {"api-a": {"requests": 20, "rows": 40}, "api-b": {"requests": 10, "rows": 20}}},
    {"window_start": T0, "window_seconds": 60.0, "model_version": 1, "requests": 10, "rows": 40, "exits": 10,
     "latency_p50": 0.0015, "latency_p99": 0.004, "level": "ok", "psi": {"lastmonth_activity": 0.05},
     "hosts": {"api-a": {"requests": 10, "rows": 40}}},
]


def test_live_traffic_summed_over_the_windows():
    assert status.traffic_summary(WINDOWS, watch=0.1, act=0.2) == {
        "windows": 2, "since": "2026-11-18T11:06:40+00:00", "until": "2026-11-18T11:08:40+00:00",
        "requests": 40, "rows": 100, "exit_share": 40 / 100, "p50_ms": 1.25, "p99_ms": 3.5,
        "model_version": 2, "level": "act", "watch": 0.1, "act": 0.2,
        "psi": {"lastmonth_activity": 0.31, "lastyear_activity": 0.12, "number_of_employees": 0.02},
        "alarm": None, "alarm_rule": None, "estimated_f1": None,
        "hosts": {"api-a": {"requests": 30, "rows": 80}, "api-b": {"requests": 10, "rows": 20}},
    }
    assert status.traffic_summary([]) is None
    assert status.traffic_summary([{"window_start": T0, "rows": 0}])["exit_share"] is None


def test_live_traffic_on_the_page(fresh, monkeypatch):
    with closing(history.connect(fresh.history)):
        pass  # the page reads live traffic from the history database: it must exist
    monkeypatch.setattr(status, "live_traffic", lambda conn, cfg: status.traffic_summary(WINDOWS))
    html = create_app(fresh).test_client().get("/").get_data(as_text=True)
    assert '<span class="label">Requests</span><span class="big">40</span>' in html
    assert '<span class="label">Predicted to exit</span><span class="big">40.0 %</span>' in html
    assert '<span class="big">1.2 / 3.5</span> <span class="muted">ms</span>' in html
    assert '<span class="badge bad" id="traffic-level">act</span>' in html
    # PSI is the magnitude shown, its lines only for reading it; the level (the badge) is the alarm's
    assert '<dt>lastmonth_activity PSI</dt><dd>0.310 <span class="flag small">above 0.2</span></dd>' in html
    assert '<dt>lastyear_activity PSI</dt><dd>0.120 <span class="flag small">above 0.1</span></dd>' in html
    assert '<dt>number_of_employees PSI</dt><dd>0.020</dd>' in html
    assert ('<p class="muted" id="traffic-hosts">Served by 2 hosts, added up above: api-a 30 requests, 80 rows; '
            'api-b 10 requests, 20 rows.</p>') in html


def test_no_live_traffic_without_online_monitoring(running):
    # No traffic recorded (or no monitoring.py installed): no live-traffic facts, and the page says so.
    with closing(history.connect(running.history)) as conn:
        assert status.live_traffic(conn, running) is None


def test_line_chart_geometry():
    c = status.line_chart([("f1", [("v1", 0.5), ("v2", 1.0), ("v3", None)])], y_max=1.0, width=148, height=146)
    # plot area: x 58..132 (74 wide), y 12..112 (100 high); 3 labels, the third without a value
    assert c["lines"] == [{"name": "f1", "index": 0, "points": "58.0,62.0 95.0,12.0",
                           "dots": [{"x": 58.0, "y": 62.0, "label": "v1", "value": 0.5},
                                    {"x": 95.0, "y": 12.0, "label": "v2", "value": 1.0}]}]
    assert [t["text"] for t in c["ticks"]] == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert (c["first"], c["last"]) == ({"x": 58.0, "text": "v1"}, {"x": 132.0, "text": "v3"})
    psi = status.line_chart([("a", [("c1", 0.05), ("c2", 0.31)])], thresholds=((0.1, "watch"), (0.2, "act")))
    assert [t["text"] for t in psi["ticks"]] == ["0.0", "0.1", "0.2", "0.3", "0.4"]
    assert [t["text"] for t in psi["thresholds"]] == ["watch", "act"]
    assert status.line_chart([("a", [("c1", None)])]) is None


# ---------------------------------------------------------------------------------------------
# The routes
# ---------------------------------------------------------------------------------------------

def page_links(html):
    return sorted(set(re.findall(r'(?:href|src|action)="([^"]*)"', html)))


def test_the_page_shows_the_facts_and_nothing_from_outside(running):
    m = manifest(running)
    resp = create_app(running).test_client().get("/")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert f'<span class="big" id="model-version">{m["version"]}</span>' in html
    assert f'<span class="big" id="model-f1">{m["metrics"]["f1"]:.4f}</span>' in html
    assert f'id="model-cv">{m["audit"]["cross_validation"]["f1"]["mean"]:.3f}</span>' in html
    short = sha256_of(running.input_folder_path / "a.csv")[:12]
    assert f'<dd id="model-lineage">a.csv <code>{short}</code></dd>' in html
    assert '<span class="badge ok" id="last-decision">no drift</span>' in html
    assert html.count("<tr>") == 1 + 20 + 1 + len(m["audit"]["slices"]["slices"])  # header rows and body rows
    assert '<meta http-equiv="refresh" content="60">' in html
    assert page_links(html) == ["data:,", "files/modelcard.md", "openapi.json"]  # no report, no API returns yet
    assert 'apireturns.txt <span class="empty">· not produced yet</span>' in html
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+", html.replace('xmlns="http://www.w3.org/2000/svg"', ""))
    assert "<script" not in html
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none';")
    assert resp.headers["Cache-Control"] == "no-store"


def test_the_fresh_install_page_says_so_in_words(fresh, tmp_path):
    resp = create_app(fresh).test_client().get("/")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    for words in ("No model is deployed yet. The first monitoring cycle trains and deploys one when data arrives.",
                  "No cycle has been recorded yet.",
                  "No data yet: no deployment has been recorded.",
                  "No data yet: no cycle has measured feature drift.",
                  "No data yet: no monitoring cycle has been recorded (there is no history database yet).",
                  "No data yet: the deployed model has no slice audit recorded.",
                  "No data yet: online monitoring has recorded no traffic window.",
                  'report.pdf <span class="empty">· not produced yet</span>'):
        assert words in html
    assert not fresh.history_db.exists() and not fresh.output_folder_path.exists()


def test_the_files_it_links_to_and_no_others(running, tmp_path):
    client = create_app(running).test_client()
    card = (running.prod_deployment_path / "modelcard.md").read_bytes()
    with client.get("/files/modelcard.md") as resp:
        assert (resp.status_code, resp.mimetype, resp.data) == (200, "text/plain", card)
    assert client.get("/files/report.pdf").get_json() == {"error": "report.pdf has not been produced yet"}
    pdf = b"%PDF-1.4 not really\n"
    (running.output_model_path / "report.pdf").write_bytes(pdf)
    try:
        with client.get("/files/report.pdf") as resp:
            assert (resp.status_code, resp.mimetype, resp.data) == (200, "application/pdf", pdf)
        assert 'href="files/report.pdf"' in client.get("/").get_data(as_text=True)
    finally:
        (running.output_model_path / "report.pdf").unlink()
    for path in ("/files/config.json", "/files/trainedmodel.pkl", "/files/..%2Fconfig.json", "/files/../config.json",
                 "/files/%2e%2e/config.json", "/files/latestscore.txt", "/files/"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.is_json, path
    assert client.post("/").status_code == 405


def test_the_token_protects_the_page_and_a_browser_can_send_it(running, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    client = create_app(running).test_client()
    for path in ("/", "/?token=wrong", "/files/modelcard.md"):
        resp = client.get(path)
        assert resp.status_code == 401, path
        assert resp.get_json()["error"].startswith("a valid bearer token is required")
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    resp = client.get("/?token=s3cret")
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("dras_token=s3cret;") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/").status_code == 200  # the test client keeps the cookie, as a browser does
    with client.get("/files/modelcard.md") as resp:
        assert resp.status_code == 200
    # The cookie stands for the token on the status page only, never on the API.
    assert client.get("/scoring").status_code == 401
    assert client.post("/prediction", json={"records": [dict.fromkeys(FEATURES, 1)]}).status_code == 401
    assert client.get("/scoring?token=s3cret").status_code == 401


# ---------------------------------------------------------------------------------------------
# In a real browser, against a real gunicorn
# ---------------------------------------------------------------------------------------------

@contextmanager
def gunicorn(cfg, env=None):
    """gunicorn (gunicorn.conf.py, one worker) serving tests/status_probe.py's app for cfg; yields its URL."""
    with helpers.gunicorn(cfg, workers=1, env=env, app=f"status_probe:create({str(cfg.path)!r})") as url:
        yield url


def browse(url, *args, width=1280, height=900, netlog=None):
    """Headless Chromium's output for url; a Chromium that cannot start fails the test with the reason."""
    try:
        return screenshots.run_chromium(url, *args, width=width, height=height, netlog=netlog)
    except screenshots.BrowserError as exc:
        pytest.fail(f"the browser test needs Chromium: {exc}")


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def server(running):
    with gunicorn(running) as url:
        yield url


def visible_text(dom):
    body = re.sub(r"(?s)<(style|title)>.*?</\1>", "", dom)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", body)).strip()


def test_browser_shows_the_deployed_model_and_the_last_decision(running, server, tmp_path):
    m = manifest(running)
    netlog = tmp_path / "netlog.json"
    dom = browse(server + "/", "--dump-dom", netlog=netlog)
    assert f'<span class="big" id="model-version">{m["version"]}</span>' in dom
    assert f'<span class="big" id="model-f1">{m["metrics"]["f1"]:.4f}</span>' in dom
    assert '<span class="badge ok" id="last-decision">no drift</span>' in dom
    text = visible_text(dom)
    assert f"Serving version {m['version']}, test F1 {m['metrics']['f1']:.3f}." in text
    # Every request the page made went to this server; the browser's own background requests
    # (update checks, which no flag turns off) were refused by the host resolver before leaving.
    requests_made = url_requests(netlog)
    origin = server.rstrip("/")
    assert requests_made[server + "/"]["initiator"] == "not an origin"  # the navigation itself
    for url, r in requests_made.items():
        if r["initiator"] == origin or url.startswith(origin + "/"):
            assert url.startswith(origin + "/"), f"the page asked for {url}"
        else:
            assert -105 in r["errors"], f"the browser reached {url}"  # ERR_NAME_NOT_RESOLVED


def url_requests(netlog):
    """{url: {initiator, errors}} of every URL request in a Chromium net log."""
    log = json.loads(Path(netlog).read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    sources = {}
    for event in log["events"]:
        params = event.get("params") or {}
        source = sources.setdefault(event["source"]["id"], {"url": None, "initiator": None, "errors": set()})
        if names[event["type"]] == "URL_REQUEST_START_JOB" and "url" in params:
            source["url"], source["initiator"] = params["url"], params.get("initiator")
        if "net_error" in params:
            source["errors"].add(params["net_error"])
    return {s["url"]: {"initiator": s["initiator"], "errors": s["errors"]} for s in sources.values() if s["url"]}


def layout(server, width):
    """(scrollWidth, clientWidth, scrollHeight) of the page laid out `width` CSS pixels wide (status_probe's /__layout)."""
    dom = browse(server + f"/__layout?width={width}", "--dump-dom", width=max(width, 500), height=1400)
    probe = re.search(r'<output id="probe">scrollWidth=(\d+) clientWidth=(\d+) scrollHeight=(\d+)</output>', dom)
    assert probe, f"the layout probe did not run: {dom[:300]}"
    return tuple(map(int, probe.groups()))


@pytest.mark.parametrize(("name", "width"), [("wide", 1280), ("narrow", 390)])
def test_browser_screenshots_fit_the_width(server, tmp_path, name, width):
    shot = tmp_path / f"status-{name}.png"
    browse(server + "/", f"--screenshot={shot}", width=width, height=1400)
    assert png_size(shot) == (width, 1400)
    scroll_width, client_width, _ = layout(server, width)
    assert client_width == width
    assert scroll_width <= client_width, f"the page scrolls sideways at {width} px: {scroll_width} > {client_width}"


def test_browser_fresh_install(fresh):
    with gunicorn(fresh) as url:
        text = visible_text(browse(url + "/", "--dump-dom"))
    assert "No model is deployed yet." in text
    assert "No cycle has been recorded yet." in text
    assert "No data yet: online monitoring has recorded no traffic window." in text


def test_browser_token_protected(running):
    with gunicorn(running, env={TOKEN_ENV: "s3cret"}) as url:
        refused = browse(url + "/", "--dump-dom")
        shown = browse(url + "/?token=s3cret", "--dump-dom")
    assert "a valid bearer token is required" in refused and 'id="model-version"' not in refused
    assert f'<span class="big" id="model-version">{manifest(running)["version"]}</span>' in shown


def test_screenshots_command(server, tmp_path):
    out = tmp_path / "shots"
    done = subprocess.run([sys.executable, str(REPO / "screenshots.py"), "--url", server + "/", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"screenshot: {out / 'status-wide.png'}\nscreenshot: {out / 'status-narrow.png'}\n"
    # The whole page: each screenshot is as tall as the page laid out at its width.
    heights = {}
    for name, width in (("wide", 1280), ("narrow", 390)):
        heights[name] = layout(server, width)[2]
        assert png_size(out / f"status-{name}.png") == (width, heights[name])
    assert heights["narrow"] > heights["wide"] > 1400  # taller than any fixed window of old
    # Nothing below it: a shot 100 pixels taller shows only the page's background under that height.
    taller = tmp_path / "taller.png"
    browse(server + "/", f"--screenshot={taller}", width=390, height=heights["narrow"] + 100)
    with Image.open(taller) as im:
        below = im.convert("RGB").crop((0, heights["narrow"], 390, heights["narrow"] + 100))
        assert below.getcolors() == [(390 * 100, BACKGROUND)]


def test_screenshots_command_says_why_in_one_line(tmp_path):
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/"
    done = subprocess.run([sys.executable, str(REPO / "screenshots.py"), "--url", url, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"error: {url} cannot be reached: connection refused\n"
    no_browser = subprocess.run([sys.executable, str(REPO / "screenshots.py"), "--url", url, "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})
    assert no_browser.returncode == 2
    assert no_browser.stderr == "error: chromium is not installed (make setup installs it: apt-get install -y chromium)\n"
    assert list(tmp_path.iterdir()) == []


def test_screenshots_command_takes_the_address_from_the_config(server, tmp_path):
    from conftest import make_config

    config = make_config(tmp_path, api_url=server)
    out = tmp_path / "shots"
    done = subprocess.run([sys.executable, str(REPO / "screenshots.py"), "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"screenshot: {out / 'status-wide.png'}\nscreenshot: {out / 'status-narrow.png'}\n"


def test_a_kept_challenger_and_stale_test_data_are_on_the_page():
    record = {"decision": "drift: retrained, needs review", "new_files": ["s.csv"], "errors": [],
              "promotion": {"reason": "the challenger is better on the 60 newest held-out rows (+0.30 F1) but worse",
                            "action": "refresh the test data with recently labelled rows, or promote the challenger "
                                      "by hand with `python deployment.py --promote`",
                            "model": "kept the serving model; the challenger is saved as models/challenger.pkl"},
              "test_data": {"stale": True, "reason": "the test data no longer represent the deliveries: F1 0.24 "
                                                     "on the 60 rows delivered since its deployment but 0.79"}}
    row = {"id": 3, "started_at": 0.0, "finished_at": 1.0, "decision": record["decision"], "record": json.dumps(record)}
    assert status._cycle_summary(row)["evidence"] == [
        "Promotion: the challenger is better on the 60 newest held-out rows (+0.30 F1) but worse",
        "What to do: refresh the test data with recently labelled rows, or promote the challenger by hand with "
        "`python deployment.py --promote`",
        "Model: kept the serving model; the challenger is saved as models/challenger.pkl",
        "Stale test data: the test data no longer represent the deliveries: F1 0.24 on the 60 rows delivered "
        "since its deployment but 0.79"]
