"""Decisions a user can leave running: false retrains, detection delay and promotion, seeded.

Each trial runs deliveries made by datagen.py through evidence.py (the sequential score-drift test,
the held-out split, the paired comparison and the promotion policy) with real scikit-learn models
(training.build_model), and through today's `raw` rule for comparison (new F1 below the deployed
score: retrain on everything and deploy whatever comes out). It writes bench/results/decisions.md.

    .venv/bin/python bench/bench_decisions.py            # the full run (about 3 minutes)
    .venv/bin/python bench/bench_decisions.py --quick    # a small run, printed, nothing written
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import audit  # noqa: E402
import cycle  # noqa: E402
import datagen  # noqa: E402
import decisions  # noqa: E402
import evidence  # noqa: E402
import progress  # noqa: E402
import training  # noqa: E402
from settings import FEATURES, TARGET  # noqa: E402

PARAMS = {"C": 1.0, "max_iter": 1000, "class_weight": None, "random_state": 0}
LEVEL = 0.05
SEED = 20240615
MODELS = 25  # distinct models per world, taken in turn by the trials (training is the slow part)
# (training rows, test rows, held-out rows): the reference is the test rows plus the held-out rows.
WORLDS = {
    "course": (56, 40, 0),          # the course's sizes: the repo's 40 test rows, no held-out slice yet
    "large": (2000, 200, 500),      # today's drift bench: 200 test rows and a 500-row held-out slice
    "large-test": (2000, 2000, 0),  # a 2,000-row test set
}
FALSE_RETRAIN = (("course", 25), ("large", 200), ("large", 1000))
DELIVERIES = 20
MODERATE = ("concept", 0.25)
STRONG = (("concept", 0.75), ("concept", 0.5))  # 0.75: the repo's own shifted sample; 0.5: no relation left
HELD_OUT_SHARE = 0.3
ROUNDS = 1000
CV_FOLDS = 5  # the config's cv_folds default
# The sequential test with each reference: the cycle's default (test data, held-out rows and the
# model's out-of-fold cross-validation outcomes) and the one it replaces (test data and held-out rows:
# config drift_reference_cross_validation false, the exact guarantee).
VARIANTS = ("sequential", "sequential, no cross-validation")


def seed_of(*parts):
    return int(np.random.SeedSequence([SEED, *parts]).generate_state(1)[0])


def xy(df):
    return df[list(FEATURES)].astype("float64"), df[TARGET].to_numpy(dtype="int64")


def fit(df):
    X, y = xy(df)
    return training.build_model(PARAMS).fit(X, y)


def f1(y, pred):
    c = evidence.counts(y, pred)
    return evidence.f1_of_rate(c["hits"] / c["counted"]) if c["counted"] else 0.0


def draw(rows, seed, kind="none", strength=0.0):
    df = datagen.generate(rows, seed=seed, drift=kind, strength=strength)
    while df[TARGET].nunique() < 2:  # a small draw with one class cannot be trained on
        seed += 1
        df = datagen.generate(rows, seed=seed, drift=kind, strength=strength)
    return df


def out_of_fold(df):
    """The out-of-fold counts of training.py's own cross-validation (audit.cross_validation) on `df`."""
    X, y = xy(df)
    return audit.cross_validation(training.build_model(PARAMS), X, pd.Series(y), CV_FOLDS, seed=0)["out_of_fold"]


def states(parts, oof):
    """{variant: the drift state of a model just deployed}, from its reference `parts` and out-of-fold counts."""
    return {VARIANTS[0]: decisions.reference_state({**parts, "cross-validation": oof}, None),
            VARIANTS[1]: decisions.reference_state(parts, None)}


