#!/usr/bin/env python3
"""Writes the Grafana dashboards of the chart (charts/maille/dashboards/*.json, beside it).

The dashboards are plain Grafana JSON, committed; this script is how they are written, so that
the four share one style and every query is in one readable place. Run it after a change:

    python3 charts/maille/dashboards/generate.py

tests/dashboards/test_dashboards.py checks that the committed files equal its output, that
every metric they use is documented in docs/metrics.md, and (end to end) that every query
returns data from a real Prometheus scraping a live local mesh.

Conventions: `$__rate_interval` in every rate(); variables are `namespace`, `service` (single
value) and `instance` (multi, regex); the data source is the `datasource` variable.
"""

import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
SVC = 'namespace="$namespace", service="$service"'
INST = 'instance=~"$instance"'


def q(expr, legend="", instant=False, fmt=None):
    t = {"expr": expr, "legendFormat": legend or "__auto", "datasource": DS}
    if instant:
        t["instant"] = True
        t["range"] = False
    if fmt:
        t["format"] = fmt
    return t


class Board:
    def __init__(self, uid, title, description):
        self.uid, self.title, self.description = uid, title, description
        self.panels, self.variables = [], []
        self.x = self.y = 0
        self.row_h = 0

    def var_datasource(self):
        self.variables.append({
            "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": "",
        })

    def var_query(self, name, label, query, multi=False):
        v = {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
            "refresh": 2, "sort": 1, "hide": 0, "current": {}, "options": [], "regex": "",
            "multi": multi, "includeAll": multi,
        }
        if multi:
            v["allValue"] = ".*"
        self.variables.append(v)

    def row(self, title):
        if self.x:
            self.y += self.row_h
            self.x = self.row_h = 0
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def _place(self, w, h):
        if self.x + w > 24:
            self.y += self.row_h
            self.x = self.row_h = 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(self, kind, title, description, targets, unit="short", w=12, h=8, **extra):
        p = {
            "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        }
        if kind == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
        elif kind == "table":
            p["options"] = {"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]}
            p["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        p.update(extra)
        return p

    def add(self, *args, **kw):
        self.panels.append(self.panel(*args, **kw))

    def json(self):
        for i, p in enumerate(self.panels, start=1):
            p["id"] = i
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["maille", "service-mesh"], "timezone": "browser", "editable": True,
            "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
            "time": {"from": "now-1h", "to": "now"},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["maille"], "title": "Maille", "asDropdown": True,
                       "includeVars": False, "keepTime": True}],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def quantiles(metric, by, selector=""):
    sel = "{" + selector + "}" if selector else ""
    return [
        q(f"histogram_quantile({v}, sum by ({by}le) (rate({metric}_bucket{sel}[{RI}])))",
          ("p" + k + (" {{namespace}}/{{service}}" if "service" in by else "")))
        for k, v in (("50", "0.5"), ("95", "0.95"), ("99", "0.99"))
    ]


def overview():
    b = Board("maille-overview", "Maille / Mesh overview",
              "Golden signals of every meshed service, as the node proxies see them.")
    b.var_datasource()
    b.row("Mesh")
    req = "maille_proxy_http_requests_total"
    b.add("stat", "Requests", "HTTP requests per second through all proxies.",
          [q(f"sum(rate({req}[{RI}]))", "requests/s")], unit="reqps", w=6, h=4)
    b.add("stat", "Success rate", "Share of HTTP responses that are not 5xx.",
          [q(f'sum(rate({req}{{code!~"5.."}}[{RI}])) / sum(rate({req}[{RI}]))', "success")],
          unit="percentunit", w=6, h=4)
    b.add("stat", "Meshed service ports", "Service ports in the controller's table, by traffic type.",
          [q("sum by (traffic_type) (maille_controller_services_meshed)", "{{traffic_type}}")], w=6, h=4)
    b.add("stat", "Services with problems",
          "Services the controller reported a problem on (bad annotation, port range exhausted...). "
          "Details: the controller's /api/services.",
          [q("max(maille_controller_service_errors)", "problems")], w=6, h=4)
    b.row("HTTP services")
    b.add("timeseries", "Request rate by service", "HTTP requests per second, per service.",
          [q(f"sum by (namespace, service) (rate({req}[{RI}]))", "{{namespace}}/{{service}}")], unit="reqps")
    b.add("timeseries", "Success rate by service", "Share of responses that are not 5xx, per service.",
          [q(f'sum by (namespace, service) (rate({req}{{code!~"5.."}}[{RI}])) / '
             f"sum by (namespace, service) (rate({req}[{RI}]))", "{{namespace}}/{{service}}")],
          unit="percentunit")
    b.add("timeseries", "Latency p50 / p95 / p99 by service",
          "Request duration seen by the proxy, from the first byte of the request to the end of the response.",
          quantiles("maille_proxy_http_request_duration_seconds", "namespace, service, "), unit="s", w=24)
    b.add("table", "Top errors", "The ten service/status pairs with the most 4xx and 5xx responses per second.",
          [q(f'topk(10, sum by (namespace, service, code) (rate({req}{{code=~"[45].."}}[{RI}])))', "",
             instant=True, fmt="table")], unit="reqps", w=12)
    b.add("timeseries", "Resilience actions", "Retries, rate-limited requests, timeouts and circuit-breaker trips per second, mesh-wide.",
          [q(f"sum(rate(maille_proxy_retries_total[{RI}]))", "retries"),
           q(f"sum(rate(maille_proxy_ratelimited_requests_total[{RI}]))", "rate limited"),
           q(f"sum(rate(maille_proxy_timeouts_total[{RI}]))", "timeouts"),
           q(f"sum(rate(maille_proxy_circuit_breaker_trips_total[{RI}]))", "breaker trips")], unit="ops")
    b.row("TCP and UDP services")
    b.add("timeseries", "TCP connections open by service", "Connections the proxies hold open, per service.",
          [q("sum by (namespace, service) (maille_proxy_tcp_connections_open)", "{{namespace}}/{{service}}")])
    b.add("timeseries", "TCP throughput by service", "Bytes per second received from clients and sent back to them.",
          [q(f"sum by (namespace, service) (rate(maille_proxy_tcp_received_bytes_total[{RI}]))", "{{namespace}}/{{service}} in"),
           q(f"sum by (namespace, service) (rate(maille_proxy_tcp_sent_bytes_total[{RI}]))", "{{namespace}}/{{service}} out")],
          unit="Bps")
    b.add("timeseries", "UDP datagrams by service", "Datagrams per second from clients and back to them.",
          [q(f"sum by (namespace, service) (rate(maille_proxy_udp_datagrams_received_total[{RI}]))", "{{namespace}}/{{service}} in"),
           q(f"sum by (namespace, service) (rate(maille_proxy_udp_datagrams_sent_total[{RI}]))", "{{namespace}}/{{service}} out")],
          unit="pps")
    b.add("timeseries", "UDP sessions by service", "Client sessions (one upstream socket each) currently active.",
          [q("sum by (namespace, service) (maille_proxy_udp_sessions_active)", "{{namespace}}/{{service}}")])
    return b


def service():
    b = Board("maille-service", "Maille / Service",
              "One meshed service: traffic, errors, latency, resilience decisions, TCP/UDP traffic.")
    b.var_datasource()
    b.var_query("namespace", "Namespace",
                'label_values({__name__=~"maille_proxy_(http_requests|tcp_connections_opened|udp_datagrams_received)_total"}, namespace)')
    b.var_query("service", "Service",
                'label_values({__name__=~"maille_proxy_(http_requests|tcp_connections_opened|udp_datagrams_received)_total", namespace="$namespace"}, service)')
    req = "maille_proxy_http_requests_total"
    b.row("HTTP")
    b.add("timeseries", "Requests by status code", "Responses per second, by HTTP status code.",
          [q(f"sum by (code) (rate({req}{{{SVC}}}[{RI}]))", "{{code}}")], unit="reqps")
    b.add("timeseries", "Success rate", "Share of responses that are not 5xx, per service port.",
          [q(f'sum by (port) (rate({req}{{{SVC}, code!~"5.."}}[{RI}])) / sum by (port) (rate({req}{{{SVC}}}[{RI}]))',
             "port {{port}}")], unit="percentunit")
    b.add("timeseries", "Latency p50 / p95 / p99", "Request duration seen by the proxy.",
          quantiles("maille_proxy_http_request_duration_seconds", "", SVC), unit="s")
    b.add("timeseries", "Traffic split by backend", "Requests per second sent to each TrafficSplit backend of this service.",
          [q(f"sum by (backend) (rate(maille_proxy_split_requests_total{{{SVC}}}[{RI}]))", "{{backend}}")], unit="reqps")
    b.row("Resilience")
    b.add("timeseries", "Retries", "Extra attempts on another endpoint, and requests that could not retry because the retry budget was spent.",
          [q(f"sum by (port) (rate(maille_proxy_retries_total{{{SVC}}}[{RI}]))", "retries port {{port}}"),
           q(f"sum by (port) (rate(maille_proxy_retry_budget_exhausted_total{{{SVC}}}[{RI}]))", "budget exhausted port {{port}}")],
          unit="ops", w=8)
    b.add("timeseries", "Rate limited and timed out", "Requests answered 429 by the rate limit, and 504 at the deadline.",
          [q(f"sum by (port) (rate(maille_proxy_ratelimited_requests_total{{{SVC}}}[{RI}]))", "429 port {{port}}"),
           q(f"sum by (port) (rate(maille_proxy_timeouts_total{{{SVC}}}[{RI}]))", "504 port {{port}}")],
          unit="reqps", w=8)
    b.add("timeseries", "Circuit breaker", "State per proxy (0 closed, 1 open, 2 half-open) and trips per second.",
          [q(f"max by (port) (maille_proxy_circuit_breaker_state{{{SVC}}})", "state port {{port}}"),
           q(f"sum by (port) (rate(maille_proxy_circuit_breaker_trips_total{{{SVC}}}[{RI}]))", "trips port {{port}}")],
          w=8, fieldConfig={"defaults": {"unit": "short", "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never"},
                                         "mappings": [{"type": "value", "options": {"0": {"text": "closed"}, "1": {"text": "open"}, "2": {"text": "half-open"}}}]},
                            "overrides": []})
    b.add("timeseries", "Access denied by source", "Requests, connections and datagrams denied in ACL mode, by client address.",
          [q(f"sum by (source) (rate(maille_proxy_acl_denied_total{{{SVC}}}[{RI}]))", "{{source}}")], unit="ops", w=24)
    b.row("TCP")
    b.add("timeseries", "TCP connections", "Connections opened, closed and failed (no endpoint reachable) per second, and open now.",
          [q(f"sum(rate(maille_proxy_tcp_connections_opened_total{{{SVC}}}[{RI}]))", "opened/s"),
           q(f"sum(rate(maille_proxy_tcp_connections_closed_total{{{SVC}}}[{RI}]))", "closed/s"),
           q(f"sum(rate(maille_proxy_tcp_connections_failed_total{{{SVC}}}[{RI}]))", "failed/s"),
           q(f"sum(maille_proxy_tcp_connections_open{{{SVC}}})", "open")])
    b.add("timeseries", "TCP throughput", "Bytes per second from clients (in) and back to them (out).",
          [q(f"sum(rate(maille_proxy_tcp_received_bytes_total{{{SVC}}}[{RI}]))", "in"),
           q(f"sum(rate(maille_proxy_tcp_sent_bytes_total{{{SVC}}}[{RI}]))", "out")], unit="Bps")
    b.row("UDP")
    b.add("timeseries", "UDP datagrams", "Datagrams per second from clients (in) and back to them (out).",
          [q(f"sum(rate(maille_proxy_udp_datagrams_received_total{{{SVC}}}[{RI}]))", "in"),
           q(f"sum(rate(maille_proxy_udp_datagrams_sent_total{{{SVC}}}[{RI}]))", "out")], unit="pps", w=8)
    b.add("timeseries", "UDP throughput", "Bytes per second from clients (in) and back to them (out).",
          [q(f"sum(rate(maille_proxy_udp_received_bytes_total{{{SVC}}}[{RI}]))", "in"),
           q(f"sum(rate(maille_proxy_udp_sent_bytes_total{{{SVC}}}[{RI}]))", "out")], unit="Bps", w=8)
    b.add("timeseries", "UDP sessions", "Client sessions currently active.",
          [q(f"sum(maille_proxy_udp_sessions_active{{{SVC}}})", "sessions")], w=8)
    return b


