"""The report as a PDF: the house styles and one function per section, from report_data's plain data."""
import io
from datetime import datetime, timezone
from xml.sax.saxutils import escape

import charts
import modelcard
from cycle import known
from summary import ORDER, change
from settings import COLUMNS, FEATURES

STATS = ("count", "mean", "median", "std", "min", "max")
# A heading starts a new page when less than this (mm) is left below it: it never ends a page with
# a line or two of its section (keepWithNext alone keeps it with one flowable, a short one).
ROOM_BELOW_HEADING = 45


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
        self.todo = ParagraphStyle("todo", parent=self.body, fontName="Helvetica-Bold")
        self.cell = ParagraphStyle("cell", parent=self.body, fontSize=8.5, leading=10.5)
        self.story = []

    def heading(self, text):
        from reportlab.lib.units import mm
        from reportlab.platypus import CondPageBreak, Paragraph

        self.story += [CondPageBreak(ROOM_BELOW_HEADING * mm), Paragraph(escape(text), self.h2)]

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


def _summary_section(doc, data):
    """The summary in words (summary.py), what to do last and in bold."""
    doc.heading("Summary")
    said = data["overview"]
    for key in ORDER:
        doc.para(said[key], doc.todo if key == "todo" else doc.body)


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
    doc.para(f"Lineage: the deliveries behind this model ({len(m['files'])}), by their archive SHA-256:", doc.lead)
    if m["files"]:
        doc.table([["File", "Archive SHA-256", "Rows"]]
                  + [[f["name"], (f.get("sha256") or "n/a")[:12], _fmt(f["rows"], ",d")] for f in m["files"]],
                  [0.45 * W, 0.25 * W, 0.15 * W], numeric_from=2)
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
    if cycle is None:
        doc.para("No drift check has run for this model yet: the monitoring cycle provides it when it "
                 "finds new data.")
        return
    if cycle.decision:
        doc.para(f"Decision: {cycle.decision}")
    sd = known(cycle.score_drift)
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
    td = known(cycle.test_data)
    if td and td.get("stale"):
        doc.para(f"Stale test data: {td.get('reason')}")
    pr = known(cycle.promotion)
    if pr:
        rows = [["Promotion on held-out evidence", ""], ["Decision", str(pr.get("decision"))]]
        for part, label in (("held_out", "Held-out rows"), ("test", "Test data")):
            if isinstance(pr.get(part), dict):
                rows.append([label, pr[part].get("reason") or "n/a"])
        rows += [[label, pr[key]] for key, label in (("reason", "Reason"), ("action", "What to do"), ("model", "Model"))
                 if pr.get(key)]
        doc.space(2)
        doc.table(rows, [0.25 * W, 0.75 * W], numeric_from=None)
    fd = known(cycle.feature_drift)
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
        above = [col for col, f in fd.get("features", {}).items()
                 if not f.get("drifted") and f.get("psi") is not None and fd.get("psi_threshold") is not None
                 and f["psi"] >= fd["psi_threshold"]]
        if above:
            doc.para(f"{', '.join(above)}: PSI at or above {fd['psi_threshold']} but not drifted: a feature counts as "
                     f"drifted only when its KS test also rejects (adjusted p below {fd.get('level')}), and here it "
                     "did not.")
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


def _card_table(doc, table, W):
    rows = [[modelcard.plain(c).strip() for c in row] for row in [table.header] + table.rows]
    longest = [min(max(len(r[i]) for r in rows), 40) + 4 for i in range(len(rows[0]))]
    doc.table(rows, [W * n / sum(longest) for n in longest], numeric_from=None)


def _card(doc, sections, W):
    """The model card's sections (modelcard.card) as report flowables."""
    for sec in sections:
        doc.para(modelcard.plain(sec.title).strip(), doc.lead)
        for block in sec.blocks:
            if isinstance(block, modelcard.Table):
                _card_table(doc, block, W)
                doc.space(2)
            elif isinstance(block, modelcard.Bullets):
                for item in block.items:
                    doc.para("\u2022 " + modelcard.plain(item).rstrip(), doc.small)
            else:
                doc.para(modelcard.plain(block.text).strip(), doc.small)


