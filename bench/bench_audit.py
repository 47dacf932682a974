"""What the audit costs: training with cross-validation and slices against training without them,
and the slices of a large delivery. Writes bench/results/audit.md.

    .venv/bin/python bench/bench_audit.py [--rows 200000] [--delivery-rows 1000000]
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import audit  # noqa: E402
import datagen  # noqa: E402
import ingestion  # noqa: E402
import progress  # noqa: E402
import training  # noqa: E402
from delivery import training_frame  # noqa: E402
from settings import load_config  # noqa: E402


def best_of(n, fn):
    times = []
    for k in range(n):
        progress.tick(f"bench_audit: run {k + 1} of {n}")
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--delivery-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    work = ROOT / "bench" / "work" / "audit"
    shutil.rmtree(work, ignore_errors=True)
    (work / "sourcedata").mkdir(parents=True)
    (work / "testdata").mkdir()
    datagen.generate(args.rows, seed=11).to_csv(work / "sourcedata" / "big.csv", index=False)
    datagen.generate(1000, seed=12).to_csv(work / "testdata" / "testdata.csv", index=False)
    base = {"input_folder_path": "sourcedata", "output_folder_path": "ingesteddata", "test_data_path": "testdata",
            "output_model_path": "models", "prod_deployment_path": "production_deployment",
            "ingest_settle_seconds": 0}
    configs = {}
    for name, extra in (("plain", {"cv_folds": 0, "slices": {}}), ("audited", {})):
        path = work / f"config-{name}.json"
        path.write_text(json.dumps({**base, **extra}))
        configs[name] = load_config(path)
    ingestion.ingest(configs["plain"])
    plain = best_of(args.repeat, lambda: training.run(configs["plain"]))
    audited = best_of(args.repeat, lambda: training.run(configs["audited"]))
    meta = json.loads(configs["audited"].model_file.with_suffix(".json").read_text())

    model = training.train(datagen.generate(5000, seed=13), configs["audited"].model)
    delivery = datagen.generate(args.delivery_rows, seed=14)
    # The anchor: what scoring a delivery costs anyway, its complete rows and the model's predictions.
    predict = best_of(args.repeat, lambda: model.predict(training_frame(delivery)[0]))
    slices = best_of(args.repeat, lambda: audit.slices_for_rows(model, delivery, meta["slice_definitions"]))
    shutil.rmtree(work, ignore_errors=True)

    command = ".venv/bin/python bench/bench_audit.py" + (f" --rows {args.rows}" if args.rows != 200_000 else "") + \
        (f" --delivery-rows {args.delivery_rows}" if args.delivery_rows != 1_000_000 else "")
    rows = [
        ("training.run with the audit (5-fold CV, 6 slices of 1,000 test rows)", f"{audited:.2f} s",
         f"at most 7x the anchor: {audited / plain:.1f}x", f"training.run without it (cv_folds 0, no slices): "
         f"{plain:.2f} s", f"{args.rows:,} training rows"),
        ("audit.slices_for_rows on a delivery (6 slices)", f"{slices:.2f} s",
         f"at most 3x the anchor: {slices / predict:.1f}x",
         f"training_frame and model.predict on the same rows: {predict:.2f} s",
         f"{args.delivery_rows:,} rows"),
    ]
    lines = ["# The audit's cost", "", f"Command: `{command}` (best of {args.repeat}; 2-core machine shared "
             "with other work).", "", "| what | figure | goal | anchor (same run) | size |", "|---|---:|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    out = ROOT / "bench" / "results" / "audit.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    progress.clear()  # the progress line (stderr) erased before the output
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
