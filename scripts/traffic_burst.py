"""The API's latest traffic windows in words; optionally first a burst of shifted traffic (the demo).

    python scripts/traffic_burst.py [--config PATH] [--burst N] [--windows K]

--burst N sends N five-row predictions of covariate-shifted rows (datagen) to the config's api_url,
waits for every worker to flush, and prints /health; then the latest K windows (traffic.summary_lines).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's flat modules

import datagen  # noqa: E402
from settings import FEATURES, ConfigError, load_config, setup_logging  # noqa: E402
from traffic import summary_lines  # noqa: E402


def send_burst(url, requests_count, seed=11, token=None):
    """POST `requests_count` 5-row predictions of covariate-shifted data (datagen) to url/prediction;
    return the status codes seen, with counts."""
    import requests

    rows = datagen.generate(5 * requests_count, seed=seed, drift="covariate", strength=2.0)[list(FEATURES)]
    records = [{k: int(v) for k, v in r.items()} for r in rows.to_dict("records")]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    seen = {}
    with requests.Session() as session:
        for k in range(0, len(records), 5):
            status = session.post(f"{url}/prediction", json={"records": records[k:k + 5]}, headers=headers,
                                  timeout=10).status_code
            seen[status] = seen.get(status, 0) + 1
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description="Show the API's latest traffic windows; optionally first send "
                                                 "a burst of shifted traffic to it (the demo).")
    parser.add_argument("--config", help="path to config.json (default: the one beside the project's modules)")
    parser.add_argument("--burst", type=int, metavar="N", help="first send N shifted 5-row predictions to api_url")
    parser.add_argument("--windows", type=int, default=5, help="windows shown (default 5)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.burst:
        import requests

        try:
            seen = send_burst(cfg.api_url, args.burst, token=os.environ.get("DRAS_API_TOKEN"))
            print(f"sent {args.burst} shifted 5-row predictions to {cfg.api_url}: "
                  + ", ".join(f"{n} x {s}" for s, n in sorted(seen.items())))
            time.sleep(cfg.monitoring_flush_seconds + 1)  # every worker flushes in that time
            health = requests.get(f"{cfg.api_url}/health", timeout=5).json()
        except requests.RequestException as exc:
            print(f"error: the API at {cfg.api_url} did not answer: {exc}", file=sys.stderr)
            return 1
        print(f"/health: {health['status']}" + (f" (live drift: PSI "
              + ", ".join(f"{f} {v:.3f}" for f, v in sorted(health['live_drift']['psi'].items()))
              + f" over {health['live_drift']['rows']} rows)" if "live_drift" in health else ""))
    for line in summary_lines(cfg, args.windows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
