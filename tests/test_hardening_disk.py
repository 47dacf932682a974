"""A cycle that cannot write: a full disk and read-only folders, made real.

The tests run as root, whom file modes do not stop, so the folders are made unwritable the ways
that do stop root: a tiny tmpfs filled to the last byte (ENOSPC), and the immutable attribute
(chattr +i: EPERM). Each cycle runs as its own process and must fail cleanly: exit code 1, its
one-line reason logged and recorded, the previous deployment still serving; once the folder is
writable again the next cycle finishes the work, losing nothing.
"""
import json
import os
import subprocess
from contextlib import contextmanager

import pytest
from conftest import write_delivery
from helpers import assert_consistent, query, run, stand_in

import app as app_module
import cycle
import deployment
import fullprocess
import history


@contextmanager
def full_tmpfs(folder):
    """Mount a 1 MiB tmpfs on `folder` (keeping its files) and fill it; unmount after."""
    saved = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        for name, data in saved.items():
            (folder / name).write_bytes(data)
        with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: closing it flushes nothing
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass  # full
        yield folder / "filler"
    finally:
        kept = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "filler"}
        subprocess.run(["umount", str(folder)], check=True)
        for name, data in kept.items():
            (folder / name).write_bytes(data)


@contextmanager
def immutable(*folders):
    """chattr +i: nothing can be created, renamed or deleted in these folders, not even by root."""
    for folder in folders:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        for folder in folders:
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def serving_version(cfg):
    resp = app_module.create_app(cfg).test_client().get("/health")
    assert resp.status_code == 200
    return resp.get_json()["model_version"]


def last_record(cfg):
    return json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])


@pytest.mark.parametrize("where", ["models on a full disk", "production folder read-only", "output folder read-only"])
def test_a_cycle_that_cannot_write_fails_cleanly_and_the_next_finishes(make_world, where):
    world = make_world(drift_test="raw", promotion_gate=False)  # the course's setting: drift redeploys
    write_delivery(world, "first.csv", rows=300, seed=1)
    assert fullprocess.run_cycle(world, publisher=stand_in).to_dict()["decision"] == cycle.COLD_START
    before = deployment.current_manifest(world.prod_deployment_path)
    write_delivery(world, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    prod, versions = world.prod_deployment_path, world.prod_deployment_path / "versions"
    if where == "models on a full disk":
        blocked, errno_text = full_tmpfs(world.output_model_path), "no space left on device"
    elif where == "production folder read-only":
        blocked, errno_text = immutable(prod, versions), "operation not permitted: "
    else:
        # the history database cannot even be opened (WAL mode creates its -wal and -shm files)
        blocked, errno_text = immutable(world.output_folder_path), "history.sqlite: unable to open database file"
    with blocked:
        proc = run(world)
        # while it cannot write, the previous deployment serves, whole
        assert serving_version(world) == 1
        assert deployment.load_deployed(prod)[1] == before
    assert proc.returncode == 1, proc.stderr
    rec = last_record(world)
    assert rec["decision"] == cycle.FAILED
    assert len(rec["errors"]) == 1 and errno_text in rec["errors"][0] and "\n" not in rec["errors"][0], rec["errors"]
    assert f"cycle failed: {rec['errors'][0]}" in proc.stderr
    assert rec["deployed_version"] == 1
    assert deployment.current_manifest(prod) == before
    assert sorted(p.name for p in world.input_folder_path.iterdir()) == ["first.csv", "shifted.csv"]

    # writable again: the next cycle finishes the work and loses nothing
    again = run(world)
    assert again.returncode == 0, again.stderr
    assert last_record(world)["decision"] in (cycle.REDEPLOYED, cycle.PUBLISHED)
    manifest = assert_consistent(world, ["first.csv", "shifted.csv"])
    assert manifest["version"] >= 2 and manifest["training"]["training_rows"] == 600
    assert serving_version(world) == manifest["version"]
    assert query(world, "SELECT count(*) FROM cycles WHERE finished_at IS NULL") == [(0,)]
    for folder in (world.output_folder_path, world.output_model_path):
        assert sorted(p.name for p in folder.glob(".*.tmp")) == []
    assert history.exists(world.history)
