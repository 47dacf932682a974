"""The API through Flask's test client: every endpoint, every input format, every error."""
import io
import json
import os
import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CLOSED_INDEX, REPO, build_world, make_config, retrain_and_deploy
from helpers import REFUSED, ROW, check_schema, response_schema

import app as app_module
import datagen
import delivery
import deployment
import history
import ingestion
import modelfile
import scoring
import serving
from settings import DEFAULT_CONFIG, FEATURES, load_config




@pytest.fixture(scope="module")
def client(shared):
    return app_module.create_app(shared).test_client()


@pytest.fixture(scope="module")
def model(shared):
    return deployment.load_deployed(shared.prod_deployment_path)[0]


def expected(model, df):
    X = df[list(FEATURES)].astype("float64")
    return model.predict(X).tolist(), model.predict_proba(X)[:, 1]


def assert_answer(body, model, df, version=1):
    preds, probs = expected(model, df)
    assert sorted(body) == ["model_version", "predictions", "probabilities"]
    assert body["model_version"] == version
    assert body["predictions"] == preds
    assert len(body["probabilities"]) == len(df)
    np.testing.assert_allclose(body["probabilities"], probs, rtol=0, atol=1e-9)


# --- the factory ----------------------------------------------------------------------------------

def test_create_app_takes_a_config_a_path_or_nothing(shared):
    by_path = app_module.create_app(str(shared.path))
    by_config = app_module.create_app(shared)
    default = app_module.create_app()
    assert by_path.extensions["dras"].cfg == shared
    assert by_config.extensions["dras"].cfg is shared
    assert default.extensions["dras"].cfg.path == DEFAULT_CONFIG
    assert by_config.config["MAX_CONTENT_LENGTH"] == 16 * 1024 * 1024


def test_creating_the_app_writes_nothing(tmp_path):
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path))
    app_module.create_app(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "testdata"]


# --- /prediction: every input format --------------------------------------------------------------

def test_json_records(client, model):
    rows = [ROW, {"lastmonth_activity": 400, "lastyear_activity": 5000, "number_of_employees": 3, "corporation": "abcd"}]
    resp = client.post("/prediction", json={"records": rows})
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert_answer(resp.get_json(), model, pd.DataFrame(rows))


def test_csv_body_upload_and_filepath_agree(client, model, shared):
    data = shared.test_data_file.read_bytes()
    df = pd.read_csv(shared.test_data_file)
    answers = [
        client.post("/prediction", data=data, content_type="text/csv"),
        client.post("/prediction", data={"file": (io.BytesIO(data), "testdata.csv")},
                    content_type="multipart/form-data"),
        client.post("/prediction", json={"filepath": "testdata/testdata.csv"}),
    ]
    for resp in answers:
        assert resp.status_code == 200, resp.get_json()
        assert_answer(resp.get_json(), model, df)
    assert answers[0].data == answers[1].data == answers[2].data


def test_csv_without_corporation_and_exited_in_another_order_with_crlf_and_bom(client, model):
    text = "\ufeffnumber_of_employees, lastyear_activity,lastmonth_activity\r\n12, 70, 3\r\n5,9000,800\r\n"
    resp = client.post("/prediction", data=text.encode(), content_type="text/csv; charset=utf-8")
    assert resp.status_code == 200, resp.get_json()
    df = pd.DataFrame({"lastmonth_activity": [3, 800], "lastyear_activity": [70, 9000], "number_of_employees": [12, 5]})
    assert_answer(resp.get_json(), model, df)


def test_filepath_in_each_data_folder(client, model, shared):
    for name in ("sourcedata/a.csv", "ingesteddata/finaldata.csv"):
        resp = client.post("/prediction", json={"filepath": name})
        assert resp.status_code == 200, resp.get_json()
        assert_answer(resp.get_json(), model, pd.read_csv(shared.base / name))


def test_fast_path_equals_scikit_learn_on_many_rows(client, model):
    df = datagen.generate(5000, seed=77)
    df.loc[0, "number_of_employees"] = 2**53 - 1  # extreme but legal values too
    df.loc[1, ["lastmonth_activity", "lastyear_activity"]] = 0
    records = df.drop(columns=["corporation", "exited"]).to_dict("records")
    resp = client.post("/prediction", json={"records": records})
    assert resp.status_code == 200
    assert_answer(resp.get_json(), model, df)
    predictor = client.application.extensions["dras"].predictor()
    assert predictor.linear is not None  # the numpy path really was the one used


