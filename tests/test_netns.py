"""Several hosts for real: API hosts and schedulers in network namespaces, nginx in front, PostgreSQL shared.

Each host is a network namespace with its own address on a private bridge (tests/netns.py); they
share the world's folders (as hosts share a network file system) and one PostgreSQL server, which
they reach over the bridge. nginx runs deploy/nginx.conf on 127.0.0.1 in front of the API hosts,
and a load client sends it GETs and POSTs throughout. Skipped, with the reason, where network
namespaces or nginx cannot be had.
"""
import shutil
import socket
import sys
import time

import pytest
import requests

import deployment
from conftest import write_delivery
from helpers import WRAPPER, cycle_cmd, decisions, env, free_port, host_config, query
from netns import Load, Network, Nginx, Unavailable, api_host

NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
DEPLOYMENTS = 10  # versions 2 to 11 after the world's 1, then a rollback to 10


@pytest.fixture(scope="module")
def net():
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian's nginx: `make setup` installs it)")
    try:
        network = Network.create()
    except Unavailable as exc:
        pytest.skip(f"network namespaces cannot be made here: {exc}")
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="module")
def pg(net):
    """A PostgreSQL server that the hosts reach over the bridge (and this process on 127.0.0.1)."""
    from pgserver import PostgresServer

    server = PostgresServer.start(listen=(net.gateway,), clients=(net.cidr,))
    yield server
    server.stop()


@pytest.fixture
def pg_world(make_deployed, pg, net):
    """A deployed world whose history is a fresh database of `pg`, named by the bridge address."""
    url = pg.new_database().replace("@127.0.0.1:", f"@{net.gateway}:")
    return make_deployed(history_url=url, monitoring_flush_seconds=0.5)


@pytest.fixture
def cluster(pg_world, net, tmp_path):
    """Two API hosts (two gunicorn workers each) and nginx in front: (world, {name: (host, url)}, nginx)."""
    hosts = {}
    lb = None
    try:
        for name in ("api-a", "api-b"):
            host = net.host(name)
            hosts[name] = (host, api_host(host, host_config(pg_world, name).path))
        lb = Nginx(tmp_path / "nginx", [f"{h.address}:8000" for h, _ in hosts.values()], free_port())
        code, said = lb.check()
        assert code == 0, said
        yield pg_world, hosts, lb.start()
    finally:  # on failure too; the network's own teardown removes whatever is left
        if lb is not None:
            lb.stop()
        for host, _ in hosts.values():
            host.remove()


def versions_of(url, times=4):
    """model_version of `times` requests to one host (its workers answer in turn)."""
    return [requests.get(url + "/health", timeout=5).json()["model_version"] for _ in range(times)]


def test_deployments_and_a_rollback_under_load_fail_no_request(cluster):
    cfg, hosts, lb = cluster
    load = Load(lb.url, cfg.base)
    try:
        time.sleep(0.5)
        events = []  # (started, done, version)
        lags = []  # from a deployment's end to a host's fourth answer of it
        for _ in range(DEPLOYMENTS):
            started = time.time()
            version = deployment.deploy_from_config(cfg)["version"]
            assert version == len(events) + 2
            events.append((started, time.time(), version))
            for _, url in hosts.values():  # each host's very next answers are the new version's
                assert versions_of(url) == [version] * 4
                lags.append(time.time() - events[-1][1])
            time.sleep(0.2)
        started = time.time()
        assert deployment.main(["--config", str(cfg.path), "--rollback"]) == 0
        events.append((started, time.time(), DEPLOYMENTS))  # back to the version before the last
        for _, url in hosts.values():
            assert versions_of(url) == [DEPLOYMENTS] * 4
        time.sleep(0.5)
    finally:
        records = load.finish()
    assert [r for r in records if r["status"] != 200] == []
    assert len(records) > 100
    # A request begun after a deployment ended got that version, or one being deployed while it ran.
    for r in records:
        before = [e[2] for e in events if e[1] < r["t0"]]
        allowed = {before[-1] if before else 1} | {e[2] for e in events if e[0] < r["t1"] and e[1] > r["t0"]}
        assert r["version"] in allowed, r
    print(f"\n{len(records)} requests through nginx, {DEPLOYMENTS} deployments and a rollback, none failed;"
          f" deployments took {min(e[1] - e[0] for e in events):.3f}-{max(e[1] - e[0] for e in events):.3f} s;"
          f" each host's 4 next answers were the new version's, the 4th within {max(lags) * 1000:.0f} ms")


