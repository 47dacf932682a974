"""The API's latest traffic windows in words; optionally first a burst of shifted traffic (the demo).

    python scripts/traffic_burst.py [--config PATH] [--ordinary] [--burst N] [--windows K]

--ordinary first posts the test data three times, as the README's three curl examples do (CSV
body, file upload, filepath), waits for its window to be judged and prints /health.
--burst N sends N five-row predictions of covariate-shifted rows (datagen) to the config's api_url,
waits for their window to be judged and prints /health; then the latest K windows
(traffic.summary_lines). A window is judged once, when it has closed and every worker has
flushed it (alarms.py): the waits are up to monitoring_window_seconds + monitoring_flush_seconds.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's flat modules

import datagen  # noqa: E402
from settings import FEATURES, ConfigError, load_config, setup_logging  # noqa: E402
from traffic import summary_lines, windows  # noqa: E402


def burst_records(requests_count, seed=11):
    """The burst's rows: 5 x `requests_count` covariate-shifted records (datagen, strength 2: activity x3)."""
    rows = datagen.generate(5 * requests_count, seed=seed, drift="covariate", strength=2.0)[list(FEATURES)]
    return [{k: int(v) for k, v in r.items()} for r in rows.to_dict("records")]


def send_burst(url, requests_count, seed=11, token=None):
    """POST `requests_count` 5-row predictions of covariate-shifted data (datagen) to url/prediction;
    return the status codes seen, with counts."""
    import requests

    records = burst_records(requests_count, seed)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    seen = {}
    with requests.Session() as session:
        for k in range(0, len(records), 5):
            status = session.post(f"{url}/prediction", json={"records": records[k:k + 5]}, headers=headers,
                                  timeout=10).status_code
            seen[status] = seen.get(status, 0) + 1
    return seen


def send_ordinary(cfg, token=None):
    """The README's three curl examples: the test data as a CSV body, as an upload, by filepath."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = cfg.test_data_file.read_bytes()
    url = f"{cfg.api_url}/prediction"
    with requests.Session() as s:
        return [s.post(url, data=data, headers={"Content-Type": "text/csv", **headers}, timeout=10).status_code,
                s.post(url, files={"file": ("testdata.csv", data)}, headers=headers, timeout=10).status_code,
                s.post(url, json={"filepath": os.path.relpath(cfg.test_data_file, cfg.base)}, headers=headers,
                       timeout=10).status_code]  # relative to the config's folder, as the API wants it


def wait_judged(cfg):
    """Sleep until the current window has closed and every worker has flushed it."""
    now = time.time()
    end = now - now % cfg.monitoring_window_seconds + cfg.monitoring_window_seconds
    wait = end + 2 * cfg.monitoring_flush_seconds + 1 - now
    print(f"waiting {wait:.0f} s for the window to close: a window is judged once, when it has closed")
    time.sleep(wait)


def health_line(cfg, health):
    """/health in words, with the alarm's p-values when it is degraded by live drift."""
    if "live_drift" not in health:
        return f"/health: {health['status']}"
    live = health["live_drift"]
    return (f"/health: {health['status']} (live drift at {live['level']} over {live['rows']} rows: "
            + ", ".join(f"{f} p = {p:.2g}, PSI {live['psi'].get(f, float('nan')):.3f}"
                        for f, p in sorted(live["p_values"].items()) if p is not None) + ")")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Show the API's latest traffic windows; optionally first send "
                                                 "a burst of shifted traffic to it (the demo).")
    parser.add_argument("--config", help="path to config.json (default: the one beside the project's modules)")
    parser.add_argument("--burst", type=int, metavar="N", help="first send N shifted 5-row predictions to api_url")
    parser.add_argument("--ordinary", action="store_true", help="first post the test data three times (the README's examples)")
    parser.add_argument("--windows", type=int, default=5, help="windows shown (default 5)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import requests

    token = os.environ.get("DRAS_API_TOKEN")
    try:
        if args.ordinary:
            codes = send_ordinary(cfg, token)
            print(f"sent the test data three times (the README's curl examples) to {cfg.api_url}: {codes}")
            wait_judged(cfg)
            print(health_line(cfg, requests.get(f"{cfg.api_url}/health", timeout=5).json()))
            note = windows(cfg, limit=1)["note"]
            if note:
                print(f"note: {note}")
        if args.burst:
            seen = send_burst(cfg.api_url, args.burst, token=token)
            print(f"sent {args.burst} shifted 5-row predictions to {cfg.api_url}: "
                  + ", ".join(f"{n} x {s}" for s, n in sorted(seen.items())))
            wait_judged(cfg)
            print(health_line(cfg, requests.get(f"{cfg.api_url}/health", timeout=5).json()))
    except requests.RequestException as exc:
        print(f"error: the API at {cfg.api_url} did not answer: {exc}", file=sys.stderr)
        return 1
    for line in summary_lines(cfg, args.windows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
