"""Online monitoring: what the API is asked and what it answers, over time, cheaply.

Each API worker keeps its traffic in memory: per request only a few counters move and the
feature matrix is kept by reference. A background thread folds that into the aggregates of the
current time window (requests and latency by endpoint and status, rows, predicted exits, mean
probability, and per feature count, mean, variance, min, max and a histogram over the training
data's fixed bins) and writes them to the history database every `monitoring_flush_seconds` or
`monitoring_flush_requests` requests: one row per window, model version and worker, replaced as
the window grows. A request never waits on the database. No raw input is ever written.

Live input drift: the population stability index (PSI) of each feature's live histogram against
the training histogram stored with the deployed model (trainedmodel.json's "monitoring"), per
window, all workers merged. A window with at least `monitoring_min_rows` rows whose PSI reaches
`psi_act` makes /health say "degraded" (never down) and is logged as a warning.

    reference(X, exit_share, on)     the training histograms, computed at training
    Monitor(cfg)                     one per app: the in-memory aggregates and the flush thread
    Middleware(app, monitor, ...)    WSGI: times every request, the fast path included
    windows(cfg, ...)                the recent windows, merged across workers (GET /monitoring)
    metrics_text(monitor)            the Prometheus exposition (GET /metrics)
    crossings_since(cfg, since)      what the monitoring cycle records
    report_data(cfg, since, previous)  the report's section, as plain data
"""
import atexit
import bisect
import itertools
import json
import logging
import math
import os
import sqlite3
import threading
import time
import weakref

import numpy as np

from settings import FEATURES

logger = logging.getLogger(__name__)

BINS = 10
PSI_FLOOR = 1e-4  # drift.psi's floor for an empty bin
# Latency buckets of the stored windows: 10 us to 100 s, 20 per decade (12% apart).
LATENCY_BOUNDS = [round(10 ** (k / 20), 9) for k in range(-100, 41)]
# The Prometheus histogram's buckets (seconds): some of the bounds above (0.3 ms to 10 s, about
# 1-2-5), so the flush fills it from the stored buckets, no observe() per request.
PROM_BUCKETS = tuple(LATENCY_BOUNDS[k + 100] for k in (-70, -66, -60, -54, -46, -40, -34, -26, -20, -14, -6,
                                                        0, 6, 14, 20))
# stored bucket index -> Prometheus bucket index (the last one is +Inf)
TO_PROM = [bisect.bisect_left(PROM_BUCKETS, bound) for bound in LATENCY_BOUNDS] + [len(PROM_BUCKETS)]
PROM_ENV = "PROMETHEUS_MULTIPROC_DIR"
CYCLE_FAILURES = ("failed", "interrupted")
LEVELS = ("ok", "watch", "act")

SCHEMA = """
CREATE TABLE IF NOT EXISTS traffic_windows (
    window_start REAL NOT NULL, window_seconds REAL NOT NULL, model_version INTEGER NOT NULL,
    worker TEXT NOT NULL, updated_at REAL NOT NULL, requests INTEGER NOT NULL, rows INTEGER NOT NULL,
    aggregates TEXT NOT NULL,
    PRIMARY KEY (window_start, model_version, worker)
);
CREATE INDEX IF NOT EXISTS traffic_windows_start ON traffic_windows (window_start);
"""


# ---------------------------------------------------------------------------------------------
# The training reference and the PSI
# ---------------------------------------------------------------------------------------------