def test_a_host_killed_under_load_is_routed_around(cluster):
    cfg, hosts, lb = cluster
    survivor, dead = hosts["api-a"][0], hosts["api-b"][0]
    load = Load(lb.url, cfg.base)
    try:
        time.sleep(1.0)
        dead.remove()  # its processes killed at once, then its address gone
        time.sleep(2.5)
    finally:
        records = load.finish()
    failed = {m: [r for r in records if r["method"] == m and r["status"] != 200] for m in ("GET", "POST")}
    log = (lb.folder / "access.log").read_text().splitlines()
    retried = [line for line in log if ", " in line.rsplit(" upstream ", 1)[1]]
    print(f"\n{len(records)} requests through nginx ({sum(r['method'] == 'POST' for r in records)} POSTs), one host"
          f" killed: {len(failed['GET'])} GETs and {len(failed['POST'])} POSTs failed; nginx sent {len(retried)} again"
          f" to the other host; the slowest answer took {max(r['t1'] - r['t0'] for r in records) * 1000:.0f} ms")
    assert failed == {"GET": [], "POST": []}
    # nginx has left the dead host out: the last requests all went to the survivor, at the first try
    assert [line.rsplit(" upstream ", 1)[1] for line in log[-20:]] == [f"{survivor.address}:8000 200"] * 20
    # nginx's own answers are JSON too: /metrics is each host's, and no host left is a 503 that says so
    metrics = requests.get(lb.url + "/metrics", timeout=10)
    assert (metrics.status_code, metrics.json()) == (
        404, {"error": "scrape /metrics on each API host, not through the load balancer"})
    survivor.kill()
    down = requests.get(lb.url + "/health", timeout=10)
    assert (down.status_code, down.headers["Content-Type"], down.json()) == (
        503, "application/json", {"error": "no API host answered: all are down or failing"})


PAUSED = """
import os, pathlib, time
import ingestion

def held(*args, **kwargs):  # the cycle stops inside the writer lock, before it ingests anything
    pathlib.Path(os.environ["DRAS_PAUSED"]).write_text(str(os.getpid()))
    time.sleep(120)

ingestion.ingest = held
""" + WRAPPER


def test_two_schedulers_ingest_a_delivery_once_and_the_survivor_runs_the_next_cycle(pg_world, net):
    world = pg_world
    a, b = net.host("sched-a"), net.host("sched-b")
    try:
        write_delivery(world, "b.csv", rows=60, seed=7)
        cycles = [h.popen(cycle_cmd(world), cwd=world.base, env=env(), stdout=-1, stderr=-1, text=True) for h in (a, b)]
        outputs = [p.communicate(timeout=120) for p in cycles]
        assert [p.returncode for p in cycles] == [0, 0]
        assert query(world, "SELECT name FROM ingested_files ORDER BY id") == [("a.csv",), ("b.csv",)]
        assert decisions(world) == [("no drift", True)]
        lost = [i for i, (_, err) in enumerate(outputs) if "another cycle holds" in err]
        assert len(lost) == 1
        winner = cycles[1 - lost[0]].pid
        assert (f"another cycle holds the writer lock of {world.history_url}, pid {winner} (fullprocess.py) on "
                f"{socket.gethostname()}: exiting") in outputs[lost[0]][1]

        write_delivery(world, "c.csv", rows=60, seed=8)
        paused = world.base / "paused"
        holder = a.popen([sys.executable, "-c", PAUSED, "--config", str(world.path)], cwd=world.base,
                         env={**env(), "DRAS_PAUSED": str(paused)})
        deadline = time.monotonic() + 60
        while not paused.exists() and time.monotonic() < deadline and holder.poll() is None:
            time.sleep(0.05)
        assert paused.read_text() == str(holder.pid)
        busy = b.run(cycle_cmd(world), cwd=world.base, env=env())
        assert busy.returncode == 0
        assert f"another cycle holds the writer lock of {world.history_url}, pid {holder.pid} (fullprocess.py)" in busy.stderr
        a.remove()  # the host holding the lock dies: its connection, and so the lock, with it
        after = b.run(cycle_cmd(world), cwd=world.base, env=env())
        assert after.returncode == 0, after.stderr
        assert query(world, "SELECT name FROM ingested_files ORDER BY id") == [("a.csv",), ("b.csv",), ("c.csv",)]
        # the dead host's cycle is recorded as interrupted by the next one, which ingested c.csv
        assert decisions(world) == [("no drift", True), ("interrupted", True), ("no drift", True)]
    finally:
        for h in (a, b):
            h.remove()
