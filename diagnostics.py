"""Diagnostics: the deployed model's predictions, the data's summary and gaps, step timings, dependencies.

Every function returns plain data (the API serves it as JSON, the report renders it);
`python diagnostics.py` prints them all as JSON and records them in the history database.
"""
import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import closing
from pathlib import Path

import history
import words
from settings import COLUMNS, FEATURES, ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
CACHE_SECONDS = 24 * 3600
# An unreachable index is asked again after a minute, not on every call: the API answers at once.
FAILURE_CACHE_SECONDS = 60


def model_predictions(data, model=None, cfg=None) -> list:
    """The model's 0/1 predictions for `data` (a DataFrame or a CSV path), one per row, in order.

    `model` defaults to the deployed one (hash-checked) of `cfg`. Raises ValueError, naming the
    row or column, when a feature is absent, not a number or missing.
    """
    import pandas as pd

    if model is None:
        import deployment

        model, _ = deployment.load_deployed(cfg.prod_deployment_path)
    if not isinstance(data, pd.DataFrame):
        data = pd.read_csv(data)
    absent = [c for c in FEATURES if c not in data.columns]
    if absent:
        raise ValueError(f"missing column(s): {', '.join(absent)}")
    try:
        X = data[list(FEATURES)].astype("float64")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"a feature value is not a number: {exc}") from None
    gaps = X.isna()
    if gaps.to_numpy().any():
        row = int(gaps.any(axis=1).to_numpy().nonzero()[0][0])
        col = next(c for c in FEATURES if gaps[c].iloc[row])
        raise ValueError(f"row {row + 1} has no value for {col!r}: the model cannot predict it")
    return [int(p) for p in model.predict(X)]


def _latest_summary(cfg):
    with closing(history.connect(cfg.history)) as conn:
        return history.latest_summary(conn)


def dataframe_summary(cfg) -> dict:
    """Mean, median, std, min, max and count of each numeric feature of the ingested data.

    Computed at ingestion and stored, so this never re-reads finaldata.csv. Empty before any ingestion.
    """
    summary = _latest_summary(cfg)
    return summary["stats"] if summary else {}


def missing_data(cfg) -> dict:
    """Percentage of rows with a missing value, per column of the ingested data."""
    summary = _latest_summary(cfg)
    return summary["missing"] if summary else {c: None for c in COLUMNS}


def recorded_timings(cfg) -> dict:
    """The latest recorded seconds of each pipeline step, from real runs."""
    with closing(history.connect(cfg.history)) as conn:
        rows = conn.execute("SELECT step, seconds FROM step_timings WHERE id IN "
                            "(SELECT max(id) FROM step_timings GROUP BY step) ORDER BY step").fetchall()
    return {r["step"]: r["seconds"] for r in rows}


