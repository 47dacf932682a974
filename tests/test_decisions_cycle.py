"""The default decisions in real cycles: the sequential test's evidence across deliveries, promotion
on held-out rows, a changed and a stale test set, the hand promotion, the course setting."""
import json

import pytest

import cycle
import decisions
import datagen
import deployment
import fullprocess
import settings
from conftest import retrain_and_deploy, run_script, write_delivery
from helpers import cycle_cmd, env, query
from settings import TARGET

COURSE = {"drift_test": "raw", "promotion_gate": False}


@pytest.fixture(autouse=True)
def published(monkeypatch):
    records = []
    monkeypatch.setattr(fullprocess, "publish", lambda cfg, rec: records.append(rec.decision) or {})
    return records


def states(cfg):
    return [(r[0], json.loads(r[1])["evidence"]) for r in
            query(cfg, "SELECT deployment_id, state FROM drift_evidence ORDER BY id")]


def version(cfg):
    return deployment.current_manifest(cfg.prod_deployment_path)["version"]


def start(cfg, rows=300):
    write_delivery(cfg, "first.csv", rows=rows, seed=1)
    assert fullprocess.run_cycle(cfg).decision == cycle.COLD_START


def deliver(cfg, name, **kw):
    write_delivery(cfg, name, **kw)
    return fullprocess.run_cycle(cfg)


def test_ten_undrifted_deliveries_redeploy_nothing_and_their_evidence_adds_up(world):
    start(world)
    decisions = [deliver(world, f"d{i}.csv", rows=60, seed=100 + i).decision for i in range(10)]
    assert set(decisions) <= {cycle.NO_DRIFT, cycle.NOT_ENOUGH_EVIDENCE}, decisions
    assert version(world) == 1
    evidence = [ev for _, ev in states(world)]  # the cold start's reference first, no rows
    assert [(ev["rows"], ev["deliveries"]) for ev in evidence] == [(60 * i, i) for i in range(11)]


def test_the_course_setting_gives_todays_decisions(make_world):
    cfg = make_world(**COURSE)
    start(cfg)
    rec = deliver(cfg, "shifted.csv", rows=200, seed=2, drift="concept", strength=0.8)
    assert rec.decision == cycle.REDEPLOYED  # whatever comes out
    assert rec.score_drift["used"] == "raw"
    assert (rec.promotion, rec.evidence) == (cycle.UNSET, cycle.UNSET)
    assert version(cfg) == 2
    assert states(cfg) == []


def test_a_corrupted_delivery_is_drift_and_its_challenger_is_kept_out(world, published):
    start(world)
    path = write_delivery(world, "bad.csv", rows=200, seed=3)
    df = datagen.generate(200, seed=3)
    df.assign(**{TARGET: 1 - df[TARGET]}).to_csv(path, index=False)  # every label inverted
    rec = fullprocess.run_cycle(world)
    assert rec.decision == cycle.NEEDS_REVIEW
    assert rec.drift is True and rec.score_drift["drift"] is True
    assert version(world) == 1
    p = rec.promotion
    assert (p["decision"], p["held_out"]["verdict"], p["test"]["verdict"]) == ("needs review", "better", "worse")
    assert "refresh the test data" in p["action"]
    assert p["action"].endswith(f"`python deployment.py --promote --config {world.path}`")  # this world's config
    assert p["model"] == f"kept the serving model; the challenger is saved as {world.output_model_path / 'challenger.pkl'}"
    assert (world.output_model_path / "challenger.pkl").exists()
    assert published == [cycle.COLD_START, cycle.NEEDS_REVIEW]  # the report says it to a person
    # a decision was made: the evidence starts again, under the same deployment
    assert states(world)[-1][1] == {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0}
    # the command the record names promotes it, with its record
    done = run_script("deployment.py", "--config", world.path, "--promote")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("promoted the kept challenger: now serving v0002")
    manifest = deployment.current_manifest(world.prod_deployment_path)
    assert manifest["cycle"]["kept_as"] == cycle.NEEDS_REVIEW
    assert manifest["cycle"]["decision"] == "promoted by hand (deployment.py --promote)"
    again = run_script("deployment.py", "--config", world.path, "--promote")
    assert again.returncode == 2 and "no kept challenger" in again.stderr
    # the promoted challenger reproduces from the archive (its span of rows minus the held-out slice)
    digest = manifest["files"]["trainedmodel.pkl"]["sha256"]
    proc = run_script("deployment.py", "--config", world.path, "--reproduce", "2")
    assert (proc.returncode, proc.stdout) == (0, f"version 2 reproduced: sha256 {digest}\n"), proc.stdout


