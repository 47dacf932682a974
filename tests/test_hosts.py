"""Several API hosts sharing one history: each host's rows name it, every reader adds them up, /metrics stays per host.

Two real gunicorns on 127.0.0.1 stand for two hosts: the same folders, the same history, only
config.json's `host_name` differs. (tests/test_netns.py runs them on real separate network
hosts, behind nginx.)
"""
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import app as app_module
import history
import traffic
from helpers import ROW, columns, gunicorn, host_config, query, raw_sql, writing

PER_HOST = 4  # /prediction requests sent to each host; with its first /health, a flush is due
FLUSH_AT = PER_HOST + 1
ROWS = {"api-a": 4, "api-b": 2}  # rows per request
EXPECTED = {"api-a": {"requests": FLUSH_AT, "rows": PER_HOST * 4}, "api-b": {"requests": FLUSH_AT, "rows": PER_HOST * 2}}


def metric(text, name, **labels):
    """The sum of the samples of `name` whose labels include `labels` in a Prometheus exposition."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def wait_for(what, expected, seconds=30):
    deadline = time.monotonic() + seconds
    while (got := what()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


@pytest.mark.backends
def test_two_hosts_write_their_own_rows_and_every_reader_adds_them_up(make_deployed, backend):
    # A flush only when every request of a host has been counted: the figures below are exact.
    cfg = make_deployed(monitoring_flush_seconds=3600, monitoring_flush_requests=FLUSH_AT)
    configs = {name: host_config(cfg, name) for name in ROWS}
    with gunicorn(configs["api-a"], workers=1) as a, gunicorn(configs["api-b"], workers=1) as b:
        urls = {"api-a": a, "api-b": b}
        for name, url in urls.items():
            for _ in range(PER_HOST):
                answer = requests.post(url + "/prediction", json={"records": [ROW] * ROWS[name]}, timeout=10)
                assert (answer.status_code, answer.json()["model_version"]) == (200, 1)
        sql = "SELECT host, SUM(requests), SUM(rows) FROM traffic_windows GROUP BY host ORDER BY host"
        assert wait_for(lambda: query(cfg, sql), [(h, e["requests"], e["rows"]) for h, e in EXPECTED.items()]) == [
            ("api-a", 5, 16), ("api-b", 5, 8)]

        seen = {name: requests.get(url + "/monitoring", timeout=10).json() for name, url in urls.items()}
        assert seen["api-a"] == seen["api-b"]  # either host shows all of them
        windows = [w for found in seen["api-a"]["versions"].values() for w in found]
        assert traffic.hosts_total(windows) == EXPECTED
        assert sum(w["rows"] for w in windows) == 24
        assert sum(w["requests"] for w in windows) == 10
        assert sum(w["requests_by_endpoint"]["/prediction"]["200"] for w in windows) == 2 * PER_HOST

        for name, url in urls.items():  # /metrics: this host's workers only
            text = requests.get(url + "/metrics", timeout=10).text
            assert metric(text, "dras_rows_predicted_total") == EXPECTED[name]["rows"]
            assert metric(text, "dras_http_request_duration_seconds_count", endpoint="/prediction") == PER_HOST

        page = requests.get(b + "/", timeout=10).text
        assert '<span class="label">Requests</span><span class="big">10</span>' in page
        assert ('<p class="muted" id="traffic-hosts">Served by 2 hosts, added up above: api-a 5 requests, 16 rows; '
                'api-b 5 requests, 8 rows.</p>') in page
        # the report's live-traffic section and the cycle's live-drift record (before the servers' last flush)
        assert traffic.report_data(cfg)["hosts"] == EXPECTED
        assert traffic.crossings_since(cfg, 0)["hosts"] == EXPECTED


@pytest.mark.backends
def test_an_older_history_gains_the_host_column_at_its_next_connect(deployed):
    app = app_module.create_app(deployed)
    client = app.test_client()
    monitor = app.extensions["dras"].monitor
    assert client.post("/prediction", json={"records": [ROW] * 3}).status_code == 200
    monitor.flush()
    monitor.close()
    # the history as the version before hosts made it (on PostgreSQL its schema bears that version's digest)
    raw_sql(deployed.history, ["ALTER TABLE traffic_windows DROP COLUMN host"] + (
        ["COMMENT ON TABLE ingested_files IS 'dras schema of an older version'"] if deployed.postgres else []))
    history._made.discard(deployed.history)  # as a process that has not connected yet

    with writing(deployed) as conn:  # any writer's connect upgrades it
        assert "host" in columns(deployed, "traffic_windows")
        assert traffic.hosts_total(traffic.recent_windows(conn, deployed)) == {"unknown": {"requests": 1, "rows": 3}}

    later = app_module.create_app(host_config(deployed, "api-b"))
    assert later.test_client().post("/prediction", json={"records": [ROW] * 2}).status_code == 200
    later.extensions["dras"].monitor.flush()
    later.extensions["dras"].monitor.close()
    assert traffic.hosts_total(traffic.windows(deployed)["versions"]["1"]) == {
        "api-b": {"requests": 1, "rows": 2}, "unknown": {"requests": 1, "rows": 3}}
