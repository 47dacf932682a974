"""Online monitoring, the write side: what the API is asked and what it answers, over time, cheaply.

Each API worker keeps its traffic in memory: per request only a few counters move and the
feature matrix is kept by reference. A background thread folds that into the aggregates of the
current time window (requests and latency by endpoint and status, rows, predicted exits, mean
probability, and per feature count, mean, variance, min, max and a histogram over the training
data's fixed bins) and writes them to the history database every `monitoring_flush_seconds` or
`monitoring_flush_requests` requests: one row per window, model version and worker (naming its
host: config.json's `host_name`, or the machine's name), replaced as the window grows. A request
never waits on the database. No raw input is ever written. Several API hosts sharing one history
each write their own rows; every reader adds them up. `/metrics` stays this host's own: its
counters are this host's workers', from a PROMETHEUS_MULTIPROC_DIR local to the host.

Live input drift: each feature's live histogram against the training histogram stored with the
deployed model (trainedmodel.json's "monitoring", made by drift.reference_bins), per window, all
workers merged (traffic.py reads the windows back): PSI is the magnitude shown, the level is
alarms.py's test (each closed window judged once, small windows pooled to `monitoring_min_rows`
rows). A look at "act" makes /health say "degraded" (never down) and is logged as a warning.

Estimated F1 (estimate.py): when the version's reference holds a calibration table, the flush
thread adds each window's six calibrated sums (the request only keeps its answers by reference);
`monitoring_estimate` false turns it off.

    Monitor(cfg)                     one per app: the in-memory aggregates and the flush thread
    Middleware(app, monitor, ...)    WSGI: times every request, the fast path included
    metrics_text(monitor, version)   the Prometheus exposition (GET /metrics)
    worker_exited(pid)               gunicorn's child_exit hook (Prometheus multiprocess files)
"""
import atexit
import bisect
import itertools
import json
import logging
import math
import os
import threading
import time
import weakref

import numpy as np

import alerts
import estimate
import history
import words
from drift import LEVELS, bin_counts, model_reference
from settings import FEATURES
from traffic import LATENCY_BOUNDS, add_counts, last_cycle, merge_feature, model_references, recent_windows

logger = logging.getLogger(__name__)

# The Prometheus histogram's buckets (seconds): some of the stored windows' LATENCY_BOUNDS (0.3 ms to 10 s, about
# 1-2-5), so the flush fills it from the stored buckets, no observe() per request.
PROM_BUCKETS = tuple(LATENCY_BOUNDS[k + 100] for k in (-70, -66, -60, -54, -46, -40, -34, -26, -20, -14, -6,
                                                        0, 6, 14, 20))
# stored bucket index -> Prometheus bucket index (the last one is +Inf)
TO_PROM = [bisect.bisect_left(PROM_BUCKETS, bound) for bound in LATENCY_BOUNDS] + [len(PROM_BUCKETS)]
PROM_ENV = "PROMETHEUS_MULTIPROC_DIR"

# One row per window, model version and worker (history.SCHEMA's traffic_windows), replaced as the window grows;
# it names the worker's host, so that the readers can say which host served what (they add up all hosts).
UPSERT = history.upsert_sql("traffic_windows", ("window_start", "model_version", "worker"),
                            ("window_start", "window_seconds", "model_version", "worker", "host", "updated_at",
                             "requests", "rows", "aggregates"))


# ---------------------------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------------------------

def empty_features(ref):
    nbins = [len(e) + 1 for e in ref["edges"]] if ref else [0] * len(FEATURES)
    return {f: {"count": 0, "mean": 0.0, "m2": 0.0, "min": None, "max": None, "hist": [0] * n}
            for f, n in zip(FEATURES, nbins)}


def fold_matrix(features, X, ref):
    """Fold the rows of X into the per-feature aggregates `features` (in place)."""
    n = len(X)
    if n == 0:
        return
    means = X.mean(axis=0)
    m2s = ((X - means) ** 2).sum(axis=0)
    mins, maxs = X.min(axis=0), X.max(axis=0)
    for j, name in enumerate(FEATURES):
        hist = bin_counts(X[:, j], ref["edges"][j]).tolist() if ref else []
        chunk = {"count": n, "mean": float(means[j]), "m2": float(m2s[j]), "min": float(mins[j]),
                 "max": float(maxs[j]), "hist": hist}
        features[name] = merge_feature(features[name], chunk)


