"""End-to-end check of the dashboards: every panel query returns data from a real Prometheus
scraping a live local mesh.

Starts real backends (HTTP: answering, slow, failing; TCP and UDP echo), the real
`maille-controller` on the manifests of tests/dashboards/manifests (ports filled in), a real
`maille-proxy` pulling its table from it, and the Debian `prometheus` binary scraping both
every second. Drives bounded traffic through the proxy that exercises every behaviour a panel
shows (retries, retry budget, rate limit, timeout, circuit breaker, TCP, failed TCP, UDP, a UDP
drop), rewrites a manifest a few times so that the controller rebuilds and the proxy swaps
tables, waits for Prometheus to scrape, then evaluates every query of every panel through
`/api/v1/query` with the dashboard variables substituted, and every variable query through
`/api/v1/label/.../values`.

A query must parse and return at least one sample that is a number (not NaN). For a dashboard
with `namespace`/`service` variables, a query passes when it returns data for at least one
service offered by the variables (one service cannot be rate-limited and time out at once).

Every query must return data: a panel on a metric that the binaries no longer export (renamed,
removed) fails the check, naming the metrics missing from their /metrics.

Everything binds 127.0.0.1, ports are ephemeral, every process is killed at the end, and the
traffic is bounded in count and time.
"""

import http.client
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# MAILLE_BIN_DIR points at other builds of the binaries (e.g. target/release).
BIN = pathlib.Path(os.environ.get("MAILLE_BIN_DIR", ROOT / "target" / "debug"))
NAMESPACE = "shop"
SCRAPE_SECONDS = 1
RATE_INTERVAL = "1m"


class Failure(AssertionError):
    pass


# ---------------------------------------------------------------------------------------------
# Ports


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_range(size):
    """`size` consecutive ports free for both TCP and UDP on loopback, found by probing random
    places (the controller takes ranges, not lists)."""
    for _ in range(200):
        start = random.randint(20000, 60000 - size)
        socks = []
        try:
            for p in range(start, start + size):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise Failure("no free port range found")


def dead_port():
    """A loopback port where nothing listens: connections are refused."""
    return free_port()


# ---------------------------------------------------------------------------------------------
# Backends


def http_backend(name, mode):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the http.server API
            if mode == "slow":
                time.sleep(1.0)
            code = 500 if mode == "fail" else 200
            body = f"{name}\n".encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the proxy gave up on us (timeout): nothing to do

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # clients (the proxy) closing pooled connections: not our business

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class TcpEcho(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)


class UdpEcho(socketserver.ThreadingUDPServer):
    daemon_threads = True

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(data, self.client_address)


