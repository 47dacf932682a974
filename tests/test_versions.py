"""Versions: byte-identical model files, --reproduce from the archive alone, rollback by the history, --list."""
import gzip
import hashlib
import json
import shutil

from conftest import retrain_and_deploy, run_script, write_delivery
from helpers import run

import archive
import deployment
import history
import ingestion
import scoring
import training


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deployment_cmd(cfg, *args):
    return run_script("deployment.py", "--config", cfg.path, *args)


def test_two_trainings_in_two_processes_write_the_same_model_bytes(world):
    write_delivery(world, "a.csv", rows=300, seed=3)
    ingestion.ingest(world)
    hashes = []
    for _ in range(2):
        proc = run_script("training.py", "--config", world.path)
        assert proc.returncode == 0, proc.stderr
        hashes.append(sha(world.model_file))
    training.run(world)  # and in this process, after ingestion ran in it
    hashes.append(sha(world.model_file))
    assert len(set(hashes)) == 1, hashes
    meta = json.loads(world.model_file.with_suffix(".json").read_text())
    assert meta["model_sha256"] == hashes[0] and "trained_at" in meta


def test_reproduce_works_from_the_archive_alone(make_deployed):
    cfg = make_deployed()
    retrain_and_deploy(cfg, seed=5)  # v2: a.csv and more5.csv, deduplicated
    live = {p: p.read_bytes() for p in cfg.output_folder_path.rglob("*") if p.is_file()}
    shutil.rmtree(cfg.input_folder_path)
    cfg.finaldata.unlink()
    del live[cfg.finaldata]
    expected = deployment.read_manifest(cfg.prod_deployment_path / "versions" / "v0002")
    digest = expected["files"]["trainedmodel.pkl"]["sha256"]

    proc = deployment_cmd(cfg, "--reproduce", "2")

    assert (proc.returncode, proc.stdout) == (0, f"version 2 reproduced: sha256 {digest}\n"), proc.stderr
    assert [d["name"] for d in expected["training"]["lineage"]] == ["a.csv", "more5.csv"]
    # nothing live touched: no finaldata.csv written back, the history and the archive as they were
    assert not cfg.finaldata.exists()
    assert {p: p.read_bytes() for p in cfg.output_folder_path.rglob("*") if p.is_file()
            and p.suffix not in (".sqlite-wal", ".sqlite-shm")} == {
        p: b for p, b in live.items() if p.suffix not in (".sqlite-wal", ".sqlite-shm")}


def test_a_tampered_archive_file_is_refused_by_its_hash(deployed):
    lineage = deployment.current_manifest(deployed.prod_deployment_path)["training"]["lineage"]
    path = archive.path_for(archive.folder_of(deployed), lineage[0]["sha256"])
    text = gzip.decompress(path.read_bytes()).decode()
    tampered = text[:-2] + ("0\n" if text[-2] == "1" else "1\n")  # the last row's label flipped
    path.write_bytes(gzip.compress(tampered.encode(), mtime=0))

    proc = deployment_cmd(deployed, "--reproduce", "1")

    got = hashlib.sha256(tampered.encode()).hexdigest()[:12]
    assert (proc.returncode, proc.stdout) == (2, f"version 1 cannot be reproduced: archive file {path.name} "
                                                 f"refused: its content has sha256 {got}, not "
                                                 f"{lineage[0]['sha256'][:12]}\n")


def test_a_version_deployed_before_the_archive_says_so(deployed):
    vdir = deployed.prod_deployment_path / "versions" / "v0001"
    manifest = json.loads((vdir / "manifest.json").read_text())
    del manifest["training"]["lineage"]
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    proc = deployment_cmd(deployed, "--reproduce", "1")
    assert (proc.returncode, proc.stdout) == (2, "version 1 cannot be reproduced: it was deployed before the "
                                                 "delivery archive, and its manifest records no lineage\n")
    assert deployment_cmd(deployed, "--reproduce", "7").stdout == \
        f"version 7 is not kept in {deployed.prod_deployment_path}\n"


def test_reproduce_says_what_differs(deployed):
    vdir = deployed.prod_deployment_path / "versions" / "v0001"
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["training"]["params"]["C"] = 0.001  # not the parameters the deployed model was trained with
    manifest["training"]["libraries"]["numpy"] = "0.1"
    (vdir / "manifest.json").write_text(json.dumps(manifest))

    proc = deployment_cmd(deployed, "--reproduce", "1")

    lines = proc.stdout.splitlines()
    assert proc.returncode == 1
    assert lines[0].startswith("version 1 not reproduced: rebuilt sha256 ")
    assert lines[0].endswith(f", deployed {manifest['files']['trainedmodel.pkl']['sha256'][:12]}")
    import numpy

    rebuilt = training.train(ingestion.read_finaldata(deployed.finaldata), manifest["training"]["params"])
    X, y = scoring.read_test_data(deployed.test_data_file)
    f1 = scoring.score_model(rebuilt, X, y)["f1"]
    assert lines[1] == f"  library numpy: 0.1 in the manifest, {numpy.__version__} now"
    assert [line.split(":")[0] for line in lines[1:]] == ["  library numpy", "  coefficients", "  intercept"] + (
        ["  test F1"] if f1 != manifest["metrics"]["f1"] else [])
    coef = rebuilt.named_steps["classify"].coef_.ravel().tolist()
    assert lines[2].startswith("  coefficients: deployed [") and f"rebuilt {coef} (largest difference " in lines[2]
    if f1 != manifest["metrics"]["f1"]:
        assert lines[4] == f"  test F1: deployed {manifest['metrics']['f1']!r}, rebuilt {f1!r}"


