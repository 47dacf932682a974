"""Loading and checking config.json, and the logging set-up shared by the entry points.

Nothing here runs at import: `load_config(path)` is called by each script's `main()`
and by the app factory.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import progress
import words

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.json"

FEATURES = ("lastmonth_activity", "lastyear_activity", "number_of_employees")
TARGET = "exited"
COLUMNS = ("corporation",) + FEATURES + (TARGET,)

# key -> (type, default); a default of REQUIRED means the key must be present.
REQUIRED = object()
PATH_KEYS = (
    "input_folder_path",
    "output_folder_path",
    "test_data_path",
    "output_model_path",
    "prod_deployment_path",
)
SCHEMA = {
    **{key: (str, REQUIRED) for key in PATH_KEYS},
    "quarantine_folder_path": (str, "quarantine"),
    "log_folder_path": (str, "logs"),
    "log_max_bytes": (int, 1_000_000),
    "log_backups": (int, 20),
    "ingest_settle_seconds": (float, 2.0),
    "writer_wait_seconds": (float, 60.0),
    # where the history lives: null (output_folder_path/history.sqlite), sqlite:///PATH or postgresql://...
    "history_url": ((str, type(None)), None),
    # the name this host's traffic windows carry in the history (null: the machine's host name)
    "host_name": ((str, type(None)), None),
    "model": (dict, {}),
    "keep_versions": (int, 5),
    "drift_test": (str, "sequential"),
    "drift_significance_level": (float, 0.05),
    # the sequential test's reference takes the model's out-of-fold cross-validation outcomes too
    "drift_reference_cross_validation": (bool, True),
    "drift_bootstrap_rounds": (int, 2000),
    "drift_min_history": (int, 3),
    "feature_drift_triggers_retrain": (bool, False),
    "feature_drift_psi_threshold": (float, 0.2),
    "promotion_gate": (bool, True),
    "api_url": (str, "http://127.0.0.1:8000"),
    "package_index_url": (str, "https://pypi.org/simple"),
    "max_request_bytes": (int, 16 * 1024 * 1024),
    "cv_folds": (int, 5),
    "cv_max_rows": (int, 100_000),
    "slices": (dict, None),
    "slice_margin": (float, 0.1),
    "slice_min_rows": (int, 10),
    # online monitoring (monitoring.py)
    "monitoring": (bool, True),
    "monitoring_flush_seconds": (float, 5.0),
    "monitoring_flush_requests": (int, 1000),
    "monitoring_window_seconds": (float, 60.0),
    "monitoring_min_rows": (int, 100),
    "monitoring_estimate": (bool, True),
    "psi_watch": (float, 0.1),
    "psi_act": (float, 0.2),
    # live-drift alarms (alarms.py): the chance of any "act" in a day of undrifted traffic, the
    # expected "watch" looks a day, and how long small windows are pooled before being dropped
    "alarm_act_per_day": (float, 0.04),
    "alarm_watch_per_day": (float, 1.0),
    "alarm_pool_seconds": (float, 3600.0),
    "live_drift_triggers_retrain": (bool, False),
    # alerts (alerts.py): where the JSON events go (none: no webhook), the estimated-F1 margin, the time budget
    "alert_webhook_url": ((str, type(None)), None),
    "alert_f1_margin": (float, 0.1),
    "alert_budget_seconds": (float, 3.0),
}
# The slices every audit reports unless config.json names others: three size bands and three
# activity bands, at the terciles of the training data.
DEFAULT_SLICES = {"number_of_employees": {"bands": 3}, "lastmonth_activity": {"bands": 3}}
MODEL_SCHEMA = {
    "C": (float, 1.0),
    "max_iter": (int, 1000),
    "class_weight": ((str, type(None)), None),
    "random_state": (int, 0),
}
SQLITE_SCHEME = "sqlite:///"  # sqlite:///relative/to/config.json, sqlite:////absolute (as SQLAlchemy)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DRIFT_TESTS = ("sequential", "raw", "parametric", "nonparametric", "significance")


class ConfigError(Exception):
    """config.json is missing, unreadable, or has a missing, unknown or mistyped key."""


@dataclass(frozen=True)
class Config:
    """The checked configuration, with every path made absolute against the config's folder."""

    path: Path
    input_folder_path: Path
    output_folder_path: Path
    test_data_path: Path
    output_model_path: Path
    prod_deployment_path: Path
    quarantine_folder_path: Path
    log_folder_path: Path
    log_max_bytes: int
    log_backups: int
    ingest_settle_seconds: float
    writer_wait_seconds: float
    history_url: str
    host_name: str
    model: dict
    keep_versions: int
    drift_test: str
    drift_significance_level: float
    drift_reference_cross_validation: bool
    drift_bootstrap_rounds: int
    drift_min_history: int
    feature_drift_triggers_retrain: bool
    feature_drift_psi_threshold: float
    promotion_gate: bool
    api_url: str
    package_index_url: str
    max_request_bytes: int
    cv_folds: int
    cv_max_rows: int
    slices: dict
    slice_margin: float
    slice_min_rows: int
    monitoring: bool
    monitoring_flush_seconds: float
    monitoring_flush_requests: int
    monitoring_window_seconds: float
    monitoring_min_rows: int
    monitoring_estimate: bool
    psi_watch: float
    psi_act: float
    alarm_act_per_day: float
    alarm_watch_per_day: float
    alarm_pool_seconds: float
    live_drift_triggers_retrain: bool
    alert_webhook_url: str
    alert_f1_margin: float
    alert_budget_seconds: float
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def base(self) -> Path:
        return self.path.parent

    @property
    def test_data_file(self) -> Path:
        """test_data_path may name the folder holding testdata.csv, or the file itself."""
        if self.test_data_path.suffix.lower() == ".csv":
            return self.test_data_path
        return self.test_data_path / "testdata.csv"

    @property
    def postgres(self) -> bool:
        """Whether history_url puts the history (and the writer lock) in PostgreSQL."""
        return self.history_url is not None and self.history_url.startswith(POSTGRES_SCHEMES)

    @property
    def history_db(self) -> Path:
        """The SQLite history file: history_url's sqlite:///PATH, or output_folder_path/history.sqlite."""
        if self.history_url is not None and self.history_url.startswith(SQLITE_SCHEME):
            path = Path(self.history_url[len(SQLITE_SCHEME):]).expanduser()
            return path if path.is_absolute() else (self.base / path).resolve()
        return self.output_folder_path / "history.sqlite"

    @property
    def history(self):
        """Where history.connect finds the history: the postgresql URL, or the SQLite file's path."""
        return self.history_url if self.postgres else self.history_db

    @property
    def host(self) -> str:
        """The host this process runs on, as the history names it: host_name, or the machine's name."""
        if self.host_name is not None:
            return self.host_name
        import socket  # lazy: only the API's monitoring asks

        return socket.gethostname()

    @property
    def writer_lock(self):
        """Where locks.py takes the writer lock: the postgresql URL (an advisory lock that every host
        sharing the history sees), or the output folder (a flock on its .writer.lock)."""
        return self.history_url if self.postgres else self.output_folder_path

    @property
    def finaldata(self) -> Path:
        return self.output_folder_path / "finaldata.csv"

    @property
    def ingested_list(self) -> Path:
        return self.output_folder_path / "ingestedfiles.txt"

    @property
    def model_file(self) -> Path:
        return self.output_model_path / "trainedmodel.pkl"

    @property
    def score_file(self) -> Path:
        return self.output_model_path / "latestscore.txt"


