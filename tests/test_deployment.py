import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, run_script, write_delivery

import deployment
import history
import ingestion
import scoring
import training


@pytest.fixture
def trained(world):
    write_delivery(world, "a.csv", rows=200, seed=1)
    ingestion.ingest(world)
    training.run(world)
    scoring.run(world)
    return world


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deploy_publishes_a_complete_version(trained):
    conn = history.connect(trained.history)
    manifest = deployment.deploy_from_config(trained, conn)
    prod = trained.prod_deployment_path
    assert manifest["version"] == 1
    assert sorted(p.name for p in (prod / "versions" / "v0001").iterdir()) == [
        "ingestedfiles.txt", "latestscore.txt", "manifest.json", "modelcard.md", "trainedmodel.json",
        "trainedmodel.pkl"]
    for name in ("trainedmodel.pkl", "latestscore.txt", "ingestedfiles.txt"):
        source = {"trainedmodel.pkl": trained.model_file, "latestscore.txt": trained.score_file,
                  "ingestedfiles.txt": trained.ingested_list}[name]
        assert (prod / name).read_bytes() == source.read_bytes()  # also directly in the folder
        assert manifest["files"][name] == {"sha256": sha(source), "bytes": source.stat().st_size}
    assert manifest["metrics"]["f1"] == float(trained.score_file.read_text())
    assert manifest["metrics"]["rows"] == 40
    assert json.loads((prod / "manifest.json").read_text()) == manifest
    assert [tuple(r) for r in conn.execute("SELECT version, action, model_sha256 FROM deployments")] == [
        (1, "deploy", sha(trained.model_file))]
    model, loaded = deployment.load_deployed(prod)
    assert loaded == manifest
    import pandas as pd

    X = pd.DataFrame({"lastmonth_activity": [1], "lastyear_activity": [2], "number_of_employees": [3]})
    assert model.predict(X).shape == (1,)


def test_a_tampered_model_is_refused(trained):
    deployment.deploy_from_config(trained)
    pkl = trained.prod_deployment_path / "versions" / "v0001" / "trainedmodel.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"x")
    with pytest.raises(deployment.DeploymentError, match=r"trainedmodel.pkl does not match its manifest"):
        deployment.load_deployed(trained.prod_deployment_path)