def execution_time(cfg) -> dict:
    """Seconds taken by ingestion and by training, measured on a scratch copy of the ingested data.

    The live finaldata.csv, model and production folder are never touched.
    """
    import ingestion
    import training
    from settings import load_config as _load

    with tempfile.TemporaryDirectory(prefix="dras-timing-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        if cfg.finaldata.exists():
            shutil.copyfile(cfg.finaldata, tmp / "in" / "finaldata.csv")
        # Its own SQLite history and writer lock in the scratch folder: never the live ones (a
        # history_url may name the live file, or the PostgreSQL database every host shares).
        live = {k: v for k, v in cfg.raw.items() if k != "history_url"}
        scratch = {**live, "input_folder_path": "in", "output_folder_path": "out",
                   "output_model_path": "model", "prod_deployment_path": "prod",
                   "quarantine_folder_path": "quarantine", "log_folder_path": "logs",
                   "test_data_path": str(cfg.test_data_path), "ingest_settle_seconds": 0}
        (tmp / "config.json").write_text(json.dumps(scratch))
        scratch_cfg = _load(tmp / "config.json")
        started = time.perf_counter()
        ingestion.ingest(scratch_cfg)
        ingest_seconds = time.perf_counter() - started
        started = time.perf_counter()
        try:
            training.run(scratch_cfg)
        except training.TrainingError as exc:
            logger.info("execution_time: training skipped: %s", exc)
            return {"ingestion": ingest_seconds, "training": None}
        return {"ingestion": ingest_seconds, "training": time.perf_counter() - started}


def read_requirements(path=REQUIREMENTS) -> dict:
    """Package -> pinned version, from a requirements file of `name==version` lines."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def _installed(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


_SSL_CONTEXT = None


def _ssl_context():
    """One TLS context for every ask, built on first use: loading the CA bundle takes ~0.1 s."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import ssl

        cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        if not cafile:
            try:
                import certifi

                cafile = certifi.where()
            except ImportError:
                cafile = None
        _SSL_CONTEXT = ssl.create_default_context(cafile=cafile)
    return _SSL_CONTEXT


class _IndexTimeout(Exception):
    """The index did not answer in time."""


def _latest_from_index(index_url, name, timeout):
    """Newest final release of `name` on a PEP 691 JSON simple index."""
    import gzip
    import urllib.error
    import urllib.request

    from packaging.version import InvalidVersion, Version

    project = re.sub(r"[-_.]+", "-", name).lower()  # the PEP 503 normalized name
    request = urllib.request.Request(f"{index_url.rstrip('/')}/{project}/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json", "Accept-Encoding": "gzip"})
    context = _ssl_context() if request.type == "https" else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            data = resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                data = gzip.decompress(data)
    except TimeoutError:  # a read that outlived the timeout
        raise _IndexTimeout() from None
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        raise
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not the JSON simple API") from None
    if not isinstance(body, dict) or not isinstance(body.get("versions"), list):
        raise ValueError("no list of versions in the JSON answer")
    versions = []
    for v in body["versions"]:
        try:
            parsed = Version(v)
        except (InvalidVersion, TypeError):
            continue
        if not parsed.is_prerelease and not parsed.is_devrelease:
            versions.append(parsed)
    if not versions:
        raise ValueError("the index lists no release")
    return str(max(versions))


def _index_failure(exc, index_url, timeout) -> str:
    """One short reason, the same for every package that failed the same way."""
    import urllib.error
    from urllib.parse import urlsplit

    host = urlsplit(index_url).netloc or index_url
    if isinstance(exc, urllib.error.HTTPError):
        return f"package index {host} answered HTTP {exc.code}"
    if isinstance(exc, _IndexTimeout) or (isinstance(exc, urllib.error.URLError)
                                          and isinstance(exc.reason, TimeoutError)):
        return f"package index {host} did not answer within {timeout}s"
    if isinstance(exc, urllib.error.URLError) and "CERTIFICATE" in str(exc.reason).upper():
        return f"package index {host} unreachable: its TLS certificate was refused"
    if isinstance(exc, (urllib.error.URLError, ConnectionError)):
        return f"package index {host} unreachable: cannot connect"
    if isinstance(exc, ValueError):
        return f"package index {host} answer unusable: {str(exc)[:120]}"
    import http.client

    if isinstance(exc, http.client.HTTPException):
        return f"package index {host} unusable: its answer is not HTTP"
    return f"package index {host} unusable: {words.error_text(exc)}"


def _newer(latest, pinned) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(latest) > Version(pinned)
    except InvalidVersion:
        return latest != pinned


def _read_cache(path):
    if path is None or not path.exists():
        return {}
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _fresh(entry, now):
    """Whether a cache entry still holds: a day for a version, a minute for a failure."""
    if not isinstance(entry, dict) or not isinstance(entry.get("at"), (int, float)):
        return False
    age = now - entry["at"]
    return 0 <= age < (CACHE_SECONDS if entry.get("latest") else FAILURE_CACHE_SECONDS)