# JSON's words for the types a config value may have (a user reads them, not Python's names).
TYPE_WORDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
              list: "a list", dict: "an object", type(None): "null"}


def _check_type(key, value, expected):
    types = expected if isinstance(expected, tuple) else (expected,)
    # bool is an int in Python; a config saying "keep_versions": true is still a mistake.
    if isinstance(value, bool) and bool not in types:
        ok = False
    elif float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join(dict.fromkeys(TYPE_WORDS[t] for t in types))
        raise ConfigError(f"config key {key!r} must be {names}, not {json.dumps(value)}")


def _checked(section, data, schema):
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise ConfigError(f"unknown {section} key {unknown[0]!r} (known keys: {', '.join(sorted(schema))})")
    out = {}
    for key, (expected, default) in schema.items():
        if key not in data:
            if default is REQUIRED:
                raise ConfigError(f"missing {section} key {key!r}")
            out[key] = default
            continue
        _check_type(key, data[key], expected)
        out[key] = float(data[key]) if expected is float else data[key]
    return out


def _checked_slices(spec):
    """A fresh copy of `slices` (the defaults when absent): {feature: {"bands": n} or {"edges": [...]}}."""
    if spec is None:
        return {f: dict(how) for f, how in DEFAULT_SLICES.items()}
    out = {}
    for feature, how in spec.items():
        where = f"config key 'slices' entry {feature!r}"
        if feature not in FEATURES:
            raise ConfigError(f"{where}: not a feature (features: {', '.join(FEATURES)})")
        if not isinstance(how, dict) or len(how) != 1 or next(iter(how)) not in ("bands", "edges"):
            raise ConfigError(f'{where} must be {{"bands": N}} or {{"edges": [numbers]}}, not {json.dumps(how)}')
        if "bands" in how:
            n = how["bands"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise ConfigError(f"{where}: bands must be an integer of at least 2, not {json.dumps(n)}")
            out[feature] = {"bands": n}
        else:
            edges = how["edges"]
            if (not isinstance(edges, list) or not edges
                    or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in edges)):
                raise ConfigError(f"{where}: edges must be a non-empty list of numbers, not {json.dumps(edges)}")
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ConfigError(f"{where}: edges must be strictly increasing, not {json.dumps(edges)}")
            out[feature] = {"edges": [float(e) for e in edges]}
    return out