def test_a_model_of_another_shape_is_served_through_scikit_learn(shared, model):
    from sklearn.tree import DecisionTreeClassifier

    df = datagen.generate(300, seed=5)
    tree = DecisionTreeClassifier(random_state=0, max_depth=3).fit(df[list(FEATURES)], df["exited"])
    predictor = serving.Predictor(tree, {"version": 9})
    assert predictor.linear is None
    X = df[list(FEATURES)].to_numpy(dtype="float64")
    preds, probs = predictor.predict(X)
    assert preds == tree.predict(df[list(FEATURES)]).tolist()
    assert probs == tree.predict_proba(df[list(FEATURES)])[:, 1].tolist()


def test_a_100000_row_csv_body(client, model):
    df = datagen.generate(100_000, seed=11)
    resp = client.post("/prediction", data=df.to_csv(index=False).encode(), content_type="text/csv")
    assert resp.status_code == 200
    assert_answer(resp.get_json(), model, df)


# --- /prediction: bad input -------------------------------------------------------------------------

CSV = "text/csv"
JSON = "application/json"
BAD_INPUTS = [
    # (content type, body, status, error)
    (JSON, b"", 400, 'empty body: send JSON {"records": [...]} or {"filepath": "..."}'),
    (JSON, b"   \n", 400, 'empty body: send JSON {"records": [...]} or {"filepath": "..."}'),
    (CSV, b"", 400, "empty body: send a CSV text with a header row"),
    (None, b"", 400, "empty body: send a CSV (Content-Type: text/csv), an uploaded file (multipart/form-data, "
                     "field 'file') or JSON (Content-Type: application/json)"),
    (JSON, b"{", 400, "body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (JSON, b"\xff\xfe", 400, "body is not UTF-8 text"),
    (JSON, b"[" * 100_000, 400, "body is not usable JSON: nested too deeply"),
    (JSON, b'{"records": [{"lastmonth_activity": ' + b"9" * 5000 + b"}]}", 400,
     "body is not usable JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 "
     "digits; use sys.set_int_max_str_digits() to increase the limit"),
    (JSON, b"[1, 2]", 400, 'JSON body must be an object with either "records" (a list of rows) or "filepath"'),
    (JSON, b'{"rows": []}', 400, 'JSON body must be an object with either "records" (a list of rows) or "filepath"'),
    (JSON, b'{"records": [], "filepath": "a.csv"}', 400,
     'JSON body must be an object with either "records" (a list of rows) or "filepath"'),
    (JSON, b'{"records": []}', 400, '"records" is empty: send at least one row'),
    (JSON, b'{"records": {"a": 1}}', 400, '"records" must be a list of objects, one per row'),
    (JSON, b'{"records": [[1, 2, 3]]}', 400, "row 1 is not a JSON object"),
    (JSON, json.dumps({"records": [ROW, {"lastmonth_activity": 1, "lastyear_activity": 2}]}).encode(), 400,
     "row 2: missing column 'number_of_employees'"),
    (JSON, json.dumps({"records": [ROW, ROW, {**ROW, "lastyear_activity": "abc"}]}).encode(), 400,
     "column 'lastyear_activity', row 3: value \"abc\" is not a number"),
    (JSON, json.dumps({"records": [{**ROW, "lastmonth_activity": "3"}]}).encode(), 400,
     "column 'lastmonth_activity', row 1: value \"3\" is not a number"),
    (JSON, json.dumps({"records": [{**ROW, "lastmonth_activity": True}]}).encode(), 400,
     "column 'lastmonth_activity', row 1: value true is not a number"),
    (JSON, json.dumps({"records": [{**ROW, "lastmonth_activity": [1]}]}).encode(), 400,
     "column 'lastmonth_activity', row 1: value [1] is not a number"),
    (JSON, json.dumps({"records": [ROW, {**ROW, "number_of_employees": None}]}).encode(), 400,
     "column 'number_of_employees', row 2: value is missing"),
    (JSON, json.dumps({"records": [{**ROW, "number_of_employees": -4}]}).encode(), 400,
     "column 'number_of_employees', row 1: value -4 is negative"),
    (JSON, json.dumps({"records": [{**ROW, "number_of_employees": 2.5}]}).encode(), 400,
     "column 'number_of_employees', row 1: value 2.5 is not a whole number"),
    (JSON, b'{"records": [{"lastmonth_activity": 1, "lastyear_activity": Infinity, "number_of_employees": 1}]}', 400,
     "column 'lastyear_activity', row 1: value Infinity is not a finite number"),
    (JSON, b'{"records": [{"lastmonth_activity": NaN, "lastyear_activity": 1, "number_of_employees": 1}]}', 400,
     "column 'lastmonth_activity', row 1: value is missing"),
    (JSON, json.dumps({"records": [{**ROW, "number_of_employees": 2**53}]}).encode(), 400,
     f"column 'number_of_employees', row 1: value {2**53} is out of range (at most {2**53 - 1})"),
    (JSON, json.dumps({"records": [{**ROW, "number_of_employees": 10**400}]}).encode(), 400,
     f"column 'number_of_employees', row 1: value {10**400} is out of range (at most {2**53 - 1})"),
    (JSON, json.dumps({"records": [{**ROW, "number_of_employees": 1e300}]}).encode(), 400,
     "column 'number_of_employees', row 1: value 1e+300 is out of range (at most 9007199254740991)"),
    (CSV, b"lastmonth_activity,lastyear_activity\n1,2\n", 400, "missing column 'number_of_employees'"),
    (CSV, b"lastmonth_activity;lastyear_activity;number_of_employees\n1;2;3\n", 400,
     "missing column 'lastmonth_activity' (the separator must be a comma)"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees,lastmonth_activity\n1,2,3,4\n", 400,
     "duplicated column 'lastmonth_activity'"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n", 400, "header only, no rows"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n4,x7,6\n", 400,
     "column 'lastyear_activity', row 2 (line 3): value 'x7' is not a number"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n4,5,\n", 400,
     "column 'number_of_employees', row 2 (line 3): value is missing"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n4,NA,6\n", 400,
     "column 'lastyear_activity', row 2 (line 3): value is missing"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,-2,3\n", 400,
     "column 'lastyear_activity', row 1 (line 2): value -2.0 is negative"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3.5\n", 400,
     "column 'number_of_employees', row 1 (line 2): value 3.5 is not a whole number"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,inf\n", 400,
     "column 'number_of_employees', row 1 (line 2): value inf is not a finite number"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3,4,5\n", 400,
     "malformed CSV: line 2 has 5 fields, the header has 3"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n\"4\",5,6\n7,8,9,10\n", 400,
     "malformed CSV: line 4 has 4 fields, the header has 3"),
    (CSV, b"\x1f\x8b\x08\x00", 400, "gzip-compressed data, not a plain CSV text"),
    (CSV, b"a,b\x00c\n", 400, "binary content (NUL bytes), not a CSV text"),
    (CSV, b"lastmonth_activity,lastyear_activity,number_of_employees\n\xff,2,3\n", 400,
     "not UTF-8 text: undecodable byte at offset 57"),
    ("application/x-www-form-urlencoded", b"a=1", 415,
     "unsupported Content-Type 'application/x-www-form-urlencoded': use text/csv, "
     "multipart/form-data (field 'file') or application/json"),
    ("application/xml", b"<a/>", 415,
     "unsupported Content-Type 'application/xml': use text/csv, multipart/form-data (field 'file') or application/json"),
    (None, b"a,b\n1,2\n", 415, "no Content-Type: use text/csv, multipart/form-data (field 'file') or application/json"),
]


@pytest.mark.parametrize(("content_type", "body", "status", "error"), BAD_INPUTS)
def test_bad_input_gets_an_exact_json_error(client, content_type, body, status, error):
    headers = {"Content-Type": content_type} if content_type else {}
    resp = client.post("/prediction", data=body, headers=headers)
    assert (resp.status_code, resp.mimetype, resp.get_json()) == (status, "application/json", {"error": error})


def test_a_multipart_upload_without_the_file_field(client):
    resp = client.post("/prediction", data={"other": (io.BytesIO(b"x"), "x.csv")}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "a multipart upload needs the CSV in a field named 'file' (curl -F file=@data.csv)"}


def test_a_bad_uploaded_file_says_what_is_wrong(client):
    data = b"corporation,lastmonth_activity,lastyear_activity,number_of_employees\nabcd,1,2,many\n"
    resp = client.post("/prediction", data={"file": (io.BytesIO(data), "x.csv")}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "column 'number_of_employees', row 1 (line 2): value 'many' is not a number"}


def test_a_body_over_the_limit_gets_413(make_deployed):
    cfg = make_deployed(max_request_bytes=2000)
    client = app_module.create_app(cfg).test_client()
    big = ("lastmonth_activity,lastyear_activity,number_of_employees\n" + "1,2,3\n" * 400).encode()
    error = {"error": "request body too large: the limit is 2000 bytes (max_request_bytes)"}
    for kwargs in ({"data": big, "content_type": "text/csv"},
                   {"data": json.dumps({"records": [ROW] * 100}), "content_type": "application/json"},
                   {"data": {"file": (io.BytesIO(big), "big.csv")}, "content_type": "multipart/form-data"}):
        resp = client.post("/prediction", **kwargs)
        assert (resp.status_code, resp.get_json()) == (413, error)
    small = client.post("/prediction", json={"records": [ROW] * 10})
    assert small.status_code == 200


# --- /prediction: {"filepath": ...} may only name a .csv file inside the data folders ---------------

@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A secret .csv file beside a world, and symlinks inside the data folders leading to it."""
    deployed = build_world(tmp_path_factory.mktemp("outside") / "world")
    secret = deployed.base.parent / f"{deployed.base.name}-secret.csv"
    secret.write_text("lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n")
    (deployed.input_folder_path / "link.csv").symlink_to(secret)
    (deployed.input_folder_path / "dangling.csv").symlink_to(deployed.base.parent / "no-such-secret.csv")
    (deployed.input_folder_path / "up").symlink_to(deployed.base.parent)
    return deployed, secret


@pytest.mark.parametrize("filepath", [
    "{secret}",                                   # absolute, exists
    "/etc/passwd",
    "/no/such/file.csv",                          # absolute, does not exist
    "../{secret_name}",                           # traversal to an existing file
    "../no-such-file.csv",                        # traversal to a missing one
    "testdata/../../{secret_name}",
    "testdata/../config.json",
    "sourcedata/link.csv",                        # a symlink inside leading out, to a file that exists
    "sourcedata/dangling.csv",                    # ... and to one that does not
    "sourcedata/up/{secret_name}",                # a folder symlink leading out
    "sourcedata/up/no-such-file.csv",
    "%2e%2e/{secret_name}",                       # URL-encoded traversal
    "..%2f{secret_name}",
    "~/x.csv",
    "file:///etc/passwd",
    "http://127.0.0.1/testdata.csv",
    "testdata\\..\\..\\x.csv",
    "testdata/testdata.csv\x00.csv",
    "config.json",                                # inside the world but not in a data folder
    "models/trainedmodel.pkl",
    "testdata",                                   # not a .csv file
    "",
    7,
    None,
    ["testdata/testdata.csv"],
])
def test_filepath_outside_the_data_folders_is_refused_alike(outside, filepath):
    cfg, secret = outside
    if isinstance(filepath, str):
        filepath = filepath.format(secret=secret, secret_name=secret.name)
    client = app_module.create_app(cfg).test_client()
    resp = client.post("/prediction", json={"filepath": filepath})
    assert (resp.status_code, resp.get_json()) == (403, REFUSED)


def test_filepath_inside_that_does_not_exist_is_404(client):
    resp = client.post("/prediction", json={"filepath": "testdata/nothere.csv"})
    assert (resp.status_code, resp.get_json()) == (404, {"error": "no such file in the data folders: testdata/nothere.csv"})


def test_a_bad_file_named_by_filepath_says_which_file(deployed):
    (deployed.input_folder_path / "bad.csv").write_text("lastmonth_activity,lastyear_activity\n1,2\n")
    resp = app_module.create_app(deployed).test_client().post("/prediction", json={"filepath": "sourcedata/bad.csv"})
    assert (resp.status_code, resp.get_json()) == (400, {"error": "sourcedata/bad.csv: missing column 'number_of_employees'"})


# --- the fast path answers exactly as the Flask route ---------------------------------------------

SIDE_BY_SIDE = [
    json.dumps({"records": [ROW]}).encode(),
    json.dumps({"records": [ROW] * 5}).encode(),
    json.dumps({"records": [{**ROW, "exited": 1, "corporation": "abcd"}]}).encode(),
    json.dumps({"filepath": "testdata/testdata.csv"}).encode(),
    json.dumps({"filepath": "../x.csv"}).encode(),
    json.dumps({"filepath": "testdata/none.csv"}).encode(),
] + [body for ctype, body, _, _ in BAD_INPUTS if ctype == JSON]


@pytest.mark.parametrize("body", SIDE_BY_SIDE)
@pytest.mark.parametrize("token", [None, "s3cret"])
def test_fast_path_and_flask_route_answer_alike(shared, monkeypatch, body, token):
    if token:
        monkeypatch.setenv("DRAS_API_TOKEN", token)
    fast = app_module.create_app(shared)
    slow = app_module.create_app(shared, fast_path=False)
    for headers in ({}, {"Authorization": "Bearer s3cret"}, {"Authorization": "Bearer wrong"}):
        a = fast.test_client().post("/prediction", data=body, headers={"Content-Type": JSON, **headers})
        b = slow.test_client().post("/prediction", data=body, headers={"Content-Type": JSON, **headers})
        assert (a.status_code, a.headers["Content-Type"], a.data) == (b.status_code, b.headers["Content-Type"], b.data)
        assert a.headers["Content-Length"] == b.headers["Content-Length"]


def test_fast_path_answers_200s_without_flask(shared):
    fast = app_module.create_app(shared)
    reached_flask = []
    fast.before_request(lambda: reached_flask.append(1))
    client = fast.test_client()
    assert client.post("/prediction", json={"records": [ROW]}).status_code == 200
    assert reached_flask == []
    assert client.post("/prediction", json={"records": []}).status_code == 400
    assert reached_flask == [1]


# --- bearer token ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("post", "/prediction"), ("get", "/scoring"), ("get", "/summarystats"), ("get", "/diagnostics"),
    ("get", "/openapi.json"), ("get", "/nowhere"), ("get", "/monitoring"), ("get", "/metrics"),
])
def test_a_token_is_required_when_set(shared, monkeypatch, method, path):
    monkeypatch.setenv("DRAS_API_TOKEN", "s3cret")
    client = app_module.create_app(shared).test_client()
    kwargs = {"json": {"records": [ROW]}} if method == "post" else {}
    error = {"error": "a valid bearer token is required (Authorization: Bearer ..., set by DRAS_API_TOKEN)"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
        resp = getattr(client, method)(path, headers=headers, **kwargs)
        assert (resp.status_code, resp.get_json()) == (401, error)
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="dras"'
    resp = getattr(client, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
    assert resp.status_code == (404 if path == "/nowhere" else 200)


def test_health_needs_no_token(deployed, monkeypatch):
    # a world of its own: the module's shared one holds other tests' traffic, which live monitoring judges
    monkeypatch.setenv("DRAS_API_TOKEN", "s3cret")
    resp = app_module.create_app(deployed).test_client().get("/health")
    assert (resp.status_code, resp.get_json()) == (200, {"status": "ok", "model_version": 1})


# --- unknown routes and methods -------------------------------------------------------------------

def test_unknown_routes_and_methods_get_json(client):
    resp = client.get("/nope")
    assert (resp.status_code, resp.get_json()) == (404, {"error": "no such endpoint: /nope"})
    resp = client.get("/prediction")
    assert (resp.status_code, resp.get_json()) == (405, {"error": "method GET is not allowed on /prediction"})
    assert sorted(resp.headers["Allow"].split(", ")) == ["OPTIONS", "POST"]
    resp = client.post("/scoring")
    assert (resp.status_code, resp.get_json()) == (405, {"error": "method POST is not allowed on /scoring"})


def test_an_unexpected_error_is_a_json_500(shared, monkeypatch):
    app = app_module.create_app(shared)

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["dras"], "summarystats", broken)
    resp = app.test_client().get("/summarystats")
    assert (resp.status_code, resp.get_json()) == (500, {"error": "internal server error"})


# --- /scoring, /summarystats, /diagnostics, /health -----------------------------------------------

def snapshot(root):
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if "history.sqlite" not in p.name}


def test_scoring_is_the_deployed_models_score_read_only_and_cached(deployed, monkeypatch):
    model, manifest = deployment.load_deployed(deployed.prod_deployment_path)
    X, y = delivery.read_labelled(deployed.test_data_file)
    # The score on the test data, and the audit recorded at training: cross-validated score, slices.
    want = {"model_version": 1, **scoring.score_model(model, X, y),
            "cross_validation": manifest["audit"]["cross_validation"], "slices": manifest["audit"]["slices"]}
    assert want["cross_validation"]["folds"] == 5
    assert want["slices"]["overall"]["f1"] == want["f1"]
    assert len(want["slices"]["slices"]) == 6
    before = snapshot(deployed.base)
    reads = []
    real = delivery.read_labelled
    monkeypatch.setattr(delivery, "read_labelled", lambda path: reads.append(path) or real(path))
    client = app_module.create_app(deployed).test_client()
    for _ in range(3):
        resp = client.get("/scoring")
        assert (resp.status_code, resp.get_json()) == (200, want)
    assert reads == [deployed.test_data_file]  # once per model version
    assert snapshot(deployed.base) == before
    assert want["f1"] == float(deployed.score_file.read_text())


def test_summarystats_are_the_ingested_datas(client, shared):
    stats, _ = ingestion.summarize(ingestion.read_finaldata(shared.finaldata))
    resp = client.get("/summarystats")
    assert (resp.status_code, resp.get_json()) == (200, {"summary": stats})
    assert stats["lastmonth_activity"]["count"] == 200


def test_summarystats_before_any_ingestion(tmp_path):
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path))
    resp = app_module.create_app(cfg).test_client().get("/summarystats")
    assert (resp.status_code, resp.get_json()) == (200, {"summary": {}})
    assert not cfg.history_db.exists()  # a GET creates nothing


def test_diagnostics_in_under_a_second_with_the_index_unreachable(shared):
    client = app_module.create_app(shared).test_client()
    started = time.perf_counter()
    resp = client.get("/diagnostics")
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200
    body = resp.get_json()
    assert elapsed < 1.0
    conn = history.connect(shared.history)
    steps = {r["step"]: r["seconds"] for r in conn.execute("SELECT step, seconds FROM step_timings ORDER BY id")}
    assert body["recorded_timings"] == steps
    assert sorted(steps) == ["ingestion", "scoring", "training"]
    assert body["missing_data"] == {c: 0.0 for c in ("corporation", *FEATURES, "exited")}
    assert body["execution_time"] is None
    deps = body["dependencies"]
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split()
                if "==" in line)
    assert deps["index"] == CLOSED_INDEX
    assert [(p["package"], p["pinned"], p["latest"], p["status"]) for p in deps["packages"]] == [
        (name, version, None, "unknown") for name, version in pins.items()]


def test_diagnostics_show_the_latest_recorded_execution_time(deployed):
    conn = history.connect(deployed.history)
    history.record_json(conn, "diagnostics", at=1.0, kind="all", value={"execution_time": {"ingestion": 0.5, "training": 0.25}})
    history.record_json(conn, "diagnostics", at=2.0, kind="all", value={"execution_time": {"ingestion": 0.75, "training": None}})
    resp = app_module.create_app(deployed).test_client().get("/diagnostics")
    assert resp.get_json()["execution_time"] == {"ingestion": 0.75, "training": None}


def test_nothing_deployed(tmp_path):
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path))
    client = app_module.create_app(cfg).test_client()
    error = f"no model is deployed in {cfg.prod_deployment_path}"
    resp = client.get("/health")
    assert (resp.status_code, resp.get_json()) == (503, {"status": "unavailable", "model_version": None, "error": error})
    for resp in (client.get("/scoring"), client.post("/prediction", json={"records": [ROW]})):
        assert (resp.status_code, resp.get_json()) == (503, {"error": error})


# --- hot reload -----------------------------------------------------------------------------------

def test_a_new_deployment_and_a_rollback_are_served_from_the_next_request(deployed):
    client = app_module.create_app(deployed).test_client()
    rows = datagen.generate(30, seed=8)
    records = rows[list(FEATURES)].to_dict("records")
    first = client.post("/prediction", json={"records": records}).get_json()
    assert first["model_version"] == 1
    assert client.get("/scoring").get_json()["model_version"] == 1
    retrain_and_deploy(deployed, seed=2)
    second = client.post("/prediction", json={"records": records}).get_json()
    model2 = deployment.load_deployed(deployed.prod_deployment_path)[0]
    assert_answer(second, model2, rows, version=2)
    assert second["probabilities"] != first["probabilities"]
    scored = client.get("/scoring").get_json()
    assert scored["model_version"] == 2
    assert scored["f1"] == float(deployed.score_file.read_text())
    deployment.rollback(deployed.prod_deployment_path)
    assert client.post("/prediction", json={"records": records}).get_json() == first
    assert client.get("/health").get_json() == {"status": "ok", "model_version": 1}


def test_a_version_that_fails_to_load_keeps_the_previous_one_serving(deployed, monkeypatch):
    client = app_module.create_app(deployed).test_client()
    assert client.get("/health").get_json() == {"status": "ok", "model_version": 1}
    loads = []
    real = deployment.load_version
    monkeypatch.setattr(deployment, "load_version", lambda d, **kw: loads.append(d) or real(d, **kw))
    prod = deployed.prod_deployment_path
    # Publish version 2 with a pickle that does not match its manifest.
    retrain_and_deploy(deployed, seed=3)
    pkl = prod / "versions" / "v0002" / "trainedmodel.pkl"
    pkl.write_bytes(pkl.read_bytes()[:-1] + b"\x00")
    for _ in range(3):
        resp = client.post("/prediction", json={"records": [ROW]})
        assert (resp.status_code, resp.get_json()["model_version"]) == (200, 1)
    assert loads == [prod / "versions/v0002"]  # tried once, not per request
    resp = client.get("/health")
    assert resp.status_code == 200  # degraded, not down: version 1 still answers
    body = resp.get_json()
    assert body["status"] == "degraded" and body["model_version"] == 1
    assert body["error"].startswith("the deployed model versions/v0002 failed to load: ")
    assert "does not match its manifest" in body["error"]
    assert body["error"].endswith("; still serving version 1")
    # A good version 3 is served again, and health recovers.
    retrain_and_deploy(deployed, seed=4)
    assert client.post("/prediction", json={"records": [ROW]}).get_json()["model_version"] == 3
    assert client.get("/health").get_json() == {"status": "ok", "model_version": 3}


def test_the_model_is_loaded_once_per_version(deployed, monkeypatch):
    loads = []
    real = deployment.load_version
    monkeypatch.setattr(deployment, "load_version", lambda d, **kw: loads.append(d) or real(d, **kw))
    client = app_module.create_app(deployed).test_client()
    for _ in range(5):
        client.post("/prediction", json={"records": [ROW]})
        client.post("/prediction", data=b"lastmonth_activity,lastyear_activity,number_of_employees\n1,2,3\n",
                    content_type="text/csv")
    assert loads == [deployed.prod_deployment_path / "versions/v0001"]


# --- the OpenAPI description matches the real responses -------------------------------------------

def test_openapi_json_is_the_yaml_saying_whether_this_server_needs_a_token(client, shared, monkeypatch):
    spec = yaml.safe_load((REPO / "openapi.yaml").read_text())
    assert spec["security"] == [{}, {"bearer": []}]  # the file: optional, it depends on DRAS_API_TOKEN
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.get_json() == {**spec, "security": []}
    monkeypatch.setenv("DRAS_API_TOKEN", "s3cret")
    resp = app_module.create_app(shared).test_client().get("/openapi.json", headers={"Authorization": "Bearer s3cret"})
    assert resp.get_json() == {**spec, "security": [{"bearer": []}]}


def test_the_openapi_description_matches_real_responses(deployed, monkeypatch):
    spec = yaml.safe_load((REPO / "openapi.yaml").read_text())
    client = app_module.create_app(deployed).test_client()
    calls = [
        ("/prediction", "post", {"json": {"records": [ROW] * 3}}, 200),
        ("/prediction", "post", {"json": {"filepath": "testdata/testdata.csv"}}, 200),
        ("/prediction", "post", {"json": {"records": []}}, 400),
        ("/prediction", "post", {"json": {"filepath": "/etc/passwd"}}, 403),
        ("/prediction", "post", {"json": {"filepath": "testdata/x.csv"}}, 404),
        ("/prediction", "post", {"data": "x", "content_type": "application/xml"}, 415),
        ("/scoring", "get", {}, 200),
        ("/summarystats", "get", {}, 200),
        ("/diagnostics", "get", {}, 200),
        ("/health", "get", {}, 200),
        ("/openapi.json", "get", {}, 200),
        ("/monitoring", "get", {}, 200),
        ("/monitoring", "get", {"query_string": {"windows": "0"}}, 400),
    ]
    for path, method, kwargs, status in calls:
        resp = getattr(client, method)(path, **kwargs)
        assert resp.status_code == status, (path, resp.get_json())
        check_schema(resp.get_json(), response_schema(spec, path, method, status), spec, f"{method} {path}")
    monkeypatch.setenv("DRAS_API_TOKEN", "t")
    resp = app_module.create_app(deployed).test_client().get("/scoring")
    check_schema(resp.get_json(), response_schema(spec, "/scoring", "get", 401), spec)
    shutil.rmtree(deployed.prod_deployment_path)
    monkeypatch.delenv("DRAS_API_TOKEN")
    fresh = app_module.create_app(deployed).test_client()
    for path, method in (("/health", "get"), ("/scoring", "get"), ("/prediction", "post")):
        resp = getattr(fresh, method)(path, json={"records": [ROW]}) if method == "post" else fresh.get(path)
        assert resp.status_code == 503
        check_schema(resp.get_json(), response_schema(spec, path, method, 503), spec, path)
    # and every route of the app is described
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule)  # Flask's /files/<name> is OpenAPI's /files/{name}
              for r in client.application.url_map.iter_rules() if r.endpoint != "static"}
    assert routes == set(spec["paths"])


def test_the_development_server_entry_refuses_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text("{}")
    assert app_module.main(["--config", str(bad)]) == 2
    assert capsys.readouterr().err == "error: missing config key 'input_folder_path'\n"


# --- scikit-learn stays out of the serving process ----------------------------------------------

def test_serving_never_imports_scikit_learn(shared):
    """A fresh process (as a gunicorn worker) answers every endpoint without scikit-learn, scipy or its memory."""
    import subprocess
    import sys

    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import app
client = app.create_app({str(shared.path)!r}).test_client()
out = [client.post("/prediction", json={{"records": [{ROW!r}]}}).get_json(),
       client.post("/prediction", data=open({str(shared.test_data_file)!r}, "rb").read(), content_type="text/csv").status_code,
       client.get("/scoring").get_json(), client.get("/summarystats").status_code,
       client.get("/diagnostics").status_code, client.get("/health").status_code,
       sorted(m for m in ("sklearn", "scipy") if m in sys.modules)]
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    prediction, csv_status, scored, *statuses, heavy = json.loads(done.stdout)
    model, manifest = deployment.load_deployed(shared.prod_deployment_path)
    assert_answer(prediction, model, pd.DataFrame([ROW]))
    X, y = delivery.read_labelled(shared.test_data_file)
    assert scored == {"model_version": 1, **scoring.score_model(model, X, y),
                      "cross_validation": manifest["audit"]["cross_validation"], "slices": manifest["audit"]["slices"]}
    assert [csv_status, *statuses] == [200, 200, 200, 200]
    assert heavy == []


def test_the_scoring_helper_process_agrees_with_scoring_here(shared):
    service = app_module.create_app(shared).extensions["dras"]
    p = service.predictor()
    assert isinstance(p.model, serving.Fitted)
    assert service._score_in_helper(p) == service._score_here(p)


def test_the_scoring_child_says_why_it_cannot_score(shared, tmp_path):
    result = serving.score_in_child(tmp_path / "v0009", shared.test_data_file)
    assert result == serving.ScoreResult(2, None, f"no manifest in {tmp_path / 'v0009'}")
    assert not result.ok


def test_a_model_of_another_shape_is_loaded_by_scikit_learn(deployed, tmp_path):
    import pickle

    from sklearn.linear_model import LogisticRegression

    df = datagen.generate(300, seed=5)
    bare = LogisticRegression(C=0.5).fit(df[list(FEATURES)], df["exited"])  # no scaler: not the numpy path
    pkl = tmp_path / "bare.pkl"
    pkl.write_bytes(pickle.dumps(bare))
    assert serving.Predictor(modelfile.load_fitted(pkl.read_bytes()), {"version": 2}).linear is None
    deployment.deploy(deployed.prod_deployment_path, pkl, deployed.score_file, deployed.ingested_list)
    client = app_module.create_app(deployed).test_client()
    rows = datagen.generate(20, seed=6)
    resp = client.post("/prediction", json={"records": rows[list(FEATURES)].to_dict("records")})
    assert resp.status_code == 200
    assert_answer(resp.get_json(), bare, rows, version=2)
    assert type(client.application.extensions["dras"].predictor().model) is LogisticRegression
    assert client.get("/scoring").get_json()["model_version"] == 2


def test_a_decision_tree_is_refused_at_deployment(deployed, tmp_path):
    import pickle

    from sklearn.tree import DecisionTreeClassifier

    df = datagen.generate(300, seed=5)
    tree = DecisionTreeClassifier(random_state=0, max_depth=3).fit(df[list(FEATURES)], df["exited"])
    pkl = tmp_path / "tree.pkl"
    pkl.write_bytes(pickle.dumps(tree))
    with pytest.raises(modelfile.Refused, match="^it names sklearn.tree._classes.DecisionTreeClassifier, "):
        modelfile.load_fitted(pkl.read_bytes())
    with pytest.raises(deployment.DeploymentError) as refused:
        deployment.deploy(deployed.prod_deployment_path, pkl, deployed.score_file, deployed.ingested_list)
    assert str(refused.value) == (
        f"cannot deploy {pkl}: it names sklearn.tree._classes.DecisionTreeClassifier, which is not on the model "
        "allow-list (a scikit-learn Pipeline, StandardScaler, LogisticRegression and numpy arrays): refused, "
        "since loading it could run code")
    assert deployment.versions(deployed.prod_deployment_path) == [1]


def test_few_rows_computed_without_numpy_equal_scikit_learn(client, model):
    df = datagen.generate(30, seed=13)
    df.loc[0, "number_of_employees"] = 2**53 - 1
    df.loc[1, "lastmonth_activity"] = 2**53 - 1  # a probability that underflows to 0
    df.loc[2, "lastyear_activity"] = 2**53 - 1
    df.loc[3, FEATURES] = 0
    records = df[list(FEATURES)].to_dict("records")
    assert len(records) <= serving.SMALL_BATCH
    resp = client.post("/prediction", json={"records": records})
    assert_answer(resp.get_json(), model, df)
    predictor = client.application.extensions["dras"].predictor()
    X = df[list(FEATURES)].to_numpy(dtype="float64")
    assert predictor.predict(X)[0] == predictor.predict(df[list(FEATURES)].values.tolist())[0]


def mutations(seed, count):
    """Seeded garbage: random bytes, and valid bodies with bytes flipped, cut or doubled."""
    rng = np.random.default_rng(seed)
    valid = [json.dumps({"records": [ROW, {**ROW, "corporation": "abcd"}]}).encode(),
             b"corporation,lastmonth_activity,lastyear_activity,number_of_employees\nabcd,1,2,3\nefgh,4,5,6\n"]
    for i in range(count):
        base = valid[i % 2]
        kind = i % 3
        if kind == 0:
            yield bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
        elif kind == 1:
            data = bytearray(base)
            for pos in rng.integers(0, len(data), 3):
                data[pos] = int(rng.integers(0, 256))
            yield bytes(data)
        else:
            cut = int(rng.integers(1, len(base)))
            yield base[:cut] + base[cut // 2:]


@pytest.mark.parametrize("content_type", [JSON, CSV])
def test_garbage_never_gets_a_500(client, content_type):
    statuses = set()
    for body in mutations(seed=len(content_type), count=150):
        resp = client.post("/prediction", data=body, headers={"Content-Type": content_type})
        assert resp.mimetype == "application/json", body
        payload = resp.get_json()
        if resp.status_code == 200:
            assert len(payload["predictions"]) == len(payload["probabilities"]) >= 1
        else:
            assert 400 <= resp.status_code < 500 and sorted(payload) == ["error"], (body, payload)
        statuses.add(resp.status_code)
    assert 400 in statuses
