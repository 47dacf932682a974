"""The model file: the one place a pickle is unpickled, through an allow-list no pickle can run code past.

    load_fitted(data)  the allow-listed estimators as `Fitted` stand-ins, without importing scikit-learn
    load_model(data)   the same pickle with scikit-learn's real classes (what scoring and reporting run)

Both admit only ALLOWED: the estimators training.py builds (a Pipeline, a StandardScaler, a
LogisticRegression, each alone or together) and numpy's array reconstructors. Any other global in
the pickle (os.system, builtins.eval, a class with a `__reduce__` of its own, a decision tree...)
raises Refused before anything is called: a pickle calls only what find_class hands it.

Decision trees and forests are refused on purpose: scikit-learn's Cython Tree copies the node
arrays of a pickle without checking the child indices, so a crafted tree reads memory outside
its own at predict time. The admitted classes hold plain arrays that numpy bounds-checks.
"""
import io
import pickle

ESTIMATORS = {("sklearn.pipeline", "Pipeline"), ("sklearn.preprocessing._data", "StandardScaler"),
              ("sklearn.linear_model._logistic", "LogisticRegression")}
NUMPY_GLOBALS = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                 ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype")}
ALLOWED = ESTIMATORS | NUMPY_GLOBALS


class Refused(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list: loading it could run code, so it is not loaded."""

    def __init__(self, module, name):
        super().__init__(f"it names {module}.{name}, which is not on the model allow-list (a scikit-learn "
                         "Pipeline, StandardScaler, LogisticRegression and numpy arrays): refused, "
                         "since loading it could run code")


class Fitted:
    """A scikit-learn estimator's fitted state (its __dict__), without scikit-learn."""

    kind = None

    def __setstate__(self, state):
        self.__dict__.update(state)


class _AllowList(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise Refused(module, name)
        return super().find_class(module, name)


def load_model(data: bytes):
    """Unpickle an allow-listed model with scikit-learn's own classes; raise Refused for any other global."""
    return _AllowList(io.BytesIO(data)).load()


def load_fitted(data: bytes):
    """Unpickle an allow-listed model into `Fitted` objects (no scikit-learn); raise Refused otherwise."""
    kinds = {}

    class Reader(_AllowList):
        def find_class(self, module, name):
            if (module, name) in ESTIMATORS:
                return kinds.setdefault(name, type(name, (Fitted,), {"kind": name}))
            return super().find_class(module, name)

    return Reader(io.BytesIO(data)).load()
