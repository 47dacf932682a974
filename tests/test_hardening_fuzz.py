"""API fuzzing against a live gunicorn server: hypothesis draws requests from openapi.yaml's shapes,
valid and broken; no answer is a 5xx or anything but JSON, and every answer matches the status
and schema the description gives for it. Then path traversal attempts and oversized bodies, on
the wire (test_app.py sends the same through Flask's test client)."""
import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from conftest import REPO, build_world
from helpers import REFUSED, check_schema, gunicorn, response_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settings import FEATURES

LIMIT = 64 * 1024
MAX = 2**53 - 1
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load((REPO / "openapi.yaml").read_text())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A deployed world served by a real gunicorn (one worker), a secret file beside it and
    symlinks inside its data folders leading out."""
    root = tmp_path_factory.mktemp("fuzz")
    cfg = build_world(root / "world", max_request_bytes=LIMIT, cv_folds=0)
    secret = root / "secret.csv"
    secret.write_text("lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n")
    (cfg.input_folder_path / "link.csv").symlink_to(secret)
    (cfg.input_folder_path / "up").symlink_to(root)
    with gunicorn(cfg, workers=1) as url, requests.Session() as session:
        yield cfg, url, session, secret


def check(spec, resp, path, method, allowed):
    """The answer is JSON, its status one the description gives, and its body that status's schema."""
    assert resp.status_code < 500, (path, resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].split(";")[0] == "application/json", (path, resp.headers)
    assert resp.status_code in allowed, (path, resp.status_code, resp.text[:300])
    assert str(resp.status_code) in spec["paths"][path][method]["responses"], (path, resp.status_code)
    body = resp.json()
    check_schema(body, response_schema(spec, path, method, resp.status_code), spec, f"{method} {path}")
    return body


def valid_value():
    return st.one_of(st.sampled_from([0, 1, MAX, 3.0]), st.integers(0, MAX))


def bad_value():
    return st.one_of(st.sampled_from([-1, MAX + 1, 2**63, 2**64, 1e300, 0.5, "1", True, None]),st.integers(max_value=-1), st.integers(min_value=MAX + 1, max_value=10**30),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


valid_record = st.fixed_dictionaries({f: valid_value() for f in FEATURES},
                                     optional={"corporation": st.text(max_size=6), "exited": st.integers(0, 1)})
# every column present, each value good or bad
near_record = st.fixed_dictionaries({f: st.one_of(valid_value(), bad_value()) for f in FEATURES})
broken_record = st.one_of(
    st.dictionaries(st.sampled_from(FEATURES + ("corporation", "exited", "x")), st.one_of(valid_value(), bad_value()),
                    max_size=5),
    st.integers(), st.text(max_size=5), st.lists(st.integers(0, 5), max_size=3), st.none())
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def is_valid(records, spec):
    """Whether the records are valid by openapi.yaml's Record schema (the description, not the code)."""
    props = spec["components"]["schemas"]["Record"]["properties"]
    return (isinstance(records, list) and len(records) >= 1
            and all(isinstance(r, dict) and all(is_integer_in(r.get(f), props[f]) for f in FEATURES) for r in records))


def is_integer_in(v, schema):
    """JSON Schema's {type: integer, minimum, maximum}: 3.0 is an integer, true is not."""
    assert schema["type"] == "integer"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, float) and not v.is_integer():
        return False
    return schema.get("minimum", -float("inf")) <= v <= schema.get("maximum", float("inf"))


@given(records=st.one_of(st.lists(valid_record, min_size=1, max_size=20),
                         st.lists(st.one_of(valid_record, near_record), min_size=1, max_size=3),
                         st.lists(st.one_of(valid_record, broken_record), max_size=6),
                         json_values))
@settings(FUZZ)
def test_prediction_json_records(live, spec, records):
    cfg, url, session, _ = live
    resp = session.post(url + "/prediction", data=json.dumps({"records": records}),
                        headers={"Content-Type": "application/json"}, timeout=10)
    body = check(spec, resp, "/prediction", "post", (200, 400))
    if is_valid(records, spec):
        assert resp.status_code == 200, (records, body)  # what the description calls valid is served
        assert len(body["predictions"]) == len(records) and body["model_version"] == 1
    else:
        assert resp.status_code == 400, (records, body)