def bin_counts(values, edges) -> np.ndarray:
    """Counts of `values` in the bins with inner `edges` (len(edges) + 1 bins; as drift.psi bins)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def reference(X, exit_share, exit_share_on, bins=BINS) -> dict:
    """The training histograms of the feature matrix X (rows x FEATURES): fixed bins at the
    quantiles of each feature, their counts, and the reference predicted exit share."""
    from drift import quantile_edges

    X = np.asarray(X, dtype=np.float64)
    features = {}
    for j, name in enumerate(FEATURES):
        col = X[:, j][np.isfinite(X[:, j])]
        edges = quantile_edges(col, bins) if len(col) else np.array([])
        features[name] = {"edges": [float(e) for e in edges], "counts": bin_counts(col, edges).tolist()}
    return {"bins": bins, "rows": int(len(X)), "features": features,
            "predicted_exit_share": None if exit_share is None else float(exit_share),
            "exit_share_on": exit_share_on}


def psi_counts(expected, actual) -> float:
    """Population stability index of the `actual` bin counts against the `expected` ones."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    e = np.clip(e / max(e.sum(), 1.0), PSI_FLOOR, None)
    a = np.clip(a / max(a.sum(), 1.0), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def level(psi_values, watch, act) -> str:
    """"act", "watch" or "ok" for the largest of the PSI values (None ones ignored)."""
    worst = max((v for v in psi_values if v is not None), default=None)
    if worst is None:
        return "ok"
    return "act" if worst >= act else ("watch" if worst >= watch else "ok")


def model_reference(manifest):
    """The monitoring reference stored with a deployed version, with numpy edges; or None."""
    ref = (manifest or {}).get("training", {}).get("monitoring")
    if not isinstance(ref, dict) or "features" not in ref:
        return None
    return {**ref, "edges": [np.asarray(ref["features"][f]["edges"], dtype=np.float64) for f in FEATURES]}


# ---------------------------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------------------------

def empty_features(ref):
    nbins = [len(e) + 1 for e in ref["edges"]] if ref else [0] * len(FEATURES)
    return {f: {"count": 0, "mean": 0.0, "m2": 0.0, "min": None, "max": None, "hist": [0] * n}
            for f, n in zip(FEATURES, nbins)}


def merge_feature(a, b):
    """Chan et al.'s pairwise merge of two (count, mean, m2, min, max, hist) aggregates."""
    n = a["count"] + b["count"]
    if b["count"] == 0:
        return dict(a, hist=list(a["hist"]))
    if a["count"] == 0:
        return dict(b, hist=list(b["hist"]))
    delta = b["mean"] - a["mean"]
    hist = [x + y for x, y in zip(a["hist"], b["hist"])] if len(a["hist"]) == len(b["hist"]) else a["hist"]
    return {"count": n, "mean": a["mean"] + delta * b["count"] / n,
            "m2": a["m2"] + b["m2"] + delta * delta * a["count"] * b["count"] / n,
            "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"]), "hist": hist}


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


def _add_counts(into, more):
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def merge_aggregates(a, b):
    """The aggregates of two window rows (same window, same version) as one."""
    out = {"requests": {}, "latency": {}, "rows": a["rows"] + b["rows"], "exits": a["exits"] + b["exits"],
           "probability_sum": a["probability_sum"] + b["probability_sum"], "features": {}}
    for src in (a, b):
        for ep, by_status in src["requests"].items():
            _add_counts(out["requests"].setdefault(ep, {}), by_status)
        for ep, buckets in src["latency"].items():
            _add_counts(out["latency"].setdefault(ep, {}), buckets)
    for f in FEATURES:
        out["features"][f] = merge_feature(a["features"][f], b["features"][f])
    return out


def latency_quantile(buckets, q):
    """The q-quantile of a latency histogram {bucket index: count}: the upper bound of the bucket
    holding it (seconds), or None when empty."""
    items = sorted((int(k), v) for k, v in buckets.items())
    total = sum(v for _, v in items)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for k, v in items:
        seen += v
        if seen >= rank:
            return LATENCY_BOUNDS[k] if k < len(LATENCY_BOUNDS) else math.inf
    return LATENCY_BOUNDS[items[-1][0]]


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


