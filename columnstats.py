"""The column profile of the ingested rows: per feature, its distinct values and how often each
occurs; per column, how many values are missing. Kept beside finaldata.csv, it is updated with the
rows each ingestion adds (never re-read), and gives, exactly:

- the summary statistics (mean, median, sample std, min, max, count per feature; missing
  percentages): sums are exact integers, so the mean and std are the correctly rounded values,
  whatever the order the rows came in;
- the feature-drift reference of the cycle (the rows before a delivery: today's profile less the
  delivery's rows), for drift.feature_drift, without sorting a row of it.

Its size grows with the distinct values, not the rows (the features are whole-number counts: some
tens of thousands at millions of rows). numpy is imported inside the functions: the cycle's idle
path imports this module.
"""
import math
from dataclasses import dataclass, field

import atomicfiles
from settings import COLUMNS, FEATURES


@dataclass
class Profile:
    rows: int = 0
    missing: dict = field(default_factory=lambda: {c: 0 for c in COLUMNS})
    values: dict = field(default_factory=dict)  # feature -> (int64 distinct values ascending, int64 counts)

    @classmethod
    def of_frame(cls, df):
        """The profile of `df` (finaldata's columns, the schema's dtypes)."""
        import numpy as np

        values = {}
        for col in FEATURES:
            present = df[col].dropna().to_numpy(dtype=np.int64)
            distinct, counts = np.unique(present, return_counts=True)
            values[col] = (distinct.astype(np.int64), counts.astype(np.int64))
        return cls(int(len(df)), {c: int(df[c].isna().sum()) for c in COLUMNS}, values)

    def _combine(self, other, sign):
        import numpy as np

        values = {}
        for col in FEATURES:
            (va, ca), (vb, cb) = self.counts(col), other.counts(col)
            distinct, where = np.unique(np.concatenate((va, vb)), return_inverse=True)
            counts = np.zeros(len(distinct), dtype=np.int64)
            np.add.at(counts, where[:len(va)], ca)
            np.add.at(counts, where[len(va):], sign * cb)
            if (counts < 0).any():
                raise ValueError(f"cannot take away from the profile values it does not hold ({col})")
            keep = counts > 0
            values[col] = (distinct[keep].astype(np.int64), counts[keep])
        return Profile(self.rows + sign * other.rows,
                       {c: self.missing[c] + sign * other.missing[c] for c in COLUMNS}, values)

    def plus(self, other):
        return self._combine(other, 1)

    def minus(self, other):
        """This profile without the rows of `other`, which must be among its rows."""
        return self._combine(other, -1)

    def counts(self, col):
        import numpy as np

        empty = np.zeros(0, dtype=np.int64)
        return self.values.get(col, (empty, empty))

    def reference(self) -> dict:
        """feature -> (distinct values as float64, counts): drift.feature_drift's reference."""
        import numpy as np

        return {col: (v.astype(np.float64), c) for col, (v, c) in ((col, self.counts(col)) for col in FEATURES)}

    def summary(self) -> tuple:
        """(per-feature statistics, per-column missing percentages), as the summaries table holds them."""
        stats = {}
        for col in FEATURES:
            distinct, how_many = self.counts(col)
            values, counts = distinct.tolist(), how_many.tolist()
            n = sum(counts)
            s1 = sum(v * c for v, c in zip(values, counts))
            s2 = sum(v * v * c for v, c in zip(values, counts))
            stats[col] = {
                "mean": s1 / n if n else None,
                "median": _median(distinct, how_many, n) if n else None,
                "std": math.sqrt((n * s2 - s1 * s1) / (n * (n - 1))) if n > 1 else None,
                "min": float(values[0]) if n else None,
                "max": float(values[-1]) if n else None,
                "count": int(n),
            }
        missing = {col: (float(self.missing[col]) * 100.0 / self.rows if self.rows else 0.0) for col in COLUMNS}
        return stats, missing

    def save(self, path):
        import numpy as np

        arrays = {"rows": np.array([self.rows]), "missing": np.array([self.missing[c] for c in COLUMNS])}
        for col in FEATURES:
            arrays[f"{col}.values"], arrays[f"{col}.counts"] = self.counts(col)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomicfiles.write_with(path, write)

    @classmethod
    def load(cls, path):
        """The profile saved at `path`. Raises OSError or ValueError when it cannot be read."""
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return cls(int(z["rows"][0]), dict(zip(COLUMNS, (int(m) for m in z["missing"]))),
                       {col: (z[f"{col}.values"].astype(np.int64), z[f"{col}.counts"].astype(np.int64))
                        for col in FEATURES})


def order_statistic(values, counts, rank):
    """The value of 0-based `rank` among `values` (ascending) each repeated by its count."""
    import numpy as np

    return values[np.searchsorted(np.cumsum(counts), rank, side="right")]


def _median(values, counts, n):
    """The median of the values repeated by their counts, as numpy computes it (the mean of the two middle ones)."""
    return (float(order_statistic(values, counts, (n - 1) // 2)) + float(order_statistic(values, counts, n // 2))) / 2


def summarize(df) -> tuple:
    """The summary statistics of a frame of finaldata's rows: the same as its profile's."""
    return Profile.of_frame(df).summary()
