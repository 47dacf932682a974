import hashlib
import math
import pickle
import re
import socket
import subprocess
from contextlib import closing

import pandas as pd
import pytest
from conftest import HEADER, make_config, run_script, write_delivery
from helpers import pdf_images, pdf_text, table_row
from PIL import Image
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

import datagen
import deployment
import drift
import history
import ingestion
import reporting
import scoring
import training
from cycle import CycleRecord
from settings import FEATURES, load_config

A4_AT_50_DPI = (math.ceil(595.276 * 50 / 72), math.ceil(841.89 * 50 / 72))  # pdftoppm's page size in pixels


def refused_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d/simple" % s.getsockname()[1]


def pipeline(cfg):
    ingestion.ingest(cfg)
    training.run(cfg)
    scoring.run(cfg)
    deployment.deploy_from_config(cfg)


@pytest.fixture
def world1(world):
    """One run: 200 seeded rows and one row with a gap, ingested, trained, scored, deployed."""
    cfg = load_config(make_config(world.base, package_index_url=refused_url()))
    write_delivery(cfg, "a.csv", rows=200, seed=1)
    write_delivery(cfg, "gap.csv", text=HEADER + "zzzz,5,,7,1\n")
    pipeline(cfg)
    return cfg


def deployed_truth(cfg):
    """The deployed model's figures on the test data, computed here independently of reporting."""
    with open(cfg.prod_deployment_path / "trainedmodel.pkl", "rb") as f:
        model = pickle.load(f)
    test = pd.read_csv(cfg.test_data_file)
    X, y = test[list(FEATURES)], test["exited"]
    pred = model.predict(X)
    return {"f1": f1_score(y, pred), "precision": precision_score(y, pred), "recall": recall_score(y, pred),
            "roc_auc": roc_auc_score(y, model.predict_proba(X)[:, 1]), "rows": len(test),
            "matrix": confusion_matrix(y, pred).tolist()}


def section(text, start, end):
    return text[text.index(start):text.index(end, text.index(start))]