def start_server(cls):
    server = cls(("127.0.0.1", 0), cls.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------
# Processes


class Processes:
    """Children started by the test; all killed (and reaped) on exit."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.children = []

    def start(self, name, argv):
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.tmp, start_new_session=True)
        self.children.append((name, proc, log))
        return proc

    def check_alive(self):
        for name, proc, _ in self.children:
            if proc.poll() is not None:
                raise Failure(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name, lines=40):
        path = self.tmp / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self):
        for _, proc, log in reversed(self.children):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            log.close()


def wait_for(what, check, timeout, procs):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - reported if it never succeeds
            last = e
        time.sleep(0.2)
    raise Failure(f"timed out waiting for {what} ({last})")


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


# ---------------------------------------------------------------------------------------------
# Traffic


def http_requests(port, service, count, deadline, pause=0.0):
    """`count` GETs to `<service>.shop.maille.mesh` through the proxy; returns the status codes."""
    codes = []
    conn = None
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/", headers={"Host": f"{service}.{NAMESPACE}.maille.mesh"})
            r = conn.getresponse()
            r.read()
            codes.append(r.status)
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            codes.append(0)
            if conn is not None:
                conn.close()
            conn = None
        if pause:
            time.sleep(pause)
    if conn is not None:
        conn.close()
    return codes


def tcp_exchanges(port, count, deadline):
    ok = 0
    for i in range(count):
        if time.monotonic() > deadline:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                msg = f"hello {i}\n".encode()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    got += chunk
                ok += got == msg
        except OSError:
            pass
    return ok


def udp_exchanges(port, count, deadline):
    ok = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1)
        for i in range(count):
            if time.monotonic() > deadline:
                break
            msg = f"datagram {i}".encode()
            s.sendto(msg, ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(65536)
                ok += data == msg
            except OSError:
                pass
    return ok


def udp_to_nowhere(port, count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(b"nobody here", ("127.0.0.1", port))


# ---------------------------------------------------------------------------------------------
# Prometheus


class Prometheus:
    def __init__(self, base):
        self.base = base

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}") | {"status": "error", "http": e.code}

    def query(self, expr):
        return self.get("/api/v1/query", query=expr)

    def label_values(self, label, match):
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": match})


def has_number(result):
    """Whether a query result holds at least one sample that is a number."""
    data = result.get("data", {})
    kind, items = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return items[1] not in ("NaN", "+Inf", "-Inf")
    if kind == "vector":
        return any(s["value"][1] not in ("NaN",) for s in items)
    if kind == "matrix":
        return any(v[1] != "NaN" for s in items for v in s["values"])
    return False


def exported_metrics(scraped_text):
    """Metric names in the scraped /metrics text."""
    names = set(re.findall(r"^(maille_[a-z_]+)", scraped_text, re.M))
    # Histogram series are named after the histogram.
    return names | {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def label_values_query(definition):
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition.strip())
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"label_values\((\w+)\)", definition.strip())
    return (None, m.group(1)) if m else None


class Mesh:
    """A controller on a manifests folder and a proxy pulling from it, on ephemeral ports."""

    def __init__(self, name, source, ports, tmp, procs, controller_args):
        self.name, self.source, self.ports = name, source, ports
        self.manifests = tmp / f"manifests-{name}"
        self.manifests.mkdir()
        for f in sorted(source.glob("*.yaml")):
            self.write_manifest(f.name)
        self.http_start, self.tcp_start, self.udp_start = free_range(2), free_range(3), free_range(3)
        ranges = {
            "http": f"{self.http_start}-{self.http_start + 1}",
            "tcp": f"{self.tcp_start}-{self.tcp_start + 2}",
            "udp": f"{self.udp_start}-{self.udp_start + 2}",
        }
        flags = [f"--{k}-ports={v}" for k, v in ranges.items()]
        self.api = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        procs.start(f"controller-{name}", [str(BIN / "maille-controller"), f"--manifests={self.manifests}",
                                           f"--api-addr={self.api}", "--namespace=maille", *flags,
                                           *controller_args])
        wait_for(f"controller {name} /ready", lambda: http_get(f"http://{self.api}/ready")[0] == 200, 30, procs)
        procs.start(f"proxy-{name}", [str(BIN / "maille-proxy"), f"--controller-url=http://{self.api}",
                                      "--listen-ip=127.0.0.1", f"--admin-addr={self.admin}", *flags,
                                      "--grace-period-seconds=0", "--threads=1",
                                      f"--upgrade-sock={tmp / f'upgrade-{name}.sock'}"])
        wait_for(f"proxy {name} /ready", lambda: http_get(f"http://{self.admin}/ready")[0] == 200, 30, procs)
        # Mesh ports of the TCP and UDP services come from the controller's API.
        self.services = json.loads(http_get(f"http://{self.api}/api/services")[1])
        self.mesh_port = {s["name"]: s["meshPort"] for s in self.services}
        errors = {s["name"]: s["errors"] for s in self.services if s.get("errors")}
        if errors:
            raise Failure(f"the controller found problems in the {name} test manifests: {errors}")

    def write_manifest(self, name, extra=None):
        text = (self.source / name).read_text()
        values = dict(self.ports, **(extra or {}))
        text = re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), text)
        tmp_file = self.manifests / f".{name}.tmp"
        tmp_file.write_text(text)
        tmp_file.rename(self.manifests / name)  # atomic: the controller never reads half a file


def start_mesh(name, source, ports, tmp, procs, controller_args=()):
    return Mesh(name, source, ports, tmp, procs, list(controller_args))


# ---------------------------------------------------------------------------------------------
# The check


def run(boards, substitute):
    import pytest

    for name in ("maille-controller", "maille-proxy"):
        path = BIN / name
        if not path.exists():
            pytest.skip(f"{path} not built (cargo build --workspace --bins)")
        out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
        if not out.stdout.strip():
            pytest.skip(f"{name} has no command line yet (a placeholder main)")
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.skip("no prometheus binary (scripts/install-deps installs the Debian package)")

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="maille-dashboards-"))
    procs = Processes(tmp)
    servers = []
    try:
        _run(boards, substitute, tmp, procs, servers, prometheus)
    except Exception:
        for name in ("controller-main", "proxy-main", "controller-acl", "proxy-acl", "prometheus"):
            print(f"----- {name} log (last lines)\n{procs.tail(name)}")
        raise
    finally:
        procs.stop()
        for s in servers:
            s.shutdown()
            s.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(boards, substitute, tmp, procs, servers, prometheus):
    # Backends.
    web_a, web_b = http_backend("web-a", "ok"), http_backend("web-b", "ok")
    slow, fail = http_backend("slow", "slow"), http_backend("failing", "fail")
    tcp_echo, udp_echo = start_server(TcpEcho), start_server(UdpEcho)
    servers += [web_a, web_b, slow, fail, tcp_echo, udp_echo]
    ports = {
        "WEB_A": web_a.server_address[1], "WEB_B": web_b.server_address[1],
        "SLOW": slow.server_address[1], "FAIL": fail.server_address[1],
        "TCP_ECHO": tcp_echo.server_address[1], "UDP_ECHO": udp_echo.server_address[1],
        "DEAD_1": dead_port(), "DEAD_2": dead_port(), "TICK": dead_port(),
    }

    main = start_mesh("main", HERE / "manifests", ports, tmp, procs)
    # A second mesh in ACL mode, where requests are denied, for the access-denied panel.
    acl = start_mesh("acl", HERE / "manifests-acl", ports, tmp, procs, ["--acl"])
    mesh_port = main.mesh_port
    for name in ("echo-tcp", "broken-tcp", "echo-udp", "canary"):
        if name not in mesh_port:
            raise Failure(f"{name} is not in /api/services: {main.services}")
    api, admin = main.api, main.admin
    http_start, udp_start = main.http_start, main.udp_start

    # Prometheus, scraping both every second.
    prom_addr = f"127.0.0.1:{free_port()}"
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {"job_name": "maille-proxy", "static_configs": [{"targets": [admin, acl.admin]}]},
            {"job_name": "maille-controller", "static_configs": [{"targets": [api, acl.api]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    procs.start("prometheus", [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address={prom_addr}",
                               "--storage.tsdb.retention.time=1h", "--log.level=warn"])
    prom = Prometheus(f"http://{prom_addr}")
    wait_for("Prometheus to scrape every target",
             lambda: len([r for r in prom.query("up == 1")["data"]["result"]]) == 4, 60, procs)

    # Traffic: bounded in count and in time.
    deadline = time.monotonic() + 60
    http_port, tcp_port, udp_port = http_start, mesh_port["echo-tcp"], mesh_port["echo-udp"]
    results = {}

    def http_phase(service, count, pause=0.0):
        results[service] = http_requests(http_port, service, count, deadline, pause)

    def tick(i):
        main.write_manifest("ticker.yaml", {"TICK": dead_port()})

    phases = [
        threading.Thread(target=http_phase, args=("web", 300, 0.01)),
        threading.Thread(target=http_phase, args=("flaky", 100, 0.01)),
        threading.Thread(target=http_phase, args=("dead", 80)),
        threading.Thread(target=http_phase, args=("limited", 40)),
        threading.Thread(target=http_phase, args=("slow", 6)),
        threading.Thread(target=http_phase, args=("failing", 150, 0.01)),
        threading.Thread(target=http_phase, args=("canary", 100, 0.01)),
        threading.Thread(target=lambda: results.__setitem__(
            "guarded", http_requests(acl.http_start, "guarded", 20, deadline))),
    ]
    for t in phases:
        t.start()
    # Keep a TCP connection and a UDP session open while Prometheus scrapes, so the gauges of
    # open connections and active sessions show them.
    try:
        held_tcp = socket.create_connection(("127.0.0.1", tcp_port), timeout=3)
        held_tcp.sendall(b"held\n")
        held_tcp.recv(16)
    except OSError:
        held_tcp = None  # checked below, with the echo counts
    tcp_ok = tcp_exchanges(tcp_port, 50, deadline)
    tcp_exchanges(mesh_port["broken-tcp"], 10, deadline)
    udp_ok = udp_exchanges(udp_port, 50, deadline)
    unused_udp = next(p for p in range(udp_start, udp_start + 3) if p != udp_port)
    udp_to_nowhere(unused_udp, 10)
    for i in range(4):  # rebuilds and swaps while traffic flows
        tick(i)
        time.sleep(0.5)
    for t in phases:
        t.join(timeout=max(1, deadline - time.monotonic()))
    procs.check_alive()

    # Wait until Prometheus has scraped the end of the traffic.
    time.sleep(3 * SCRAPE_SECONDS)
    scraped = "".join(http_get(f"http://{a}/metrics")[1].decode() for a in (admin, api, acl.admin, acl.api))
    exported = exported_metrics(scraped)

    # What the clients saw: the traffic did what the panels are meant to show.
    codes = {k: sorted(set(v)) for k, v in results.items()}
    summary = f"status codes seen: {codes}; tcp echoes {tcp_ok}/50, udp echoes {udp_ok}/50"
    print(f"     {summary}")
    if results["web"].count(200) != len(results["web"]) or len(results["web"]) < 300:
        raise Failure(f"web did not answer 200 every time: {summary}")
    if tcp_ok < 50:
        raise Failure(f"TCP echo through the proxy failed: {summary}")
    if udp_ok < 45:
        raise Failure(f"UDP echo through the proxy failed: {summary}")
    if set(results["guarded"]) != {403}:
        raise Failure(f"the ACL mesh did not deny every request with 403: {summary}")
    if held_tcp is not None:
        held_tcp.close()

    failures, passed = [], 0
    for board_name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        # Variable queries.
        for v in variables.values():
            if v["type"] != "query":
                continue
            match, label = label_values_query(v["definition"])
            sub = substitute(match, {"namespace": NAMESPACE})
            r = prom.label_values(label, sub)
            if r.get("status") != "success" or not r.get("data"):
                failures.append(f"{board_name} variable {v['name']}: {v['definition']} -> {r}")
            else:
                passed += 1
        # Candidate variable values: what Prometheus offers, as Grafana would list them.
        choices = [{}]
        if "service" in variables:
            svc = prom.label_values("service", substitute(label_values_query(variables["service"]["definition"])[0],
                                                          {"namespace": NAMESPACE}))["data"]
            choices = [{"namespace": NAMESPACE, "service": s} for s in svc]
        if "instance" in variables:
            choices = [dict(c, instance=".*") for c in choices]
        for p in board["panels"]:
            for t in p.get("targets", []):
                expr = t["expr"]
                metrics = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"maille_[a-z_]+", expr)}
                missing = sorted(m for m in metrics if m not in exported)
                ok = parse_error = None
                for c in choices:
                    q = substitute(expr, dict(c, __rate_interval=RATE_INTERVAL, __range="5m"))
                    r = prom.query(q)
                    if r.get("status") != "success":
                        parse_error = f"{q}: {r.get('error')}"
                        break
                    if has_number(r):
                        ok = q
                        break
                where = f"{board_name} / {p['title']} / {t['refId']}: {expr}"
                if parse_error:
                    failures.append(f"{where}\n       does not evaluate: {parse_error}")
                elif ok:
                    passed += 1
                elif missing:
                    failures.append(f"{where}\n       returned no data: no /metrics exports {', '.join(missing)}")
                else:
                    failures.append(f"{where}\n       returned no data")
    print(f"     {passed} dashboard queries returned data")
    if failures:
        raise Failure(f"{len(failures)} dashboard queries failed ({summary}):\n  " + "\n  ".join(failures))