def _worker_name():
    import uuid

    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _Pending:
    """What requests added since the last flush, for one window and model version."""

    __slots__ = ("latency", "seconds", "chunks", "lists", "rows", "exits", "probability_sum")

    def __init__(self):
        self.latency = {}  # (endpoint, status) -> {latency bucket: requests}
        self.seconds = {}  # (endpoint, status) -> seconds answering them
        self.chunks = []  # feature matrices (numpy), by reference
        self.lists = []  # rows given as lists (the fast path's few-row JSON requests)
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
        self.status = {"level": "ok", "psi": {}, "window_start": None, "model_version": None, "rows": 0}
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
            self._start()
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

    # -- the flush thread --------------------------------------------------------------------
    def _forked(self):
        self._lock, self._flush_lock = threading.Lock(), threading.Lock()
        self._pending, self._windows, self._requests, self._conn, self._cur = {}, {}, 0, None, None
        self._dirty = set()
        self._started, self._thread, self.worker = False, None, None

    def _start(self):
        """Start this process's flush thread (once per process: after a fork, again)."""
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
            except (sqlite3.Error, OSError, ValueError) as exc:
                if str(exc) != self._error:  # once per kind of failure, not every few seconds
                    logger.warning("monitoring flush failed, will retry: %s", exc)
                self._error = str(exc)

    def close(self):
        """Stop the flush thread after a last flush."""
        self._stop = True
        self._wake.set()
        try:
            self.flush()
        except (sqlite3.Error, OSError, ValueError) as exc:
            logger.warning("last monitoring flush failed: %s", exc)
        with self._flush_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self):
        if self._conn is None:
            import history

            # The flush thread and a last flush at exit share it, one at a time (_flush_lock).
            self.cfg.history_db.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.cfg.history_db, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(history.SCHEMA + SCHEMA)
            self._conn = conn
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
                    _add_counts(agg["latency"].setdefault(ep, {}), {str(k): v for k, v in buckets.items()})
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
            with history_transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO traffic_windows (window_start, window_seconds, model_version, worker,"
                    " updated_at, requests, rows, aggregates) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(start, self.window_seconds, version, self.worker, now,
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
            if self._serving and self.cfg.history_db.exists():
                self._update_status(self._db())

    def current_status(self, version=None):
        """The drift status, read again when older than monitoring_flush_seconds: a worker that has
        seen no traffic lately still reports what the others saw (/health; a WAL read never waits)."""
        if version:
            self._serving = version
        if time.monotonic() - self._refreshed > self.cfg.monitoring_flush_seconds:
            try:
                self.refresh()
            except sqlite3.Error as exc:
                logger.warning("monitoring status unreadable: %s", exc)
        return self.status

    def _update_status(self, conn):
        """The drift level of the serving version's latest window with enough rows, all workers merged."""
        self._refreshed = time.monotonic()
        version = self._serving
        if not version:
            return
        if version not in self._refs:
            self._refs.update(_refs_for(self.cfg, {version}, None))
        # The current window and the two before it: an old crossing does not stay degraded forever.
        now = self.clock()
        since = now - now % self.window_seconds - 2 * self.window_seconds
        latest = recent_windows(conn, self.cfg, version=version, limit=3, since=since, refs=self._refs)
        for win in latest:
            if win["rows"] >= self.cfg.monitoring_min_rows and win["psi"]:
                new = {"level": win["level"], "psi": win["psi"], "window_start": win["window_start"],
                       "model_version": version, "rows": win["rows"]}
                if new["level"] == "act" and (self.status["level"] != "act"
                                              or self.status["window_start"] != new["window_start"]):
                    worst = max(new["psi"], key=lambda f: new["psi"][f])
                    logger.warning("live input drift: PSI of %s is %.3f (act threshold %.2f) over %d rows "
                                   "of model version %s", worst, new["psi"][worst], self.cfg.psi_act,
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
# Reading the windows back
# ---------------------------------------------------------------------------------------------

def history_transaction(conn):
    import history

    return history.transaction(conn)


def _connect_ro(cfg):
    if not cfg.history_db.exists():
        return None
    conn = sqlite3.connect(f"file:{cfg.history_db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def _refs_for(cfg, versions, refs):
    """The monitoring references of the deployed `versions` (from their version folders)."""
    out = dict(refs or {})
    from deployment import read_manifest, version_name, DeploymentError

    for v in versions:
        if v not in out:
            try:
                out[v] = model_reference(read_manifest(cfg.prod_deployment_path / "versions" / version_name(v)))
            except DeploymentError:
                out[v] = None
    return out


def summarize(start, seconds, version, agg, ref, cfg, workers):
    """One window as the API shows it."""
    rows = agg["rows"]
    psi = {}
    if ref is not None:
        for j, f in enumerate(FEATURES):
            hist = agg["features"][f]["hist"]
            if agg["features"][f]["count"] and len(hist) == len(ref["edges"][j]) + 1:
                psi[f] = round(psi_counts(ref["features"][f]["counts"], hist), 6)
    all_lat = {}
    for buckets in agg["latency"].values():
        _add_counts(all_lat, buckets)
    pred_lat = agg["latency"].get("/prediction", {})
    errors = {}
    for ep, by_status in agg["requests"].items():
        for status, n in by_status.items():
            if int(status) >= 400:
                errors[status] = errors.get(status, 0) + n
    features = {}
    for f in FEATURES:
        a = agg["features"][f]
        features[f] = {"count": a["count"], "mean": a["mean"] if a["count"] else None,
                       "variance": a["m2"] / (a["count"] - 1) if a["count"] > 1 else None,
                       "min": a["min"], "max": a["max"], "histogram": a["hist"]}
    share = agg["exits"] / rows if rows else None
    ref_share = ref.get("predicted_exit_share") if ref else None
    return {
        "window_start": start, "window_seconds": seconds, "model_version": version, "workers": workers,
        "requests": sum(sum(s.values()) for s in agg["requests"].values()),
        "requests_by_endpoint": {ep: dict(sorted(s.items())) for ep, s in sorted(agg["requests"].items())},
        "errors": dict(sorted(errors.items())),
        "rows": rows, "exits": agg["exits"], "exit_share": share,
        "exit_share_shift": (share - ref_share) if share is not None and ref_share is not None else None,
        "mean_probability": agg["probability_sum"] / rows if rows else None,
        "latency_p50": latency_quantile(all_lat, 0.5), "latency_p99": latency_quantile(all_lat, 0.99),
        "prediction_latency_p50": latency_quantile(pred_lat, 0.5),
        "prediction_latency_p99": latency_quantile(pred_lat, 0.99),
        "features": features, "psi": psi,
        "level": level(psi.values(), cfg.psi_watch, cfg.psi_act) if rows >= cfg.monitoring_min_rows else "ok",
    }


def _merged(conn, where, args, limit):
    """{(window_start, version): (window_seconds, aggregates merged across workers, workers)}."""
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    try:
        keys = conn.execute(f"SELECT DISTINCT window_start, model_version FROM traffic_windows {clause}"
                            " ORDER BY window_start DESC, model_version DESC LIMIT ?", (*args, limit)).fetchall()
    except sqlite3.OperationalError:  # no traffic recorded yet: the table is not there
        return {}
    if not keys:
        return {}
    oldest = keys[-1][0]
    rows = conn.execute(f"SELECT window_start, window_seconds, model_version, worker, aggregates FROM traffic_windows"
                        f" {clause + ' AND' if clause else 'WHERE'} window_start >= ?"
                        " ORDER BY window_start DESC, worker", (*args, oldest)).fetchall()
    wanted = {(k[0], k[1]) for k in keys}
    merged = {}
    for r in rows:
        key = (r[0], r[2])
        if key not in wanted:
            continue
        agg = json.loads(r[4])
        if key in merged:
            seconds, so_far, workers = merged[key]
            merged[key] = (seconds, merge_aggregates(so_far, agg), workers + 1)
        else:
            merged[key] = (r[1], agg, 1)
    return merged


def recent_windows(conn, cfg, version=None, limit=60, since=None, until=None, refs=None):
    """The windows (newest first, at most `limit`), each merged across workers and summarized."""
    where, args = [], []
    if version is not None:
        where.append("model_version = ?")
        args.append(version)
    if since is not None:
        where.append("window_start >= ?")
        args.append(since)
    if until is not None:
        where.append("window_start < ?")
        args.append(until)
    merged = _merged(conn, where, args, limit)
    refs = _refs_for(cfg, {k[1] for k in merged}, refs)
    out = [summarize(start, seconds, version, agg, refs.get(version), cfg, workers)
           for (start, version), (seconds, agg, workers) in merged.items()]
    out.sort(key=lambda w: (w["window_start"], w["model_version"]), reverse=True)
    return out


def windows(cfg, limit=60, refs=None):
    """GET /monitoring's body: the recent windows grouped per model version, newest first."""
    conn = _connect_ro(cfg)
    if conn is None:
        found = []
    else:
        try:
            found = recent_windows(conn, cfg, limit=limit, refs=refs)
        finally:
            conn.close()
    by_version = {}
    for w in found:
        by_version.setdefault(str(w["model_version"]), []).append(w)
    return {"thresholds": {"psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act,
                           "min_rows": cfg.monitoring_min_rows},
            "window_seconds": cfg.monitoring_window_seconds, "versions": by_version}


def last_cycle(cfg):
    """finished_at of the last successful monitoring cycle, or None."""
    conn = _connect_ro(cfg)
    if conn is None:
        return None
    try:
        row = conn.execute("SELECT MAX(finished_at) FROM cycles WHERE finished_at IS NOT NULL"
                           f" AND decision NOT IN ({','.join('?' * len(CYCLE_FAILURES))})",
                           CYCLE_FAILURES).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return row[0] if row else None


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
        drift = GaugeMetricFamily("dras_live_drift_level", "0 ok, 1 watch, 2 act", value=LEVELS.index(
            self.monitor.status["level"]))
        conn = _connect_ro(cfg)
        latest = []
        if conn is not None:
            try:
                latest = recent_windows(conn, cfg, version=self.version, limit=3, refs=self.monitor._refs)
            finally:
                conn.close()
        for win in latest:
            if win["rows"] >= cfg.monitoring_min_rows or win is latest[-1]:
                for f, v in win["psi"].items():
                    psi.add_metric([f], v)
                if win["exit_share"] is not None:
                    share.add_metric([str(win["model_version"])], win["exit_share"])
                break
        yield psi
        yield share
        yield drift
        finished = last_cycle(cfg)
        yield GaugeMetricFamily("dras_seconds_since_last_cycle", "Seconds since the last successful monitoring "
                                "cycle finished (NaN: none yet)",
                                value=time.time() - finished if finished is not None else math.nan)


def metrics_text(monitor, version):
    """The Prometheus text exposition: live metrics (all workers in multiprocess mode) and state."""
    from prometheus_client import CollectorRegistry, generate_latest

    if not monitor._started:
        monitor._start()
    registry = CollectorRegistry()
    if os.environ.get(PROM_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        live = monitor._prom["registry"]
        registry.register(_Forward(live))
    registry.register(_StateCollector(monitor, version))
    return generate_latest(registry)


class _Forward:
    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


# ---------------------------------------------------------------------------------------------
# For the monitoring cycle and the report
# ---------------------------------------------------------------------------------------------

def crossings_since(cfg, since, until=None) -> dict:
    """Whether live traffic crossed the watch or act threshold in the windows that end after `since`
    (epoch seconds): a window still open when the last cycle finished counts for the next one."""
    conn = _connect_ro(cfg)
    found = []
    if conn is not None:
        try:
            found = recent_windows(conn, cfg, since=since - cfg.monitoring_window_seconds, until=until,
                                   limit=1_000_000)
        finally:
            conn.close()
    found = [w for w in found if w["window_start"] + w["window_seconds"] > since]
    worst = "ok"
    features = {}
    for w in found:
        if LEVELS.index(w["level"]) > LEVELS.index(worst):
            worst = w["level"]
        if w["level"] != "ok":
            for f, v in w["psi"].items():
                features[f] = max(features.get(f, 0.0), v)
    return {"since": since, "windows": len(found), "rows": sum(w["rows"] for w in found), "level": worst,
            "watch": worst in ("watch", "act"), "act": worst == "act",
            "max_psi": dict(sorted(features.items())), "psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act}


def worker_exited(pid):
    """gunicorn's child_exit hook: mark a dead worker in prometheus-client's multiprocess files."""
    if os.environ.get(PROM_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


REPORT_WINDOWS = 2000  # at most this many windows are drawn


def _latency(merged):
    """p50 and p99 (seconds) of all requests and of /prediction over merged windows."""
    every, pred = {}, {}
    for _, agg, _ in merged.values():
        for ep, buckets in agg["latency"].items():
            _add_counts(every, buckets)
            if ep == "/prediction":
                _add_counts(pred, buckets)
    return {"p50": latency_quantile(every, 0.5), "p99": latency_quantile(every, 0.99),
            "prediction_p50": latency_quantile(pred, 0.5), "prediction_p99": latency_quantile(pred, 0.99),
            "requests": sum(every.values())}


def report_data(cfg, since=None, previous_since=None, until=None) -> dict:
    """The report's live-traffic section as plain data: the traffic since `since` (the previous
    report; None: everything recorded) per day, exit share and PSI per window, latency percentiles,
    and the latency of the period before (`previous_since` to `since`) to compare with."""
    until = time.time() if until is None else until
    conn = _connect_ro(cfg)
    current, previous = {}, {}
    if conn is not None:
        try:
            # A window belongs to the period it ends in: one still open at the previous report is this one's.
            slack = cfg.monitoring_window_seconds
            where, args = ["window_start < ?"], [until]
            if since is not None:
                where.append("window_start >= ?")
                args.append(since - slack)
            current = {k: v for k, v in _merged(conn, where, args, 1_000_000).items()
                       if since is None or k[0] + v[0] > since}
            if since is not None:
                where, args = ["window_start < ?"], [since]
                if previous_since is not None:
                    where.append("window_start >= ?")
                    args.append(previous_since - slack)
                previous = {k: v for k, v in _merged(conn, where, args, 1_000_000).items()
                            if k[0] + v[0] <= since and (previous_since is None or k[0] + v[0] > previous_since)}
        finally:
            conn.close()
    refs = _refs_for(cfg, {k[1] for k in current}, None)
    windows = sorted((summarize(start, seconds, version, agg, refs.get(version), cfg, workers)
                      for (start, version), (seconds, agg, workers) in current.items()),
                     key=lambda w: (w["window_start"], w["model_version"]))
    days = {}
    for w in windows:
        day = time.strftime("%Y-%m-%d", time.gmtime(w["window_start"]))
        d = days.setdefault(day, {"day": day, "requests": 0, "rows": 0, "exits": 0, "errors": 0})
        d["requests"] += w["requests"]
        d["rows"] += w["rows"]
        d["exits"] += w["exits"]
        d["errors"] += sum(w["errors"].values())
    for d in days.values():
        d["exit_share"] = d["exits"] / d["rows"] if d["rows"] else None
    crossed = {lvl: sum(1 for w in windows if w["level"] == lvl) for lvl in ("watch", "act")}
    return {
        "since": since, "until": until, "previous_since": previous_since,
        "thresholds": {"psi_watch": cfg.psi_watch, "psi_act": cfg.psi_act, "min_rows": cfg.monitoring_min_rows},
        "days": [days[k] for k in sorted(days)],
        "windows": [{k: w[k] for k in ("window_start", "model_version", "rows", "exit_share", "exit_share_shift",
                                       "psi", "level")} for w in windows[-REPORT_WINDOWS:]],
        "windows_crossing": crossed,
        "latency": _latency(current) if current else None,
        "previous_latency": _latency(previous) if previous else None,
    }


# ---------------------------------------------------------------------------------------------
# The command: what the API has seen, and a shifted burst for the demo
# ---------------------------------------------------------------------------------------------

def summary_lines(cfg, limit=5):
    """The latest windows in words, newest first."""
    body = windows(cfg, limit=limit)
    lines = []
    for version, found in sorted(body["versions"].items()):
        for w in found:
            psi = ", ".join(f"{f} {v:.3f}" for f, v in sorted(w["psi"].items())) or "no reference"
            share = "n/a" if w["exit_share"] is None else f"{w['exit_share']:.3f}"
            lines.append(f"v{int(version):04d} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(w['window_start']))} UTC"
                         f"  {w['requests']} requests, {w['rows']} rows, exit share {share}, PSI {psi}: {w['level']}")
    return lines or ["no live traffic recorded yet"]


def send_burst(url, requests_count, seed=11, token=None):
    """POST `requests_count` 5-row predictions of covariate-shifted data (datagen) to url/prediction;
    return the status codes seen, with counts."""
    import requests

    import datagen

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
    import argparse
    import sys

    from settings import ConfigError, load_config, setup_logging

    parser = argparse.ArgumentParser(description="Show the API's latest traffic windows; optionally first send "
                                                 "a burst of shifted traffic to it (the demo).")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
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
