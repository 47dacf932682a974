"""Benchmark of online monitoring (issue 8), its anchors measured in the same run.

    .venv/bin/python bench/bench_monitoring.py        (or `make bench`)

Figures, each against its goal:
- 5-row JSON POST /prediction under gunicorn (gunicorn.conf.py, 2 workers), 8 connections (wrk),
  monitoring on against monitoring off (the anchor), in alternating rounds: on/off >= 0.95;
- one flush: the aggregates of monitoring_flush_requests (1000) pending 5-row predictions folded
  and written to the history database: <= 5 ms;
- GET /metrics against the server with a day of windows (1440 one-minute windows x 2 workers) in
  the history database: <= 50 ms.
Writes bench/results/monitoring.md. Traffic goes to 127.0.0.1 only; every server started is stopped.
"""
import json
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench_api  # noqa: E402
import datagen  # noqa: E402
import deployment  # noqa: E402
import monitoring  # noqa: E402
import progress  # noqa: E402
from settings import FEATURES, load_config  # noqa: E402

WORK = HERE / "work" / "monitoring"
RESULTS = HERE / "results" / "monitoring.md"
ROUNDS = 12
ROUND_SECONDS = 4
COMMAND = ".venv/bin/python bench/bench_monitoring.py"


def build_world():
    bench_api.WORK = WORK  # bench_api's helpers write their logs and scripts there
    cfg = bench_api.build_world()
    config = json.loads(cfg.path.read_text())
    (WORK / "config-off.json").write_text(json.dumps({**config, "monitoring": False}, indent=2))
    return cfg, load_config(WORK / "config-off.json")


def flush_cost(cfg, records, runs=30):
    """Seconds of Monitor.flush with monitoring_flush_requests pending 5-row predictions."""
    import numpy as np

    manifest = deployment.current_manifest(cfg.prod_deployment_path)
    X = np.array([[r[f] for f in FEATURES] for r in records], dtype=np.float64)
    preds, probs = [0, 1, 0, 0, 1], [0.1, 0.9, 0.2, 0.3, 0.8]
    mon = monitoring.Monitor(cfg)
    mon._started = True  # no flush thread: this measures flush() alone
    times = []
    for k in range(runs):
        progress.tick(f"bench_monitoring: flush {k + 1} of {runs}")
        for _ in range(cfg.monitoring_flush_requests):
            mon.prediction(X.copy(), preds, probs, manifest)
            mon.request("/prediction", 200, 0.002, manifest["version"])
        started, cpu = time.perf_counter(), time.process_time()
        mon.flush()
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    mon.close()
    return times


def in_process(cfg, cfg_off, body, batches=12, calls=500):
    """Seconds per request of the whole WSGI stack (fast path), called in-process, monitoring on
    and off in alternating batches: the hook's own cost, without the network and wrk."""
    import io

    import app as app_module

    data = body.encode()
    apps = {"on": app_module.create_app(cfg), "off": app_module.create_app(cfg_off)}

    def call(wsgi):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/prediction", "CONTENT_TYPE": "application/json",
                   "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data), "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
        out = wsgi(environ, lambda status, headers, exc_info=None: None)
        answer = json.loads(b"".join(out))
        assert len(answer["predictions"]) == 5, answer

    per = {"on": [], "off": []}
    for name in ("on", "off"):  # warm up: model loaded, flush thread started
        for _ in range(50):
            call(apps[name].wsgi_app)
    for _ in range(batches):
        for name in ("off", "on"):
            wsgi = apps[name].wsgi_app
            started = time.process_time()
            for _ in range(calls):
                call(wsgi)
            per[name].append((time.process_time() - started) / calls)
    apps["on"].extensions["dras"].monitor.close()
    return per


def a_day_of_windows(cfg, records):
    """1440 one-minute windows ending now, from two workers, written through Monitor.flush."""
    import numpy as np

    manifest = deployment.current_manifest(cfg.prod_deployment_path)
    X = np.array([[r[f] for f in FEATURES] for r in records], dtype=np.float64)
    now = time.time()
    first = now - now % 60 - 1439 * 60
    for _ in range(2):
        t = [first]
        mon = monitoring.Monitor(cfg, clock=lambda: t[0])
        mon._started = True
        for k in range(1440):
            t[0] = first + 60 * k + 1
            for _ in range(20):
                mon.prediction(X, [0, 1, 0, 0, 1], [0.1, 0.9, 0.2, 0.3, 0.8], manifest)
                mon.request("/prediction", 200, 0.002, manifest["version"])
            mon.flush()
        mon.close()


def timed_gets(url, path, runs=50):
    import requests

    session = requests.Session()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        resp = session.get(url + path, timeout=10)
        times.append(time.perf_counter() - started)
        resp.raise_for_status()
    return times, resp


