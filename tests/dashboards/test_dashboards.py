"""Checks of the Grafana dashboards shipped with the chart.

Static: the committed JSON is what charts/maille/dashboards/generate.py writes, the panels are
well formed, every query parses (promtool), and every metric a query uses is one of the agreed
names and is documented in docs/metrics.md. End to end (e2e.py): every query returns data from a real Prometheus
scraping a live local mesh.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DASHBOARDS = ROOT / "charts" / "maille" / "dashboards"
sys.path.insert(0, str(DASHBOARDS))

import generate  # noqa: E402  (charts/maille/dashboards/generate.py)

# The metric names the team agreed on (COMMON.md); dashboards use no others.
AGREED = {
    "maille_proxy_http_requests_total", "maille_proxy_http_request_duration_seconds",
    "maille_proxy_http_connections_open", "maille_proxy_table_version",
    "maille_proxy_table_last_swap_timestamp_seconds", "maille_proxy_table_swaps_total",
    "maille_proxy_table_refusals_total", "maille_proxy_tcp_connections_opened_total",
    "maille_proxy_tcp_connections_closed_total", "maille_proxy_tcp_connections_failed_total",
    "maille_proxy_tcp_connections_open", "maille_proxy_tcp_received_bytes_total",
    "maille_proxy_tcp_sent_bytes_total", "maille_proxy_udp_datagrams_received_total",
    "maille_proxy_udp_datagrams_sent_total", "maille_proxy_udp_received_bytes_total",
    "maille_proxy_udp_sent_bytes_total", "maille_proxy_udp_sessions_active",
    "maille_proxy_udp_dropped_total", "maille_proxy_retries_total",
    "maille_proxy_retry_budget_exhausted_total", "maille_proxy_ratelimited_requests_total",
    "maille_proxy_timeouts_total", "maille_proxy_circuit_breaker_state",
    "maille_proxy_circuit_breaker_trips_total", "maille_proxy_acl_denied_total",
    "maille_proxy_split_requests_total",
    "maille_proxy_identity_certificate_expiry_timestamp_seconds", "maille_proxy_tunnel_streams_total",
    "maille_proxy_mtls_cleartext_total", "maille_proxy_mtls_refused_total",
    "maille_proxy_tunnel_denied_total", "maille_proxy_tunnel_handshakes_total",
    "maille_proxy_tunnel_http_streams_total",
    "maille_controller_identity_server_certificate_expiry_timestamp_seconds",
    "maille_controller_rebuilds_total", "maille_controller_rebuild_duration_seconds",
    "maille_controller_objects_watched", "maille_controller_services_meshed",
    "maille_controller_service_errors", "maille_controller_longpoll_waiting",
    "maille_controller_table_version", "maille_controller_api_writes_total",
}


def boards():
    files = sorted(DASHBOARDS.glob("*.json"))
    assert len(files) == 4, files
    return {f.name: json.loads(f.read_text()) for f in files}


def queries(board):
    """Every PromQL expression of a dashboard: (panel title, expr)."""
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def metric_names(expr):
    names = set(re.findall(r"\bmaille_[a-z_]+", expr))
    # Histogram series are documented under their base name.
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) and
            re.sub(r"_(bucket|sum|count)$", "", n) in AGREED else n for n in names}


def substitute(expr, variables):
    """Replaces Grafana variables as Grafana would for the given values."""
    out = expr.replace("$__rate_interval", variables.get("__rate_interval", "1m"))
    out = out.replace("$__range", variables.get("__range", "5m"))
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace(f"${name}", variables[name])
    return out


def test_committed_dashboards_are_what_generate_writes():
    for name, build in (("maille-overview.json", generate.overview), ("maille-service.json", generate.service),
                        ("maille-proxies.json", generate.proxies), ("maille-controller.json", generate.controller)):
        committed = json.loads((DASHBOARDS / name).read_text())
        assert committed == build().json(), f"{name} differs from generate.py; run python3 charts/maille/dashboards/generate.py"


def test_panels_are_well_formed():
    uids = set()
    for name, b in boards().items():
        assert b["uid"] not in uids and len(b["uid"]) <= 40, b["uid"]
        uids.add(b["uid"])
        ids = [p["id"] for p in b["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells = set()
        for p in b["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{name}: {p['title']} sticks out"
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']} overlaps another panel"
                    cells.add((x, y))
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], f"{name}: {p['title']} has no query"
            assert p["description"], f"{name}: {p['title']} has no description"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
        names = [v["name"] for v in b["templating"]["list"]]
        assert names[0] == "datasource", name
        for v in b["templating"]["list"]:
            refs = (f"${v['name']}", f"${{{v['name']}}}")
            used = any(r in json.dumps(o) for r in refs for o in b["panels"]) or any(
                r in json.dumps(o) for r in refs for o in b["templating"]["list"] if o is not v)
            assert used, f"{name}: variable {v['name']} is never used"


def test_every_query_uses_agreed_and_documented_metrics():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\|\s*`(maille_[a-z_]+)`", doc, re.M))
    problems = []
    for name, b in boards().items():
        for title, expr in queries(b):
            for m in metric_names(expr):
                if m not in AGREED:
                    problems.append(f"{name} / {title}: {m} is not an agreed metric name")
                if m not in documented:
                    problems.append(f"{name} / {title}: {m} is not documented in docs/metrics.md")
    assert not problems, "\n".join(sorted(set(problems)))


def test_every_query_parses():
    """promtool parses each query (variables substituted) as a recording rule."""
    if subprocess.run(["which", "promtool"], capture_output=True).returncode != 0:
        pytest.skip("promtool not installed (scripts/install-deps installs the prometheus package)")
    rules = []
    for name, b in boards().items():
        for i, (title, expr) in enumerate(queries(b)):
            e = substitute(expr, {"namespace": "shop", "service": "web", "instance": ".*"})
            rules.append({"record": f"check:{name.split('.')[0].replace('-', '_')}:{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
        f.flush()
        proc = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout, proc.stdout



def test_every_query_returns_data_from_a_live_mesh():
    """End to end: real controller, proxy, backends and Prometheus (see e2e.py)."""
    if os.environ.get("MAILLE_SKIP_E2E"):
        pytest.skip("MAILLE_SKIP_E2E is set")
    import e2e

    e2e.run(boards(), substitute)