def proxies():
    b = Board("maille-proxies", "Maille / Proxies",
              "The node proxies: connections, routing-table version and swaps, refusals, per proxy "
              "(with the chart's ServiceMonitor, `instance` is the node name).")
    b.var_datasource()
    b.var_query("instance", "Proxy", "label_values(maille_proxy_table_version, instance)", multi=True)
    b.row("Routing table")
    b.add("timeseries", "Table version", "Version of the table each proxy routes with, and the controller's latest. "
          "A proxy below the controller is behind.",
          [q(f"max by (instance) (maille_proxy_table_version{{{INST}}})", "{{instance}}"),
           q("max(maille_controller_table_version)", "controller")], w=8)
    b.add("timeseries", "Table swaps and refusals", "Tables loaded, and tables refused (failed to parse or validate; the last good one stays).",
          [q(f"sum by (instance) (rate(maille_proxy_table_swaps_total{{{INST}}}[{RI}]))", "swaps {{instance}}"),
           q(f"sum by (instance) (rate(maille_proxy_table_refusals_total{{{INST}}}[{RI}]))", "refusals {{instance}}")],
          unit="ops", w=8)
    b.add("table", "Seconds since the last swap", "How long each proxy has kept its current table.",
          [q(f"time() - max by (instance) (maille_proxy_table_last_swap_timestamp_seconds{{{INST}}})", "",
             instant=True, fmt="table")], unit="s", w=8)
    b.row("Connections and traffic")
    b.add("timeseries", "Open connections", "Downstream HTTP connections, TCP connections and UDP sessions held by each proxy.",
          [q(f"sum by (instance) (maille_proxy_http_connections_open{{{INST}}})", "http {{instance}}"),
           q(f"sum by (instance) (maille_proxy_tcp_connections_open{{{INST}}})", "tcp {{instance}}"),
           q(f"sum by (instance) (maille_proxy_udp_sessions_active{{{INST}}})", "udp sessions {{instance}}")])
    b.add("timeseries", "HTTP requests", "Requests per second handled by each proxy, and the share of 5xx.",
          [q(f"sum by (instance) (rate(maille_proxy_http_requests_total{{{INST}}}[{RI}]))", "{{instance}}"),
           q(f'sum by (instance) (rate(maille_proxy_http_requests_total{{{INST}, code=~"5.."}}[{RI}]))', "5xx {{instance}}")],
          unit="reqps")
    b.add("timeseries", "TCP connection failures", "TCP connections that reached no endpoint, per proxy.",
          [q(f"sum by (instance) (rate(maille_proxy_tcp_connections_failed_total{{{INST}}}[{RI}]))", "{{instance}}")], unit="ops")
    b.add("timeseries", "UDP drops by reason", "Datagrams dropped per second (no_route, no_endpoint, access_denied, session_limit...).",
          [q(f"sum by (instance, reason) (rate(maille_proxy_udp_dropped_total{{{INST}}}[{RI}]))", "{{reason}} {{instance}}")], unit="pps")
    b.row("Mesh identity and mutual TLS")
    # Zero for every proxy rather than "no data" while nothing was sent in cleartext or refused,
    # and for proxies older than these metrics (during a rolling upgrade).
    zero = f"on(instance) (0 * max by (instance) (maille_proxy_table_version{{{INST}}}))"
    b.add("timeseries", "Certificate time left",
          "Seconds until each proxy's mesh certificate ends. Renewal happens at about half its lifetime, so a "
          "curve that keeps falling past half means the controller is not answering (see the proxy's /ready). "
          "Far below zero: the proxy holds no certificate (no --identity-token-file, or none received yet).",
          [q(f"max by (instance) (maille_proxy_identity_certificate_expiry_timestamp_seconds{{{INST}}}) - time()",
             "{{instance}}")], unit="s", w=12)
    b.add("timeseries", "Identity server certificate time left",
          "Seconds until the certificate of each controller replica's identity listener ends (the TLS server "
          "proxies ask for their certificates). Renewed at half its lifetime and at once when the mesh CA changes, "
          "so the curve restarts from the full lifetime at each step of a rotation. A curve that keeps falling past "
          "half: the controller cannot sign (see its log). Far below zero: identity is off on that controller.",
          [q("max by (instance) (maille_controller_identity_server_certificate_expiry_timestamp_seconds) - time()",
             "{{instance}}")], unit="s", w=12)
    b.add("timeseries", "Cross-node traffic: tunnel and cleartext",
          "Streams opened per second through the mutual-TLS tunnel to other nodes' proxies, and requests, "
          "connections and UDP sessions sent in cleartext to nodes without proxy (mtls: permissive) or refused "
          "for that reason (mtls: strict). Cleartext in a strict mesh is never expected.",
          [q(f'sum by (instance) (rate(maille_proxy_tunnel_streams_total{{{INST}, direction="out", result="ok"}}[{RI}]))'
             f" or {zero}", "tunnel {{instance}}"),
           q(f"sum by (instance) (rate(maille_proxy_mtls_cleartext_total{{{INST}}}[{RI}])) or {zero}",
             "cleartext {{instance}}"),
           q(f"sum by (instance) (rate(maille_proxy_mtls_refused_total{{{INST}}}[{RI}])) or {zero}",
             "refused (strict) {{instance}}")], unit="ops", w=12)
    b.add("timeseries", "Cross-node HTTP/1: tunnel streams reused",
          "Plain HTTP/1 requests to other nodes per second by what carried them: a tunnel stream kept from an "
          "earlier request of the same client (reused) or a new one (opened); and kept streams closed because "
          "the bounds were reached (full: more idle streams than 128 per claim, 256 per node) or unused (stale). "
          "Mostly reused is the steady state; a lasting full rate says the bounds are too low for the traffic.",
          [q(f'sum by (instance, event) (rate(maille_proxy_tunnel_http_streams_total{{{INST}, '
             f'event=~"reused|opened|full|stale"}}[{RI}])) or {zero}', "{{event}} {{instance}}")],
          unit="ops", w=12)
    b.add("timeseries", "Tunnel denials and handshake refusals",
          "Streams this proxy refused to carry to its pods (by reason: spoofed_identity, access_denied, "
          "no_identity...) and connections to its tunnel port refused during the handshake.",
          [q(f"sum by (instance, reason) (rate(maille_proxy_tunnel_denied_total{{{INST}}}[{RI}])) or {zero}",
             "{{reason}} {{instance}}"),
           q(f'sum by (instance) (rate(maille_proxy_tunnel_handshakes_total{{{INST}, result!="ok"}}[{RI}]))'
             f" or {zero}", "handshakes refused {{instance}}")], unit="ops", w=12)
    return b