def test_single_run_report_shows_the_computed_numbers(world1, tmp_path):
    paths = reporting.generate_report(world1)
    out = world1.output_model_path
    assert paths["latest"] == out / "report.pdf"
    assert paths["confusion_matrix"] == out / "confusionmatrix.png"
    assert paths["pdf"].parent == out / "reports"
    assert re.fullmatch(r"report-v0001-\d{8}T\d{6}Z\.pdf", paths["pdf"].name)
    assert paths["pdf"].read_bytes() == paths["latest"].read_bytes()
    assert paths["latest"].read_bytes().startswith(b"%PDF-")

    truth = deployed_truth(world1)
    text = pdf_text(paths["latest"])
    assert "Model report: v0001" in text
    scores = section(text, "Scores on the test data", "Ingested data")
    for label, key in (("F1", "f1"), ("Precision", "precision"), ("Recall", "recall"), ("ROC AUC", "roc_auc")):
        assert table_row(scores, label) == [f"{truth[key]:.4f}", "-", "first run"]
    (tn, fp), (fn, tp) = truth["matrix"]
    assert table_row(scores, "actual stayed (0)") == [str(tn), str(fp)]
    assert table_row(scores, "actual exited (1)") == [str(fn), str(tp)]
    assert table_row(text, "Training rows") == ["200"]
    assert table_row(text, "Test rows scored") == [str(truth["rows"])]
    assert table_row(text, "Version") == ["v0001"]
    shorts = {n: hashlib.sha256((world1.input_folder_path / n).read_bytes()).hexdigest()[:12] for n in ("a.csv", "gap.csv")}
    assert "Lineage: the deliveries behind this model (2), by their archive SHA-256:" in text
    assert table_row(text, "a.csv") == [shorts["a.csv"], "200"] and table_row(text, "gap.csv") == [shorts["gap.csv"], "1"]

    final = pd.read_csv(world1.finaldata)
    assert len(final) == 201
    assert "finaldata.csv holds 201 rows" in text
    stats = section(text, "Summary statistics", "Missing data")
    for col in FEATURES:
        s = final[col].dropna()
        assert table_row(stats, col) == [f"{len(s):,d}"] + [
            f"{v:,.2f}" for v in (s.mean(), s.median(), s.std(), s.min(), s.max())]
    missing = section(text, "Missing data", "Step timings")
    assert table_row(missing, "lastyear_activity") == [f"{100 / 201:.2f}", "-", "first run"]
    assert table_row(missing, "lastmonth_activity") == ["0.00", "-", "first run"]

    timings = section(text, "Step timings", "Dependencies")
    for step in ("ingestion", "training", "scoring"):
        cells = table_row(timings, step)
        assert cells[1:] == ["-", "first run", "1"] and float(cells[0]) >= 0
    deps = section(text, "Dependencies", "Drift check")
    assert table_row(deps, "reportlab")[:4] == ["5.1.0", "5.1.0", "unknown", "unknown"]
    assert "unreachable: cannot connect" in deps

    assert "No drift check has run for this model yet" in text
    # Without an audit given, the report shows the deployed version's own model card.
    card = section(text, "Model card and slice audit", "Trends")
    assert "Model card: client attrition model v0001" in card
    manifest = deployment.current_manifest(world1.prod_deployment_path)
    cv = manifest["audit"]["cross_validation"]
    assert f"f1 {cv['f1']['mean']:.4f} ± {cv['f1']['std']:.4f}" in card
    for s in manifest["audit"]["slices"]["slices"]:
        assert table_row(card, s["label"]) == [str(s["rows"]), str(s["exits"]), f"{s['f1']:.4f}",
                                               f"{s['precision']:.4f}", f"{s['recall']:.4f}", s["flag"] or "ok"]
    trends = text[text.index("Trends"):]
    assert "F1 per deployment: one run so far (v0001, F1 %.4f)" % truth["f1"] in trends
    assert "Missing data: one run so far" in trends and "Step timings: one run so far" in trends
    # One run: the confusion matrix is the only picture; no empty trend plot.
    assert pdf_images(paths["latest"]) == [(2, 720, 600)]  # on page 2, after the summary and the model

    png = Image.open(paths["confusion_matrix"])
    assert (png.size, png.mode) == ((720, 600), "RGBA")
    assert len(png.convert("RGB").getcolors(1 << 20)) > 50  # drawn, not blank

    pages = tmp_path / "pages"
    pages.mkdir()
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(paths["latest"]), str(pages / "p")], check=True)
    info = subprocess.run(["pdfinfo", str(paths["latest"])], capture_output=True, text=True, check=True).stdout
    count = int(re.search(r"^Pages:\s+(\d+)$", info, re.M).group(1))
    rendered = sorted(pages.iterdir())
    assert len(rendered) == count >= 2
    for page in rendered:
        with Image.open(page) as im:
            assert im.size == A4_AT_50_DPI


