"""drift's sorted KS and PSI give exactly scipy's and the plain binning's results."""
import numpy as np
import pytest
from scipy import stats

import datagen
import drift


def samples(kind, n1, n2):
    rng = np.random.default_rng(n1 + n2)
    if kind == "counts":  # integers with many ties, like our features
        return (datagen.generate(n1, seed=1)["lastmonth_activity"].to_numpy(dtype="float64"),
                datagen.generate(n2, seed=2, drift="covariate", strength=0.2)["lastmonth_activity"].to_numpy(dtype="float64"))
    return rng.normal(size=n1), rng.normal(0.02, 1.0, size=n2)


@pytest.mark.parametrize("kind", ["counts", "continuous"])
@pytest.mark.parametrize(("n1", "n2"), [(40, 25), (10000, 300), (10001, 20000), (120000, 50000)])
def test_ks_equals_scipy(kind, n1, n2):
    x, y = samples(kind, n1, n2)
    expected = stats.ks_2samp(x, y)
    assert drift.ks_2samp(x, y) == (float(expected.statistic), float(expected.pvalue))


def test_ks_of_identical_samples():
    x = np.arange(20000, dtype="float64")
    assert drift.ks_2samp(x, x) == (0.0, 1.0)


@pytest.mark.parametrize(("n1", "n2"), [(100, 37), (50000, 80000)])
def test_psi_sorted_equals_psi(n1, n2):
    x, y = samples("counts", n1, n2)
    edges = drift.quantile_edges(x)
    assert drift.psi_sorted(np.sort(x), np.sort(y), edges) == drift.psi(x, y, edges)
    # a value equal to an edge falls in the bin above it, in both
    edges = np.array([1.0, 2.0])
    assert drift.psi_sorted(np.array([0.0, 1.0, 2.0, 2.0]), np.array([1.0, 1.0, 3.0]), edges) == \
        drift.psi(np.array([0.0, 1.0, 2.0, 2.0]), np.array([1.0, 1.0, 3.0]), edges)
