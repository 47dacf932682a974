"""prometheus/: the rules pass promtool, and a real Prometheus scrapes a live gunicorn on loopback."""
import os
import shutil
import signal
import subprocess
import time

import pytest
import requests
from conftest import REPO
from helpers import free_port, gunicorn

import datagen
import deployment
from settings import FEATURES

PROM = REPO / "prometheus"
DEADLINE = 40.0  # seconds for the whole live test


def tool(name):
    """The path of Debian's prometheus package's `name`, installed with apt-get when missing (as
    `make setup` does); skips when it is absent and cannot be installed."""
    if shutil.which(name) is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && apt-get install -y --no-install-recommends prometheus", shell=True,
                       capture_output=True, timeout=600)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed and apt-get could not install Debian's prometheus package")
    return path


def promtool(*args):
    return subprocess.run([tool("promtool"), *args], cwd=PROM, capture_output=True, text=True, timeout=60)


def test_the_rules_and_the_config_pass_promtool():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_rule_tests_can_fail(tmp_path):
    # The same tests against rules whose "no cycle" threshold is wrong: promtool says so.
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text().replace("> 1800", "> 3600"))
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    result = subprocess.run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "alertname: DrasNoCycle, time: 3m" in result.stdout + result.stderr


def query(base, expr):
    answer = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_a_real_prometheus_scrapes_a_live_gunicorn(tmp_path, make_deployed):
    started = time.monotonic()
    binary = tool("prometheus")
    cfg = make_deployed(monitoring_flush_seconds=1.0)
    with gunicorn(cfg) as api:
        api_port = api.rsplit(":", 1)[1]
        config = (PROM / "prometheus.yml").read_text()
        assert 'targets: ["127.0.0.1:8000"]' in config and "  - alerts.yml" in config
        config = (config.replace('targets: ["127.0.0.1:8000"]', f'targets: ["127.0.0.1:{api_port}"]')
                  .replace("scrape_interval: 15s", "scrape_interval: 1s")
                  .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
                  .replace("  - alerts.yml", f"  - {PROM / 'alerts.yml'}"))
        (tmp_path / "prometheus.yml").write_text(config)
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            found = []
            while time.monotonic() - started < DEADLINE - 5:
                try:
                    found = query(base, "dras_model_version")
                except requests.ConnectionError:
                    found = []
                if found:
                    break
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.3)
            assert [(r["metric"], r["value"][1]) for r in found] == [
                ({"__name__": "dras_model_version", "instance": f"127.0.0.1:{api_port}", "job": "dras"}, "1")]
            [up] = query(base, 'up{job="dras"}')
            assert up["value"][1] == "1"
            [f1] = query(base, "dras_model_test_f1")
            test_f1 = deployment.current_manifest(cfg.prod_deployment_path)["metrics"]["f1"]
            assert (f1["metric"]["model_version"], float(f1["value"][1])) == ("1", pytest.approx(test_f1))
            # issue 16's estimate: live traffic, flushed to a window, then scraped
            rows = datagen.generate(120, seed=5)[list(FEATURES)].to_dict(orient="records")
            assert requests.post(api + "/prediction", json={"records": rows}, timeout=10).status_code == 200
            deadline = time.monotonic() + 30
            while not (found := query(base, "dras_estimated_f1")) and time.monotonic() < deadline:
                time.sleep(0.5)
            [estimate] = found
            assert estimate["metric"] == {"__name__": "dras_estimated_f1", "instance": f"127.0.0.1:{api_port}",
                                          "job": "dras", "model_version": "1"}
            exported = [line.rsplit(" ", 1)[1] for line in requests.get(api + "/metrics", timeout=5).text.splitlines()
                        if line.startswith('dras_estimated_f1{model_version="1"}')]
            assert exported and float(estimate["value"][1]) == pytest.approx(float(exported[0]))
            assert 0 < float(exported[0]) < 1
            rules = requests.get(f"{base}/api/v1/rules", timeout=5).json()["data"]["groups"]
            assert [(g["name"], len(g["rules"])) for g in rules] == [("dras", 8)]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    assert time.monotonic() - started < DEADLINE
