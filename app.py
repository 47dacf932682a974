"""The API: predictions from the deployed model, its test score, the data's summary and diagnostics.

    create_app(config)  the Flask app; config is a settings.Config, a path to config.json, or None
    python app.py       a local development server on 127.0.0.1 (never in debug mode)
    make serve          production: gunicorn with gunicorn.conf.py, one worker per core

The model comes from production_deployment/current, through serving.ModelStore. Each request
costs one os.readlink of that link; a version is loaded (hash-checked, by deployment.load_version)
only when the link has moved, so a deploy or a rollback is served from the next request on,
without a restart. A version that fails to load leaves the previous model serving and shows up
in /health. /scoring scores each version once, in a child process (serving.score_in_child)
unless scikit-learn is loaded here already.

POST /prediction with a JSON body is the hot route: `FastPrediction` answers it in front of Flask
with the very function the Flask route calls, and hands every other request, and every request
it would not answer 200, to Flask untouched.
"""
import argparse
import hmac
import io
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

import alerts
import audit
import delivery
import deployment
import diagnostics
import history
import monitoring
import serving
import status as status_page  # the status page (status.py); `status` is a common local name here
import traffic
from settings import FEATURES, Config, ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
OPENAPI = HERE / "openapi.yaml"
TOKEN_ENV = "DRAS_API_TOKEN"
CSV_TYPES = ("text/csv", "application/csv")
# The dependency table asks the package index; /diagnostics must answer in well under a second.
INDEX_TIMEOUT = 0.3
DEPENDENCIES_TTL = 300.0


class InputError(Exception):
    """A request the API cannot use; the message says exactly what is wrong."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.message = message
        self.status = status


class Unavailable(Exception):
    """The API cannot answer now (no model deployed, no test data): a 503 with the reason."""


# ---------------------------------------------------------------------------------------------
# Input: the three features as a float64 matrix, by the delivery rules (delivery.py)
# ---------------------------------------------------------------------------------------------

# The API's words for the delivery rules' byte checks (delivery.BadFile.rule); the other reasons are the rules' own.
BODY_WORDS = {"empty": "empty body: send a CSV text with a header row",
              "gzip": "gzip-compressed data, not a plain CSV text",
              "binary": "binary content (NUL bytes), not a CSV text"}


def rows_from_records(records):
    """The rows (lists of three numbers) of JSON records: objects with the three features, other keys
    ignored. The first bad value, in row order, is refused with the delivery rules' reasons."""
    if not isinstance(records, list):
        raise InputError('"records" must be a list of objects, one per row')
    if not records:
        raise InputError('"records" is empty: send at least one row')
    rows = []
    for i, rec in enumerate(records, 1):
        if type(rec) is not dict:
            raise InputError(f"row {i} is not a JSON object")
        try:
            row = [rec[c] for c in FEATURES]
        except KeyError:
            missing = next(c for c in FEATURES if c not in rec)
            raise InputError(f"row {i}: missing column {missing!r}") from None
        for j, v in enumerate(row):
            # The common case first: a non-negative JSON integer within range.
            if type(v) is int and 0 <= v <= delivery.MAX_VALUE:
                continue
            what = delivery.value_problem(v)
            if what is not None:
                shown = v.text if isinstance(v, delivery.NotWhole) else json.dumps(v)
                value = "" if what == delivery.MISSING else f" {shown}"
                raise InputError(f"column {FEATURES[j]!r}, row {i}: value{value} {what}")
        rows.append(row)
    return rows


def rows_from_csv(data: bytes):
    """The feature matrix of a CSV text with a header naming the three features (other columns ignored)."""
    try:
        return delivery.feature_matrix(data)
    except delivery.BadFile as exc:
        raise InputError(BODY_WORDS.get(exc.rule, str(exc))) from None


# ---------------------------------------------------------------------------------------------
# The service: everything the routes do, independent of Flask
# ---------------------------------------------------------------------------------------------