class World:
    """Models trained on undrifted rows, and per trial a fresh test set and held-out slice (the reference)."""

    def __init__(self, name):
        self.name = name
        self.train_rows, self.test_rows, self.held_rows = WORLDS[name]
        self.models = {}

    def trial(self, t):
        """(model, {variant: state}, deployed test F1) of trial `t`."""
        k = t % MODELS
        if k not in self.models:
            df = draw(self.train_rows, seed_of(1, list(WORLDS).index(self.name), k))
            self.models[k] = fit(df), out_of_fold(df)
        model, oof = self.models[k]
        ref = datagen.generate(self.test_rows + self.held_rows, seed=seed_of(2, list(WORLDS).index(self.name), t))
        X, y = xy(ref)
        pred = model.predict(X)
        t_ = self.test_rows
        parts = {"test data": evidence.counts(y[:t_], pred[:t_]), "held-out rows": evidence.counts(y[t_:], pred[t_:])}
        return model, states(parts, oof), f1(y[:t_], pred[:t_])


def false_retrains(trials):
    """{(world, size): {"trials", each variant, "raw"}}: shares of runs of DELIVERIES undrifted deliveries with any drift call."""
    out = {}
    worlds = {}
    for world, size in FALSE_RETRAIN:
        w = worlds.setdefault(world, World(world))
        hits = dict.fromkeys(VARIANTS + ("raw",), 0)
        for t in range(trials):
            progress.tick(f"bench_decisions: false retrains, {world} world, {size}-row deliveries: trial {t + 1} of {trials}")
            model, by_variant, deployed = w.trial(t)
            X, y = xy(datagen.generate(size * DELIVERIES, seed=seed_of(3, size, t)))
            pred = model.predict(X)
            hit = dict.fromkeys(hits, False)
            for d in range(DELIVERIES):
                part = slice(d * size, (d + 1) * size)
                for v in VARIANTS:
                    by_variant[v] = evidence.add_rows(by_variant[v], y[part], pred[part])
                    hit[v] = hit[v] or evidence.look(by_variant[v], level=LEVEL)["drift"] is True
                hit["raw"] = hit["raw"] or f1(y[part], pred[part]) < deployed
            for k in hits:
                hits[k] += hit[k]
        out[(world, size)] = {"trials": trials, **{k: n / trials for k, n in hits.items()}}
    return out


def delays(world, cond, size, max_deliveries, trials):
    """{variant or "raw": rows delivered until the first drift call, per trial (None: not within max_deliveries)}."""
    w = World(world)
    out = {k: [] for k in VARIANTS + ("raw",)}
    for t in range(trials):
        progress.tick(f"bench_decisions: detection of {cond[0]} {cond[1]:g}, {world} world: trial {t + 1} of {trials}")
        model, by_variant, deployed = w.trial(t)
        X, y = xy(datagen.generate(size * max_deliveries, seed=seed_of(4, size, t), drift=cond[0], strength=cond[1]))
        pred = model.predict(X)
        at = dict.fromkeys(out)
        for d in range(max_deliveries):
            part = slice(d * size, (d + 1) * size)
            for v in VARIANTS:
                by_variant[v] = evidence.add_rows(by_variant[v], y[part], pred[part])
                if at[v] is None and evidence.look(by_variant[v], level=LEVEL)["drift"]:
                    at[v] = (d + 1) * size
            if at["raw"] is None and f1(y[part], pred[part]) < deployed:
                at["raw"] = (d + 1) * size
        for k in out:
            out[k].append(at[k])
    return out


def within(delays_, rows):
    return sum(d is not None and d <= rows for d in delays_) / len(delays_)


