"""Reporting: the deployed model's health on paper, after every retraining.

`generate_report(cfg)` scores the DEPLOYED model on the test data, draws its confusion matrix to
output_model_path/confusionmatrix.png and writes a PDF report: a summary in words (summary.py: what
happened since the previous report, the model's health, what to do), the model, its scores, the data's
summary and gaps, step timings, dependencies, the drift check of the monitoring cycle, and trends
from the history database. Each report is kept under a versioned, timestamped name in
output_model_path/reports/; the latest is always output_model_path/report.pdf.

Computing and drawing are apart: `report_data` returns plain data (this module); reportpdf.py
renders it, with the pictures charts.py draws.

    python reporting.py [--config PATH]
"""
import argparse
import json
import logging
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import atomicfiles
import charts
import deployment
import diagnostics
import history
import lineage
import modelcard
import reportpdf
import scoring
import summary
import traffic
from cycle import UNSET, CycleRecord, known
from summary import change
from settings import ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

# Trend plots show at most this many recent runs, so a long history stays legible.
TREND_POINTS = 60


class ReportError(Exception):
    """There is no deployed model, or no usable test data, to report on."""


# ---------------------------------------------------------------- computing


def _deployed(cfg):
    try:
        model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    except deployment.DeploymentError as exc:
        raise ReportError(f"no report: {exc}") from None
    version_dir = deployment.current_dir(cfg.prod_deployment_path)
    listed = version_dir / "ingestedfiles.txt"
    files = [n for n in listed.read_text(encoding="utf-8").splitlines() if n] if listed.exists() else []
    card = version_dir / "modelcard.md"
    return model, manifest, files, (str(card) if card.exists() else None)


def _scores_on_test(cfg, model):
    from sklearn.metrics import confusion_matrix

    try:
        X, y = scoring.read_test_data(cfg.test_data_file)
    except scoring.ScoringError as exc:
        raise ReportError(f"no report: {exc}") from None
    if len(X) == 0:
        raise ReportError(f"no report: {cfg.test_data_file} has no complete labelled rows")
    pred = model.predict(X)
    metrics = scoring.metrics(y.to_numpy(), pred, model.predict_proba(X)[:, 1])
    matrix = confusion_matrix(y.to_numpy(), pred, labels=[0, 1])
    return metrics, [[int(v) for v in row] for row in matrix]


def _history(cfg, version):
    """Deployments, the previous deployment's test scores, summaries, timings and files, from the history database."""
    with closing(history.connect(cfg.history)) as conn:
        deployments = [dict(r) for r in conn.execute(
            "SELECT at, version, action, model_sha256, f1 FROM deployments ORDER BY id")]
        summaries = [{"at": r["at"], "rows": r["rows"], "stats": json.loads(r["stats"]),
                      "missing": json.loads(r["missing"])}
                     for r in conn.execute("SELECT at, rows, stats, missing FROM "
                                           "(SELECT * FROM summaries ORDER BY id DESC LIMIT ?) AS latest ORDER BY id",
                                           (TREND_POINTS,))]
        timings = {}
        for r in conn.execute("SELECT step, seconds, at FROM step_timings ORDER BY id"):
            timings.setdefault(r["step"], []).append(r["seconds"])
        file_rows = {r["name"]: r["rows"] for r in conn.execute("SELECT name, rows FROM ingested_files ORDER BY id")}
        previous, previous_scores = summary.previous_deployment(conn, version)
    return {"deployments": deployments, "previous_deployment": previous, "previous_scores": previous_scores,
            "summaries": summaries, "timings": timings, "file_rows": file_rows}


def deploying_cycle(cfg, manifest):
    """The record of the monitoring cycle that deployed this version (its manifest names it), so a
    report made later still shows the drift check behind the model; None for a version deployed by hand."""
    made_by = manifest.get("cycle")
    if not isinstance(made_by, dict) or made_by.get("id") is None:
        return None
    with closing(history.connect(cfg.history)) as conn:
        row = conn.execute("SELECT record FROM cycles WHERE id = ?", (made_by["id"],)).fetchone()
    if row is None:  # only what the deployment was told: its decision and drift results
        return CycleRecord(cycle_id=made_by["id"], decision=made_by.get("decision"),
                           score_drift=made_by.get("score_drift"), feature_drift=made_by.get("feature_drift"))
    record = CycleRecord.from_dict(json.loads(row["record"]))
    if record.cycle_id is UNSET:
        record.cycle_id = made_by["id"]
    return record


def delivery_slices(cfg, cycle):
    """The cycle's new delivery on the deployed model's slices, each with the F1 the same slice had
    in the previous delivery that recorded slices (so a slice getting worse shows), or None."""
    current = cycle.slices_new if cycle is not None else None
    if not current:
        return None
    before = known(cycle.cycle_id) or 2**62
    previous = {}
    with closing(history.connect(cfg.history)) as conn:
        for row in conn.execute("SELECT record FROM cycles WHERE id < ? ORDER BY id DESC LIMIT 20", (before,)):
            earlier = json.loads(row["record"]).get("slices_new")
            if earlier:
                previous = {s["label"]: s["f1"] for s in earlier["slices"]}
                break
    return [{"label": s["label"], "rows": s["rows"], "f1": s["f1"], "flag": s["flag"],
             "previous_f1": previous.get(s["label"]),
             "change": change(s["f1"], previous.get(s["label"])) if s["label"] in previous else "first delivery"}
            for s in current["slices"]]