def _observe(prom, endpoint, status, buckets, seconds):
    """Add a flush's requests to the Prometheus histogram in bulk: what observe() would have done
    request by request (same bucket values, same sum), without its cost on the request path."""
    child = prom["children"].get((endpoint, status))
    if child is None:
        child = prom["children"][(endpoint, status)] = prom["latency"].labels(endpoint, str(status))
    per = {}
    for b, n in buckets.items():
        j = TO_PROM[b]
        per[j] = per.get(j, 0) + n
    for j, n in per.items():
        child._buckets[j].inc(n)
    child._sum.inc(seconds)


def _answer_sums(table, answers):
    """estimate.window_sums of a flush's answers, [(probabilities, predictions)], in one pass."""
    n = sum(len(p) for p, _ in answers)
    prob = np.fromiter(itertools.chain.from_iterable(p for p, _ in answers), dtype=np.float64, count=n)
    pred = np.fromiter(itertools.chain.from_iterable(q for _, q in answers), dtype=np.int64, count=n)
    return estimate.window_sums(table, prob, pred)


def _worker_name():
    import uuid

    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _Pending:
    """What requests added since the last flush, for one window and model version."""

    __slots__ = ("latency", "seconds", "chunks", "lists", "answers", "rows", "exits", "probability_sum")

    def __init__(self):
        self.latency = {}  # (endpoint, status) -> {latency bucket: requests}
        self.seconds = {}  # (endpoint, status) -> seconds answering them
        self.chunks = []  # feature matrices (numpy), by reference
        self.lists = []  # rows given as lists (the fast path's few-row JSON requests)
        self.answers = []  # (probabilities, predictions) by reference, for the estimated F1
        self.rows = 0
        self.exits = 0
        self.probability_sum = 0.0


