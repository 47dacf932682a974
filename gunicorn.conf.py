"""gunicorn settings for `make serve`: the API on the loopback interface, one worker per core.

    PORT         the port (default 8000); the address is always 127.0.0.1
    DRAS_CONFIG  the config file (default: config.json beside app.py)
    WEB_CONCURRENCY  the number of workers (default: the number of cores)
"""
import os
import sys

bind = f"127.0.0.1:{int(os.environ.get('PORT', '8000'))}"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
wsgi_app = f"app:create_app({os.environ.get('DRAS_CONFIG')!r})"
# gthread keeps connections alive between requests (the sync worker closes each one), which is
# what clients that call the API repeatedly, and the benchmark, do. One thread: the work is CPU-bound.
worker_class = "gthread"
threads = 1
keepalive = 5
timeout = 30
graceful_timeout = 10
# The app is built in the master and shared copy-on-write by the workers; each worker loads the
# model itself on its first request (and again whenever the deployed version changes).
preload_app = True



def _config_or_exit():
    """A config the app cannot load stops gunicorn here, before it builds the app (preload_app), in
    one line and exit 2: gunicorn would print the app factory's traceback otherwise."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # read from any folder
    from settings import ConfigError, load_config

    try:
        load_config(os.environ.get("DRAS_CONFIG") or None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


_config_or_exit()

accesslog = None  # set by on_starting: log_folder_path/access.log of the served config
errorlog = "-"
loglevel = "info"


def on_starting(server):
    """The app's own loggers (model loads, failed loads) to stderr, like the scripts'; gunicorn's
    access log to log_folder_path/access.log (rotated by the cycle: settings.rotate_logs)."""
    from settings import ConfigError, load_config, setup_logging  # in the hook (the config check above imports settings only)

    setup_logging()
    try:
        folder = load_config(os.environ.get("DRAS_CONFIG") or None).log_folder_path
        folder.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError):
        return  # the app factory says what is wrong with the config, in one line
    if server.cfg.accesslog is None:  # unless given on the command line
        server.cfg.set("accesslog", str(folder / "access.log"))
        server.log.setup(server.cfg)


# --- online monitoring (monitoring.py) -------------------------------------------------------
# prometheus-client's multiprocess mode: each worker writes its metrics to files in this folder and
# /metrics sums them. It must be set before any worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dras-metrics-")
    _OWN_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:  # the operator's folder: last run's files would be counted again
    import glob

    for _stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(_stale)
    _OWN_METRICS_DIR = None


def child_exit(server, worker):
    """A worker is gone: its live gauges stop counting (its counters still do)."""
    import monitoring  # in the hook (the config check above imports settings only)

    monitoring.worker_exited(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        import shutil

        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)