def _audit_section(doc, data, W):
    audit = data["audit"]
    doc.heading("Model card and slice audit")
    if not isinstance(audit, dict) or not ({"card", "sections"} & set(audit)):
        doc.para("No model card or slice audit has been provided for this model.")
        if data["model"]["card"]:
            doc.para(f"The deployed version's model card is in {data['model']['card']}.")
        return
    if audit.get("from_card") and data["model"]["card"]:
        doc.para(f"The deployed version's model card is in {data['model']['card']}. It reads:")
    if audit.get("card"):
        _card(doc, audit["card"], W)
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
        doc.image(charts.f1_trend_png(deps), W)
    elif deps:
        doc.para(f"F1 per deployment: one run so far (v{deps[0]['version']:04d}, F1 {deps[0]['f1']:.4f}); "
                 "a trend needs two.")
    else:
        doc.para("F1 per deployment: no deployment recorded in the history yet.")
    summaries = data["summaries"]
    if len(summaries) > 1 and not any(s["missing"].get(col) for s in summaries for col in COLUMNS):
        doc.para(f"Missing data per ingestion: no missing values in any of the {len(summaries)} ingestion runs.")
    elif len(summaries) > 1:
        doc.image(charts.missing_trend_png(summaries), W)
    else:
        doc.para("Missing data: one run so far; a trend needs two ingestions.")
    timings = {step: secs for step, secs in data["timings"].items() if len(secs) > 1}
    if timings:
        doc.image(charts.timing_trend_png(timings), W)
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
             + f", until {_stamp(live['until'])}. Each closed window is judged once, small windows pooled to "
             f"{t['min_rows']} rows, by a test on the bin counts that allows for the window's and the training "
             f"data's sizes: \"act\" when a feature's p-value is below {t['p_act']:.2g} (at most "
             f"{t['alarm_act_per_day']} false \"act\" days of undrifted traffic), \"watch\" below "
             f"{t['p_watch']:.2g}. PSI is the size of the change; its lines {t['psi_watch']} and {t['psi_act']} are "
             f"for reading only. Looks judged: {live.get('judged', 0)}; at watch: {live['windows_crossing']['watch']}, "
             f"at act: {live['windows_crossing']['act']}.")
    hosts = live.get("hosts") or {}
    if len(hosts) > 1:
        doc.para(f"Served by {len(hosts)} API hosts, added up in the figures below: "
                 + "; ".join(f"{name} {h['requests']:,d} request{'s' * (h['requests'] != 1)}, {h['rows']:,d} row"
                             f"{'s' * (h['rows'] != 1)}" for name, h in hosts.items())
                 + ".")
    if live.get("above_psi_act_not_alarmed"):
        doc.para(f"{live['above_psi_act_not_alarmed']} window(s) had a PSI above {t['psi_act']} without an alarm: "
                 "the test did not reject (too few rows for a PSI that size to stand out from sampling noise), or "
                 "the window was pooled or still open.")
    est = live.get("estimated_f1")
    if est and est.get("value") is not None:
        test_f1 = (data.get("metrics") or {}).get("f1")
        doc.para(f"Estimated F1 of version {est['model_version']} on this period's {est['rows']:,d} rows: "
                 f"{est['value']:.3f} (95% interval {est['interval'][0]:.3f} to {est['interval'][1]:.3f})"
                 + (f", beside its test F1 {test_f1:.3f}" if isinstance(test_f1, (int, float)) else "")
                 + f". From the model's calibrated probabilities (calibrated on {est['calibration_source']}): it "
                 "follows a change in the inputs, not a change in how inputs relate to leaving; the score-drift "
                 "test on labelled deliveries shows that.")
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
    starts = sorted({w["window_start"] for w in windows})
    if len(starts) > 1:
        doc.image(charts.live_share_png(windows, t), W)
        doc.image(charts.live_psi_png(windows, t), W)
    elif len(windows) == 1:
        w = windows[0]
        doc.para(f"One window so far: exit share {_fmt(w['exit_share'])}, PSI "
                 + ", ".join(f"{k} {v:.3f}" for k, v in sorted(w["psi"].items())) + "; a trend needs two.")
    else:  # versions served side by side in one window: one time, nothing to draw a trend along
        versions = sorted({w["model_version"] for w in windows})
        doc.para(f"All windows so far start at {_stamp(starts[0])} ({len(windows)} windows, versions "
                 f"{', '.join(map(str, versions[:-1]))} and {versions[-1]}): a trend needs two times.")


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
    _summary_section(doc, data)
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
