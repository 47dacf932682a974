"""Benchmark: POST /prediction through nginx (deploy/nginx.conf) in front of two local hosts, against one host direct.

    .venv/bin/python bench/bench_hosts.py

Issue 18: `/prediction` throughput through nginx with two local hosts against one host direct.
The same load as bench/bench_api.py (its helpers: the world, gunicorn under gunicorn.conf.py, wrk
-t2 -c8 for 10 s, a POST of 5 JSON records), on four set-ups run in turn: one host (2 workers)
direct; nginx in front of that one host; nginx in front of two hosts of 1 worker each (the same
two workers in all); nginx in front of two hosts of 2 workers each. Every host is a gunicorn on
127.0.0.1 (a port each): on one 2-core machine two hosts cannot add cores, so this measures what
the proxy costs, not what a second machine adds. nginx runs deploy/nginx.conf as tests/netns.py
renders it. Writes bench/results/hosts.md. Traffic goes to 127.0.0.1 only; every server started is
stopped.
"""
import json
import os
import platform
import shutil
import sys
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import bench_api  # noqa: E402
from netns import Nginx  # noqa: E402

bench_api.WORK = HERE / "work" / "hosts"  # its helpers write their world, logs and wrk script here
RESULTS = HERE / "results" / "hosts.md"
COMMAND = ".venv/bin/python bench/bench_hosts.py"


def through_nginx(stack, spec, hosts, workers, name):
    """nginx in front of `hosts` gunicorns of `workers` each; its URL."""
    urls = [stack.enter_context(bench_api.gunicorn(spec, f"{name}-{i}.log", workers=workers))[0]
            for i in range(hosts)]
    folder = bench_api.WORK / f"nginx-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    lb = Nginx(folder, [u.removeprefix("http://") for u in urls], bench_api.free_port())
    code, said = lb.check()
    if code != 0:
        raise RuntimeError(f"nginx -t refused the rendered deploy/nginx.conf: {said}")
    stack.callback(lb.stop)
    return lb.start().url


def measure(spec, body):
    """{set-up: wrk's figures}, each set-up started, measured and stopped in turn."""
    results = {}
    with bench_api.gunicorn(spec, "direct.log", workers=2) as (url, _):
        results["one host (2 workers), direct"] = bench_api.wrk(url, body, "/prediction")
    for name, hosts, workers in (("nginx, one host (2 workers)", 1, 2), ("nginx, two hosts (1 worker each)", 2, 1),
                                 ("nginx, two hosts (2 workers each)", 2, 2)):
        with ExitStack() as stack:
            results[name] = bench_api.wrk(through_nginx(stack, spec, hosts, workers, f"nginx{hosts}x{workers}"),
                                          body, "/prediction")
    return results


def main():
    cfg = bench_api.build_world()
    bench_api.ensure_wrk()
    spec = f"app:create_app({str(cfg.path)!r})"
    body = json.dumps({"records": bench_api.five_rows()})
    load_before = os.getloadavg()
    first = measure(spec, body)
    second = measure(spec, body)  # the machine is shared: a second round shows the spread
    load_after = os.getloadavg()
    direct = max(first["one host (2 workers), direct"]["rps"], second["one host (2 workers), direct"]["rps"])
    lines = [
        "# Several hosts: /prediction through nginx",
        "",
        f"Measured {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}), by `{COMMAND}`.",
        f"Load: wrk -t2 -c{bench_api.CONNECTIONS} -d{bench_api.DURATION}s, POST /prediction of 5 JSON records "
        "(bench/bench_api.py's). Every host is a gunicorn (gunicorn.conf.py) on 127.0.0.1; nginx runs "
        "deploy/nginx.conf with those hosts as its upstream (1 nginx worker, keep-alive to the hosts, an access log). "
        "wrk, nginx and every host share the same 2 cores, with other developers' work: two hosts here add no "
        "cores, so the table shows what the proxy hop costs; on two machines each host brings its own. "
        f"Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in load_before)}; "
        f"at the end: {', '.join(f'{x:.1f}' for x in load_after)}.",
        "",
        "| set-up | round | requests/s | p50 ms | p99 ms | requests | non-2xx | of direct (best rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in first:
        best = max(first[name]["rps"], second[name]["rps"])
        for n, r in ((1, first[name]), (2, second[name])):
            lines.append(f"| {name} | {n} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['requests']:,} | "
                         f"{r['non2xx']} | {best / direct:.2f} |" if n == 1 else
                         f"| | {n} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['requests']:,} | "
                         f"{r['non2xx']} | |")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
