"""Loads a deployed model and predicts with numpy, without scikit-learn; scores it in a child process.

    ModelStore(prod)          the serving version, reloaded when production_deployment/current moves
    Predictor(model, manifest)  one loaded version; predict(X) -> (predictions, probabilities)
    score_in_child(version_dir, test_data)  the version's test score, computed by a child process
                              that imports scikit-learn so that the calling worker never does

A model is unpickled by modelfile's allow-list only, never by pickle itself: a deployed file that
names anything else is refused and the previous version keeps serving (README, "Trust boundary").
An API worker that imports this module gets numpy and deployment, never scikit-learn or scipy
(tests/test_app.py checks it); a model of another shape is the one case that loads them.
"""
import logging
import math
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import deployment
import modelfile
import words
from modelfile import ESTIMATORS, Fitted
from settings import FEATURES

logger = logging.getLogger(__name__)

SMALL_BATCH = 32  # up to this many JSON rows are computed without numpy
SCORE_TIMEOUT = 120.0  # seconds the scoring child may take


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class NotPlainLinear(Exception):
    """The allow-listed pickle holds something else than a two-class scaler + logistic regression Pipeline."""


def _kind(step):
    if isinstance(step, Fitted):
        return step.kind
    module = type(step).__module__
    return type(step).__name__ if (module, type(step).__name__) in ESTIMATORS else None


class Predictor:
    """One loaded version: the fitted Pipeline and, when it is scaler + logistic regression,
    its arithmetic in numpy (the same operations scikit-learn does, without its checks)."""

    def __init__(self, model, manifest):
        self.model = model
        self.manifest = manifest
        self.version = manifest["version"]
        self.directory = None  # the version folder it was loaded from
        self.linear = None
        try:
            scale, classify = (step for _, step in model.steps)
            names = [str(n) for n in getattr(scale, "feature_names_in_", FEATURES)]
            if (_kind(model) == "Pipeline" and _kind(scale) == "StandardScaler"
                    and _kind(classify) == "LogisticRegression" and names == list(FEATURES)
                    and len(classify.classes_) == 2 and classify.coef_.shape == (1, len(FEATURES))):
                mean = scale.mean_ if scale.with_mean else np.zeros(len(FEATURES))
                sd = scale.scale_ if scale.with_std else np.ones(len(FEATURES))
                if sd is None:
                    sd = np.ones(len(FEATURES))
                self.linear = (np.asarray(mean, dtype=np.float64), np.asarray(sd, dtype=np.float64),
                               classify.coef_.T.copy(), classify.intercept_.copy(), classify.classes_)
                self.small = (self.linear[0].tolist(), self.linear[1].tolist(), classify.coef_[0].tolist(),
                              float(classify.intercept_[0]), classify.classes_.tolist())
        except (AttributeError, ValueError, TypeError):
            self.linear = None

    def predict(self, X):
        """(predictions, probabilities of class 1) for X (a float64 matrix, or a list of rows), as lists.

        The arithmetic is scikit-learn's: scale, dot product, intercept, then the logistic function
        (scikit-learn's expit), written so that it never overflows; equal to scikit-learn's to 1e-15.
        """
        if self.linear is not None:
            if type(X) is list and len(X) <= SMALL_BATCH:
                return self._predict_small(X)
            mean, sd, coef, intercept, classes = self.linear
            z = (((np.asarray(X, dtype=np.float64) - mean) / sd) @ coef + intercept).ravel()
            e = np.exp(-np.abs(z))
            probabilities = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            return classes[(z > 0).astype(np.intp)].tolist(), probabilities.tolist()
        import pandas as pd  # lazy: only a model of another shape needs pandas in a worker

        df = pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(FEATURES))
        return self.model.predict(df).tolist(), self.model.predict_proba(df)[:, 1].tolist()

    def _predict_small(self, rows):
        # A few rows: plain Python arithmetic costs less than numpy's per-call overhead.
        (m0, m1, m2), (s0, s1, s2), (c0, c1, c2), b, (no, yes) = self.small
        exp = math.exp
        predictions, probabilities = [], []
        for x0, x1, x2 in rows:
            z = (x0 - m0) / s0 * c0 + (x1 - m1) / s1 * c1 + (x2 - m2) / s2 * c2 + b
            predictions.append(yes if z > 0 else no)
            if z >= 0:
                probabilities.append(1.0 / (1.0 + exp(-z)))
            else:
                e = exp(z)
                probabilities.append(e / (1.0 + e))
        return predictions, probabilities


_UNKNOWN = object()