class Service:
    def __init__(self, cfg: Config, token=None):
        self.cfg = cfg
        self.token = token
        self.models = serving.ModelStore(cfg.prod_deployment_path)
        test_folder = cfg.test_data_file.parent
        self.data_roots = tuple(dict.fromkeys(
            Path(os.path.realpath(p)) for p in (cfg.input_folder_path, test_folder, cfg.output_folder_path)))
        self._scores = {}
        self._dependencies = (0.0, None)
        self._lock = threading.Lock()
        self.monitor = None  # monitoring.Monitor, when online monitoring is on

    # -- access --------------------------------------------------------------------------------
    def authorized(self, header):
        if not self.token:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def predictor(self):
        p = self.models.get()
        if p is None:
            raise Unavailable(self.models.error or "no model is deployed")
        return p

    # -- /prediction ---------------------------------------------------------------------------
    def answer(self, X):
        p = self.predictor()
        predictions, probabilities = p.predict(X)
        if self.monitor is not None:
            self.monitor.prediction(X, predictions, probabilities, p.manifest)
        return {"predictions": predictions, "probabilities": probabilities, "model_version": p.version}

    def predict_json(self, body: bytes):
        """The /prediction answer to a JSON body. Raises InputError or Unavailable."""
        if not body.strip():
            raise InputError("empty body: send JSON {\"records\": [...]} or {\"filepath\": \"...\"}")
        try:
            # A number's text decides whether it is whole (delivery.json_number), not its float.
            doc = json.loads(body.decode("utf-8"), parse_float=delivery.json_number)
        except UnicodeDecodeError:
            raise InputError("body is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InputError("body is not usable JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise InputError(f"body is not usable JSON: {exc}") from None
        if not isinstance(doc, dict) or len({"records", "filepath"} & doc.keys()) != 1:
            raise InputError('JSON body must be an object with either "records" (a list of rows) or "filepath"')
        if "records" in doc:
            return self.answer(rows_from_records(doc["records"]))
        path = self.data_file(doc["filepath"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {doc['filepath']}: {exc.strerror}", 404) from None
        try:
            X = rows_from_csv(data)
        except InputError as exc:
            raise InputError(f"{doc['filepath']}: {exc.message}", exc.status) from None
        return self.answer(X)

    def predict_csv(self, body: bytes):
        return self.answer(rows_from_csv(body))

    def data_file(self, name):
        """The file a {"filepath": ...} names, if it is a .csv file inside the data folders.

        Whatever is wrong with a path outside, the answer is the same, so it reveals nothing.
        """
        refused = InputError("filepath must be a relative path to a .csv file inside the data folders "
                             f"({', '.join(self._shown_roots())})", 403)
        if not isinstance(name, str) or not name or len(name) > 1024:
            raise refused
        if (name.startswith(("/", "~", "\\")) or "\\" in name or "%" in name or ":" in name
                or any(ord(ch) < 32 for ch in name) or ".." in Path(name).parts
                or not name.lower().endswith(".csv")):
            raise refused
        path = Path(os.path.realpath(self.cfg.base / name))
        if not any(path.is_relative_to(root) for root in self.data_roots):
            raise refused
        if not path.is_file():
            raise InputError(f"no such file in the data folders: {name}", 404)
        return path

    def _shown_roots(self):
        out = []
        for root in self.data_roots:
            try:
                out.append(str(root.relative_to(os.path.realpath(self.cfg.base))))
            except ValueError:
                out.append(root.name)
        return out

    # -- the other endpoints -------------------------------------------------------------------
    def scoring(self):
        p = self.predictor()
        key = (p.version, id(p))
        with self._lock:
            if key not in self._scores:
                in_process = ("sklearn" in sys.modules or not isinstance(p.model, serving.Fitted)
                              or p.directory is None)
                self._scores = {key: self._score_here(p) if in_process else self._score_in_helper(p)}
            result = self._scores[key]
        # The audit recorded at training (cross-validated score, slices of the test data with flags).
        return {"model_version": p.version, **result,
                "cross_validation": audit.cross_validation_for_deployment(p.manifest),
                "slices": audit.slices_for_deployment(p.manifest)}

    def _score_here(self, p):
        import scoring  # lazy: reached only when scikit-learn is loaded here already

        try:
            model = p.model
            if isinstance(model, serving.Fitted):  # scikit-learn is loaded here anyway: score its own model
                model, _ = deployment.load_version(p.directory)
            X, y = scoring.read_test_data(self.cfg.test_data_file)
            return scoring.score_model(model, X, y)
        except (scoring.ScoringError, deployment.DeploymentError) as exc:
            raise Unavailable(str(exc)) from None

    def _score_in_helper(self, p):
        """Score in a short-lived child process, so that scikit-learn never enters a serving worker."""
        result = serving.score_in_child(p.directory, self.cfg.test_data_file)
        if not result.ok:
            raise Unavailable(result.error)
        return result.scores

    def summarystats(self):
        summary = diagnostics.dataframe_summary(self.cfg) if history.exists(self.cfg.history) else {}
        return {"summary": summary}

    def dependencies(self):
        now = time.monotonic()
        with self._lock:
            at, value = self._dependencies
            if value is not None and now - at < DEPENDENCIES_TTL:
                return value
        value = diagnostics.outdated_packages_list(self.cfg, timeout=INDEX_TIMEOUT)
        with self._lock:
            self._dependencies = (now, value)
        return value

    def diagnostics(self):
        exists = history.exists(self.cfg.history)
        timings = diagnostics.recorded_timings(self.cfg) if exists else {}
        missing = diagnostics.missing_data(self.cfg) if exists else {}
        return {"execution_time": self._latest_execution_time() if exists else None,
                "recorded_timings": timings, "missing_data": missing,
                "dependencies": self.dependencies()}

    def _latest_execution_time(self):
        try:
            conn = history.connect_ro(self.cfg.history)  # a GET never creates or migrates it
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT value FROM diagnostics WHERE kind IN ('all', 'execution_time')"
                                   " ORDER BY id DESC LIMIT 1").fetchone()
            finally:
                conn.close()
        except history.Error:
            return None
        if row is None:
            return None
        value = json.loads(row[0])
        return value.get("execution_time") if isinstance(value, dict) and "execution_time" in value else value

    def health(self):
        p = self.models.get()
        body = {"status": "ok" if p is not None else "unavailable", "model_version": p.version if p is not None else None}
        if self.models.error is not None:
            body["error"] = self.models.error
            if p is None:
                return body, 503
            # The newest version failed to load but an older one answers: degraded, not down, so a
            # load balancer keeps sending the traffic this worker can still serve.
            body["status"] = "degraded"
            return body, 200
        # Live input drift at the act level: degraded, still answering (never down).
        live = self.monitor.current_status(body["model_version"]) if self.monitor is not None else None
        if live is not None and live["level"] == "act" and live["model_version"] == body["model_version"]:
            body["status"] = "degraded"
            body["live_drift"] = {k: live[k] for k in ("level", "psi", "window_start", "rows", "p_values")}
        return body, 200


# ---------------------------------------------------------------------------------------------
# The framework-free fast path for POST /prediction with a JSON body
# ---------------------------------------------------------------------------------------------

class FastPrediction:
    """WSGI middleware: answers a 200 to POST /prediction with JSON exactly as the Flask route would
    (the same Service.predict_json, the same JSON encoding); anything else goes to Flask."""

    def __init__(self, app, service, flask_app):
        self.app = app
        self.service = service
        self.dumps = flask_app.json.dumps
        self.limit = flask_app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ, start_response):
        if (environ.get("PATH_INFO") == "/prediction" and environ.get("REQUEST_METHOD") == "POST"
                and environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower() == "application/json"
                and "HTTP_TRANSFER_ENCODING" not in environ
                and self.service.authorized(environ.get("HTTP_AUTHORIZATION"))):
            try:
                length = int(environ.get("CONTENT_LENGTH") or "")
            except ValueError:
                length = -1
            if 0 < length <= self.limit:
                body = environ["wsgi.input"].read(length)
                try:
                    payload = self.service.predict_json(body)
                except (InputError, Unavailable):
                    payload = None  # Flask answers errors, with the same functions
                if payload is not None:
                    out = (self.dumps(payload, separators=(",", ":")) + "\n").encode()
                    start_response("200 OK", [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(out)))])
                    return [out]
                environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)


