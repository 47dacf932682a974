"""drift's sorted KS and PSI (of arrays, or of a reference as value counts) give exactly scipy's, numpy's quantiles
and the plain binning's results."""
import numpy as np
import pandas as pd
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


@pytest.mark.parametrize("kind", ["counts", "continuous"])
@pytest.mark.parametrize(("n1", "n2"), [(1, 5), (2, 9), (40, 25), (10000, 300), (10001, 20000), (120000, 50000)])
def test_a_reference_given_as_value_counts_gives_the_same_results(kind, n1, n2):
    # the cycle's reference is the column profile's distinct values and counts (columnstats.py)
    x, y = samples(kind, n1, n2)
    values, counts = drift.value_counts(np.sort(x))
    assert np.array_equal(np.repeat(values, counts), np.sort(x))
    edges = drift.quantile_edges(x)
    assert np.array_equal(drift.quantile_edges_counted(values, counts), edges)
    expected = stats.ks_2samp(x, y)
    assert drift.ks_2samp_counted(values, counts, np.sort(y)) == (float(expected.statistic), float(expected.pvalue))
    assert np.array_equal(drift._bin_counts_counted(values, counts, edges), drift.bin_counts(x, edges))
    new, col = pd.DataFrame({"lastmonth_activity": y}), ("lastmonth_activity",)
    assert drift.feature_drift({col[0]: (values, counts)}, new, features=col) == \
        drift.feature_drift(pd.DataFrame({col[0]: x}), new, features=col)
