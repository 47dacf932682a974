"""Test hosts on this machine, each in a network namespace of its own, and nginx in front of them.

    net = Network.create()              a bridge with a private /24 (10.x.y.0), its .1 on this machine
    host = net.host("api-a")            a namespace with a veth on the bridge, address .11, .12, ...
    host.popen([...])                   a process on that host (`ip netns exec`)
    host.kill()                         every process on it killed at once (SIGKILL): the host dies
    net.close()                         every host's processes killed, namespaces and links removed

    lb = Nginx(folder, addresses)       deploy/nginx.conf with these upstream addresses, on 127.0.0.1
    client(url, out, stop, seconds)     a load client (run as a process): one JSON line per request

The subnet's addresses exist only on the bridge and in the namespaces this module made, never
routed anywhere: traffic to them never leaves the machine. Needs root (`ip netns add`); where it
is refused, `Network.create` raises Unavailable with the reason, and the tests skip.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO / "deploy" / "nginx.conf"


class Unavailable(Exception):
    """Network namespaces (or nginx) cannot be had here."""


def ip(*args, check=True):
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _used_subnets():
    out = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show").stdout
    return set(re.findall(r"\b10\.(\d+)\.(\d+)\.\d+", out))


class Host:
    def __init__(self, net, name, address, ns):
        self.net, self.name, self.address, self.ns = net, name, address, ns
        self.procs = []

    def popen(self, cmd, **kwargs):
        """Start `cmd` on this host (in its namespace); the process is killed with the host."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, cmd, timeout=120, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def pids(self):
        return [int(p) for p in ip("netns", "pids", self.ns, check=False).stdout.split()]

    def kill(self):
        """SIGKILL every process on the host at once: their sockets close as a dead machine's would
        not (the kernel resets them); a host whose address then vanishes is `remove`'s."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def remove(self):
        """The host gone: its processes killed, its namespace (and so its address) removed."""
        self.kill()
        ip("netns", "del", self.ns, check=False)


class Network:
    def __init__(self, tag, prefix):
        self.tag, self.prefix = tag, prefix  # prefix: "10.x.y"
        self.bridge = f"drbr{tag}"
        self.hosts = []

    @property
    def gateway(self):
        """This machine's address on the bridge (the database's, here)."""
        return f"{self.prefix}.1"

    @property
    def cidr(self):
        return f"{self.prefix}.0/24"

    @classmethod
    def create(cls):
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root (`ip netns add`)")
        tag = f"{os.getpid() % 100000:05d}"
        used = _used_subnets()
        second, third = 200 + os.getpid() % 50, (os.getpid() // 50) % 250
        while (str(second), str(third)) in used:
            third = (third + 1) % 250
        net = cls(tag, f"10.{second}.{third}")
        try:
            ip("netns", "add", f"dras-{tag}-probe")  # refused where namespaces are not allowed: said here
            ip("netns", "del", f"dras-{tag}-probe")
            # A fixed address: a bridge otherwise takes its ports' lowest, which changes when that host is
            # removed, and the other hosts' ARP caches would point at the old one for a minute.
            ip("link", "add", net.bridge, "address", f"02:d5:{int(tag) // 10000 % 100:02x}:{int(tag) // 100 % 100:02x}"
               f":{int(tag) % 100:02x}:01", "type", "bridge")
            ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
            ip("link", "set", net.bridge, "up")
        except Unavailable:
            net.close()
            raise
        return net

    def host(self, name):
        """A new host on the bridge: namespace dras-TAG-NAME, address prefix.(11 + n)."""
        n = len(self.hosts)
        ns, outside, address = f"dras-{self.tag}-{name}", f"dr{self.tag}h{n}", f"{self.prefix}.{11 + n}"
        ip("netns", "add", ns)
        host = Host(self, name, address, ns)
        self.hosts.append(host)
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return host

    def close(self):
        """Every host removed (its veth goes with its namespace), then the bridge."""
        for host in self.hosts:
            host.remove()
        ip("link", "del", self.bridge, check=False)


def wait_http(url, seconds=30, proc=None):
    """Wait until `url` answers at all (any status); raise RuntimeError when it does not in time."""
    import requests

    deadline = time.monotonic() + seconds
    while True:
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.1)


def api_host(host, config, workers=2, port=8000):
    """gunicorn (gunicorn.conf.py) for `config` on the host, bound to its address; its base URL."""
    with open(Path(config).parent / f"gunicorn-{host.name}.log", "wb") as log:  # the child keeps its own copy
        proc = host.popen([sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), "--chdir",
                           str(REPO), "--bind", f"{host.address}:{port}", "--access-logfile", "-"],
                          cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, "DRAS_CONFIG": str(config), "WEB_CONCURRENCY": str(workers)})
    url = f"http://{host.address}:{port}"
    wait_http(url + "/health", proc=proc)
    return url


class Nginx:
    """nginx running deploy/nginx.conf (as it is, but for its upstream addresses and its listen
    line), on a free 127.0.0.1 port, its files in `folder`."""

    def __init__(self, folder, upstreams, port):
        self.folder, self.port = Path(folder), port
        self.url = f"http://127.0.0.1:{port}"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "dras.conf").write_text(render(NGINX_CONF.read_text(), upstreams, f"127.0.0.1:{port}"))
        (self.folder / "nginx.conf").write_text(MAIN.format(folder=self.folder))
        self.proc = None

    def check(self):
        """`nginx -t` on the files: (exit code, what it said)."""
        done = subprocess.run(["nginx", "-t", "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
                              capture_output=True, text=True, timeout=30)
        return done.returncode, done.stderr

    def start(self):
        with open(self.folder / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(["nginx", "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        wait_http(self.url + "/metrics", proc=self.proc)  # nginx's own answer: no host is asked
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # master and workers
            self.proc.wait(timeout=10)


MAIN = """daemon off;
user root;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log notice;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$request_time $status "$request" upstream $upstream_addr $upstream_status';
    access_log {folder}/access.log upstream;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/dras.conf;
}}
"""


def render(conf, upstreams, listen):
    """deploy/nginx.conf with `upstreams` ("address:port", ...) for its example servers and `listen`
    for its port 80; raises ValueError when the file no longer has the lines this replaces."""
    servers = re.findall(r"^ *server \S+:\d+ (max_fails=\S+ fail_timeout=\S+);\n", conf, re.M)
    if not servers or "    listen 80;\n" not in conf:
        raise ValueError("deploy/nginx.conf has no `server ADDRESS:PORT max_fails=...` lines or no `listen 80;`")
    block = "".join(f"    server {u} {servers[0]};\n" for u in upstreams)
    conf = re.sub(r"(?:^ *server \S+:\d+ max_fails=\S+ fail_timeout=\S+;\n)+", block, conf, count=1, flags=re.M)
    # the shipped access log (its path outside the test's folder) gives way to this nginx's own (MAIN)
    conf = re.sub(r"^ *access_log /var/log/nginx/\S+ \S+;\n", "", conf, flags=re.M)
    return conf.replace("    listen 80;\n", f"    listen {listen};\n")


# --- the load client ----------------------------------------------------------------------------

BODY = json.dumps({"records": [{"lastmonth_activity": 3, "lastyear_activity": 70, "number_of_employees": 12}] * 5})


def client(url, out, stop, seconds, rate=100, threads=2):
    """Send GET /health and POST /prediction in turn through `url`, `rate` a second per thread,
    until the file `stop` exists or `seconds` have passed; append one JSON line per request to
    `out`: t0 and t1 (epoch seconds), method, status (0: no answer), model_version, error."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.time() + seconds

    def loop(index):
        conn = None
        n = 0
        with open(f"{out}.{index}", "w") as f:
            while time.time() < deadline and not os.path.exists(stop):
                n += 1
                method = "GET" if n % 2 else "POST"
                t0 = time.time()
                status, version, error = 0, None, None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                    if method == "GET":
                        conn.request("GET", "/health")
                    else:
                        conn.request("POST", "/prediction", BODY, {"Content-Type": "application/json"})
                    answer = conn.getresponse()
                    body = answer.read()
                    status = answer.status
                    version = json.loads(body).get("model_version")
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = None
                t1 = time.time()
                f.write(json.dumps({"t0": t0, "t1": t1, "method": method, "status": status, "version": version,
                                    "error": error}) + "\n")
                time.sleep(max(0.0, 1 / rate - (t1 - t0)))

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with open(out, "w") as f:
        for i in range(threads):
            f.write(Path(f"{out}.{i}").read_text())
            os.remove(f"{out}.{i}")


class Load:
    """The load client as a process of its own, stopped by a file."""

    def __init__(self, url, folder, seconds=60, rate=100):
        self.out, self.stop_file = Path(folder) / "requests.jsonl", Path(folder) / "stop"
        code = f"import netns; netns.client({url!r}, {str(self.out)!r}, {str(self.stop_file)!r}, {seconds}, {rate})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO / "tests", start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})

    def finish(self):
        """Stop the client; its requests, in the order they started."""
        self.stop_file.write_text("")
        self.proc.wait(timeout=30)
        lines = [json.loads(line) for line in self.out.read_text().splitlines()]
        return sorted(lines, key=lambda r: r["t0"])

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