class BoundedBody:
    """WSGI middleware: a body sent without Content-Length (Transfer-Encoding: chunked) is read up to
    the limit and handed on with its length, so an oversized one gets the 413 every other body gets.
    Without it werkzeug cuts such a body at the limit and the route parses the rest: a prefix of
    the rows answered with a 200, or a misleading 400."""

    def __init__(self, app, limit):
        self.app = app
        self.limit = limit

    def __call__(self, environ, start_response):
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = environ["wsgi.input"].read(self.limit + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))  # over the limit: Flask answers 413
            del environ["HTTP_TRANSFER_ENCODING"]
            environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)


# ---------------------------------------------------------------------------------------------
# The Flask app
# ---------------------------------------------------------------------------------------------

def _config(config):
    if isinstance(config, Config):
        return config
    return load_config(config)


def create_app(config=None, fast_path=True):
    """The API for `config` (a settings.Config, a path to config.json, or None: the default one).

    A bearer token is required on every endpoint but /health when the DRAS_API_TOKEN environment
    variable is set.
    """
    import yaml

    cfg = _config(config)
    service = Service(cfg, token=os.environ.get(TOKEN_ENV) or None)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_request_bytes
    app.extensions["dras"] = service
    spec = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    # openapi.yaml says the token is optional (set or not by DRAS_API_TOKEN); the copy this server
    # serves says which: a client, or schemathesis, sees exactly what this server requires.
    spec["security"] = [{"bearer": []}] if service.token else []

    @app.before_request
    def check_token():
        header = request.headers.get("Authorization")
        # --- status page (status.py): a browser sends the token as a cookie or ?token= on / only ---
        if header is None:
            header = status_page.bearer_from_browser(request)
        # --- end status page ---
        if request.endpoint != "health" and not service.authorized(header):
            resp = jsonify(error=f"a valid bearer token is required (Authorization: Bearer ..., set by {TOKEN_ENV})")
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Bearer realm="dras"'
            return resp
        return None

    @app.post("/prediction")
    def prediction():
        mimetype = request.mimetype
        if mimetype == "application/json":
            return jsonify(service.predict_json(request.get_data(cache=False)))
        if mimetype in CSV_TYPES:
            return jsonify(service.predict_csv(request.get_data(cache=False)))
        if mimetype == "multipart/form-data":
            upload = request.files.get("file")
            if upload is None:
                raise InputError("a multipart upload needs the CSV in a field named 'file' (curl -F file=@data.csv)")
            return jsonify(service.predict_csv(upload.read()))
        if not request.content_length and not request.get_data(cache=True):
            raise InputError("empty body: send a CSV (Content-Type: text/csv), an uploaded file "
                             "(multipart/form-data, field 'file') or JSON (Content-Type: application/json)")
        what = f"unsupported Content-Type {mimetype!r}" if mimetype else "no Content-Type"
        raise InputError(f"{what}: use text/csv, multipart/form-data (field 'file') or application/json", 415)

    @app.get("/scoring")
    def scoring_route():
        return jsonify(service.scoring())

    @app.get("/summarystats")
    def summarystats():
        return jsonify(service.summarystats())

    @app.get("/diagnostics")
    def diagnostics_route():
        return jsonify(service.diagnostics())

    @app.get("/health")
    def health():
        body, status = service.health()
        return jsonify(body), status

    @app.get("/openapi.json")
    def openapi():
        return jsonify(spec)

    # -- online monitoring (monitoring.py) ---------------------------------------------------
    monitor = monitoring.Monitor(cfg)

    def serving_version():
        p = service.models.predictor
        return p.version if p is not None else None

    @app.get("/monitoring")
    def monitoring_route():
        limit = request.args.get("windows", "60")
        if not limit.isdigit() or not 1 <= int(limit) <= 10000:
            raise InputError(f"windows must be a whole number from 1 to 10000, not {limit!r}")
        return jsonify(traffic.windows(cfg, limit=int(limit), refs=monitor.references()))

    @app.get("/metrics")
    def metrics_route():
        return monitoring.metrics_text(monitor, serving_version()), 200, {
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"}

    @app.errorhandler(InputError)
    def input_error(exc):
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(Unavailable)
    def unavailable(exc):
        return jsonify(error=str(exc)), 503

    @app.errorhandler(HTTPException)
    def http_error(exc):
        messages = {
            404: f"no such endpoint: {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body too large: the limit is {cfg.max_request_bytes} bytes (max_request_bytes)",
        }
        resp = jsonify(error=messages.get(exc.code, exc.description))
        resp.status_code = exc.code
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def internal_error(exc):
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error="internal server error"), 500

    # --- status page (status.py): GET / and the files it links to ---
    app.register_blueprint(status_page.bp)
    # --- end status page ---

    if fast_path:
        app.wsgi_app = FastPrediction(app.wsgi_app, service, app)
    app.wsgi_app = BoundedBody(app.wsgi_app, cfg.max_request_bytes)
    # /diagnostics must answer within a second from the first call on: import its HTTP client now.
    import packaging.version  # noqa: F401
    import requests  # noqa: F401

    # Load the serving version now: under gunicorn (preload_app) the workers inherit it, and
    # scikit-learn with it, from the master instead of each loading it on its first request.
    service.models.get()
    if cfg.monitoring:
        service.monitor = monitor
        monitor.watchers.append(alerts.ApiWatch(cfg, monitor))  # live drift and estimated F1 (alerts.py)
        app.wsgi_app = monitoring.Middleware(app.wsgi_app, monitor, {
            r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}, serving_version)
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the API's local development server on 127.0.0.1.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        app = create_app(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.run(host="127.0.0.1", port=args.port, debug=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
