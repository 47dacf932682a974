"""Benchmark of the estimated live F1's cost (issue 16): /prediction throughput with the estimate on against off.

    .venv/bin/python bench/bench_estimate.py

Both servers keep online monitoring on; one has `"monitoring_estimate": false` (the anchor). 5-row
JSON POST /prediction under gunicorn (gunicorn.conf.py, 2 workers each), 8 connections (wrk), in
alternating rounds, one run: on/off >= 0.95. Also, in-process, the flush of
monitoring_flush_requests pending 5-row predictions with and without the estimate's sums (the
sums are computed there, not on the request path). Writes bench/results/estimate.md. Traffic
goes to 127.0.0.1 only; every server started is stopped.
"""
import json
import os
import platform
import statistics
import sys
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench_api  # noqa: E402
import bench_monitoring  # noqa: E402
import deployment  # noqa: E402
import progress  # noqa: E402
from settings import load_config  # noqa: E402

WORK = HERE / "work" / "estimate"
RESULTS = HERE / "results" / "estimate.md"
ROUNDS = 12
ROUND_SECONDS = 4
COMMAND = ".venv/bin/python bench/bench_estimate.py"


def build_world():
    bench_api.WORK = WORK
    cfg = bench_api.build_world()
    config = json.loads(cfg.path.read_text())
    (WORK / "config-off.json").write_text(json.dumps({**config, "monitoring_estimate": False}, indent=2))
    return cfg, load_config(WORK / "config-off.json")


def main():
    load_before = os.getloadavg()
    cfg, cfg_off = build_world()
    table = deployment.current_manifest(cfg.prod_deployment_path)["training"]["monitoring"]["calibration"]
    assert table is not None, "the bench's model has no calibration table: the estimate would be off on both"
    bench_api.ensure_wrk()
    records = bench_api.five_rows()
    body = json.dumps({"records": records})
    flush_on = bench_monitoring.flush_cost(cfg, records)
    flush_off = bench_monitoring.flush_cost(cfg_off, records)
    per_request = bench_monitoring.in_process(cfg, cfg_off, body)
    rounds = {"on": [], "off": []}
    bench_api.DURATION = ROUND_SECONDS
    with ExitStack() as stack:
        urls = {name: stack.enter_context(bench_api.gunicorn(f"app:create_app({str(c.path)!r})", f"{name}.log"))[0]
                for name, c in (("off", cfg_off), ("on", cfg))}
        for name in ("off", "on"):
            bench_api.wrk(urls[name], body, "/prediction")
        for k in range(ROUNDS):
            progress.show(f"bench_estimate: wrk round {k + 1} of {ROUNDS} ({ROUND_SECONDS} s each, on and off)")
            for name in (("off", "on") if k % 2 == 0 else ("on", "off")):
                rounds[name].append(bench_api.wrk(urls[name], body, "/prediction"))
    paired = statistics.median(on["rps"] / off["rps"] for on, off in zip(rounds["on"], rounds["off"]))
    on_med = statistics.median(r["rps"] for r in rounds["on"])
    off_med = statistics.median(r["rps"] for r in rounds["off"])
    us_on = statistics.median(per_request["on"]) * 1e6
    us_off = statistics.median(per_request["off"]) * 1e6
    ms_on = statistics.median(t for t, _ in flush_on) * 1000
    ms_off = statistics.median(t for t, _ in flush_off) * 1000
    lines = [
        "# Estimated live F1: cost benchmark",
        "",
        f"Measured {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}), by `{COMMAND}`.",
        f"Load: wrk -t2 -c{bench_api.CONNECTIONS} -d{ROUND_SECONDS}s, POST of 5 JSON records to /prediction under "
        "gunicorn with gunicorn.conf.py (2 workers each), online monitoring on in both, the estimate off "
        "(`\"monitoring_estimate\": false`, the anchor) and on (the default; calibration "
        f"{table['kind']!r} on {table['source']}). Both servers side by side, wrk alternating, {ROUNDS} rounds each "
        f"after a warm-up; load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(a shared machine: both settings meet the same noise).",
        "",
        "| round | estimate off req/s | p99 ms | estimate on req/s | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in range(ROUNDS):
        off, on = rounds["off"][k], rounds["on"][k]
        lines.append(f"| {k + 1} | {off['rps']:,.0f} | {off['p99']:.2f} | {on['rps']:,.0f} | {on['p99']:.2f} |")
    lines += [
        "",
        "| figure | measured | goal | met |",
        "|---|---:|---|---|",
        f"| throughput on / off, median of the {ROUNDS} paired rounds' ratios | {paired:.3f} | >= 0.95 | "
        f"{'yes' if paired >= 0.95 else 'no'} |",
        f"| throughput on / off, medians of the rounds ({on_med:,.0f} / {off_med:,.0f} req/s) | {on_med / off_med:.3f} "
        f"| >= 0.95 | {'yes' if on_med / off_med >= 0.95 else 'no'} |",
        f"| whole WSGI stack in-process, CPU per 5-row request, median of {len(per_request['on'])} alternating "
        f"batches: off {us_off:.1f} us, on {us_on:.1f} us | {us_on - us_off:+.1f} us | | |",
        f"| one flush of {cfg.monitoring_flush_requests} pending 5-row predictions, median of {len(flush_on)}: "
        f"off {ms_off:.2f} ms, on {ms_on:.2f} ms | {ms_on - ms_off:+.2f} ms | | |",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    progress.clear()  # the progress line (stderr) erased before the output
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
