"""Reporting: the deployed model's health on paper, after every retraining.

`generate_report(cfg)` scores the DEPLOYED model on the test data, draws its confusion matrix to
output_model_path/confusionmatrix.png and writes a PDF report: the model, its scores, the data's
summary and gaps, step timings, dependencies, the drift check of the monitoring cycle, and trends
from the history database. Each report is kept under a versioned, timestamped name in
output_model_path/reports/; the latest is always output_model_path/report.pdf.

Computing and drawing are apart: `report_data` returns plain data; the rest only renders it.

    python reporting.py [--config PATH]
"""
import argparse
import io
import json
import logging
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import atomicfiles
import history
import traffic
from settings import COLUMNS, FEATURES, ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

# Trend plots show at most this many recent runs, so a long history stays legible.
TREND_POINTS = 60
CONFUSION_SIZE = (4.8, 4.0)   # inches
CONFUSION_DPI = 150           # -> 720 x 600 pixels
TREND_SIZE = (7.0, 2.6)
TREND_DPI = 150
STATS = ("count", "mean", "median", "std", "min", "max")


class ReportError(Exception):
    """There is no deployed model, or no usable test data, to report on."""


# ---------------------------------------------------------------- computing


def change(current, previous, digits=4) -> str:
    """'up', 'down' or 'same' for two numbers compared as shown (rounded to `digits`); 'first run' without a previous."""
    if current is None or previous is None:
        return "first run" if previous is None else "n/a"
    a, b = round(float(current), digits), round(float(previous), digits)
    return "up" if a > b else "down" if a < b else "same"


def _deployed(cfg):
    import deployment

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
    import scoring
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


def _history(cfg, model_sha):
    """Deployments, the previous deployment's test scores, summaries, timings and files, from the history database."""
    with closing(history.connect(cfg.history_db)) as conn:
        deployments = [dict(r) for r in conn.execute(
            "SELECT at, version, action, model_sha256, f1 FROM deployments ORDER BY id")]
        summaries = [{"at": r["at"], "rows": r["rows"], "stats": json.loads(r["stats"]),
                      "missing": json.loads(r["missing"])}
                     for r in conn.execute("SELECT at, rows, stats, missing FROM "
                                           "(SELECT * FROM summaries ORDER BY id DESC LIMIT ?) ORDER BY id",
                                           (TREND_POINTS,))]
        timings = {}
        for r in conn.execute("SELECT step, seconds, at FROM step_timings ORDER BY id"):
            timings.setdefault(r["step"], []).append(r["seconds"])
        file_rows = {r["name"]: r["rows"] for r in conn.execute("SELECT name, rows FROM ingested_files ORDER BY id")}
        # The deployment event serving now is the last one of this model; the one before it is the previous run.
        mine = [i for i, d in enumerate(deployments) if d["model_sha256"] == model_sha]
        previous = deployments[mine[-1] - 1] if mine and mine[-1] > 0 else None
        previous_scores = None
        if previous is not None:
            row = conn.execute("SELECT f1, precision, recall, roc_auc, rows FROM scores WHERE dataset = 'test'"
                               " AND model_sha256 = ? ORDER BY id DESC LIMIT 1", (previous["model_sha256"],)).fetchone()
            previous_scores = dict(row) if row is not None else {"f1": previous["f1"], "precision": None,
                                                                 "recall": None, "roc_auc": None, "rows": None}
    return {"deployments": deployments, "previous_deployment": previous, "previous_scores": previous_scores,
            "summaries": summaries, "timings": timings, "file_rows": file_rows}


def deploying_cycle(cfg, manifest):
    """The record of the monitoring cycle that deployed this version (its manifest names it), so a
    report made later still shows the drift check behind the model; None for a version deployed by hand."""
    made_by = manifest.get("cycle")
    if not isinstance(made_by, dict) or made_by.get("id") is None:
        return None
    with closing(history.connect(cfg.history_db)) as conn:
        row = conn.execute("SELECT record FROM cycles WHERE id = ?", (made_by["id"],)).fetchone()
    if row is None:
        return made_by
    record = json.loads(row["record"])
    record.setdefault("cycle_id", made_by["id"])
    return record


