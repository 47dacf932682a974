"""The report's layout, read back from the real PDF: headings kept with their content, time axes that
fit their data, no empty plot."""
import pandas as pd
import pytest
from conftest import HEADER, write_delivery
from helpers import pdf_images, pdf_text
from matplotlib.backends.backend_agg import FigureCanvasAgg

import charts
import datagen
import deployment
import drift
import ingestion
import reporting
import reportpdf
import scoring
import training
from cycle import CycleRecord

# The report's section headings, as pdftotext prints them.
HEADINGS = {"Summary", "The deployed model", "Scores on the test data", "Ingested data", "Missing data",
            "Step timings", "Dependencies", "Drift check", "Model card and slice audit", "Trends",
            "Live traffic (online monitoring)"}
DEPENDENCIES = {"index": "http://127.0.0.1:9/simple", "packages": [
    {"package": "reportlab", "pinned": "5.1.0", "installed": "5.1.0", "latest": None, "status": "unknown",
     "reason": "package index 127.0.0.1:9 unreachable: cannot connect"}]}
DAY = 86400.0
BASE = 1_699_920_000.0  # 2023-11-14 00:00:00 UTC
THRESHOLDS = {"psi_watch": 0.1, "psi_act": 0.2}


def pages(pdf_path):
    """The lines of each page of the PDF (pdftotext's layout), blank lines and the footer left out."""
    out = []
    for page in pdf_text(pdf_path).split("\f"):
        lines = [line.strip() for line in page.splitlines() if line.strip()]
        out.append([line for line in lines if not line.startswith("Model report: v")])
    return [p for p in out if p]


def lonely_headings(page_lines, min_lines=3):
    """Headings that end a page with fewer than `min_lines` lines of their section after them, while the
    section goes on over the page (the next page does not start with a heading)."""
    found = []
    for i, lines in enumerate(page_lines[:-1]):
        heads = [j for j, line in enumerate(lines) if line in HEADINGS]
        if not heads:
            continue
        last = heads[-1]
        if len(lines) - 1 - last < min_lines and page_lines[i + 1][0] not in HEADINGS:
            found.append((i + 1, lines[last], lines[last + 1:]))
    return found


def a_drift_cycle(cfg):
    """The record of a cycle that found drift and kept the serving model: the report's longest drift section."""
    final = pd.read_csv(cfg.finaldata)
    new = datagen.generate(300, seed=5, drift="covariate", strength=1.0)
    return CycleRecord(
        cycle_id=7, decision="drift: retrained, kept the deployed model (not better on held-out rows)",
        score_drift=drift.decide("raw", new_f1=0.5, deployed_f1=0.8), feature_drift=drift.feature_drift(final, new),
        promotion={"decision": "keep", "reason": "kept the serving model: the challenger is not significantly better",
                   "action": "nothing: the next deliveries gather new evidence",
                   "held_out": {"reason": "challenger F1 0.60, serving 0.13 on the same 17 rows"},
                   "test": {"reason": "challenger F1 0.00, serving 0.79 on the same 40 rows"},
                   "model": "kept the serving model; the challenger is saved as models/challenger.pkl"})


def test_no_heading_ends_a_page_wherever_the_page_breaks_fall(shared, tmp_path):
    """The same report with 0 to 58 more lineage rows, two at a time (a row is 4 mm): every heading falls at
    every height of a page, closer than it takes a heading and three lines."""
    data = reporting.report_data(shared, cycle=a_drift_cycle(shared), dependencies=DEPENDENCIES)
    confusion = charts.confusion_png(data["confusion_matrix"], "the deployed model")
    files = data["model"]["files"]
    bad = {}
    for extra in range(0, 60, 2):
        data["model"]["files"] = files + [{"name": f"more{k}.csv", "rows": 10, "sha256": "ab" * 32}
                                          for k in range(extra)]
        path = tmp_path / f"report-{extra}.pdf"
        path.write_bytes(reportpdf.render_pdf(data, confusion))
        lines = pages(path)
        assert sum(line in HEADINGS for p in lines for line in p) == 11  # every section
        found = lonely_headings(lines)
        if found:
            bad[extra] = found
    assert bad == {}


def test_a_page_ending_with_a_heading_is_found():
    two = [["Ingested data", "finaldata.csv holds 201 rows", "Drift check", "Decision: no drift"],
           ["Score drift", "Drift  no"]]
    assert lonely_headings(two) == [(1, "Drift check", ["Decision: no drift"])]
    assert lonely_headings([two[0], ["Model card and slice audit", "..."]]) == []  # the section ended there


# --- time axes that fit their data --------------------------------------------------------------------