def _check_history_url(url):
    """history_url: null, sqlite:///PATH or postgresql://USER@HOST[:PORT]/DBNAME, never with a password
    (and never echoed: a mistyped one may hold one)."""
    if url is None:
        return
    if url.startswith(SQLITE_SCHEME):
        if len(url) == len(SQLITE_SCHEME):
            raise ConfigError("config key 'history_url' sqlite:/// needs a file's path after it")
        return
    if not url.startswith(POSTGRES_SCHEMES):
        raise ConfigError("config key 'history_url' must be sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME "
                          "(or absent: the SQLite file output_folder_path/history.sqlite)")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ConfigError("config key 'history_url' has a port that is not a number") from None
    if parts.password is not None or "password=" in parts.query.lower():
        raise ConfigError("config key 'history_url' must not hold a password: set it in PGPASSWORD or ~/.pgpass "
                          "(the URL is written to the logs and the cycle records)")
    if (not parts.hostname and "host=" not in parts.query) or not parts.path.strip("/") or any(c.isspace() for c in url):
        raise ConfigError("config key 'history_url' must name a host and a database: "
                          "postgresql://USER@HOST:PORT/DBNAME")


def load_config(path=None) -> Config:
    """Read and check config.json; raise ConfigError with a one-line reason."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    path = path.expanduser().resolve()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {words.error_text(exc)}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    values = _checked("config", data, SCHEMA)
    values["model"] = _checked("model", values["model"], MODEL_SCHEMA)
    model = values["model"]
    if not model["C"] > 0:
        raise ConfigError(f"model key 'C' must be a positive number, not {model['C']!r}")
    if model["max_iter"] < 1:
        raise ConfigError(f"model key 'max_iter' must be at least 1, not {model['max_iter']!r}")
    if model["class_weight"] not in (None, "balanced"):
        raise ConfigError(f"model key 'class_weight' must be null or \"balanced\", not {model['class_weight']!r}")
    for key in ("drift_bootstrap_rounds", "max_request_bytes"):
        if values[key] < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, not {values[key]!r}")
    if values["drift_test"] not in DRIFT_TESTS:
        raise ConfigError(f"config key 'drift_test' must be one of {', '.join(DRIFT_TESTS)}, not {values['drift_test']!r}")
    if values["keep_versions"] < 2:
        raise ConfigError("config key 'keep_versions' must be at least 2, so a rollback has somewhere to go")
    if not 0 < values["drift_significance_level"] < 1:
        raise ConfigError("config key 'drift_significance_level' must be between 0 and 1")
    if values["writer_wait_seconds"] < 0:
        raise ConfigError("config key 'writer_wait_seconds' must be 0 (refuse at once) or a positive number of seconds")
    if values["cv_max_rows"] < 0:
        raise ConfigError("config key 'cv_max_rows' must be 0 (every row) or a positive number of rows")
    if values["cv_folds"] == 1 or values["cv_folds"] < 0:
        raise ConfigError("config key 'cv_folds' must be 0 (off) or at least 2")
    if not 0 <= values["slice_margin"] <= 1:
        raise ConfigError("config key 'slice_margin' must be between 0 and 1")
    if values["slice_min_rows"] < 1:
        raise ConfigError("config key 'slice_min_rows' must be at least 1")
    values["slices"] = _checked_slices(values["slices"])
    if values["monitoring_flush_seconds"] <= 0 or values["monitoring_window_seconds"] <= 0:
        raise ConfigError("config keys 'monitoring_flush_seconds' and 'monitoring_window_seconds' must be positive")
    if values["monitoring_flush_requests"] < 1:
        raise ConfigError("config key 'monitoring_flush_requests' must be at least 1")
    if not 0 < values["psi_watch"] <= values["psi_act"]:
        raise ConfigError("config keys 'psi_watch' and 'psi_act' must satisfy 0 < psi_watch <= psi_act")
    if not 0 < values["alarm_act_per_day"] <= values["alarm_watch_per_day"]:
        raise ConfigError("config keys 'alarm_act_per_day' and 'alarm_watch_per_day' must satisfy"
                          " 0 < alarm_act_per_day <= alarm_watch_per_day")
    if values["alarm_pool_seconds"] < values["monitoring_window_seconds"]:
        raise ConfigError("config key 'alarm_pool_seconds' must be at least 'monitoring_window_seconds'")
    if values["monitoring_min_rows"] < 1:
        raise ConfigError("config key 'monitoring_min_rows' must be at least 1")
    url = values["alert_webhook_url"]
    if url is not None:
        parts = urlsplit(url)
        # The URL itself is never echoed: a Slack webhook's holds its secret.
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
            raise ConfigError("config key 'alert_webhook_url' must be an http:// or https:// URL with a host, "
                              "or absent (no webhook)")
    _check_history_url(values["history_url"])
    host = values["host_name"]
    if host is not None and not (0 < len(host) <= 63 and host.isprintable() and host.strip() == host):
        raise ConfigError("config key 'host_name' must be 1 to 63 printable characters, without leading or "
                          "trailing spaces (or absent: the machine's host name)")
    if not 0 <= values["alert_f1_margin"] <= 1:
        raise ConfigError("config key 'alert_f1_margin' must be between 0 and 1")
    if not 0 < values["alert_budget_seconds"] <= 30:
        raise ConfigError("config key 'alert_budget_seconds' must be more than 0 and at most 30")
    if values["log_max_bytes"] < 1024 or values["log_backups"] < 0:
        raise ConfigError("config keys 'log_max_bytes' and 'log_backups' must be at least 1024 and 0")
    for key in PATH_KEYS + ("quarantine_folder_path", "log_folder_path"):
        p = Path(values[key]).expanduser()
        values[key] = p if p.is_absolute() else (path.parent / p).resolve()
    return Config(path=path, raw=data, **values)


def setup_logging(level="INFO"):
    """Configure logging once, from an entry point: one line per record on stderr (erasing any
    progress line first: progress.py).

    (What `logging.config.dictConfig` would do, without importing logging.config and its socket and
    pickle machinery: ~10 ms the monitoring cycle's idle path cannot spare.)
    """
    handler = progress.LogHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)


# The logs in log_folder_path that grow with every cycle or request: cron's redirection of the
# cycle's output, the cycle's JSON lines, and gunicorn's access log (gunicorn.conf.py).
ROTATED_LOGS = ("cron.log", "cycles.jsonl", "access.log")


def rotate_logs(folder, max_bytes, backups):
    """Rotate each of ROTATED_LOGS in `folder` that has reached `max_bytes`: its text goes to
    NAME.1.gz (older copies shift to .2.gz ... and the one past `backups` is removed), then the
    file is emptied in place. Return the names rotated.

    Copy-then-truncate, not rename: cron's `>>` and gunicorn hold the file open in append mode, and
    keep writing to it (from offset 0) after the truncation; a renamed file would take their next
    lines with it. Only a stat per file when nothing is due: the idle cycle calls this.
    """
    rotated = []
    for name in ROTATED_LOGS:
        path = Path(folder) / name
        try:
            if path.stat().st_size < max_bytes:
                continue
        except FileNotFoundError:
            continue
        import gzip  # lazy: only when a log is due, never on the idle cycle's usual path
        import shutil

        for n in range(backups, 0, -1):
            older = path.with_name(f"{name}.{n}.gz")
            if older.exists():
                if n == backups:
                    older.unlink()
                else:
                    older.replace(path.with_name(f"{name}.{n + 1}.gz"))
        if backups:
            target = path.with_name(f"{name}.1.gz")
            partial = target.with_name(target.name + ".part")
            with open(path, "rb") as src, gzip.open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
        os.truncate(path, 0)
        rotated.append(name)
    return rotated