def report_data(cfg, cycle=None, audit=None, dependencies=None) -> dict:
    """Everything the report shows, as plain data. Raises ReportError when there is nothing to report on.

    `cycle` is a CycleRecord (the cycle that deployed the model when not given)."""
    model, manifest, files, card = _deployed(cfg)
    running = cycle  # the record of the cycle writing this report, when one is
    if cycle is None:
        cycle = deploying_cycle(cfg, manifest)
    metrics, matrix = _scores_on_test(cfg, model)
    model_sha = manifest["files"]["trainedmodel.pkl"]["sha256"]
    past = _history(cfg, manifest["version"])
    if dependencies is None:
        dependencies = diagnostics.outdated_packages_list(cfg, timeout=2.0)
    summaries = past["summaries"]
    training = manifest.get("training", {})
    if audit is None:
        audit = modelcard.report_audit(manifest)
        if audit is not None:
            audit["from_card"] = True
    with closing(history.connect(cfg.history)) as conn:
        since, before = summary.last_report(conn), summary.last_report(conn, skip=1)
        happened = summary.period(conn, since, running)
    live = traffic.report_data(cfg, since=since, previous_since=before)
    previous = past["previous_deployment"]
    overview = summary.summarize(happened, {"version": manifest["version"], "f1": metrics["f1"]},
                                 {"version": previous["version"], "f1": past["previous_scores"]["f1"]} if previous else None,
                                 summary.report_live(live))
    return {
        "generated_at": datetime.now(timezone.utc),
        "model": {
            "version": manifest["version"],
            "deployed_at": manifest.get("deployed_at"),
            "trained_at": training.get("trained_at"),
            "training_rows": training.get("training_rows"),
            "sha256": model_sha,
            "params": training.get("params"),
            "files": ([{"name": d["name"], "rows": d["rows"], "sha256": d["sha256"]} for d in lineage.deliveries(manifest)]
                      or [{"name": n, "rows": past["file_rows"].get(n), "sha256": None} for n in files]),
            "card": card,
        },
        "test_data": str(cfg.test_data_file),
        "metrics": metrics,
        "previous": {"deployment": past["previous_deployment"], "metrics": past["previous_scores"]},
        "confusion_matrix": matrix,
        "summary": summaries[-1] if summaries else None,
        "previous_summary": summaries[-2] if len(summaries) > 1 else None,
        "summaries": summaries,
        "deployments": past["deployments"][-TREND_POINTS:],
        "timings": {step: secs[-TREND_POINTS:] for step, secs in past["timings"].items()},
        "dependencies": dependencies,
        "cycle": cycle,
        "delivery_slices": delivery_slices(cfg, cycle),
        "audit": audit,
        "live": live,  # since the previous report (the last recorded "report" timing)
        "overview": overview,  # summary.summarize's sentences: the report opens with them
    }


def _versioned_path(folder: Path, version: int, at: datetime) -> Path:
    stem = f"report-v{version:04d}-{at.strftime('%Y%m%dT%H%M%SZ')}"
    path, n = folder / f"{stem}.pdf", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.pdf"
    return path


def generate_report(cfg, cycle=None, audit=None, dependencies=None) -> dict:
    """Write confusionmatrix.png and the PDF report of the deployed model; return their paths.

    Keys: "pdf" (the versioned, timestamped copy under output_model_path/reports/), "latest"
    (output_model_path/report.pdf) and "confusion_matrix". `cycle` is the monitoring cycle's
    record (drift results), `audit` the model card and slices; `dependencies`, when given, is
    diagnostics.outdated_packages_list's answer (otherwise asked here). Raises ReportError.
    """
    started = time.perf_counter()
    data = report_data(cfg, cycle=cycle, audit=audit, dependencies=dependencies)
    version = data["model"]["version"]
    confusion = charts.confusion_png(data["confusion_matrix"], f"Deployed model v{version:04d} on the test data")
    pdf = reportpdf.render_pdf(data, confusion)
    out = cfg.output_model_path
    cm_path, latest = out / "confusionmatrix.png", out / "report.pdf"
    atomicfiles.write_bytes(cm_path, confusion)
    kept = _versioned_path(out / "reports", version, data["generated_at"])
    atomicfiles.write_bytes(kept, pdf)
    atomicfiles.write_bytes(latest, pdf)
    with closing(history.connect(cfg.history)) as conn:
        history.record_timing(conn, "report", time.perf_counter() - started)
    logger.info("report for v%04d: %s", version, kept)
    return {"pdf": kept, "latest": latest, "confusion_matrix": cm_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the deployed model's confusion matrix and PDF report.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        cfg = load_config(args.config)
        paths = generate_report(cfg)
    except (ConfigError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report:           {paths['latest']}")
    print(f"kept as:          {paths['pdf']}")
    print(f"confusion matrix: {paths['confusion_matrix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