def test_history_of_two_runs_compares_and_plots(world1):
    first = reporting.generate_report(world1)
    truth1 = deployed_truth(world1)
    final1 = pd.read_csv(world1.finaldata)
    # A second delivery, with gaps: retrain and redeploy.
    df = datagen.generate(150, seed=2, drift="concept", strength=0.6)
    df = df.astype({c: "Int64" for c in FEATURES})
    df.loc[:9, "number_of_employees"] = pd.NA
    df.to_csv(world1.input_folder_path / "b.csv", index=False)
    pipeline(world1)
    truth2 = deployed_truth(world1)
    final = pd.read_csv(world1.finaldata)

    new = datagen.generate(300, seed=5, drift="covariate", strength=1.0)
    fd = drift.feature_drift(final, new)
    sd = drift.decide("raw", new_f1=truth2["f1"] - 0.125, deployed_f1=truth2["f1"])
    cycle = CycleRecord(decision="retrain: the deployed score dropped", score_drift=sd, feature_drift=fd)
    audit = {"sections": [{"title": "Intended use", "text": "Rank clients for a call."}]}
    second = reporting.generate_report(world1, cycle=cycle, audit=audit)

    assert second["pdf"] != first["pdf"] and first["pdf"].exists()  # the earlier report remains
    assert sorted(p.name[:13] for p in (world1.output_model_path / "reports").iterdir()) == \
        ["report-v0001-", "report-v0002-"]
    assert second["latest"].read_bytes() == second["pdf"].read_bytes()
    text = pdf_text(second["latest"])
    assert "Compared with the previous deployment, v0001" in text
    scores = section(text, "Scores on the test data", "Ingested data")
    for label, key in (("F1", "f1"), ("Precision", "precision"), ("Recall", "recall"), ("ROC AUC", "roc_auc")):
        a, b = round(truth2[key], 4), round(truth1[key], 4)
        word = "up" if a > b else "down" if a < b else "same"
        assert table_row(scores, label) == [f"{truth2[key]:.4f}", f"{truth1[key]:.4f}", word]
    assert f"finaldata.csv holds {len(final):,d} rows" in text and "previous ingestion: 201 rows, up" in text
    missing = section(text, "Missing data", "Step timings")
    share = 100 * final["number_of_employees"].isna().sum() / len(final)
    assert table_row(missing, "number_of_employees") == [f"{share:.2f}", "0.00", "up"]
    assert table_row(missing, "lastyear_activity") == [f"{100 / len(final):.2f}", f"{100 / 201:.2f}", "down"]
    changes = section(text, "Change since the previous ingestion", "Missing data")
    for col in FEATURES:
        now, before = final[col].dropna(), final1[col].dropna()
        words = []
        for digits, fn in ((0, len), (2, pd.Series.mean), (2, pd.Series.median), (2, pd.Series.std),
                           (2, pd.Series.min), (2, pd.Series.max)):
            a, b = round(float(fn(now)), digits), round(float(fn(before)), digits)
            words.append("up" if a > b else "down" if a < b else "same")
        assert table_row(changes, col) == words
    drift_text = section(text, "Drift check", "Model card and slice audit")
    assert "Decision: retrain: the deployed score dropped" in drift_text
    assert table_row(drift_text, "Drift") == ["yes"]
    assert table_row(drift_text, "New F1") == [f"{truth2['f1'] - 0.125:.4f}"]
    assert table_row(drift_text, "Deployed F1") == [f"{truth2['f1']:.4f}"]
    for col in FEATURES:
        f = fd["features"][col]
        assert table_row(drift_text, col) == [f"{f['ks_statistic']:.4f}", f"{f['p_value']:.3g}",
                                              f"{f['p_adjusted']:.3g}", f"{f['psi']:.4f}", "300",
                                              "yes" if f["drifted"] else "no"]
    audit_text = section(text, "Model card and slice audit", "Trends")
    assert "Intended use" in audit_text and "Rank clients for a call." in audit_text
    assert "one run so far" not in text
    # The confusion matrix and three trend plots, each at the size it was drawn.
    images = pdf_images(second["latest"])
    assert [(w, h) for _, w, h in images] == [(720, 600), (1050, 390), (1050, 390), (1050, 390)]


def test_reports_in_the_same_second_do_not_overwrite(world1):
    a = reporting.generate_report(world1)
    b = reporting.generate_report(world1)
    assert a["pdf"] != b["pdf"] and a["pdf"].exists() and b["pdf"].exists()
    assert len(list((world1.output_model_path / "reports").iterdir())) == 2


def test_no_deployed_model_is_a_clear_error(world):
    with pytest.raises(reporting.ReportError, match=r"^no report: no model is deployed in "):
        reporting.generate_report(world)
    assert not (world.output_model_path / "report.pdf").exists()


def test_cli_prints_where_the_files_landed(world1):
    proc = run_script("reporting.py", "--config", world1.path)
    assert proc.returncode == 0, proc.stderr
    out = world1.output_model_path
    lines = proc.stdout.splitlines()
    assert lines[0] == f"report:           {out / 'report.pdf'}"
    assert re.fullmatch(rf"kept as:          {re.escape(str(out / 'reports'))}/report-v0001-\d{{8}}T\d{{6}}Z\.pdf",
                        lines[1])
    assert lines[2] == f"confusion matrix: {out / 'confusionmatrix.png'}"
    assert len(lines) == 3