def delivery_slices(cfg, cycle):
    """The cycle's new delivery on the deployed model's slices, each with the F1 the same slice had
    in the previous delivery that recorded slices (so a slice getting worse shows), or None."""
    current = (cycle or {}).get("slices_new")
    if not current:
        return None
    before = cycle.get("cycle_id") or 2**62
    previous = {}
    with closing(history.connect(cfg.history_db)) as conn:
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
    """Everything the report shows, as plain data. Raises ReportError when there is nothing to report on."""
    import diagnostics

    model, manifest, files, card = _deployed(cfg)
    if cycle is None:
        cycle = deploying_cycle(cfg, manifest)
    metrics, matrix = _scores_on_test(cfg, model)
    model_sha = manifest["files"]["trainedmodel.pkl"]["sha256"]
    past = _history(cfg, model_sha)
    if dependencies is None:
        dependencies = diagnostics.outdated_packages_list(cfg, timeout=2.0)
    summaries = past["summaries"]
    training = manifest.get("training", {})
    if audit is None:
        import audit as audit_module

        audit = audit_module.report_audit(manifest)
        if audit is not None:
            audit["from_card"] = True
    return {
        "generated_at": datetime.now(timezone.utc),
        "model": {
            "version": manifest["version"],
            "deployed_at": manifest.get("deployed_at"),
            "trained_at": training.get("trained_at"),
            "training_rows": training.get("training_rows"),
            "sha256": model_sha,
            "params": training.get("params"),
            "files": [{"name": n, "rows": past["file_rows"].get(n)} for n in files],
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
        "live": _live_traffic(cfg),
    }


def _live_traffic(cfg):
    """traffic.report_data since the previous report (the last recorded "report" timing)."""
    with closing(history.connect(cfg.history_db)) as conn:
        reports = [r[0] for r in conn.execute("SELECT at FROM step_timings WHERE step = 'report'"
                                              " ORDER BY id DESC LIMIT 2")]
    return traffic.report_data(cfg, since=reports[0] if reports else None,
                               previous_since=reports[1] if len(reports) > 1 else None)


# ---------------------------------------------------------------- drawing


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def confusion_png(matrix, title) -> bytes:
    """The confusion matrix as a PNG: labelled axes, the count in every cell."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=CONFUSION_SIZE, dpi=CONFUSION_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", vmin=0)
    peak = max(max(row) for row in matrix) or 1
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=16,
                    color="white" if matrix[i][j] > peak / 2 else "black")
    labels = ["stayed (0)", "exited (1)"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _trend_figure(ylabel, title):
    from matplotlib.figure import Figure

    fig = Figure(figsize=TREND_SIZE, dpi=TREND_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def f1_trend_png(deployments) -> bytes:
    fig, ax = _trend_figure("F1 on the test data", "F1 per deployment")
    xs = list(range(1, len(deployments) + 1))
    ys = [d["f1"] if d["f1"] is not None else float("nan") for d in deployments]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for x, d in zip(xs, deployments):
        if d["action"] == "rollback":
            ax.plot([x], [d["f1"]], marker="s", color="tab:red", linestyle="none")
    labels = [f"v{d['version']:04d}" + (" (rb)" if d["action"] == "rollback" else "") for d in deployments]
    step = max(1, len(xs) // 12)
    ax.set_xticks(xs[::step], labels[::step], fontsize=8)
    ax.set_xlabel("deployment (rb: rollback)")
    return _png(fig)


def missing_trend_png(summaries) -> bytes:
    fig, ax = _trend_figure("% of rows missing", "Missing data per ingestion")
    xs = list(range(1, len(summaries) + 1))
    for col in COLUMNS:
        ax.plot(xs, [s["missing"].get(col) or 0.0 for s in summaries], marker=".", label=col)
    ax.set_xlabel("ingestion run")
    # A floor of 1% keeps a run of zeros on the axis, not floating in an empty band.
    peak = max((s["missing"].get(col) or 0.0) for s in summaries for col in COLUMNS)
    ax.set_ylim(0, max(1.0, peak * 1.15))
    if peak == 0:
        ax.text(0.5, 0.5, "no missing values in any of these runs", transform=ax.transAxes, ha="center",
                va="center", color="dimgray")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def timing_trend_png(timings) -> bytes:
    fig, ax = _trend_figure("seconds", "Step timings per run")
    for step, secs in sorted(timings.items()):
        ax.plot(range(1, len(secs) + 1), secs, marker=".", label=step)
    values = [v for secs in timings.values() for v in secs if v > 0]
    if values and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("run of the step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def live_share_png(windows, thresholds) -> bytes:
    fig, ax = _trend_figure("share of rows", "Predicted exit share per window (live traffic)")
    xs = [datetime.fromtimestamp(w["window_start"], timezone.utc) for w in windows]
    ax.plot(xs, [w["exit_share"] if w["exit_share"] is not None else float("nan") for w in windows],
            marker=".", color="tab:blue")
    fig.autofmt_xdate()
    return _png(fig)


def live_psi_png(windows, thresholds) -> bytes:
    fig, ax = _trend_figure("PSI against training", "Input PSI per feature per window (live traffic)")
    xs = [datetime.fromtimestamp(w["window_start"], timezone.utc) for w in windows]
    for col in FEATURES:
        ax.plot(xs, [w["psi"].get(col, float("nan")) for w in windows], marker=".", label=col)
    ax.axhline(thresholds["psi_watch"], color="tab:orange", linestyle="--", linewidth=1, label="watch")
    ax.axhline(thresholds["psi_act"], color="tab:red", linestyle="--", linewidth=1, label="act")
    peak = max([v for w in windows for v in w["psi"].values()] + [thresholds["psi_act"]])
    if peak > 5:
        ax.set_yscale("symlog", linthresh=0.1)
    fig.autofmt_xdate()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def _fmt(value, spec=".4f", none="n/a"):
    return none if value is None else format(value, spec)


def _stamp(value):
    """An ISO time or epoch seconds as 'YYYY-MM-DD HH:MM UTC'."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Doc:
    """The story of flowables, with the house styles."""

    def __init__(self):
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

        self.colors = colors
        sheet = getSampleStyleSheet()
        self.h1, self.body = sheet["Title"], sheet["BodyText"]
        # A heading never ends a page: it stays with what follows it.
        self.h2 = ParagraphStyle("section", parent=sheet["Heading2"], keepWithNext=1)
        self.lead = ParagraphStyle("lead", parent=self.body, keepWithNext=1)
        self.small = ParagraphStyle("small", parent=self.body, fontSize=8, leading=10)
        self.cell = ParagraphStyle("cell", parent=self.body, fontSize=8.5, leading=10.5)
        self.story = []

    def heading(self, text):
        from reportlab.platypus import Paragraph

        self.story.append(Paragraph(escape(text), self.h2))

    def para(self, text, style=None):
        from reportlab.platypus import Paragraph

        self.story.append(Paragraph(escape(text), style or self.body))

    def table(self, rows, widths, numeric_from=1, header=True):
        """A grid table; columns from `numeric_from` on are right-aligned so the digits line up."""
        from reportlab.platypus import Paragraph, Table, TableStyle

        cells = [[Paragraph(escape(str(c)), self.cell) if isinstance(c, str) and len(c) > 40 else c for c in row]
                 for row in rows]
        t = Table(cells, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
        style = [
            ("FONT", (0, 0), (-1, -1), "Helvetica", 8.5),
            ("GRID", (0, 0), (-1, -1), 0.4, self.colors.grey),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ("TOPPADDING", (0, 0), (-1, -1), 2),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ]
        if numeric_from is not None:
            style.append(("ALIGN", (numeric_from, 0), (-1, -1), "RIGHT"))
        if header:
            style += [("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8.5),
                      ("BACKGROUND", (0, 0), (-1, 0), self.colors.HexColor("#e8eef7"))]
        t.setStyle(TableStyle(style))
        self.story.append(t)

    def image(self, png, width):
        from reportlab.lib.utils import ImageReader
        from reportlab.platypus import Image

        w, h = ImageReader(io.BytesIO(png)).getSize()
        self.story.append(Image(io.BytesIO(png), width=width, height=width * h / w, hAlign="LEFT"))
        self.space(3)

    def space(self, mm=3):
        from reportlab.lib.units import mm as MM
        from reportlab.platypus import Spacer

        self.story.append(Spacer(1, mm * MM))


def _model_section(doc, data, W):
    m, met = data["model"], data["metrics"]
    doc.heading("The deployed model")
    doc.table([
        ["Version", f"v{m['version']:04d}"],
        ["Deployed at", _stamp(m["deployed_at"])],
        ["Trained at", _stamp(m["trained_at"])],
        ["Training rows", _fmt(m["training_rows"], ",d")],
        ["Test rows scored", f"{met['rows']:,d}"],
        ["Model SHA-256", m["sha256"][:16]],
        ["Parameters", ", ".join(f"{k}={v}" for k, v in (m["params"] or {}).items()) or "n/a"],
    ], [0.25 * W, 0.75 * W], numeric_from=None, header=False)
    doc.space()
    doc.para(f"Ingested files behind this model ({len(m['files'])}):", doc.lead)
    if m["files"]:
        doc.table([["File", "Rows"]] + [[f["name"], _fmt(f["rows"], ",d")] for f in m["files"]],
                  [0.55 * W, 0.15 * W])
    else:
        doc.para("none recorded", doc.small)


def _scores_section(doc, data, W, confusion):
    met, prev = data["metrics"], data["previous"]["metrics"]
    pdep = data["previous"]["deployment"]
    doc.heading("Scores on the test data")
    if pdep is None:
        doc.para("Compared with: nothing yet (this is the first deployment in the history).")
    else:
        doc.para(f"Compared with the previous deployment, v{pdep['version']:04d} ({pdep['action']}, "
                 f"{_stamp(pdep['at'])}).")
    rows = [["Metric", "Value", "Previous", "Change"]]
    for key, name in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall"), ("roc_auc", "ROC AUC")):
        p = prev.get(key) if prev else None
        rows.append([name, _fmt(met[key]), _fmt(p, none="-"), change(met[key], p) if prev else "first run"])
    doc.table(rows, [0.2 * W, 0.15 * W, 0.15 * W, 0.15 * W])
    doc.space()
    (tn, fp), (fn, tp) = data["confusion_matrix"]
    doc.para("Confusion matrix (rows: actual, columns: predicted):", doc.lead)
    doc.table([["", "predicted stayed (0)", "predicted exited (1)"],
               ["actual stayed (0)", str(tn), str(fp)],
               ["actual exited (1)", str(fn), str(tp)]], [0.25 * W, 0.22 * W, 0.22 * W])
    doc.space(2)
    doc.image(confusion, 0.55 * W)


def _data_section(doc, data, W):
    s, p = data["summary"], data["previous_summary"]
    doc.heading("Ingested data")
    if s is None:
        doc.para("No data has been ingested yet.")
        return
    doc.para(f"finaldata.csv holds {s['rows']:,d} rows (ingested {_stamp(s['at'])}); "
             + (f"previous ingestion: {p['rows']:,d} rows, {change(s['rows'], p['rows'], 0)}." if p
                else "first ingestion in the history."))
    doc.para("Summary statistics of each feature (rows with a value):", doc.lead)
    rows = [["Feature", "Count", "Mean", "Median", "Std", "Min", "Max"]]
    for col in FEATURES:
        st = s["stats"].get(col, {})
        rows.append([col, _fmt(st.get("count"), ",d")] + [_fmt(st.get(k), ",.2f") for k in STATS[1:]])
    w = [0.25 * W] + [0.125 * W] * 6
    doc.table(rows, w)
    if p is not None:
        doc.space(2)
        doc.para("Change since the previous ingestion:", doc.lead)
        rows = [["Feature", "Count", "Mean", "Median", "Std", "Min", "Max"]]
        for col in FEATURES:
            st, pst = s["stats"].get(col, {}), p["stats"].get(col, {})
            rows.append([col] + [change(st.get(k), pst.get(k), 0 if k == "count" else 2) for k in STATS])
        doc.table(rows, w)
    doc.heading("Missing data")
    rows = [["Column", "Missing (% of rows)", "Previous", "Change"]]
    for col in COLUMNS:
        cur = s["missing"].get(col)
        prev = p["missing"].get(col) if p else None
        rows.append([col, _fmt(cur, ".2f"), _fmt(prev, ".2f", "-"), change(cur, prev, 2) if p else "first run"])
    doc.table(rows, [0.3 * W, 0.2 * W, 0.15 * W, 0.15 * W])


def _timings_section(doc, data, W):
    doc.heading("Step timings")
    timings = data["timings"]
    if not timings:
        doc.para("No step timing has been recorded yet.")
        return
    doc.para("Seconds taken by the latest run of each step of the real pipeline (from the history database):", doc.lead)
    rows = [["Step", "Latest (s)", "Previous (s)", "Change", "Runs shown"]]
    for step, secs in sorted(timings.items()):
        prev = secs[-2] if len(secs) > 1 else None
        rows.append([step, _fmt(secs[-1], ".3f"), _fmt(prev, ".3f", "-"),
                     change(secs[-1], prev, 3) if prev is not None else "first run", str(len(secs))])
    doc.table(rows, [0.22 * W, 0.16 * W, 0.16 * W, 0.14 * W, 0.14 * W])


def _dependencies_section(doc, data, W):
    deps = data["dependencies"]
    doc.heading("Dependencies")
    doc.para(f"Pinned, installed and latest versions (package index: {deps['index']}).", doc.lead)
    rows = [["Package", "Pinned", "Installed", "Latest", "Status"]]
    for e in deps["packages"]:
        rows.append([e["package"], e["pinned"], e["installed"] or "not installed", e["latest"] or "unknown",
                     e["status"]])
    doc.table(rows, [0.26 * W, 0.16 * W, 0.16 * W, 0.16 * W, 0.18 * W], numeric_from=None)
    reasons = sorted({e["reason"] for e in deps["packages"] if e.get("reason")})
    for reason in reasons[:3]:
        doc.para(f"Latest version unknown: {reason}", doc.small)
    if len(reasons) > 3:
        doc.para(f"... and {len(reasons) - 3} other reason(s).", doc.small)


def _drift_section(doc, data, W):
    cycle = data["cycle"]
    doc.heading("Drift check")
    if not cycle:
        doc.para("No drift check has run for this model yet: the monitoring cycle provides it when it "
                 "finds new data.")
        return
    if cycle.get("decision"):
        doc.para(f"Decision: {cycle['decision']}")
    sd = cycle.get("score_drift")
    if sd:
        drift = {True: "yes", False: "no", None: "not enough evidence"}.get(sd.get("drift"), str(sd.get("drift")))
        rows = [["Score drift", ""],
                ["Test asked / used", f"{sd.get('test')} / {sd.get('used')}"],
                ["Drift", drift],
                ["New F1", _fmt(sd.get("new_f1"))],
                ["Deployed F1", _fmt(sd.get("deployed_f1"))],
                ["Threshold", _fmt(sd.get("threshold"))]]
        if sd.get("new_rows") is not None:
            rows.append(["New rows", f"{sd['new_rows']:,d}"])
        if sd.get("p_value") is not None:
            rows.append(["p-value", _fmt(sd.get("p_value"))])
        rows.append(["Reason", sd.get("reason") or "n/a"])
        if sd.get("fallback"):
            rows.append(["Fallback", sd["fallback"]])
        doc.table(rows, [0.25 * W, 0.75 * W], numeric_from=None)
    else:
        doc.para("No score-drift result in this cycle's record.")
    fd = cycle.get("feature_drift")
    doc.space(2)
    if fd:
        doc.para(f"Feature drift: KS test (p-values corrected by {fd.get('correction', 'n/a')}, level "
                 f"{fd.get('level')}) and PSI (threshold {fd.get('psi_threshold')}).", doc.lead)
        rows = [["Feature", "KS statistic", "p-value", "p adjusted", "PSI", "Rows", "Drifted"]]
        for col, f in fd.get("features", {}).items():
            rows.append([col, _fmt(f.get("ks_statistic")), _fmt(f.get("p_value"), ".3g"),
                         _fmt(f.get("p_adjusted"), ".3g"), _fmt(f.get("psi")), _fmt(f.get("rows"), ",d"),
                         "yes" if f.get("drifted") else "no"])
        doc.table(rows, [0.25 * W] + [0.125 * W] * 6)
        doc.para("Drifted features: " + (", ".join(fd.get("drifted", [])) or "none"))
    else:
        doc.para("No feature-drift result in this cycle's record.")
    slices = data.get("delivery_slices")
    if slices:
        doc.space(2)
        doc.para("The new delivery on the deployed model's slices, against the previous delivery on the "
                 "same slice:", doc.lead)
        rows = [["Slice", "Rows", "F1", "Previous F1", "Change", "Flag"]]
        for sl in slices:
            rows.append([sl["label"], _fmt(sl["rows"], ",d"), _fmt(sl["f1"]), _fmt(sl["previous_f1"]),
                         sl["change"], sl["flag"] or "-"])
        doc.table(rows, [0.36 * W, 0.1 * W, 0.11 * W, 0.13 * W, 0.14 * W, 0.16 * W])


def _markdown_table(doc, lines, W):
    rows = [[c.strip().replace("`", "").replace("**", "") for c in line.strip().strip("|").split("|")]
            for line in lines if not set(line.replace("|", "").strip()) <= set("-: ")]
    longest = [min(max(len(r[i]) for r in rows), 40) + 4 for i in range(len(rows[0]))]
    doc.table(rows, [W * n / sum(longest) for n in longest], numeric_from=None)


def _markdown(doc, text, W):
    """The model card's markdown (headings, bullets, pipe tables, paragraphs) as report flowables."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            _markdown_table(doc, lines[i:j], W)
            doc.space(2)
            i = j
            continue
        plain = line.replace("`", "").replace("**", "")
        if line.startswith("#"):
            doc.para(plain.lstrip("#").strip(), doc.lead)
        elif line.startswith("- "):
            doc.para("\u2022 " + plain[2:], doc.small)
        elif line:
            doc.para(plain, doc.small)
        i += 1


def _audit_section(doc, data, W):
    audit = data["audit"]
    doc.heading("Model card and slice audit")
    if not isinstance(audit, dict) or not ({"markdown", "sections"} & set(audit)):
        doc.para("No model card or slice audit has been provided for this model.")
        if data["model"]["card"]:
            doc.para(f"The deployed version's model card is in {data['model']['card']}.")
        return
    if audit.get("from_card") and data["model"]["card"]:
        doc.para(f"The deployed version's model card is in {data['model']['card']}. It reads:")
    if audit.get("markdown"):
        _markdown(doc, str(audit["markdown"]), W)
    sections = audit.get("sections") or []
    if isinstance(sections, dict):
        sections = [{"title": k, "text": v} for k, v in sections.items()]
    for sec in sections:
        if isinstance(sec, dict):
            doc.para(str(sec.get("title", "")), doc.body)
            doc.para(str(sec.get("text", sec.get("markdown", ""))), doc.small)
        else:
            doc.para(str(sec), doc.small)


def _trends_section(doc, data, W):
    from reportlab.platypus import KeepTogether

    start = len(doc.story)
    doc.heading("Trends")
    deps = [d for d in data["deployments"] if d["f1"] is not None]
    if len(deps) > 1:
        doc.image(f1_trend_png(deps), W)
    elif deps:
        doc.para(f"F1 per deployment: one run so far (v{deps[0]['version']:04d}, F1 {deps[0]['f1']:.4f}); "
                 "a trend needs two.")
    else:
        doc.para("F1 per deployment: no deployment recorded in the history yet.")
    summaries = data["summaries"]
    if len(summaries) > 1:
        doc.image(missing_trend_png(summaries), W)
    else:
        doc.para("Missing data: one run so far; a trend needs two ingestions.")
    timings = {step: secs for step, secs in data["timings"].items() if len(secs) > 1}
    if timings:
        doc.image(timing_trend_png(timings), W)
    else:
        doc.para("Step timings: one run so far; a trend needs two runs of a step.")
    # Lines of words stay on one page; plots that cannot all fit still flow on.
    doc.story[start:] = [KeepTogether(doc.story[start:])]


def _live_section(doc, data, W):
    """Online monitoring: what the API saw since the previous report (traffic.report_data)."""
    live = data.get("live")
    doc.heading("Live traffic (online monitoring)")
    if not live or not live["days"]:
        doc.para("No live traffic recorded " + (f"since the previous report ({_stamp(live['since'])})."
                                                if live and live["since"] else "yet."))
        return
    t = live["thresholds"]
    doc.para(("Since the previous report, " + _stamp(live["since"]) if live["since"] else "All recorded traffic")
             + f", until {_stamp(live['until'])}. Windows with at least {t['min_rows']} rows are judged: PSI "
             f"{t['psi_watch']} watch, {t['psi_act']} act. Windows crossing: {live['windows_crossing']['watch']} "
             f"at watch, {live['windows_crossing']['act']} at act.")
    doc.table([["day (UTC)", "requests", "errors", "rows predicted", "predicted exit share"]]
              + [[d["day"], f"{d['requests']:,d}", f"{d['errors']:,d}", f"{d['rows']:,d}",
                  _fmt(d["exit_share"])] for d in live["days"]], [0.2 * W, 0.18 * W, 0.14 * W, 0.2 * W, 0.25 * W])
    cur, prev = live["latency"], live["previous_latency"]
    rows = [["latency (ms)", "this period", "previous period", "change"]]
    for key, name in (("prediction_p50", "/prediction p50"), ("prediction_p99", "/prediction p99"),
                      ("p50", "all requests p50"), ("p99", "all requests p99")):
        a = cur[key] * 1000 if cur and cur[key] is not None else None
        b = prev[key] * 1000 if prev and prev[key] is not None else None
        rows.append([name, _fmt(a, ".2f"), _fmt(b, ".2f", none="-"), change(a, b, 2)])
    doc.table(rows, [0.3 * W, 0.2 * W, 0.2 * W, 0.2 * W])
    windows = live["windows"]
    if len(windows) > 1:
        doc.image(live_share_png(windows, t), W)
        doc.image(live_psi_png(windows, t), W)
    else:
        w = windows[0]
        doc.para(f"One window so far: exit share {_fmt(w['exit_share'])}, PSI "
                 + ", ".join(f"{k} {v:.3f}" for k, v in sorted(w["psi"].items())) + "; a trend needs two.")


def render_pdf(data, confusion) -> bytes:
    """The report as PDF bytes."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    version = data["model"]["version"]
    title = f"Model report: v{version:04d}"
    margin = 16 * mm
    buf = io.BytesIO()
    pdf = SimpleDocTemplate(buf, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=margin,
                            bottomMargin=margin + 4 * mm, title=title, author="Dynamic Risk Assessment System")
    W = A4[0] - 2 * margin

    def footer(canvas, doc_):
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.drawString(margin, 9 * mm, f"{title}, generated {_stamp(data['generated_at'])}")
        canvas.drawRightString(A4[0] - margin, 9 * mm, f"page {doc_.page}")
        canvas.restoreState()

    doc = _Doc()
    from reportlab.platypus import Paragraph

    doc.story.append(Paragraph(escape(title), doc.h1))
    doc.para(f"Generated {_stamp(data['generated_at'])}. The deployed model, scored on {data['test_data']}.")
    _model_section(doc, data, W)
    _scores_section(doc, data, W, confusion)
    _data_section(doc, data, W)
    _timings_section(doc, data, W)
    _dependencies_section(doc, data, W)
    _drift_section(doc, data, W)
    _audit_section(doc, data, W)
    _trends_section(doc, data, W)
    _live_section(doc, data, W)
    pdf.build(doc.story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()


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
    confusion = confusion_png(data["confusion_matrix"], f"Deployed model v{version:04d} on the test data")
    pdf = render_pdf(data, confusion)
    out = cfg.output_model_path
    cm_path, latest = out / "confusionmatrix.png", out / "report.pdf"
    atomicfiles.write_bytes(cm_path, confusion)
    kept = _versioned_path(out / "reports", version, data["generated_at"])
    atomicfiles.write_bytes(kept, pdf)
    atomicfiles.write_bytes(latest, pdf)
    with closing(history.connect(cfg.history_db)) as conn:
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