class ModelStore:
    """The serving version, reloaded when production_deployment/current moves."""

    def __init__(self, prod):
        self.prod = Path(prod)
        self._current = os.fspath(self.prod / "current")
        # The `current` target the predictor was loaded from, and the one that last failed to load
        # (versions are immutable: no need to try it again). Neither is known before the first request.
        self.link = self.failed_link = _UNKNOWN
        self.predictor = None
        self.error = None
        self._lock = threading.Lock()

    def _read_link(self):
        try:
            return os.readlink(self._current)
        except OSError:
            return None

    def get(self):
        """The Predictor to serve with, or None; loads a new version once, when the link moved."""
        link = self._read_link()
        if link == self.link or link == self.failed_link:
            return self.predictor
        with self._lock:
            if link != self.link and link != self.failed_link:
                self._load(link)
        return self.predictor

    def _load(self, link):
        if link is None:
            self.failed_link = None
            self.error = f"no model is deployed in {self.prod}"
            if self.predictor is not None:
                self.error += f" any more; still serving version {self.predictor.version}"
            return
        try:
            try:
                model, manifest = deployment.load_version(self.prod / link, loads=modelfile.load_fitted)
                predictor = Predictor(model, manifest)
                if predictor.linear is None:
                    raise NotPlainLinear("not a two-class scaler + logistic regression on the three features")
            except NotPlainLinear:  # a model of another shape: scikit-learn's classes, through the same allow-list
                model, manifest = deployment.load_version(self.prod / link, loads=modelfile.load_model)
                predictor = Predictor(model, manifest)
            predictor.directory = self.prod / link
        except (deployment.DeploymentError, OSError, KeyError, ValueError, TypeError) as exc:
            self.failed_link = link
            self.error = f"the deployed model {link} failed to load: {words.error_text(exc)}"
            if self.predictor is not None:
                self.error += f"; still serving version {self.predictor.version}"
            logger.warning("%s", self.error)
            return
        self.predictor, self.link, self.failed_link, self.error = predictor, link, None, None
        logger.info("serving model version %s (%s)", predictor.version, link)


# ---------------------------------------------------------------------------------------------
# The test score, computed in a child process
# ---------------------------------------------------------------------------------------------

SCORED, REFUSED = 0, 2  # the child's exit codes: scored; the version or the test data is unusable


@dataclass(frozen=True)
class ScoreResult:
    """What the scoring child answered.

    exit_code  the child's exit code: SCORED (0), REFUSED (2), or another one when it crashed
    scores     scoring.score_model's dict ({"f1", "precision", "recall", "roc_auc", "rows"}) when SCORED
    error      the reason in words otherwise (a DeploymentError's or ScoringError's message when REFUSED)
    """

    exit_code: int
    scores: dict | None = None
    error: str | None = None

    @property
    def ok(self):
        return self.exit_code == SCORED


def _score_child(send, version_dir, test_data):
    """In the child: load the version with scikit-learn, score it on test_data, send a ScoreResult."""
    import scoring  # lazy: scikit-learn enters this child only, never the worker that asked

    try:
        model, _ = deployment.load_version(version_dir)
        X, y = scoring.read_test_data(Path(test_data))
        result = ScoreResult(SCORED, scoring.score_model(model, X, y))
    except (deployment.DeploymentError, scoring.ScoringError) as exc:
        result = ScoreResult(REFUSED, error=str(exc))
    send.send(result)
    send.close()
    sys.exit(result.exit_code)


def score_in_child(version_dir, test_data, timeout=SCORE_TIMEOUT) -> ScoreResult:
    """Score the version in version_dir on the labelled CSV test_data in a fresh ("spawn") process.

    Returns the child's ScoreResult; a child that crashed before answering gives its exit code and
    "scoring failed (N)" (its traceback goes to stderr). Raises TimeoutError, after killing the
    child, when it takes over `timeout` s. Like every spawned child, it imports the calling script
    as `__mp_main__`: a script that calls this needs its `if __name__ == "__main__":` guard.
    """
    # spawn, not fork: the child starts clean (no copy of the worker's threads, locks or memory)
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_score_child, args=(send, os.fspath(version_dir), os.fspath(test_data)),
                        name="dras-scoring", daemon=True)
    child.start()
    send.close()  # ours: the pipe reads EOF as soon as the child is gone
    try:
        if not receive.poll(timeout):
            raise TimeoutError(f"scoring {version_dir} took over {timeout:g} s")
        try:
            result = receive.recv()
        except EOFError:  # the child died before it answered
            result = None
        child.join(timeout)
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
            child.join()
    if result is None:
        return ScoreResult(child.exitcode, error=f"scoring failed ({child.exitcode})")
    return result