def test_a_real_shift_after_the_test_data_are_refreshed_is_promoted(world):
    start(world)
    # the world changed; a person refreshed the test data with labelled rows drawn after the change
    datagen.generate(200, seed=7, drift="concept", strength=1.0).to_csv(world.test_data_file, index=False)
    rec = deliver(world, "shifted.csv", rows=400, seed=8, drift="concept", strength=1.0)
    assert rec.decision == cycle.REDEPLOYED
    assert rec.test_data["changed"] is True and rec.test_data["rows"] == 200
    assert rec.test_data["serving_f1"] < 0.2
    p = rec.promotion
    assert (p["decision"], p["held_out"]["verdict"]) == ("promote", "better")
    assert p["model"].startswith("deployed the evaluated challenger (trained on ")
    assert version(world) == 2
    # the challenger reproduces from the archive: its rows are the recorded span minus the held-out slice
    digest = deployment.current_manifest(world.prod_deployment_path)["files"]["trainedmodel.pkl"]["sha256"]
    proc = run_script("deployment.py", "--config", world.path, "--reproduce", "2")
    assert (proc.returncode, proc.stdout) == (0, f"version 2 reproduced: sha256 {digest}\n"), proc.stdout
    # the reset: the new deployment's state holds no evidence
    (dep, ev), = [s for s in states(world)][-1:]
    assert ev == {"rows": 0, "counted": 0, "hits": 0, "deliveries": 0}
    rec = deliver(world, "next.csv", rows=50, seed=9, drift="concept", strength=1.0)
    assert states(world)[-1][1]["deliveries"] == 1 and states(world)[-1][0] == dep


def test_small_shifted_deliveries_are_found_once_enough_has_arrived(world):
    start(world)
    decisions = []
    for i in range(8):
        decisions.append(deliver(world, f"s{i}.csv", rows=10, seed=200 + i, drift="concept", strength=0.6).decision)
        if decisions[-1].startswith("drift:"):
            break
    # one delivery alone does not show it; several together do
    assert decisions[0] in (cycle.NO_DRIFT, cycle.NOT_ENOUGH_EVIDENCE), decisions
    assert decisions[-1].startswith("drift: ") and len(decisions) > 1, decisions
    rows = [ev["rows"] for _, ev in states(world)]  # the cold start's reference first, no rows
    assert rows[:len(decisions)] == [10 * i for i in range(len(decisions))]


@pytest.mark.backends
def test_a_deployment_by_hand_resets_the_evidence(world):
    start(world)
    deliver(world, "d0.csv", rows=60, seed=100)
    deliver(world, "d1.csv", rows=60, seed=101)
    assert states(world)[-1][1]["deliveries"] == 2
    retrain_and_deploy(world, seed=5)
    write_delivery(world, "d2.csv", rows=60, seed=102)
    done = fullprocess.run_cycle(world)
    assert done.evidence["evidence"]["deliveries"] == 1
    assert states(world)[-1][1]["rows"] == 60


@pytest.mark.backends
def test_the_evidence_survives_processes_and_verbose_prints_the_decision_first(world):
    import subprocess

    start(world)
    deliver(world, "p0.csv", rows=40, seed=300)  # this process's evidence ...
    write_delivery(world, "p1.csv", rows=40, seed=301)
    out = subprocess.run(cycle_cmd(world, "-v"), capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first in (f"decision: {cycle.NO_DRIFT}", f"decision: {cycle.NOT_ENOUGH_EVIDENCE}"), first
    assert [ev["rows"] for _, ev in states(world)] == [0, 40, 80]  # ... the next process adds to it


def test_the_promote_command_names_a_config_that_is_not_the_default(tmp_path):
    assert decisions.promote_command(settings.DEFAULT_CONFIG) == "python deployment.py --promote"
    assert decisions.promote_command(tmp_path / "my config.json") == \
        f"python deployment.py --promote --config '{tmp_path / 'my config.json'}'"


@pytest.mark.parametrize("use", [True, False])
def test_the_reference_holds_the_models_out_of_fold_rows_unless_switched_off(make_world, use):
    cfg = make_world(drift_reference_cross_validation=use)
    start(cfg)
    state = deliver(cfg, "d0.csv", rows=60, seed=100).evidence
    manifest = deployment.current_manifest(cfg.prod_deployment_path)
    oof = manifest["training"]["cross_validation"]["out_of_fold"]
    assert oof["rows"] == 300 and 0 < oof["hits"] < oof["counted"] < 300
    parts = state["reference_parts"]
    assert set(parts) == ({"test data", "cross-validation"} if use else {"test data"})
    assert parts["test data"]["rows"] == 40
    if use:
        assert parts["cross-validation"] == oof
    assert state["reference"] == {k: sum(p[k] for p in parts.values()) for k in ("rows", "counted", "hits")}
    assert state["reference"]["rows"] == (340 if use else 40)