def test_cli_without_a_deployed_model_is_one_line(world):
    proc = run_script("reporting.py", "--config", world.path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: no report: no model is deployed in {world.prod_deployment_path}\n"


def test_the_audit_place_points_at_the_deployed_model_card(world1):
    card = world1.prod_deployment_path / "versions" / "v0001" / "modelcard.md"
    text = pdf_text(reporting.generate_report(world1)["latest"])
    audit_text = section(text, "Model card and slice audit", "Trends")
    assert "Model card: client attrition model v0001" in audit_text  # shown, not only named
    assert card.exists()  # deployment writes it
    # A long path wraps inside the column rather than run off the page: compare without the wraps.
    assert "".join(f"The deployed version's model card is in {card}.".split()) in "".join(audit_text.split())


def test_report_after_a_rollback_covers_the_serving_model(world1):
    df = datagen.generate(150, seed=2, drift="concept", strength=0.6)
    df.to_csv(world1.input_folder_path / "b.csv", index=False)
    pipeline(world1)
    with closing(history.connect(world1.history)) as conn:
        deployment.rollback(world1.prod_deployment_path, conn=conn)
    truth = deployed_truth(world1)  # v0001 serves again
    paths = reporting.generate_report(world1)
    assert re.fullmatch(r"report-v0001-\d{8}T\d{6}Z\.pdf", paths["pdf"].name)
    text = pdf_text(paths["latest"])
    assert table_row(text, "Version") == ["v0001"]
    assert "Compared with the previous deployment, v0002 (deploy," in text
    assert table_row(section(text, "Scores on the test data", "Ingested data"), "F1")[0] == f"{truth['f1']:.4f}"
    # Three deployment events (deploy, deploy, rollback): the F1 trend is drawn.
    assert len(pdf_images(paths["latest"])) == 4


def _slice(label, rows, f1, flag=None):
    return {"feature": "number_of_employees", "band": 0, "label": label, "lower": None, "upper": None,
            "rows": rows, "exits": 5, "f1": f1, "precision": f1, "recall": f1, "flag": flag}


def test_the_new_delivery_slices_are_compared_with_the_previous_delivery(world1):
    earlier = {"slices_new": {"slices": [_slice("number_of_employees < 70", 40, 0.8),
                                         _slice("lastmonth_activity >= 241", 30, 0.5)]}}
    with closing(history.connect(world1.history)) as conn:
        history.record_json(conn, "cycles", started_at=1.0, record=earlier)
        last = history.record_json(conn, "cycles", started_at=2.0, record={"slices_new": None})  # none recorded
    cycle = CycleRecord(cycle_id=last + 1, decision="no drift",
                        slices_new={"slices": [_slice("number_of_employees < 70", 35, 0.6, "below overall"),
                                               _slice("lastmonth_activity >= 241", 25, 0.5),
                                               _slice("lastmonth_activity < 111", 4, 1.0, "too small")]})
    assert reporting.delivery_slices(world1, cycle) == [
        {"label": "number_of_employees < 70", "rows": 35, "f1": 0.6, "flag": "below overall",
         "previous_f1": 0.8, "change": "down"},
        {"label": "lastmonth_activity >= 241", "rows": 25, "f1": 0.5, "flag": None, "previous_f1": 0.5,
         "change": "same"},
        {"label": "lastmonth_activity < 111", "rows": 4, "f1": 1.0, "flag": "too small", "previous_f1": None,
         "change": "first delivery"},
    ]
    paths = reporting.generate_report(world1, cycle=cycle)
    text = pdf_text(paths["latest"])
    assert "The new delivery on the deployed model's slices, against the previous delivery on the" in text
    assert table_row(text, "number_of_employees < 70") == ["35", "0.6000", "0.8000", "down", "below overall"]
    assert table_row(text, "lastmonth_activity < 111") == ["4", "1.0000", "n/a", "first delivery", "too small"]
    assert reporting.delivery_slices(world1, CycleRecord(cycle_id=5, slices_new=None)) is None