def test_rollback_restores_the_previous_bytes(trained):
    prod = trained.prod_deployment_path
    deployment.deploy_from_config(trained)
    first = {n: (prod / n).read_bytes() for n in ("trainedmodel.pkl", "latestscore.txt", "ingestedfiles.txt")}
    write_delivery(trained, "b.csv", rows=100, seed=5, drift="concept", strength=1.0)
    ingestion.ingest(trained)
    training.run(trained)
    scoring.run(trained)
    deployment.deploy_from_config(trained)
    assert (prod / "trainedmodel.pkl").read_bytes() != first["trainedmodel.pkl"]
    assert (prod / "ingestedfiles.txt").read_text() == "a.csv\nb.csv\n"

    proc = run_script("deployment.py", "--config", trained.path, "--rollback")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rolled back: now serving v0001 (F1 ")
    assert {n: (prod / n).read_bytes() for n in first} == first
    assert deployment.current_manifest(prod)["version"] == 1
    again = run_script("deployment.py", "--config", trained.path, "--rollback")
    assert again.returncode == 2
    assert again.stderr == "error: version 1 is the oldest kept: nothing to roll back to\n"


def test_list_and_pruning(trained):
    prod = trained.prod_deployment_path
    for _ in range(7):
        deployment.deploy(prod, trained.model_file, trained.score_file, trained.ingested_list, keep=3)
    assert deployment.versions(prod) == [5, 6, 7]
    proc = run_script("deployment.py", "--config", trained.path, "--list")
    lines = proc.stdout.splitlines()
    assert [line[:16] for line in lines] == ["v0005  kept     ", "v0006  kept     ", "v0007  serving  "]
    f1 = trained.score_file.read_text().strip()
    a = sha(trained.input_folder_path / "a.csv")[:12]
    assert all(line.endswith(f"F1 {f1}  sha256 {sha(trained.model_file)[:12]}  from a.csv {a}") for line in lines)


def test_an_interrupted_deployment_leaves_the_old_version_serving(trained):
    prod = trained.prod_deployment_path
    deployment.deploy_from_config(trained)
    # What a deployment killed half-way leaves behind: an unnamed, incomplete folder.
    leftover = prod / "versions" / ".building-99999"
    leftover.mkdir()
    (leftover / "trainedmodel.pkl").write_bytes(b"half")
    assert deployment.versions(prod) == [1]
    assert deployment.load_deployed(prod)[1]["version"] == 1
    deployment.deploy_from_config(trained)
    assert not leftover.exists()
    assert deployment.versions(prod) == [1, 2]


READER = textwrap.dedent("""
    import hashlib, json, sys, time
    sys.path.insert(0, {repo!r})
    import deployment
    prod, seconds, wanted = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    seen, torn, reads = set(), [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and reads < wanted:
        vdir = deployment.current_dir(prod)
        try:
            model, manifest = deployment.load_version(vdir)
        except deployment.DeploymentError as exc:
            torn.append(str(exc)); continue
        for name, info in manifest["files"].items():
            data = (vdir / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                torn.append(name)
        seen.add(manifest["version"]); reads += 1
    print(json.dumps({{"seen": sorted(seen), "torn": torn, "reads": reads}}))
""")


def test_a_reader_in_another_process_never_sees_a_torn_deployment(trained, tmp_path):
    prod = trained.prod_deployment_path
    deployment.deploy_from_config(trained)
    script = tmp_path / "reader.py"
    script.write_text(READER.format(repo=str(REPO)))
    reader = subprocess.Popen([sys.executable, str(script), str(prod), "30", "300"], stdout=subprocess.PIPE, text=True)
    other = tmp_path / "other"
    other.mkdir()
    import pickle

    import datagen
    from training import train

    # Two different models, alternately deployed, so consecutive versions differ in every file.
    models = []
    for seed in (1, 2):
        model = train(datagen.generate(100, seed=seed), trained.model)
        path = other / f"m{seed}.pkl"
        path.write_bytes(pickle.dumps(model))
        score = other / f"s{seed}.txt"
        score.write_text(f"0.{seed}\n")
        models.append((path, score))
    count = 0
    while reader.poll() is None:
        path, score = models[count % 2]
        deployment.deploy(prod, path, score, trained.ingested_list, keep=1000)
        count += 1
    out, _ = reader.communicate(timeout=30)
    result = json.loads(out)
    assert result["torn"] == []
    assert result["reads"] == 300
    assert len(result["seen"]) > 1


def test_a_model_without_a_recorded_score_is_not_deployed(trained):
    deployment.deploy_from_config(trained)
    # A retrained model, not scored: the score file still holds the previous model's F1.
    write_delivery(trained, "b.csv", rows=100, seed=5, drift="concept", strength=1.0)
    ingestion.ingest(trained)
    training.run(trained)
    proc = run_script("deployment.py", "--config", trained.path)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: no test score is recorded for {trained.model_file} (sha256 "
                           f"{sha(trained.model_file)[:12]}): run scoring.py first\n")
    assert deployment.versions(trained.prod_deployment_path) == [1]


def test_deployments_from_two_processes_at_once_both_land(trained, tmp_path):
    prod = trained.prod_deployment_path
    script = tmp_path / "deployer.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import deployment
        for _ in range(15):
            deployment.deploy({str(prod)!r}, {str(trained.model_file)!r}, {str(trained.score_file)!r},
                              {str(trained.ingested_list)!r}, keep=1000)
    """))
    procs = [subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert deployment.versions(prod) == list(range(1, 46))
    assert deployment.current_manifest(prod)["version"] == 45