def median_delay(delays_):
    found = sorted(d for d in delays_ if d is not None)
    return None if len(found) * 2 < len(delays_) else found[(len(delays_) - 1) // 2]


# Promotion: a world of 500 initial training rows (and a 150-row held-out slice), 200 test rows,
# then six deliveries of 200 rows.
PROMO_TRAIN, PROMO_HELD, PROMO_TEST, PROMO_SIZE, PROMO_DELIVERIES = 500, 150, 200, 200, 6
LEARNABLE = ("concept", 1.0)  # the relation reversed: a model trained on the new rows can learn it


def promotion_trial(t, scenario, policy, window):
    """Whether a challenger was promoted in this trial, and at which delivery (1-based), under `policy`.

    scenario "corrupted": undrifted deliveries, one of the six (seeded) with its labels inverted.
    scenario "learnable": the test data are redrawn after the shift (before the first delivery) and
    every delivery carries the shift. window "all": the challenger trains on every row so far
    minus the held-out slice (today's training); "recent": on the rows since the serving model's
    deployment minus the held-out slice.
    """
    rng = np.random.default_rng(seed_of(5, t))
    base = draw(PROMO_TRAIN + PROMO_HELD, seed_of(6, t))
    trained, held = base.iloc[:PROMO_TRAIN], base.iloc[PROMO_TRAIN:]
    serving = fit(trained)
    test = datagen.generate(PROMO_TEST, seed=seed_of(7, t))
    Xt, yt = xy(test)
    Xh, yh = xy(held)
    parts = {"test data": evidence.counts(yt, serving.predict(Xt)), "held-out rows": evidence.counts(yh, serving.predict(Xh))}
    state = states(parts, out_of_fold(trained))[VARIANTS[0]]  # the cycle's default reference
    deployed = f1(yt, serving.predict(Xt))
    bad = int(rng.integers(PROMO_DELIVERIES))
    if scenario == "learnable":
        test = datagen.generate(PROMO_TEST, seed=seed_of(8, t), drift=LEARNABLE[0], strength=LEARNABLE[1])
        Xt, yt = xy(test)
        # A changed test set is evidence: the serving model's outcomes on it join the drift evidence.
        state = evidence.add_rows(state, yt, serving.predict(Xt))
    everything = [trained, held]
    since = []
    for d in range(PROMO_DELIVERIES):
        kind, strength = LEARNABLE if scenario == "learnable" else ("none", 0.0)
        new = datagen.generate(PROMO_SIZE, seed=seed_of(9, t, d), drift=kind, strength=strength)
        if scenario == "corrupted" and d == bad:
            new = new.assign(**{TARGET: 1 - new[TARGET]})
        Xn, yn = xy(new)
        since.append(new)
        everything.append(new)
        if policy == "raw":
            if f1(yn, serving.predict(Xn)) < deployed:
                serving = fit(pd.concat(everything, ignore_index=True))
                deployed = f1(yt, serving.predict(Xt))
                return True, d + 1
            continue
        state = evidence.add_rows(state, yn, serving.predict(Xn))
        if not evidence.look(state, level=LEVEL)["drift"]:
            continue
        recent = pd.concat(since, ignore_index=True)
        if window == "recent":  # the cycle's own path (fullprocess.Cycle.challenge)
            if recent[TARGET].nunique() < 2:
                continue
            out = decisions.challenge(serving, recent, xy(test)[0], yt, fit, level=LEVEL, rounds=ROUNDS,
                                      seed=seed_of(10, t, d), share=HELD_OUT_SHARE)
            if cycle.promotion_decision(None, out["policy"]) == cycle.REDEPLOYED:
                return True, d + 1
            state = cycle.evidence_after(cycle.promotion_decision(None, out["policy"]), state)
            since = []
            continue
        split = evidence.held_out_split(recent[TARGET].to_numpy(), share=HELD_OUT_SHARE, seed=seed_of(10, t, d))
        slice_ = recent.iloc[split["held_out"]]
        rest = recent.iloc[split["training"]]
        pool = rest if window == "recent" else pd.concat(everything[:len(everything) - len(since)] + [rest], ignore_index=True)
        if pool[TARGET].nunique() < 2:
            continue
        challenger = fit(pool)
        Xs, ys = xy(slice_)
        on_new = evidence.paired_comparison(ys, serving.predict(Xs), challenger.predict(Xs), level=LEVEL,
                                            rounds=ROUNDS, seed=seed_of(11, t, d))
        on_test = evidence.paired_comparison(yt, serving.predict(Xt), challenger.predict(Xt), level=LEVEL,
                                             rounds=ROUNDS, seed=seed_of(12, t, d))
        if evidence.promotion_decision(on_new, on_test)["promote"]:
            return True, d + 1
        # A decision was made (retrained, kept): the evidence starts again, so one corrupted delivery
        # leads to one comparison, not one per later delivery.
        state = evidence.new_state(state["reference"])
        since = []
    return False, None


def promotion(trials):
    """{(scenario, policy): {"trials", "promoted", "median_delivery"}}."""
    out = {}
    for scenario in ("corrupted", "learnable"):
        for policy in ("sequential, window all", "sequential, window recent", "raw"):
            runs = []
            for t in range(trials):
                progress.tick(f"bench_decisions: promotion, {scenario} delivery, {policy}: trial {t + 1} of {trials}")
                runs.append(promotion_trial(t, scenario, "raw" if policy == "raw" else "sequential",
                                            policy.rsplit(" ", 1)[-1]))
            at = sorted(d for ok, d in runs if ok)
            out[(scenario, policy)] = {"trials": trials, "promoted": len(at) / trials,
                                       "median_delivery": at[(len(at) - 1) // 2] if at else None}
    return out


def pct(x):
    return f"{100 * x:.1f}%"


def render(fr, det, promo, command, seconds, trials):
    world = {k: f"{v[0]} training rows, {v[1]} test rows" + (f", {v[2]} held-out rows" if v[2] else "")
             for k, v in WORLDS.items()}
    lines = [
        "# Decisions: false retrains, detection delay, promotion",
        "",
        f"Command: `{command}` ({seconds:.0f} s on this machine, 2 shared cores). Seed {SEED}; the trial counts",
        "are in the tables. Models: training.build_model (scaling, then logistic regression) trained on datagen.py",
        f"rows, {MODELS} per world taken in turn; each trial draws its own test set and held-out slice (the",
        "reference), so the reference's sampling uncertainty is part of every figure. `sequential` is",
        f"evidence.py at level {LEVEL} (method: bench/results/decisions-method.md) with the cycle's default reference:",
        "the model's outcomes on the test data and the held-out rows, and the out-of-fold outcomes of",
        f"training.py's own {CV_FOLDS}-fold cross-validation on its training rows (audit.cross_validation);",
        "`sequential, no cross-validation` is the rule it replaces, the test data and held-out rows alone",
        "(`drift_reference_cross_validation: false`). `raw` is the course's rule: drift when",
        "a delivery's F1 is below the deployed score (the F1 on the test data), then retrain and deploy whatever",
        "comes out.",
        "",
        "Worlds: " + "; ".join(f"`{k}`: {v}" for k, v in world.items()) + ".",
        "",
        f"## False retrains per run of {DELIVERIES} undrifted deliveries (goal: at most 5% of runs)",
        "",
        f"| world | delivery rows | runs | {' | '.join(VARIANTS)} | raw | goal met (sequential) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (w, size), row in fr.items():
        lines.append(f"| {w} | {size} | {row['trials']} | {' | '.join(pct(row[v]) for v in VARIANTS)} | "
                     f"{pct(row['raw'])} | {'yes' if row['sequential'] <= 0.05 else 'no'} |")
    n = next(iter(fr.values()))["trials"]
    lines += ["", f"With {n} runs a true rate of 5% shows between {pct(0.05 - 1.96 * (0.0475 / n) ** 0.5)} and "
                  f"{pct(0.05 + 1.96 * (0.0475 / n) ** 0.5)} 95% of the time; the guarantee says the true rate is "
                  "at most 5% over any number of deliveries.",
              "", "## Detection delay", "",
              f"| shift | world | delivery rows | trials | goal | {' | '.join(VARIANTS)} | raw | median rows to "
              "detection (sequential; no cross-validation) | goal met (sequential) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (cond, w, size, goal_rows, goal_share), found in det.items():
        seq = found[VARIANTS[0]]
        meds = "; ".join(str(m) if m is not None else "over half not found"
                         for m in (median_delay(found[v]) for v in VARIANTS))
        lines.append(f"| {cond[0]} {cond[1]:g} | {w} | {size} | {len(seq)} | within {goal_rows} rows in "
                     f"{goal_share:.0%} | {' | '.join(pct(within(found[v], goal_rows)) for v in VARIANTS)} | "
                     f"{pct(within(found['raw'], goal_rows))} | {meds} | "
                     f"{'yes' if within(seq, goal_rows) >= goal_share else 'no'} |")
    lines += ["", "A cell is the share of trials with drift called within the goal's rows. `raw` calls drift on",
              "about half of undrifted deliveries too, so its quick detection says little.",
              "", "## Promotion", "",
              f"{PROMO_TRAIN} initial training rows (the reference: the test data, a {PROMO_HELD}-row held-out slice and the "
              "cross-validation's out-of-fold rows), "
              f"{PROMO_TEST} test rows, then {PROMO_DELIVERIES} deliveries of {PROMO_SIZE} rows.",
              f"On each drift call a {HELD_OUT_SHARE:.0%} stratified slice of the rows since the deployment is held "
              "out; the challenger trains on the",
              "rest (`window all`: with every earlier row, as today's training; `window recent`: the rows since the "
              "deployment",
              "only) and is compared with the serving model by paired bootstrap "
              f"({ROUNDS} resamples) on the slice and on the test data;",
              f"promoted when better on the slice and not worse than -{evidence.MARGIN:g} F1 on the test data "
              "(the interval's lower end). After a retrain that kept",
              "the serving model the evidence starts again. `corrupted`: undrifted deliveries, one of the six",
              f"with its labels inverted (goal: promoted in at most 5% of trials). `learnable`: the relation "
              f"reversed (concept {LEARNABLE[1]:g}), the test",
              "data redrawn after the shift before the first delivery, its outcomes added to the evidence (goal: "
              "promoted in at least 90%).",
              "",
              "| scenario | policy | trials | promoted | median delivery of the promotion | goal | met |",
              "|---|---|---|---|---|---|---|"]
    for (scenario, policy), row in promo.items():
        goal_ok = row["promoted"] <= 0.05 if scenario == "corrupted" else row["promoted"] >= 0.90
        goal = "at most 5%" if scenario == "corrupted" else "at least 90%"
        lines.append(f"| {scenario} | {policy} | {row['trials']} | {pct(row['promoted'])} | "
                     f"{row['median_delivery'] or '-'} | {goal} | {'yes' if goal_ok else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Simulate the cycle's decisions; write bench/results/decisions.md.")
    parser.add_argument("--trials", type=int, default=200, help="trials per detection and promotion figure")
    parser.add_argument("--runs", type=int, default=500, help="runs per false-retrain figure")
    parser.add_argument("--quick", action="store_true", help="a small run, printed and not written")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "decisions.md"))
    args = parser.parse_args(argv)
    trials, runs = (20, 40) if args.quick else (args.trials, args.runs)
    started = time.perf_counter()
    fr = false_retrains(runs)
    det = {}
    for w in ("large", "large-test"):
        det[(MODERATE, w, 100, 500, 0.95)] = delays(w, MODERATE, 100, 10, trials)
    for cond in STRONG:
        det[(cond, "course", 25, 200, 0.90)] = delays("course", cond, 25, 20, trials)
    promo = promotion(trials)
    command = ".venv/bin/python bench/bench_decisions.py" + (" --quick" if args.quick else "") + \
        ("" if args.quick or args.trials == 200 else f" --trials {args.trials}") + \
        ("" if args.quick or args.runs == 500 else f" --runs {args.runs}")
    text = render(fr, det, promo, command, time.perf_counter() - started, trials)
    progress.clear()  # the progress line (stderr) erased before the output
    print(text)
    if not args.quick:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