def serving(cfg):
    return deployment.current_manifest(cfg.prod_deployment_path)["version"]


def test_rollback_to_a_chosen_version_and_back(make_deployed):
    cfg = make_deployed()
    retrain_and_deploy(cfg, seed=5)
    retrain_and_deploy(cfg, seed=6)
    assert serving(cfg) == 3
    proc = deployment_cmd(cfg, "--rollback", "--to", "1")
    assert (proc.returncode, proc.stdout.split(" (")[0]) == (0, "rolled back: now serving v0001")
    assert serving(cfg) == 1
    assert sha(cfg.prod_deployment_path / "trainedmodel.pkl") == \
        sha(cfg.prod_deployment_path / "versions" / "v0001" / "trainedmodel.pkl")
    assert deployment_cmd(cfg, "--rollback", "--to", "3").returncode == 0
    assert serving(cfg) == 3
    # plain rollback undoes the --to 3: back to v1, which served before it
    assert deployment_cmd(cfg, "--rollback").returncode == 0
    assert serving(cfg) == 1
    bad = deployment_cmd(cfg, "--rollback", "--to", "9")
    assert (bad.returncode, bad.stderr) == (2, f"error: version 9 is not kept in {cfg.prod_deployment_path} "
                                               "(kept: 1, 2, 3)\n")
    same = deployment_cmd(cfg, "--rollback", "--to", "1")
    assert (same.returncode, same.stderr) == (2, "error: version 1 is already serving\n")
    with history.connect(cfg.history) as conn:
        actions = [tuple(r) for r in conn.execute("SELECT version, action FROM deployments ORDER BY id")]
    assert actions == [(1, "deploy"), (2, "deploy"), (3, "deploy"), (1, "restore"), (3, "restore"), (1, "rollback")]


def test_plain_rollback_serves_what_served_before_not_the_version_rolled_away_from(make_deployed):
    cfg = make_deployed()
    retrain_and_deploy(cfg, seed=5)
    assert deployment_cmd(cfg, "--rollback").returncode == 0  # v2 -> v1
    assert serving(cfg) == 1
    retrain_and_deploy(cfg, seed=6)  # v3
    proc = deployment_cmd(cfg, "--rollback")
    assert (proc.returncode, proc.stdout.split(" (")[0]) == (0, "rolled back: now serving v0001")
    assert serving(cfg) == 1
    again = deployment_cmd(cfg, "--rollback")  # v1 was the first to serve: nothing before it
    assert (again.returncode, again.stderr) == (2, "error: version 1 is the oldest kept: nothing to roll back to\n")


def test_list_shows_state_and_lineage(make_deployed):
    cfg = make_deployed()
    retrain_and_deploy(cfg, seed=5)
    a, b = (sha(cfg.input_folder_path / n)[:12] for n in ("a.csv", "more5.csv"))
    lines = deployment_cmd(cfg, "--list").stdout.splitlines()
    assert [line[:16] for line in lines] == ["v0001  kept     ", "v0002  serving  "]
    assert lines[0].endswith(f"from a.csv {a}")
    assert lines[1].endswith(f"from a.csv {a}, more5.csv {b}")


def test_scoring_reads_the_canonical_pickle(deployed):
    model = scoring.load_pickle(deployed.model_file)
    assert list(model.feature_names_in_) == ["lastmonth_activity", "lastyear_activity", "number_of_employees"]


def test_a_version_the_cycle_deployed_reproduces(make_deployed):
    """Found by the README pass: the cycle's process pickled a model whose equal strings were one
    object (a memo back-reference) where training.py's were two, so no cycle-deployed version
    reproduced. The course's setting: the cycle retrains on every row and redeploys."""
    cfg = make_deployed(drift_test="raw", promotion_gate=False, cv_folds=0)
    write_delivery(cfg, "shifted.csv", rows=200, seed=9, drift="concept", strength=0.8)
    proc = run(cfg)
    assert proc.returncode == 0, proc.stderr
    manifest = deployment.current_manifest(cfg.prod_deployment_path)
    assert manifest["version"] == 2
    digest = manifest["files"]["trainedmodel.pkl"]["sha256"]
    proc = deployment_cmd(cfg, "--reproduce", "2")
    assert (proc.returncode, proc.stdout) == (0, f"version 2 reproduced: sha256 {digest}\n"), proc.stderr