@given(body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"filepath": st.one_of(st.text(max_size=40), json_values)}).map(
                          lambda v: json.dumps(v).encode())),
       ctype=st.sampled_from(["application/json", "text/csv", "application/json; charset=utf-8", "text/plain",
                              "multipart/form-data", "", "application/x-www-form-urlencoded"]))
@settings(FUZZ)
def test_prediction_any_body_any_type(live, spec, body, ctype):
    _, url, session, _ = live
    resp = session.post(url + "/prediction", data=body, headers={"Content-Type": ctype} if ctype else {}, timeout=10)
    check(spec, resp, "/prediction", "post", (200, 400, 403, 404, 415))


csv_cell = st.one_of(st.integers(-5, 10**20).map(str), st.sampled_from(["", "NA", "nan", "inf", "1.5", "1e3", " 7"]),
                     st.text(alphabet="0123456789abc,;\"\r\n\t ", max_size=6))


@given(header=st.lists(st.sampled_from(list(FEATURES) + ["corporation", "exited", "x"]), min_size=1, max_size=6),
       rows=st.lists(st.lists(csv_cell, min_size=2, max_size=7), min_size=0, max_size=6),
       crlf=st.booleans(), bom=st.booleans())
@settings(FUZZ)
def test_prediction_csv(live, spec, header, rows, crlf, bom):
    _, url, session, _ = live
    end = "\r\n" if crlf else "\n"
    text = ",".join(header) + end + "".join(",".join(r) + end for r in rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    resp = session.post(url + "/prediction", data=data, headers={"Content-Type": "text/csv"}, timeout=10)
    body = check(spec, resp, "/prediction", "post", (200, 400))
    if resp.status_code == 200:
        assert len(body["predictions"]) == len(rows)


@given(path=st.one_of(st.sampled_from(["/scoring", "/summarystats", "/diagnostics", "/health", "/openapi.json",
                                       "/files/report.pdf", "/files/config.json", "/nowhere", "/prediction"]),
                      st.text(alphabet="abcdefghijklmnopqrstuvwxyz/._-%0123456789", min_size=1, max_size=30).map(
                          lambda p: "/" + p.lstrip("/"))),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       query=st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=5), st.text(max_size=8), max_size=2))
@settings(FUZZ)
def test_every_route_and_method(live, spec, path, method, query):
    _, url, session, _ = live
    resp = session.request(method, url + path, params=query, timeout=10)
    assert resp.status_code < 500, (method, path, resp.text[:300])
    if path in spec["paths"] and method.lower() in spec["paths"][path]:
        if resp.headers["Content-Type"].startswith("application/json"):
            check_schema(resp.json(), response_schema(spec, path, method.lower(), resp.status_code), spec, path)
    elif path == "/" and method == "GET":
        assert resp.status_code == 200
    else:
        assert resp.status_code in (400, 404, 405), (method, path, resp.status_code)
        assert resp.headers["Content-Type"].split(";")[0] == "application/json"
        assert sorted(resp.json()) == ["error"]


TRAVERSALS = ["{secret}", "/etc/passwd", "../secret.csv", "../../secret.csv", "testdata/../../secret.csv",
              "testdata/../config.json", "sourcedata/link.csv", "sourcedata/up/secret.csv", "%2e%2e/secret.csv",
              "..%2fsecret.csv", "..%252fsecret.csv", "~/secret.csv", "file:///etc/passwd",
              "http://127.0.0.1/testdata.csv", "\\\\127.0.0.1\\share\\x.csv", "testdata\\..\\..\\secret.csv",
              "testdata/testdata.csv\x00.csv", "testdata/./../../secret.csv", "//etc/passwd", "config.json",
              "models/trainedmodel.pkl", "testdata", "\u2025/secret.csv", "testdata/\u002e\u002e/\u002e\u002e/secret.csv"]


