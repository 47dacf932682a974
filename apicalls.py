"""The API's client: call the four endpoints and write their answers to apireturns.txt.

    python apicalls.py [--config PATH] [--url URL]

needs the server (`make serve`): when it is down, or an endpoint answers with an error, it says
which endpoint and why in one line and exits 1. `produce_returns(cfg)`, used by the monitoring
cycle, falls back to calling the app in-process when the server does not answer at all, so that
apireturns.txt is written either way; the file says which way it was made.
"""
import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import atomicfiles
import words
from app import create_app
from settings import ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

TOKEN_ENV = "DRAS_API_TOKEN"
RETURNS_FILE = "apireturns.txt"
ENDPOINTS = (("POST", "/prediction"), ("GET", "/scoring"), ("GET", "/summarystats"), ("GET", "/diagnostics"))


class ApiCallError(Exception):
    """An endpoint could not be called, or answered with an error; the message names it."""


class ServerDown(ApiCallError):
    """The server did not answer at all."""


def _body(cfg):
    try:
        return cfg.test_data_file.read_bytes()
    except OSError as exc:
        raise ApiCallError(f"POST /prediction: cannot read the test data {cfg.test_data_file}: {exc.strerror}") from None


def _headers():
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _decode(data: bytes):
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return data.decode("utf-8", "replace")


def call_server(cfg, url, timeout=10.0) -> list:
    """[(method, path, status, body)] for the four endpoints of the server at `url`.

    Raises ServerDown when the first call gets no answer, ApiCallError when a later one gets none.
    """
    import requests

    body = _body(cfg)
    base = url.rstrip("/")
    out = []
    with requests.Session() as session:
        for method, path in ENDPOINTS:
            kwargs = {"data": body, "headers": {"Content-Type": "text/csv", **_headers()}} if method == "POST" \
                else {"headers": _headers()}
            try:
                resp = session.request(method, base + path, timeout=timeout, **kwargs)
            except requests.RequestException as exc:
                error = ServerDown if not out else ApiCallError
                raise error(f"{method} {path}: no answer from {base}: {_reason(exc)}") from None
            out.append((method, path, resp.status_code, _decode(resp.content)))
    return out


def _reason(exc):
    import requests

    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable (is the server running? `make serve`)"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return f"the request failed: {words.error_text(exc)}"


def call_in_process(cfg) -> list:
    """The same four calls, made through the app itself (Flask's test client), without a server."""
    client = create_app(cfg).test_client()
    body = _body(cfg)
    out = []
    for method, path in ENDPOINTS:
        if method == "POST":
            resp = client.post(path, data=body, headers={"Content-Type": "text/csv", **_headers()})
        else:
            resp = client.get(path, headers=_headers())
        out.append((method, path, resp.status_code, _decode(resp.data)))
    return out


def render(results, how) -> str:
    """apireturns.txt: a header saying how the answers were got, then one section per endpoint."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [f"# API returns, {stamp}", f"# via: {how}", ""]
    for method, path, status, body in results:
        lines += [f"== {method} {path}", f"status: {status}",
                  json.dumps(body, indent=2, sort_keys=True) if not isinstance(body, str) else body, ""]
    return "\n".join(lines)


def write_returns(cfg, results, how) -> Path:
    path = cfg.output_model_path / RETURNS_FILE
    atomicfiles.write_text(path, render(results, how))
    return path


def produce_returns(cfg, url=None, timeout=10.0) -> Path:
    """Call the four endpoints on the running API (url, or the config's api_url) and write apireturns.txt.

    If the server does not answer at all, make the same calls in-process. Returns the file's path.
    """
    url = url or cfg.api_url
    try:
        results = call_server(cfg, url, timeout)
        how = f"the server at {url}"
    except ServerDown as exc:
        logger.warning("%s; calling the app in-process instead", exc)
        results = call_in_process(cfg)
        how = f"in-process (the server at {url} did not answer: {exc})"
    return write_returns(cfg, results, how)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Call the running API's four endpoints and write apireturns.txt.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--url", help="the API's base URL (default: the config's api_url)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = args.url or cfg.api_url
    try:
        results = call_server(cfg, url, args.timeout)
    except ApiCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = write_returns(cfg, results, f"the server at {url}")
    failed = [(m, p, s, b) for m, p, s, b in results if not 200 <= s < 300]
    for method, endpoint, status, body in failed[:1]:
        reason = body.get("error", body) if isinstance(body, dict) else body
        print(f"error: {method} {endpoint}: {status} {reason}", file=sys.stderr)
        return 1
    print(f"{path}: answers of {', '.join(f'{m} {p}' for m, p, _, _ in results)} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