def controller():
    b = Board("maille-controller", "Maille / Controller",
              "The controller: table rebuilds, objects watched, services meshed, problems, proxies waiting.")
    b.var_datasource()
    b.row("Table")
    b.add("stat", "Table version", "Version of the controller's current table.",
          [q("max(maille_controller_table_version)", "version")], w=6, h=4)
    b.add("stat", "Services with problems", "Services with a problem (see /api/services and the Events on them).",
          [q("max(maille_controller_service_errors)", "problems")], w=6, h=4)
    b.add("stat", "Proxies waiting", "Proxies holding a long-poll open for the next table: one per connected proxy.",
          [q("sum(maille_controller_longpoll_waiting)", "proxies")], w=6, h=4)
    b.add("stat", "Rebuilds", "Table rebuilds in the time range.",
          [q("sum(increase(maille_controller_rebuilds_total[$__range]))", "rebuilds")], w=6, h=4)
    b.add("timeseries", "Rebuild rate", "Rebuilds per second (a burst of events is coalesced into one).",
          [q(f"sum(rate(maille_controller_rebuilds_total[{RI}]))", "rebuilds/s")], unit="ops", w=8)
    b.add("timeseries", "Rebuild duration p50 / p95 / p99", "Time to build and validate a table from the objects.",
          quantiles("maille_controller_rebuild_duration_seconds", ""), unit="s", w=16)
    b.row("Inputs and outputs")
    b.add("timeseries", "Objects watched", "Objects in the controller's store, by kind.",
          [q("sum by (kind) (maille_controller_objects_watched)", "{{kind}}")], w=8)
    b.add("timeseries", "Service ports meshed", "Service ports in the table, by traffic type.",
          [q("sum by (traffic_type) (maille_controller_services_meshed)", "{{traffic_type}}")], w=8)
    b.add("timeseries", "API writes", "Writes to the Kubernetes API (shadow Services, Events), by kind and result.",
          [q(f"sum by (kind, result) (rate(maille_controller_api_writes_total[{RI}]))", "{{kind}} {{result}}")],
          unit="ops", w=8)
    return b


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, board in (("overview", overview()), ("service", service()), ("proxies", proxies()),
                        ("controller", controller())):
        path = OUT / f"maille-{name}.json"
        path.write_text(json.dumps(board.json(), indent=2) + "\n")
        print(f"wrote {path.relative_to(OUT.parents[2])}")


if __name__ == "__main__":
    main()