def test_path_traversal_attempts_get_403_on_the_wire(live):
    _, url, session, secret = live
    for attempt in TRAVERSALS:
        attempt = attempt.format(secret=secret)
        resp = session.post(url + "/prediction", json={"filepath": attempt}, timeout=10)
        assert (resp.status_code, resp.json()) == (403, REFUSED), attempt


RAW_PATHS = ["/files/../config.json", "/files/..%2fconfig.json", "/files/%2e%2e%2fconfig.json", "/../config.json",
             "/files/..%2f..%2fetc%2fpasswd", "/files//etc/passwd", "/files/report.pdf/../../config.json",
             "/%2e%2e/%2e%2e/etc/passwd", "/files/modelcard.md%00.txt", "/static/../config.json",
             "//etc/passwd", "/files/%c0%ae%c0%ae/config.json"]


def test_raw_traversal_paths_never_serve_a_file(live):
    """Sent byte for byte (http.client does not normalise dot segments): 4xx JSON, no file content."""
    cfg, url, _, _ = live
    host, port = urlsplit(url).hostname, urlsplit(url).port
    config_text = cfg.path.read_text()
    for raw in RAW_PATHS:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.putrequest("GET", raw, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert 400 <= resp.status < 500, (raw, resp.status, body[:200])
        assert resp.getheader("Content-Type").split(";")[0] == "application/json", raw
        assert sorted(json.loads(body)) == ["error"], raw
        assert b"root:" not in body and config_text.encode()[:40] not in body, raw


def raw_request(url, head: bytes, body_parts=()):
    """Send a hand-made request; return (status, body) of the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before reading it all: allowed
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, resp.read()


def test_oversized_bodies_get_413_on_the_wire(live):
    _, url, session, _ = live
    error = {"error": f"request body too large: the limit is {LIMIT} bytes (max_request_bytes)"}
    row = {"lastmonth_activity": 3, "lastyear_activity": 70, "number_of_employees": 12}
    big_json = json.dumps({"records": [row] * (LIMIT // 50 + 10)}).encode()
    big_csv = b"lastmonth_activity,lastyear_activity,number_of_employees\n" + b"1,2,3\n" * (LIMIT // 6 + 10)
    # Each on a new connection: gunicorn may close a connection whose unread body it cannot drain
    # after the 413, although it answered keep-alive (see README, "Reliability").
    answers = [
        requests.post(url + "/prediction", data=big_json, headers={"Content-Type": "application/json"}, timeout=10),
        requests.post(url + "/prediction", data=big_csv, headers={"Content-Type": "text/csv"}, timeout=10),
        requests.post(url + "/prediction", files={"file": ("big.csv", big_csv)}, timeout=10),
    ]
    for resp in answers:
        assert (resp.status_code, resp.json()) == (413, error)
    # a Content-Length over the limit is refused before the body is read
    started = time.perf_counter()
    status, body = raw_request(url, b"POST /prediction HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 1000000000\r\nConnection: close\r\n\r\n", [b"{" * 100])
    assert (status, json.loads(body)) == (413, error)
    assert time.perf_counter() - started < 5
    # a chunked body (no Content-Length) over the limit
    chunk = b"1,2,3\n" * 2000
    chunks = [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * (LIMIT // len(chunk) + 2) + [b"0\r\n\r\n"]
    header = b"lastmonth_activity,lastyear_activity,number_of_employees\n"
    status, body = raw_request(url, b"POST /prediction HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                               [b"%x\r\n" % len(header) + header + b"\r\n"] + chunks)
    assert (status, json.loads(body)) == (413, error)
    # a chunked body within the limit is answered whole
    status, body = raw_request(url, b"POST /prediction HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                               [b"%x\r\n" % len(header) + header + b"\r\n"] + chunks[:3] + [b"0\r\n\r\n"])
    assert status == 200 and len(json.loads(body)["predictions"]) == 6000
    # and the server still answers
    assert session.get(url + "/health", timeout=10).status_code == 200