class Monitor:
    """The worker's traffic aggregates, flushed to the history database by a background thread."""

    def __init__(self, cfg, clock=time.time):
        self.cfg = cfg
        self.enabled = cfg.monitoring
        self.window_seconds = float(cfg.monitoring_window_seconds)
        self.clock = clock
        self.worker = None
        self.host = cfg.host  # asked once: every window row this process writes names it
        self.status = {"level": "ok", "psi": {}, "window_start": None, "model_version": None, "rows": 0}
        self.estimating = cfg.monitoring_estimate
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending = {}
        self._requests = 0
        self._refs = {}
        self._windows = {}  # (window_start, version) -> cumulative aggregates of this worker
        self._dirty = set()  # windows changed since the last successful write
        self._serving = None  # the model version the worker last served with
        self._refreshed = -math.inf  # time.monotonic() of the last status update
        self._started = False  # the flush thread of this process
        self._cur = None  # (start, end, version, slot): the slot requests go to, until a flush
        self._wake = threading.Event()
        self._thread = None
        # A forked worker (gunicorn's preload_app) starts afresh: its own thread, locks and traffic.
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: me() is not None and me()._forked())
        self._stop = False
        self._conn = None
        self._prom = None
        self._error = None
        self.watchers = []  # callables the flush thread runs after each pass (alerts.ApiWatch)

    # -- what other modules read ------------------------------------------------------------
    def references(self):
        """{model version: its monitoring reference (drift.model_reference) or None}, of the
        versions this worker has served: the read side need not read their manifests again."""
        return self._refs

    def live_registry(self):
        """This process's Prometheus registry of live metrics (None in multiprocess mode, where the
        metrics are in PROMETHEUS_MULTIPROC_DIR's files); the flush thread starts first."""
        self.start()
        return self._prom["registry"]

    # -- the hot path ------------------------------------------------------------------------
    def _slot(self, version):
        now = self.clock()
        cur = self._cur
        if cur is not None and cur[2] == version and cur[0] <= now < cur[1]:
            return cur[3]
        start = now - now % self.window_seconds
        key = (start, version)
        slot = self._pending.get(key)
        if slot is None:
            slot = self._pending[key] = _Pending()
        self._cur = (start, start + self.window_seconds, version, slot)
        return slot

    def request(self, endpoint, status, seconds, version):
        """Count one answered request (any endpoint)."""
        if not self._started:
            self.start()
        b = bisect.bisect_left(LATENCY_BOUNDS, seconds)
        if version:
            self._serving = version
        key = (endpoint, status)
        with self._lock:
            slot = self._slot(version or 0)
            lat = slot.latency.get(key)
            if lat is None:
                lat = slot.latency[key] = {}
                slot.seconds[key] = 0.0
            lat[b] = lat.get(b, 0) + 1
            slot.seconds[key] += seconds
            self._requests += 1
            n = self._requests
        if n >= self.cfg.monitoring_flush_requests:
            self._wake.set()

    def prediction(self, X, predictions, probabilities, manifest):
        """Keep one answered prediction: the matrix by reference, the sums of the answers."""
        version = manifest["version"]
        if version not in self._refs:
            self._refs[version] = model_reference(manifest)
        exits = sum(predictions)
        probability_sum = sum(probabilities)
        with self._lock:
            slot = self._slot(version)
            if type(X) is list:
                slot.lists.extend(X)
            else:
                slot.chunks.append(X)
            slot.rows += len(X)
            slot.exits += exits
            slot.probability_sum += probability_sum
            if self.estimating:
                slot.answers.append((probabilities, predictions))

    # -- the flush thread --------------------------------------------------------------------
    def _forked(self):
        self._lock, self._flush_lock = threading.Lock(), threading.Lock()
        self._pending, self._windows, self._requests, self._conn, self._cur = {}, {}, 0, None, None
        self._dirty = set()
        self._started, self._thread, self.worker = False, None, None

    def start(self):
        """Start this process's flush thread (once per process: after a fork, again)."""
        if self._started:
            return
        with self._flush_lock:
            if self._started:
                return
            self._started = True
            self.worker = _worker_name()
            self._prom = prometheus_metrics(self)
            self._wake = threading.Event()
            if not self.enabled:
                return
            self._thread = threading.Thread(target=self._run, name="monitoring-flush", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self):
        while not self._stop:
            self._wake.wait(self.cfg.monitoring_flush_seconds)
            self._wake.clear()
            try:
                if not self.flush():
                    self.refresh()  # no traffic here: the other workers' may have moved the status
                self._error = None
            except (history.Error, OSError, ValueError) as exc:
                if str(exc) != self._error:  # once per kind of failure, not every few seconds
                    logger.warning("monitoring flush failed, will retry: %s", words.error_text(exc))
                self._error = str(exc)
            for watch in self.watchers:  # here, off every request's path; a delivery has its own time bound
                try:
                    watch()
                except (history.Error, OSError, ValueError) as exc:
                    logger.warning("alert check failed, will retry: %s", words.error_text(exc))

    def close(self):
        """Stop the flush thread after a last flush; close the history connections, the watchers' too."""
        self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)  # its last pass ends first: no watcher's connection closed under it
        try:
            self.flush()
        except (history.Error, OSError, ValueError) as exc:
            logger.warning("last monitoring flush failed: %s", words.error_text(exc))
        with self._flush_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        for watch in self.watchers:
            getattr(watch, "close", lambda: None)()

    def _db(self):
        if self._conn is None:
            # The flush thread and a last flush at exit share it, one at a time (_flush_lock).
            self._conn = history.connect(self.cfg.history, threads=True)
        return self._conn

    def flush(self):
        """Fold the pending traffic into the window aggregates and write the changed windows.

        Returns the number of window rows written."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending, self._requests, self._cur = self._pending, {}, 0, None
            if not pending and not self._dirty:
                return 0
            if self.worker is None:
                self.worker = _worker_name()
            changed = []
            prom = self._prom
            for (start, version), slot in pending.items():
                ref = self._refs.get(version)
                agg = self._windows.get((start, version))
                if agg is None:
                    agg = self._windows[(start, version)] = {
                        "requests": {}, "latency": {}, "rows": 0, "exits": 0, "probability_sum": 0.0,
                        "features": empty_features(ref)}
                for (ep, status), buckets in slot.latency.items():
                    by_status = agg["requests"].setdefault(ep, {})
                    by_status[str(status)] = by_status.get(str(status), 0) + sum(buckets.values())
                    add_counts(agg["latency"].setdefault(ep, {}), {str(k): v for k, v in buckets.items()})
                    if prom is not None:
                        _observe(prom, ep, status, buckets, slot.seconds[(ep, status)])
                if slot.lists:  # one pass over the rows, no list of lists made into an array
                    flat = np.fromiter(itertools.chain.from_iterable(slot.lists), dtype=np.float64,
                                       count=len(FEATURES) * len(slot.lists))
                    chunks = slot.chunks + [flat.reshape(-1, len(FEATURES))]
                else:
                    chunks = slot.chunks
                if chunks:
                    X = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
                    fold_matrix(agg["features"], X, ref)
                if slot.answers and ref is not None and ref.get("calibration"):
                    sums = _answer_sums(ref["calibration"], slot.answers)
                    agg["estimate"] = estimate.add_sums(agg["estimate"], sums) if "estimate" in agg else sums
                agg["rows"] += slot.rows
                agg["exits"] += slot.exits
                agg["probability_sum"] += slot.probability_sum
                if prom is not None and slot.rows:
                    prom["rows"].labels(str(version)).inc(slot.rows)
                    prom["exits"].labels(str(version)).inc(slot.exits)
                changed.append((start, version))
            # Windows a failed write left behind are written again with these.
            self._dirty.update(changed)
            changed = sorted(self._dirty)
            now = time.time()
            conn = self._db()
            with history.transaction(conn):
                conn.executemany(
                    UPSERT,
                    [(start, self.window_seconds, version, self.worker, self.host, now,
                      sum(sum(s.values()) for s in self._windows[(start, version)]["requests"].values()),
                      self._windows[(start, version)]["rows"],
                      json.dumps(self._windows[(start, version)], separators=(",", ":")))
                     for start, version in changed])
            self._dirty.clear()
            # Keep only the windows still open: the others are written whole.
            current = self.clock() - self.clock() % self.window_seconds
            for key in [k for k in self._windows if k[0] < current]:
                del self._windows[key]
            self._update_status(conn)
            return len(changed)

    def refresh(self):
        """Update the drift status from the database (other workers' traffic included)."""
        with self._flush_lock:
            if self._serving and (self._conn is not None or history.exists(self.cfg.history)):
                self._update_status(self._db())

    def current_status(self, version=None):
        """The drift status, read again when older than monitoring_flush_seconds: a worker that has
        seen no traffic lately still reports what the others saw (/health; a WAL read never waits)."""
        if version:
            self._serving = version
        if time.monotonic() - self._refreshed > self.cfg.monitoring_flush_seconds:
            try:
                self.refresh()
            except history.Error as exc:
                logger.warning("monitoring status unreadable: %s", words.error_text(exc))
        return self.status

    def _update_status(self, conn):
        """The drift level of the serving version's latest judged look (alarms.py), all workers merged."""
        self._refreshed = time.monotonic()
        version = self._serving
        if not version:
            return
        if version not in self._refs:
            self._refs.update(model_references(self.cfg, {version}, None))
        # The current window and the two before it: an old crossing does not stay degraded forever.
        now = self.clock()
        since = now - now % self.window_seconds - 2 * self.window_seconds
        latest = recent_windows(conn, self.cfg, version=version, limit=3, since=since, refs=self._refs, now=now)
        for win in latest:
            alarm = win["alarm"]
            if alarm["judged"]:
                new = {"level": win["level"], "psi": win["psi"], "window_start": win["window_start"],
                       "model_version": version, "rows": alarm["rows"], "p_values": alarm["p_values"]}
                if new["level"] == "act" and (self.status["level"] != "act"
                                              or self.status["window_start"] != new["window_start"]):
                    worst = min((f for f in alarm["p_values"] if alarm["p_values"][f] is not None),
                                key=lambda f: alarm["p_values"][f])
                    logger.warning("live input drift: %s's histogram differs from training (p = %.2g, act below"
                                   " %.2g; PSI %.3f) over %d rows of model version %s", worst,
                                   alarm["p_values"][worst], alarm["alpha"]["act"], new["psi"].get(worst, math.nan),
                                   new["rows"], version)
                self.status = new
                return
        self.status = {"level": "ok", "psi": {}, "window_start": None, "model_version": version, "rows": 0}


class Middleware:
    """WSGI: times every request and counts it by endpoint and status (the fast path included)."""

    def __init__(self, app, monitor, endpoints, version):
        self.app = app
        self.monitor = monitor
        self.endpoints = frozenset(endpoints)
        self.version = version  # () -> the serving version or None

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen = []

        def catching(status, headers, exc_info=None):
            seen.append(status)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        result = self.app(environ, catching)
        path = environ.get("PATH_INFO", "")
        self.monitor.request(path if path in self.endpoints else "other",
                             int(seen[-1][:3]) if seen else 500, time.perf_counter() - started, self.version())
        return result


# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------

def prometheus_metrics(monitor):
    """This process's live metrics (in PROMETHEUS_MULTIPROC_DIR's files when it is set)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = None if os.environ.get(PROM_ENV) else CollectorRegistry()
    return {
        "registry": registry, "children": {},
        "latency": Histogram("dras_http_request_duration_seconds", "Time to answer a request, by endpoint and status",
                             ["endpoint", "status"], buckets=PROM_BUCKETS, registry=registry),
        "rows": Counter("dras_rows_predicted", "Rows predicted", ["model_version"], registry=registry),
        "exits": Counter("dras_predicted_exits", "Rows predicted to exit", ["model_version"], registry=registry),
    }


class _StateCollector:
    """Gauges read when scraped: the serving version, the latest window's PSI and exit share,
    the seconds since the last successful cycle."""

    def __init__(self, monitor, version):
        self.monitor = monitor
        self.version = version

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        cfg = self.monitor.cfg
        yield GaugeMetricFamily("dras_model_version", "The deployed model version this worker serves",
                                value=self.version if self.version is not None else math.nan)
        psi = GaugeMetricFamily("dras_feature_psi", "PSI of the feature's live histogram against training, "
                                "latest window with enough rows", labels=["feature"])
        share = GaugeMetricFamily("dras_predicted_exit_share", "Share of rows predicted to exit, latest window "
                                  "with enough rows", labels=["model_version"])
        drift = GaugeMetricFamily("dras_live_drift_level", "Live input drift of the latest judged look (alarms.py):"
                                  " 0 ok, 1 watch, 2 act", value=LEVELS.index(self.monitor.status["level"]))
        f1 = GaugeMetricFamily("dras_estimated_f1", "Estimated F1 (calibrated probabilities, estimate.py) of the"
                               " latest window with enough rows", labels=["model_version"])
        conn = history.connect_ro(cfg.history)
        latest = []
        if conn is not None:
            try:
                latest = recent_windows(conn, cfg, version=self.version, limit=3, refs=self.monitor.references())
            finally:
                conn.close()
        for win in latest:
            if win["rows"] >= cfg.monitoring_min_rows or win is latest[-1]:
                for f, v in win["psi"].items():
                    psi.add_metric([f], v)
                if win["exit_share"] is not None:
                    share.add_metric([str(win["model_version"])], win["exit_share"])
                if win["estimated_f1"] is not None and win["estimated_f1"]["value"] is not None:
                    f1.add_metric([str(win["model_version"])], win["estimated_f1"]["value"])
                break
        yield psi
        yield share
        yield f1
        yield drift
        finished = last_cycle(cfg)
        yield GaugeMetricFamily("dras_seconds_since_last_cycle", "Seconds since the last successful monitoring "
                                "cycle finished (NaN: none yet)",
                                value=time.time() - finished if finished is not None else math.nan)


def metrics_text(monitor, version):
    """The Prometheus text exposition: live metrics (all workers in multiprocess mode) and state."""
    from prometheus_client import CollectorRegistry, generate_latest

    monitor.start()
    registry = CollectorRegistry()
    if os.environ.get(PROM_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(monitor.live_registry()))
    registry.register(_StateCollector(monitor, version))
    registry.register(alerts.Gauges(monitor.cfg, version))
    return generate_latest(registry)


class _Forward:
    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


# ---------------------------------------------------------------------------------------------
# For gunicorn
# ---------------------------------------------------------------------------------------------

def worker_exited(pid):
    """gunicorn's child_exit hook: mark a dead worker in prometheus-client's multiprocess files."""
    if os.environ.get(PROM_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
