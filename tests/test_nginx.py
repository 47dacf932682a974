"""deploy/nginx.conf as shipped, on a real nginx in front of two real gunicorns on loopback ports.

nginx runs from a folder of its own (its pid, logs and temporary files there), with the file's
addresses moved to free ports; the two API hosts serve one deployed world, its history on both
backends (PostgreSQL here, as several hosts need). One host stopped: nginx routes around it, and no client sees a failure.
"""
import shutil
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import REPO
from helpers import ROW, free_port, gunicorn, wait_for_http
from netns import render as render_conf

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin: not on every user's PATH
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (make setup installs Debian's)")
MAIN = """daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/dras.conf;
}}
"""


@contextmanager
def nginx(root, first, second):
    """nginx with deploy/nginx.conf, its hosts on ports `first` and `second`: yields (its URL, its access log)."""
    port = free_port()
    shipped = (REPO / "deploy" / "nginx.conf").read_text()
    assert shipped.count("access_log /var/log/nginx/dras.access.log dras_upstream;") == 1
    conf = render_conf(shipped, [f"127.0.0.1:{first}", f"127.0.0.1:{second}"], f"127.0.0.1:{port}")
    # the shipped access log's format, in this test's folder
    conf = conf.replace("    listen ", f"    access_log {root / 'access.log'} dras_upstream;\n    listen ", 1)
    root.mkdir()
    (root / "dras.conf").write_text(conf)
    (root / "nginx.conf").write_text(MAIN.format(root=root))
    proc = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url, proc, lambda: f"nginx did not start: {proc.stderr.read()}")
        yield url, root / "access.log"
    finally:
        proc.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        proc.wait(20)
        proc.stderr.close()


def upstreams(log, path):
    """(client status, the upstreams tried, their statuses) of each logged request for `path`."""
    out = []
    for line in log.read_text().splitlines():
        if f" {path} HTTP/" in line:
            status = int(line.split('" ', 1)[1].split()[0])
            tried = line.split("upstream=", 1)[1].split(" upstream_status=")[0]
            statuses = line.split("upstream_status=", 1)[1].split(" seconds=")[0]
            out.append((status, tried, statuses))
    return out


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_nginx_spreads_the_requests_and_routes_around_a_stopped_host(deployed, tmp_path):
    first, second = free_port(), free_port()
    a, b = f"127.0.0.1:{first}", f"127.0.0.1:{second}"
    with gunicorn(deployed, workers=1, port=first), nginx(tmp_path / "nginx", first, second) as (url, log):
        with gunicorn(deployed, workers=1, port=second):
            both = [requests.get(url + "/health", timeout=10) for _ in range(20)]
            assert [(r.status_code, r.json()["model_version"]) for r in both] == [(200, 1)] * 20
            assert {tried for _, tried, _ in upstreams(log, "/health")} == {a, b}  # both hosts served
        # The second host is gone (its gunicorn stopped): nothing a client sends fails.
        log.write_text("")
        gets = [requests.get(url + "/health", timeout=10) for _ in range(20)]
        posts = [requests.post(url + "/prediction", json={"records": [ROW]}, timeout=10) for _ in range(10)]
        assert [r.status_code for r in gets + posts] == [200] * 30
        assert {r.json()["model_version"] for r in gets + posts} == {1}
        seen = upstreams(log, "/health") + upstreams(log, "/prediction")
        assert len(seen) == 30 and {status for status, _, _ in seen} == {200}
        # A request that met the stopped host went on to the other at once; after max_fails (2)
        # nginx leaves it out for fail_timeout (10 s).
        retried = [(tried, statuses) for _, tried, statuses in seen if "," in tried]
        assert 1 <= len(retried) <= 3 and set(retried) == {(f"{b}, {a}", "502, 200")}
        assert {tried for _, tried, _ in seen if "," not in tried} == {a}
