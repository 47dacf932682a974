"""`make demo` runs in a world of its own (scripts/demo.sh, demo/): a checkout's real outputs are never touched.

The world's set-up is run for real (`scripts/demo.sh --world`) in a checkout-like folder holding a real
system's outputs; the whole demo (two and a half minutes, a gunicorn and a browser) is not run here.
"""
import json
import os
import shutil
import subprocess

import pytest

import fullprocess
from conftest import REPO, write_delivery
from settings import PATH_KEYS, load_config

MARK = ".made-by-demo"


def snapshot(root, leave_out="demo"):
    """Every folder, file and link under `root` but `leave_out`: relative path -> what it is (a file's
    bytes and mtime, a link's target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(here, d)) != leave_out]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            key = os.path.normpath(os.path.join(here, name))
            if key == leave_out:
                continue
            if os.path.islink(path):
                out[key] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[key] = ("file", f.read(), os.stat(path).st_mtime_ns)
            else:
                out[key] = ("folder",)
    return out


@pytest.fixture
def checkout(make_deployed):
    """A checkout-like folder with a real system's outputs: a deployed model (ingesteddata/, models/,
    production_deployment/), a quarantined file and a cycle's logs; beside them the demo's script,
    the Makefile and the sample data."""
    cfg = make_deployed()
    write_delivery(cfg, "bad.csv", text="hello\n")
    assert fullprocess.run_cycle(cfg).decision == "no usable new rows"
    root = cfg.base
    (root / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo.sh", root / "scripts")
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, root)
    shutil.copytree(REPO / "practicedata", root / "practicedata")
    for name in ("ingesteddata/finaldata.csv", "ingesteddata/history.sqlite", "models/trainedmodel.pkl",
                 "production_deployment/current", "logs/cycles.jsonl"):
        assert (root / name).exists(), name
    assert [p.name for p in (root / "quarantine").iterdir() if p.name.endswith(".reason.txt")]
    return root


def world(root):
    return subprocess.run(["bash", str(root / "scripts" / "demo.sh"), "--world"], cwd="/", capture_output=True,
                          text=True, timeout=60)


def test_the_demo_world_leaves_the_real_outputs_byte_identical_twice_in_a_row(checkout):
    before = snapshot(checkout)
    for _ in range(2):
        done = world(checkout)
        assert (done.returncode, done.stdout, done.stderr) == (
            0, f"the demo's world: {checkout}/demo (its config: demo/config.json; every output lands inside it)\n", "")
        assert snapshot(checkout) == before
        (checkout / "demo" / "models").mkdir()
        (checkout / "demo" / "models" / "left-by-the-last-demo.txt").write_text("gone next time\n")
    demo = checkout / "demo"
    assert sorted(p.name for p in demo.iterdir()) == [MARK, "config.json", "models", "practicedata", "sourcedata",
                                                      "testdata"]
    for folder in ("practicedata", "sourcedata", "testdata"):  # copies: the same names and bytes
        copies, originals = snapshot(demo / folder), snapshot(checkout / folder)
        assert {k: v[:2] for k, v in copies.items()} == {k: v[:2] for k, v in originals.items()} != {}
    cfg = load_config(demo / "config.json")
    for key in PATH_KEYS + ("quarantine_folder_path", "log_folder_path"):
        assert getattr(cfg, key).parent == demo, key
    real = load_config(checkout / "config.json")
    assert (cfg.api_url, real.api_url) == ("http://127.0.0.1:8001", "http://127.0.0.1:8000")
    assert cfg.ingest_settle_seconds == 0 and cfg.drift_test == "sequential" and cfg.promotion_gate


@pytest.mark.parametrize("kind", ["a folder of the user's", "a link elsewhere"])
def test_a_demo_folder_the_demo_did_not_make_is_refused_in_one_line(checkout, tmp_path_factory, kind):
    demo = checkout / "demo"
    if kind == "a link elsewhere":
        elsewhere = tmp_path_factory.mktemp("elsewhere")
        (elsewhere / MARK).write_text("")
        (elsewhere / "notes.txt").write_text("mine\n")
        demo.symlink_to(elsewhere)
    else:
        demo.mkdir()
        (demo / "notes.txt").write_text("mine\n")
    before = snapshot(checkout, leave_out="")
    done = world(checkout)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"error: {checkout}/demo exists and is not a previous demo's (no demo/{MARK}): the demo runs in "
               "a folder of its own; move that one away first\n")
    assert snapshot(checkout, leave_out="") == before
    assert (demo / "notes.txt").read_text() == "mine\n"


def test_make_demo_no_longer_deletes_the_output_folders(checkout):
    done = subprocess.run(["make", "-n", "demo"], cwd=checkout, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "scripts/demo.sh" in done.stdout.splitlines()
    assert [line for line in done.stdout.splitlines() if "rm " in line or "find " in line] == []


def test_the_readme_lists_the_demo_scripts_steps():
    """The README's numbered list of make demo's steps is the script's `step "N. ..."` lines, 6b included."""
    import re

    script = (REPO / "scripts" / "demo.sh").read_text()
    steps = re.findall(r'^step "(\d+b?)\. ', script, re.M)
    readme = (REPO / "README.md").read_text()
    section = readme.split("`make demo` (`scripts/demo.sh`)", 1)[1].split("Afterwards look at", 1)[0]
    listed = re.findall(r"^(\d+b?)\. ", section, re.M)
    assert steps == ["1", "2", "3", "4", "5", "6", "6b", "7", "8"]
    assert listed == steps
    assert json.loads((REPO / "config.json").read_text())["api_url"] == "http://127.0.0.1:8000"