def main():
    load_before = os.getloadavg()
    cfg, cfg_off = build_world()
    bench_api.ensure_wrk()
    records = bench_api.five_rows()
    body = json.dumps({"records": records})

    flushes = flush_cost(cfg, records)
    per_request = in_process(cfg, cfg_off, body)
    a_day_of_windows(cfg, records)

    # Both servers run at once and wrk alternates between them in short rounds, so that both meet
    # the same moments of the shared machine's load.
    rounds = {"on": [], "off": []}
    bench_api.DURATION = ROUND_SECONDS
    with ExitStack() as stack:
        urls = {name: stack.enter_context(bench_api.gunicorn(f"app:create_app({str(c.path)!r})", f"{name}.log"))[0]
                for name, c in (("off", cfg_off), ("on", cfg))}
        for name in ("off", "on"):  # warm up
            bench_api.wrk(urls[name], body, "/prediction")
        for k in range(ROUNDS):
            progress.show(f"bench_monitoring: wrk round {k + 1} of {ROUNDS} ({ROUND_SECONDS} s each, on and off)")
            # off first in even rounds, on first in odd ones: neither always meets a load trend first
            for name in (("off", "on") if k % 2 == 0 else ("on", "off")):
                rounds[name].append(bench_api.wrk(urls[name], body, "/prediction"))
    with bench_api.gunicorn(f"app:create_app({str(cfg.path)!r})", "metrics.log") as (url, _):
        metrics_times, metrics_resp = timed_gets(url, "/metrics")
        monitoring_times, monitoring_resp = timed_gets(url, "/monitoring?windows=1440", runs=10)
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name for f in text_string_to_metric_families(metrics_resp.text)}
    windows = sum(len(v) for v in monitoring_resp.json()["versions"].values())

    ms = [t * 1000 for t, _ in flushes]
    cpu_ms = [c * 1000 for _, c in flushes]
    us_on = statistics.median(per_request["on"]) * 1e6
    us_off = statistics.median(per_request["off"]) * 1e6
    on_best, off_best = max(r["rps"] for r in rounds["on"]), max(r["rps"] for r in rounds["off"])
    on_med = statistics.median(r["rps"] for r in rounds["on"])
    off_med = statistics.median(r["rps"] for r in rounds["off"])
    metrics_ms = sorted(t * 1000 for t in metrics_times)
    paired = statistics.median(on["rps"] / off["rps"] for on, off in zip(rounds["on"], rounds["off"]))
    lines = [
        "# Online monitoring benchmark",
        "",
        f"Measured {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}), by `{COMMAND}` (also `make bench`).",
        f"Load: wrk -t2 -c{bench_api.CONNECTIONS} -d{ROUND_SECONDS}s, POST of 5 JSON records to /prediction under "
        "gunicorn with gunicorn.conf.py (2 workers each), monitoring off (`\"monitoring\": false`, the anchor) and on "
        f"(the defaults: flush every {cfg.monitoring_flush_seconds:g} s or {cfg.monitoring_flush_requests} requests). "
        f"Both servers run side by side and wrk alternates between them, {ROUNDS} rounds each after a warm-up. "
        "The machine is shared with other developers' work (see the spread of the rounds; load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end): both settings meet the same noise.",
        "",
        "| round | monitoring off req/s | p99 ms | monitoring on req/s | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in range(ROUNDS):
        off, on = rounds["off"][k], rounds["on"][k]
        lines.append(f"| {k + 1} | {off['rps']:,.0f} | {off['p99']:.2f} | {on['rps']:,.0f} | {on['p99']:.2f} |")
    lines += [
        "",
        "| figure | measured | goal | met |",
        "|---|---:|---|---|",
        f"| throughput on / off, median of the {ROUNDS} paired rounds' ratios (on and off back to back, in turns first) "
        f"| {paired:.3f} | >= 0.95 | {'yes' if paired >= 0.95 else 'no'} |",
        f"| throughput on / off, medians of the rounds ({on_med:,.0f} / {off_med:,.0f} req/s) | {on_med / off_med:.3f} "
        f"| >= 0.95 | {'yes' if on_med / off_med >= 0.95 else 'no'} |",
        f"| throughput on / off, best rounds ({on_best:,.0f} / {off_best:,.0f} req/s) | {on_best / off_best:.3f} "
        f"| >= 0.95 | {'yes' if on_best / off_best >= 0.95 else 'no'} |",
        f"| the hook's own cost: whole WSGI stack called in-process (no HTTP), CPU per 5-row request, median of "
        f"{len(per_request['on'])} alternating batches: off {us_off:.1f} us, on {us_on:.1f} us | "
        f"+{us_on - us_off:.1f} us ({(us_on - us_off) / (2e6 / off_med) * 100:.1f}% of a request's worker time "
        f"at the off median, 2 workers / {off_med:,.0f} req/s) | | |",
        f"| one flush of {cfg.monitoring_flush_requests} pending 5-row predictions, wall clock, median of {len(ms)} "
        f"(max {max(ms):.2f}; CPU median {statistics.median(cpu_ms):.2f}) | {statistics.median(ms):.2f} ms | <= 5 ms | "
        f"{'yes' if statistics.median(ms) <= 5 else 'no'} |",
        f"| GET /metrics with a day of windows ({windows} windows in the database), median of "
        f"{len(metrics_ms)} (p90 {metrics_ms[int(0.9 * len(metrics_ms))]:.1f}, max {metrics_ms[-1]:.1f}) "
        f"| {statistics.median(metrics_ms):.1f} ms | <= 50 ms | {'yes' if statistics.median(metrics_ms) <= 50 else 'no'} |",
        f"| GET /monitoring?windows=1440 (the whole day), median of {len(monitoring_times)} "
        f"| {statistics.median(monitoring_times) * 1000:.0f} ms | | |",
        "",
        f"/metrics families: {', '.join(sorted(families))}.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    progress.clear()  # the progress line (stderr) erased before the output
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