def window(start, psi=0.05, level="ok", version=1, seconds=60.0):
    return {"window_start": start, "window_seconds": seconds, "model_version": version, "rows": 100,
            "exit_share": 0.3, "exit_share_shift": 0.0, "psi": {"lastmonth_activity": psi, "lastyear_activity": psi,
                                                               "number_of_employees": psi},
            "level": level, "estimated_f1": None, "judged": True}


def axis(fig):
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    return ax.get_xlim(), [t.get_text() for t in ax.get_xticklabels()]


@pytest.mark.parametrize(("windows", "limits", "labels"), [
    # three one-minute windows: the axis spans their three minutes, the date on the first tick
    ([window(BASE), window(BASE + 60), window(BASE + 120, level="act")], (BASE, BASE + 180),
     ["2023-11-14\n00:00", "00:01", "00:02", "00:03"]),
    # two days: six-hour ticks, the date where it changes
    ([window(BASE), window(BASE + 60), window(BASE + DAY)], (BASE, BASE + DAY + 60),
     ["2023-11-14\n00:00", "06:00", "12:00", "18:00", "2023-11-15\n00:00"]),
    # ten-second windows over 40 seconds
    ([window(BASE + 3600 + 10 * k, seconds=10.0) for k in range(4)], (BASE + 3600, BASE + 3640),
     ["2023-11-14\n01:00:00", "01:00:10", "01:00:20", "01:00:30", "01:00:40"]),
])
def test_the_live_plots_time_axis_spans_the_windows(windows, limits, labels):
    for fig in (charts.live_share_figure(windows, THRESHOLDS), charts.live_psi_figure(windows, THRESHOLDS)):
        assert axis(fig) == (limits, labels)


def live(windows):
    return {"since": None, "until": BASE + 2 * DAY, "previous_since": None, "days": [
        {"day": "2023-11-14", "requests": 2, "rows": 200, "exits": 60, "errors": 0, "exit_share": 0.3}],
        "thresholds": {"psi_watch": 0.1, "psi_act": 0.2, "min_rows": 100, "alarm_act_per_day": 0.04,
                       "alarm_watch_per_day": 1, "p_act": 1e-5, "p_watch": 2e-4},
        "windows": windows, "windows_crossing": {"watch": 0, "act": 0}, "judged": len(windows),
        "above_psi_act_not_alarmed": 0, "estimated_f1": None,
        "latency": {"p50": 0.001, "p99": 0.002, "prediction_p50": 0.001, "prediction_p99": 0.002, "requests": 2},
        "previous_latency": None}


def test_windows_at_one_time_are_said_in_words_not_plotted(shared, tmp_path):
    """Two versions served in the same window: one time, no axis to draw (matplotlib would span four years)."""
    data = reporting.report_data(shared, dependencies=DEPENDENCIES)
    confusion = charts.confusion_png(data["confusion_matrix"], "the deployed model")
    data["live"] = live([window(BASE, psi=0.05, version=1), window(BASE, psi=0.25, version=2)])
    path = tmp_path / "report.pdf"
    path.write_bytes(reportpdf.render_pdf(data, confusion))
    text = " ".join(pdf_text(path).split())
    assert ("All windows so far start at 2023-11-14 00:00:00 UTC (2 windows, versions 1 and 2): a trend needs "
            "two times.") in text
    assert [(w, h) for _, w, h in pdf_images(path)] == [(720, 600)]  # the confusion matrix only
    data["live"] = live([window(BASE), window(BASE + 60)])
    path.write_bytes(reportpdf.render_pdf(data, confusion))
    assert [(w, h) for _, w, h in pdf_images(path)] == [(720, 600), (1050, 390), (1050, 390)]


# --- no empty plot ----------------------------------------------------------------------------------

def test_no_missing_values_is_said_in_words(world):
    write_delivery(world, "a.csv", rows=200, seed=1)
    for _ in range(2):
        ingestion.ingest(world)
        write_delivery(world, "b.csv", rows=100, seed=2)
    training.run(world)
    scoring.run(world)
    deployment.deploy_from_config(world)
    paths = reporting.generate_report(world, dependencies=DEPENDENCIES)
    text = " ".join(pdf_text(paths["latest"]).split())
    assert "Missing data per ingestion: no missing values in any of the 2 ingestion runs." in text
    # the confusion matrix and the step timings; no missing-data plot
    assert [(w, h) for _, w, h in pdf_images(paths["latest"])] == [(720, 600), (1050, 390)]
    # With a gap, the plot is drawn.
    write_delivery(world, "gap.csv", text=HEADER + "zzzz,5,,7,1\n")
    ingestion.ingest(world)
    latest = reporting.generate_report(world, dependencies=DEPENDENCIES)["latest"]
    assert "no missing values" not in pdf_text(latest)
    assert [(w, h) for _, w, h in pdf_images(latest)] == [(720, 600), (1050, 390), (1050, 390)]
