"""A deterministic, seeded generator of client-activity data, for the samples, tests and benchmarks.

Clients with little recent activity tend to leave. `drift="concept"` weakens and then reverses
that relation (strength 0.5: no relation left; 1.0: reversed); `drift="covariate"` moves the
activity distributions while keeping the relation.

    python datagen.py --rows 1000000 --seed 7 --out big.csv
    python datagen.py --rows 500 --seed 3 --drift concept --strength 0.5 --out drifted.csv
"""
import argparse
import sys

import numpy as np
import pandas as pd

COLUMNS = ["corporation", "lastmonth_activity", "lastyear_activity", "number_of_employees", "exited"]
CENTER = 200.0   # mean of lastmonth_activity before any covariate drift
SLOPE = 0.025    # log-odds of leaving drop by this per unit of last month's activity
INTERCEPT = -0.5
DRIFTS = ("none", "concept", "covariate")


def exit_logit(lastmonth, drift="none", strength=0.0):
    """The true log-odds of leaving for a given last-month activity."""
    slope = SLOPE * (1 - 2 * strength) if drift == "concept" else SLOPE
    return INTERCEPT - slope * (lastmonth - CENTER)


def generate(rows, seed=0, drift="none", strength=0.0) -> pd.DataFrame:
    """`rows` rows of client activity with the documented columns, the same for the same arguments."""
    if drift not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS}, not {drift!r}")
    rng = np.random.default_rng(seed)
    scale = CENTER / 2 * (1 + strength if drift == "covariate" else 1)
    lastmonth = np.floor(rng.gamma(2.0, scale, rows)).astype(np.int64)
    lastyear = np.floor(lastmonth * 12 * rng.lognormal(0.0, 0.3, rows) + rng.integers(0, 50, rows)).astype(np.int64)
    # Heavy-tailed: most in the tens to thousands, a few far larger.
    employees = np.floor(rng.lognormal(np.log(150), 1.6 if drift != "covariate" else 1.6 + strength, rows)).astype(np.int64)
    p = 1 / (1 + np.exp(-exit_logit(lastmonth, drift, strength)))
    exited = (rng.random(rows) < p).astype(np.int64)
    letters = rng.integers(0, 26, (rows, 4)).astype(np.uint8) + ord("a")
    corporation = letters.view("S4").ravel().astype(str)
    return pd.DataFrame({
        "corporation": corporation,
        "lastmonth_activity": lastmonth,
        "lastyear_activity": lastyear,
        "number_of_employees": employees,
        "exited": exited,
    }, columns=COLUMNS)


def samples() -> dict:
    """The repo's sample files (relative path -> DataFrame). Some rows repeat across files, as in real deliveries."""
    p1 = generate(30, seed=101)
    p2 = pd.concat([generate(26, seed=102), p1.iloc[:4]], ignore_index=True)
    # The new delivery: the relation between activity and leaving has shifted.
    s1 = generate(30, seed=201, drift="concept", strength=0.75)
    s2 = pd.concat([generate(27, seed=202, drift="concept", strength=0.75), s1.iloc[5:8]], ignore_index=True)
    return {
        "practicedata/dataset1.csv": p1,
        "practicedata/dataset2.csv": p2,
        "sourcedata/dataset3.csv": s1,
        "sourcedata/dataset4.csv": s2,
        "testdata/testdata.csv": generate(40, seed=301),
    }


def write_samples(root):
    from pathlib import Path

    for rel, df in samples().items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False, lineterminator="\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a seeded client-activity CSV.")
    parser.add_argument("--samples", metavar="ROOT", help="write the repo's sample files under ROOT and stop")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drift", choices=DRIFTS, default="none")
    parser.add_argument("--strength", type=float, default=0.0)
    parser.add_argument("--out", help="where to write the CSV ('-' for stdout)")
    args = parser.parse_args(argv)
    if args.samples:
        write_samples(args.samples)
        return 0
    if args.rows is None or args.out is None:
        parser.error("--rows and --out are required (or --samples ROOT)")
    df = generate(args.rows, args.seed, args.drift, args.strength)
    df.to_csv(sys.stdout if args.out == "-" else args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
