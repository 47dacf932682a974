"""The benchmark's floor: a bare WSGI app that parses JSON records and computes the same logistic
model with numpy. No framework, no validation, no hot reload: what nothing can beat by much.

    gunicorn -c gunicorn.conf.py --chdir bench "floor_app:make_app('path/to/trainedmodel.pkl')"
"""
import json
import pickle

import numpy as np

FEATURES = ("lastmonth_activity", "lastyear_activity", "number_of_employees")


def make_app(model_path):
    with open(model_path, "rb") as f:
        pipeline = pickle.load(f)
    scaler, classifier = pipeline.steps[0][1], pipeline.steps[1][1]
    mean, scale = scaler.mean_, scaler.scale_
    coef, intercept = classifier.coef_.ravel(), classifier.intercept_[0]

    def app(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        records = json.loads(environ["wsgi.input"].read(length))["records"]
        X = np.array([[r[f] for f in FEATURES] for r in records], dtype=np.float64)
        z = ((X - mean) / scale) @ coef + intercept
        out = json.dumps({"predictions": (z > 0).astype(int).tolist(),
                          "probabilities": (1 / (1 + np.exp(-z))).tolist()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    return app