def outdated_packages_list(cfg=None, requirements=REQUIREMENTS, index_url=None, timeout=1.5) -> dict:
    """For each pinned package: pinned, installed and latest version, and a status.

    The latest versions come from the package index, all asked at once with a deadline of
    `timeout` seconds, and are cached (in output_folder_path) for a day; when the index can't be
    reached the answer still comes back in time, with "latest" None, status "unknown" and the
    reason given, and that failure is remembered for a minute so repeated calls answer at once.
    """
    index_url = index_url or (cfg.package_index_url if cfg is not None else "https://pypi.org/simple")
    pins = read_requirements(requirements)
    cache_path = cfg.output_folder_path / "package_index_cache.json" if cfg is not None else None
    cache = _read_cache(cache_path)
    now = time.time()
    known = cache.get(index_url) if isinstance(cache.get(index_url), dict) else {}
    fresh = {n: e for n, e in known.items() if n in pins and _fresh(e, now)}
    latest = {n: e["latest"] for n, e in fresh.items() if e.get("latest")}
    errors = {n: str(e.get("error") or "package index failed (cached)") for n, e in fresh.items()
              if not e.get("latest")}
    wanted = [n for n in pins if n not in fresh]
    if wanted and index_url.startswith("https:"):
        try:
            _ssl_context()  # once, before the threads, within the deadline
        except OSError as exc:  # ssl.SSLError too: an unreadable or broken CA bundle
            for name in wanted:
                errors[name] = f"cannot check the package index: no usable CA bundle ({exc})"
            wanted = []
    if wanted:
        import http.client

        deadline = time.monotonic() + timeout
        pool = ThreadPoolExecutor(max_workers=min(16, len(wanted)), thread_name_prefix="package-index")
        futures = {pool.submit(_latest_from_index, index_url, n, timeout): n for n in wanted}
        done, not_done = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        # Threads still waiting on the index are left to their own socket timeout, not waited for.
        pool.shutdown(wait=False, cancel_futures=True)
        for fut in done:
            name = futures[fut]
            try:
                latest[name] = fut.result()
                fresh[name] = {"latest": latest[name], "at": now}
            # URLError and HTTPError are OSErrors; a server that speaks no HTTP raises HTTPException.
            except (OSError, ValueError, http.client.HTTPException, _IndexTimeout) as exc:
                errors[name] = _index_failure(exc, index_url, timeout)
                fresh[name] = {"latest": None, "error": errors[name], "at": now}
        for fut in not_done:
            name = futures[fut]
            errors[name] = _index_failure(_IndexTimeout(), index_url, timeout)
            fresh[name] = {"latest": None, "error": errors[name], "at": now}
        if cache_path is not None:
            import atomicfiles

            cache[index_url] = {**known, **fresh}
            try:
                atomicfiles.write_text(cache_path, json.dumps(cache, sort_keys=True) + "\n")
            except OSError as exc:  # a read-only output folder costs the cache, not the answer
                logger.warning("cannot write the package index cache %s: %s", cache_path, exc)
    packages = []
    for name, pinned in pins.items():
        installed = _installed(name)
        entry = {"package": name, "pinned": pinned, "installed": installed, "latest": latest.get(name)}
        if installed != pinned:
            entry["status"] = "not as pinned"
        elif name in errors:
            entry["status"] = "unknown"
        elif _newer(entry["latest"], pinned):
            entry["status"] = "outdated"
        else:
            entry["status"] = "up to date"
        if name in errors:
            entry["reason"] = errors[name]
        packages.append(entry)
    return {"index": index_url, "packages": packages}


def collect(cfg, measure=True) -> dict:
    """All diagnostics at once, recorded in the history database."""
    result = {
        "summary": dataframe_summary(cfg),
        "missing_data": missing_data(cfg),
        "execution_time": execution_time(cfg) if measure else recorded_timings(cfg),
        "recorded_timings": recorded_timings(cfg),
        "dependencies": outdated_packages_list(cfg),
    }
    with closing(history.connect(cfg.history)) as conn:
        history.record_json(conn, "diagnostics", at=time.time(), kind="all", value=result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print the system's diagnostics as JSON.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = collect(cfg)
    import deployment

    try:
        result["predictions_on_test_data"] = model_predictions(cfg.test_data_file, cfg=cfg)
    except (deployment.DeploymentError, ValueError) as exc:
        result["predictions_on_test_data"] = f"unavailable: {exc}"
    except OSError as exc:  # the test data missing or unreadable
        result["predictions_on_test_data"] = f"unavailable: cannot read the test data: {words.error_text(exc)}"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
