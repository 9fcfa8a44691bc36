"""Checks of the Helm chart with the real Helm library (helm-python-sdk) and the Kubernetes
schemas (kubernetes-validate): lint, render the default and several non-default value sets,
validate every rendered object, check the wiring between objects, and check that the values
schema and the templates refuse bad values with a message that names the value."""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

import helm_python
import yaml

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "maille"
KUBE_VERSION = "1.30.0"
RELEASE = "maille"
NAMESPACE = "maille"

# Kinds of CRDs that kubernetes-validate has no schema for; checked structurally below.
NO_SCHEMA_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

VALUE_SETS = {
    "default": {},
    "acl-namespaces-ports": {
        "acl": True,
        "defaultMode": "tcp",
        "meshServices": "annotated",
        "watchNamespaces": ["shop", "web"],
        "ignoreNamespaces": ["legacy"],
        "log": {"level": "maille_proxy=debug,info", "format": "json"},
        "ports": {
            "http": {"start": 6000, "size": 4},
            "tcp": {"start": 20000, "size": 100},
            "udp": {"start": 30000, "size": 8},
        },
        "proxy": {
            "adminPort": 9901,
            "accessLog": True,
            "threads": 2,
            "gracePeriodSeconds": 30,
            "updateStrategy": {"maxUnavailable": "20%"},
        },
        "controller": {"apiPort": 9100},
    },
    "observability": {
        "metrics": {
            "podAnnotations": False,
            "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "15s"},
        },
        "grafana": {
            "dashboards": {
                "enabled": True,
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Maille"},
            }
        },
    },
    "tracing": {
        "tracing": {"otlpEndpoint": "http://otel-collector.observability:4317", "protocol": "grpc",
                    "samplingRatio": 0},
        "proxy": {"extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "edge"}]},
    },
    "kube-dns": {
        "dns": {"clusterDomain": "corp.example", "coredns": {"enabled": True, "replicas": 1},
                "corednsVersion": "1.11.1", "rbac": {"configMaps": ["coredns", "rke2-coredns"]}},
    },
    "identity-user-ca": {
        "identity": {"trustDomain": "corp.example", "certificateLifetime": "6h", "audience": "mesh-ca",
                     "tokenExpirationSeconds": 7200,
                     "ca": {"secretName": "mesh-ca-from-cert-manager", "create": False}},
    },
    "identity-off": {
        "identity": {"enabled": False},
        "mtls": "disabled",
    },
    "mtls-permissive": {
        "mtls": "permissive",
    },
    "gateway-crds-off": {
        "gatewayAPI": {"installCRDs": False},
    },
    "dns-off": {
        "dns": {"prepare": False, "cleanup": False},
        "controller": {"podDisruptionBudget": {"enabled": False}},
        "metrics": {"podAnnotations": False},
    },
    "scheduling-images": {
        "fullnameOverride": "mesh",
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"iam.example/role": "maille"}},
        "controller": {
            "image": {"repository": "registry.example/maille-controller", "tag": "v9", "pullPolicy": "Always"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "node-role", "operator": "In", "values": ["infra"]}]}
                        ]
                    }
                }
            },
            "priorityClassName": "system-cluster-critical",
            "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
            "extraArgs": ["--kubeconfig=/etc/kube/config"],
            "extraEnv": [{"name": "MAILLE_EXTRA", "value": "1"}],
            "podLabels": {"team": "net"},
        },
        "proxy": {
            "image": {"repository": "registry.example/maille-proxy", "tag": "v9"},
            "tolerations": [{"operator": "Exists"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "priorityClassName": "system-node-critical",
            "podAnnotations": {"example.io/note": "x"},
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        },
    },
}


# ---------------------------------------------------------------------------------------------
# Helpers


def render(values, name=RELEASE, namespace=NAMESPACE):
    with helm_python.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=name, namespace=namespace)


def documents(rendered, hooks=True):
    """Every rendered object, as (template, object); NOTES.txt excluded."""
    out = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            is_hook = "helm.sh/hook" in (doc.get("metadata", {}).get("annotations") or {})
            if hooks or not is_hook:
                out.append((template, doc))
    return out


def kubernetes_validate(docs):
    """Runs `kubernetes-validate --strict` over the objects; returns its complaints."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, (template, doc) in enumerate(docs):
            path = pathlib.Path(tmp) / f"{i:03d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(doc))
            files.append(str(path))
        proc = subprocess.run(
            ["kubernetes-validate", "--strict", "-k", KUBE_VERSION, *files],
            capture_output=True,
            text=True,
        )
    complaints = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.startswith(("ERROR", "WARN", "Traceback")) or "Error" in line
    ]
    unknown = [
        c
        for c in complaints
        if not any(f"kind {kind} with api version {api}" in c for api, kind in NO_SCHEMA_KINDS)
    ]
    if proc.returncode != 0 and not unknown:
        unknown = [f"kubernetes-validate exited {proc.returncode}: {proc.stdout}{proc.stderr}"]
    return unknown


def find(docs, kind, name=None):
    found = [d for _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(obj):
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "Job":
        return obj["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def container(obj, name):
    spec = pod_spec(obj)
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} has no container {name}")


def flags(c):
    """`--name=value` arguments as a dict (flags without value map to True)."""
    out = {}
    for a in c.get("args", []):
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v if _ else True
    return out


def env(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def chart_workloads(docs):
    return [d for _, d in docs if d["kind"] in ("Deployment", "DaemonSet", "Job", "Pod")]


def check_wiring(docs, values):
    """Checks between objects that hold for every value set."""
    # Unique names per kind and namespace.
    seen = set()
    for _, d in docs:
        key = (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        assert key not in seen, f"two objects are named {key}"
        seen.add(key)
    # Workload selectors select their own pod template.
    for d in docs:
        d = d[1]
        if d["kind"] in ("Deployment", "DaemonSet"):
            sel = d["spec"]["selector"]["matchLabels"]
            assert labels_match(sel, d["spec"]["template"]["metadata"]["labels"]), d["metadata"]["name"]
    pods = [
        (d["metadata"].get("namespace"), d["spec"]["template"]["metadata"]["labels"] if d["kind"] != "Pod" else d["metadata"]["labels"], d)
        for d in chart_workloads(docs)
    ]
    # Every Service and PodDisruptionBudget selects some pod of the chart, and a Service's named
    # target ports exist on the pods it selects.
    for _, d in docs:
        if d["kind"] == "Service":
            sel = d["spec"]["selector"]
            targets = [w for ns, lbl, w in pods if ns == d["metadata"]["namespace"] and labels_match(sel, lbl)]
            assert targets, f"Service {d['metadata']['name']} selects no pod of the chart"
            for p in d["spec"]["ports"]:
                if isinstance(p["targetPort"], str):
                    names = {
                        cp["name"]
                        for w in targets
                        for c in pod_spec(w)["containers"]
                        for cp in c.get("ports", [])
                    }
                    assert p["targetPort"] in names, f"Service {d['metadata']['name']} targets unknown port {p['targetPort']}"
        if d["kind"] == "PodDisruptionBudget":
            sel = d["spec"]["selector"]["matchLabels"]
            assert any(labels_match(sel, lbl) for _, lbl, _ in pods), "PDB selects nothing"
    # Service accounts used exist, in the pod's namespace.
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(docs, "ServiceAccount")}
    for w in chart_workloads(docs):
        sa = pod_spec(w).get("serviceAccountName")
        if sa:
            assert (w["metadata"]["namespace"], sa) in accounts, f"{w['kind']} {w['metadata']['name']} uses missing account {sa}"
    # Bindings refer to rendered roles and accounts.
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for _, d in docs if d["kind"] in ("Role", "ClusterRole")}
    for _, d in docs:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            ref = d["roleRef"]
            ns = d["metadata"].get("namespace") if ref["kind"] == "Role" else None
            assert (ref["kind"], ns, ref["name"]) in roles, f"{d['kind']} {d['metadata']['name']} refers to missing {ref}"
            for s in d["subjects"]:
                assert (s["namespace"], s["name"]) in accounts, f"binding to missing account {s}"
    # Least privilege: no wildcards, no secrets, nothing beyond what docs/install.md lists.
    for _, d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            for rule in d["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{d['kind']} {d['metadata']['name']} has a wildcard in {field}"
                if "secrets" in rule["resources"]:
                    # Only the mesh CA's Secret, in the mesh namespace: read and watched by name,
                    # or created once (create cannot be limited by name).
                    assert d["kind"] == "Role" and d["metadata"]["namespace"] == NAMESPACE, rule
                    assert rule["resources"] == ["secrets"], rule
                    reads = set(rule["verbs"]) & {"get", "list", "watch", "update", "patch", "delete"}
                    assert not reads or (rule["verbs"] == ["get", "list", "watch"]
                                         and len(rule.get("resourceNames", [])) == 1), \
                        f"{d['metadata']['name']} may read secrets other than the mesh CA: {rule}"
                if d["kind"] == "ClusterRole":
                    writes = set(rule["verbs"]) - {"get", "list", "watch"}
                    # A TokenReview is a question to the API server, not a stored object; the
                    # status of a Gateway API route is Maille's report on it (docs/gateway-api.md).
                    assert not writes or rule["resources"] == ["events"] or (
                        rule["resources"] == ["tokenreviews"] and rule["verbs"] == ["create"]) or (
                        all(r.endswith("/status") for r in rule["resources"]) and rule["verbs"] == ["patch"]
                        and rule["apiGroups"] == ["gateway.networking.k8s.io"]), f"cluster-wide write {rule}"
    # Every container runs as non-root with a read-only root and no privilege escalation.
    for w in chart_workloads(docs):
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
    # The proxy and the controller agree on the port ranges, and they are the values'.
    ports = json.loads(json.dumps(values.get("ports", {})))
    defaults = {"http": (5000, 10), "tcp": (10000, 25), "udp": (15000, 25)}
    proxy = container(one(docs, "DaemonSet"), "proxy")
    controller = container(one(docs, "Deployment", fullname(values, "controller")), "controller")
    for kind, (start, size) in defaults.items():
        want_start = ports.get(kind, {}).get("start", start)
        want_size = ports.get(kind, {}).get("size", size)
        want = f"{want_start}-{want_start + want_size - 1}"
        assert flags(proxy)[f"{kind}-ports"] == want, (kind, flags(proxy))
        assert flags(controller)[f"{kind}-ports"] == want, (kind, flags(controller))
    # The proxy pulls from the controller's Service, on its API port.
    svc = one(docs, "Service", fullname(values, "controller"))
    api_port = svc["spec"]["ports"][0]["port"]
    assert flags(proxy)["controller-url"] == (
        f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.{values.get('dns', {}).get('clusterDomain', 'cluster.local')}:{api_port}"
    )
    assert flags(controller)["api-addr"] == f"0.0.0.0:{api_port}"
    # Probes: the proxy on its admin port, the controller on its API port.
    admin = next(p for p in proxy["ports"] if p["name"] == "admin")["containerPort"]
    assert flags(proxy)["admin-addr"] == f"0.0.0.0:{admin}"
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert controller["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert controller["livenessProbe"]["httpGet"]["path"] == "/live"
    assert flags(controller)["namespace"] == NAMESPACE
    # Shadow Services select exactly the proxy pods of this release.
    selector = dict(kv.split("=", 1) for kv in flags(controller)["proxy-selector"].split(","))
    ds = one(docs, "DaemonSet")
    assert selector == ds["spec"]["selector"]["matchLabels"], selector
    assert "threads" not in flags(proxy) or values.get("proxy", {}).get("threads")


def fullname(values, component):
    base = values.get("fullnameOverride") or RELEASE
    return f"{base}-{component}"


def render_set(name):
    values = VALUE_SETS[name]
    rendered = render(values)
    docs = documents(rendered)
    assert docs, "nothing rendered"
    problems = kubernetes_validate(docs)
    assert not problems, "\n".join(problems)
    check_wiring(docs, values)
    return rendered, docs


# ---------------------------------------------------------------------------------------------
# Lint and render


def test_lint_default_and_every_value_set():
    for name, values in VALUE_SETS.items():
        report = helm_python.lint(str(CHART), values, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
        errors = report["errors"] + [m for m in report["messages"] if m["severity"] >= 2]
        assert not errors, f"{name}: {errors}"


def test_default_values_render_and_validate():
    rendered, docs = render_set("default")
    kinds = sorted({d["kind"] for _, d in docs})
    for kind in ("Deployment", "DaemonSet", "Service", "ServiceAccount", "ClusterRole", "Role",
                 "PodDisruptionBudget", "Job", "Pod"):
        assert kind in kinds, f"default render has no {kind}: {kinds}"
    ctrl = one(docs, "Deployment", "maille-controller")
    # Two replicas, one leader (Lease), replaced one at a time.
    assert ctrl["spec"]["replicas"] == 2
    assert ctrl["spec"]["strategy"]["type"] == "RollingUpdate"
    assert ctrl["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    prepare = container(ctrl, "prepare")
    assert prepare["args"][0] == "prepare", prepare["args"]
    assert flags(prepare) == {"namespace": NAMESPACE, "cluster-domain": "cluster.local", "dns-service": "maille-coredns"}
    c = container(ctrl, "controller")
    assert flags(c)["default-mode"] == "http"
    assert "acl" not in flags(c) and "watch-namespaces" not in flags(c)
    assert env(c)["MAILLE_LOG"] == "info" and env(c)["MAILLE_LOG_FORMAT"] == "text"
    assert flags(c)["leader-election"] == "true" and flags(c)["lease-duration"] == "8"
    pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Scrape annotations on both pods.
    for w, port in ((ctrl, "9000"), (one(docs, "DaemonSet"), "8081")):
        ann = w["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == port
    ds = one(docs, "DaemonSet")
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    proxy = container(ds, "proxy")
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(flags(proxy)["grace-period-seconds"])
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    # Nothing optional is on by default.
    assert not find(docs, "ServiceMonitor") and not find(docs, "ConfigMap")
    assert "ACL mode is on" not in rendered["maille/templates/NOTES.txt"]


def test_controller_rbac_is_least_privilege():
    _, docs = render_set("default")
    cr = one(docs, "ClusterRole", "maille-controller-maille")
    grants = {(g, r, v) for rule in cr["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for res, group in (("services", ""), ("pods", ""), ("endpointslices", "discovery.k8s.io")):
        for verb in ("get", "list", "watch"):
            assert (group, res, verb) in grants
    # Core v1 Events (what the controller's writer creates), and no other group's.
    assert {("", "events", v) for v in ("get", "create", "patch")} <= grants
    assert not any(g == "events.k8s.io" for g, _, _ in grants)
    for group, res in (("access.smi-spec.io", "traffictargets"), ("specs.smi-spec.io", "httproutegroups"),
                       ("specs.smi-spec.io", "tcproutes"), ("split.smi-spec.io", "trafficsplits")):
        assert {(group, res, v) for v in ("get", "list", "watch")} <= grants, res
    # Shadow services are written in the mesh namespace only.
    mesh_role = one(docs, "Role", "maille-controller")
    assert mesh_role["metadata"]["namespace"] == NAMESPACE
    assert set(mesh_role["rules"][0]["verbs"]) >= {"create", "update", "delete"}
    # The leader Lease, read and renewed by name only.
    lease_rules = [r for r in mesh_role["rules"] if "leases" in r["resources"]]
    assert {v for r in lease_rules for v in r["verbs"]} == {"create", "get", "update"}
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in lease_rules)
    named = [r for r in lease_rules if set(r["verbs"]) & {"get", "update"}]
    assert named and all(r.get("resourceNames") == ["maille-controller"] for r in named)
    # The DNS rights are in kube-system, and writes are limited to the DNS objects by name.
    dns_role = one(docs, "Role", "maille-controller-maille")
    assert dns_role["metadata"]["namespace"] == "kube-system"
    for rule in dns_role["rules"]:
        if set(rule["verbs"]) & {"update", "patch"}:
            assert set(rule["resourceNames"]) <= {"coredns", "coredns-custom", "kube-dns"}, rule


def test_identity_on_by_default_with_a_projected_token_and_least_rights():
    _, docs = render_set("default")
    c = container(one(docs, "Deployment", "maille-controller"), "controller")
    f = flags(c)
    assert f["identity-ca-secret"] == "maille-mesh-ca" and f["identity-ca-create"] == "true"
    assert f["trust-domain"] == "cluster.local" and f["certificate-lifetime"] == "24h"
    assert f["identity-audience"] == "maille"
    cr = one(docs, "ClusterRole", "maille-controller-maille")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in cr["rules"]
    mesh_role = one(docs, "Role", "maille-controller")
    secret_rules = [r for r in mesh_role["rules"] if "secrets" in r["resources"]]
    # Read and watched by name only (a rotation is followed live); create (which cannot be
    # limited by name) only to make it once.
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["maille-mesh-ca"],
            "verbs": ["get", "list", "watch"]} in secret_rules
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]} in secret_rules
    assert not [r for r in secret_rules if set(r["verbs"]) - {"get", "list", "watch", "create"}]
    ds = one(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    # The API token stays unmounted; the identity token is for the controller's audience.
    assert spec["automountServiceAccountToken"] is False
    proxy = container(ds, "proxy")
    token_file = flags(proxy)["identity-token-file"]
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "identity-token")
    assert token_file == mount["mountPath"] + "/token" and mount["readOnly"] is True
    vol = next(v for v in spec["volumes"] if v["name"] == "identity-token")
    sat = vol["projected"]["sources"][0]["serviceAccountToken"]
    assert sat == {"audience": "maille", "expirationSeconds": 3600, "path": "token"}
    node = next(e for e in proxy["env"] if e["name"] == "MAILLE_NODE_NAME")
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_identity_requests_go_to_a_tls_port_verified_against_the_mounted_roots():
    _, docs = render_set("default")
    controller = container(one(docs, "Deployment", "maille-controller"), "controller")
    f = flags(controller)
    assert f["identity-listen"] == "0.0.0.0:9443"
    names = f["identity-server-names"].split(",")
    assert "maille-controller.maille.svc.cluster.local" in names and "maille-controller.maille.svc" in names
    assert f["identity-trust-configmap"] == "maille-identity-trust"
    assert {"name": "identity", "containerPort": 9443, "protocol": "TCP"} in controller["ports"]
    svc = one(docs, "Service", "maille-controller")
    assert {"name": "identity", "port": 9443, "targetPort": "identity", "protocol": "TCP"} in svc["spec"]["ports"]
    ds = one(docs, "DaemonSet")
    proxy = container(ds, "proxy")
    pf = flags(proxy)
    # The URL's host is one of the certificate's names, and https.
    assert pf["identity-url"] == "https://maille-controller.maille.svc.cluster.local:9443"
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "identity-trust")
    assert pf["identity-ca-file"] == mount["mountPath"] + "/ca.crt" and mount["readOnly"] is True
    vol = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "identity-trust")
    assert vol["configMap"] == {"name": "maille-identity-trust", "optional": True}
    cm_rules = [r for r in one(docs, "Role", "maille-controller")["rules"] if "configmaps" in r["resources"]]
    assert {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["maille-identity-trust"],
            "verbs": ["get", "patch"]} in cm_rules
    assert not [r for r in cm_rules if set(r["verbs"]) - {"get", "patch", "create"}]
    # A port and ConfigMap name of one's own.
    docs = documents(render({"identity": {"port": 15012, "trustConfigMap": "mesh-roots"}}))
    f = flags(container(one(docs, "Deployment", "maille-controller"), "controller"))
    assert f["identity-listen"] == "0.0.0.0:15012" and f["identity-trust-configmap"] == "mesh-roots"
    pf = flags(container(one(docs, "DaemonSet"), "proxy"))
    assert pf["identity-url"].endswith(":15012")
    vol = next(v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"] if v["name"] == "identity-trust")
    assert vol["configMap"]["name"] == "mesh-roots"


def test_identity_user_supplied_ca_and_off():
    _, docs = render_set("identity-user-ca")
    f = flags(container(one(docs, "Deployment", "maille-controller"), "controller"))
    assert f["identity-ca-secret"] == "mesh-ca-from-cert-manager" and f["identity-ca-create"] == "false"
    assert f["trust-domain"] == "corp.example" and f["certificate-lifetime"] == "6h"
    mesh_role = one(docs, "Role", "maille-controller")
    secret_rules = [r for r in mesh_role["rules"] if "secrets" in r["resources"]]
    # A supplied CA is only read and watched, by name.
    assert secret_rules == [{"apiGroups": [""], "resources": ["secrets"],
                             "resourceNames": ["mesh-ca-from-cert-manager"], "verbs": ["get", "list", "watch"]}]
    ds = one(docs, "DaemonSet")
    vol = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "identity-token")
    assert vol["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "mesh-ca"
    assert vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 7200
    _, docs = render_set("identity-off")
    f = flags(container(one(docs, "Deployment", "maille-controller"), "controller"))
    assert not [k for k in f if k.startswith("identity") or k == "trust-domain"]
    assert not [r for r in one(docs, "Role", "maille-controller")["rules"] if "secrets" in r["resources"]]
    cr = one(docs, "ClusterRole", "maille-controller-maille")
    assert not [r for r in cr["rules"] if "tokenreviews" in r["resources"]]
    proxy = container(one(docs, "DaemonSet"), "proxy")
    assert "identity-token-file" not in flags(proxy) and "env" not in proxy
    assert "identity-url" not in flags(proxy)
    assert not [p for p in one(docs, "Service", "maille-controller")["spec"]["ports"] if p["name"] == "identity"]
    assert not [r for r in one(docs, "Role", "maille-controller")["rules"] if "configmaps" in r["resources"]]


def test_mtls_strict_on_a_fresh_install_permissive_and_off():
    f = flags(container(one(documents(render({})), "Deployment", "maille-controller"), "controller"))
    assert f["mtls"] == "strict"
    _, docs = render_set("mtls-permissive")
    assert flags(container(one(docs, "Deployment", "maille-controller"), "controller"))["mtls"] == "permissive"
    _, docs = render_set("identity-off")
    assert flags(container(one(docs, "Deployment", "maille-controller"), "controller"))["mtls"] == "disabled"


def test_cleanup_hook_brings_its_own_rights():
    _, docs = render_set("default")
    hooks = [d for _, d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "post-delete"]
    kinds = sorted(d["kind"] for d in hooks)
    assert kinds == ["Job", "Role", "Role", "RoleBinding", "RoleBinding", "ServiceAccount"], kinds
    job = one(docs, "Job")
    weight = lambda d: int(d["metadata"]["annotations"]["helm.sh/hook-weight"])  # noqa: E731
    for d in hooks:
        if d is not job:
            assert weight(d) < weight(job), f"{d['kind']} must exist before the Job runs"
        assert "hook-succeeded" in d["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    c = container(job, "cleanup")
    assert c["args"][0] == "cleanup" and flags(c)["namespace"] == NAMESPACE
    assert flags(c)["dns-service"] == "maille-coredns"
    # cleanup may delete the kube-dns ConfigMap prepare created, and nothing else.
    dns_role = next(d for d in hooks if d["kind"] == "Role" and d["metadata"]["namespace"] == "kube-system")
    deletes = [r for r in dns_role["rules"] if "delete" in r["verbs"]]
    assert deletes == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kube-dns"], "verbs": ["delete"]}]
    assert pod_spec(job)["serviceAccountName"] == "maille-cleanup"
    # The release's own controller account is gone by then: the Job must not rely on it.
    assert pod_spec(job)["serviceAccountName"] != "maille-controller"


def test_helm_test_calls_a_service_through_the_mesh():
    _, docs = render_set("default")
    pod = one(docs, "Pod")
    svc = one(docs, "Service", "maille-test")
    for d in (pod, svc):
        assert d["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert d["metadata"]["namespace"] == "default", "the mesh never meshes its own namespace"
    assert svc["metadata"]["annotations"]["maille.io/traffic-type"] == "http"
    assert labels_match(svc["spec"]["selector"], pod["metadata"]["labels"])
    c = pod["spec"]["containers"][0]
    assert env(c)["MESH_URL"] == "http://maille-test.default.maille.mesh:8080/"
    script = c["command"][-1]
    assert "httpd -p 8080" in script and "wget" in script and "exit 1" in script


def test_acl_namespaces_ports_set():
    _, docs = render_set("acl-namespaces-ports")
    c = container(one(docs, "Deployment", "maille-controller"), "controller")
    f = flags(c)
    assert f["acl"] is True
    assert f["default-mode"] == "tcp"
    assert f["mesh-services"] == "annotated"
    assert f["watch-namespaces"] == "shop,web" and f["ignore-namespaces"] == "legacy"
    assert f["http-ports"] == "6000-6003" and f["tcp-ports"] == "20000-20099" and f["udp-ports"] == "30000-30007"
    assert f["api-addr"] == "0.0.0.0:9100"
    proxy = container(one(docs, "DaemonSet"), "proxy")
    assert flags(proxy)["access-log"] is True and flags(proxy)["grace-period-seconds"] == "30"
    assert flags(proxy)["controller-url"].endswith(":9100")
    assert flags(proxy)["log-format"] == "json" and flags(proxy)["log"] == "maille_proxy=debug,info"
    assert flags(proxy)["threads"] == "2"
    assert env(c)["MAILLE_LOG"] == "maille_proxy=debug,info"
    assert one(docs, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"


def test_observability_set():
    rendered, docs = render_set("observability")
    monitors = find(docs, "ServiceMonitor")
    assert len(monitors) == 2
    services = {d["metadata"]["name"]: d for d in find(docs, "Service")}
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "kps"
        targets = [s for s in services.values() if labels_match(m["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                   and s["metadata"]["namespace"] in m["spec"]["namespaceSelector"]["matchNames"]]
        assert len(targets) == 1, f"ServiceMonitor {m['metadata']['name']} selects {len(targets)} Services"
        port_names = {p["name"] for p in targets[0]["spec"]["ports"]}
        for ep in m["spec"]["endpoints"]:
            assert ep["port"] in port_names and ep["path"] == "/metrics" and ep["interval"] == "15s"
    # One headless admin Service per proxy pod for the proxies' monitor.
    assert services["maille-proxy-admin"]["spec"]["clusterIP"] == "None"
    maps = find(docs, "ConfigMap")
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files and len(maps) == len(files), (len(maps), files)
    for m in maps:
        assert m["metadata"]["namespace"] == "monitoring"
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"] == {"grafana_folder": "Maille"}
        [(key, text)] = m["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text()), key
    for w in (one(docs, "Deployment"), one(docs, "DaemonSet")):
        assert "prometheus.io/scrape" not in (w["spec"]["template"]["metadata"].get("annotations") or {})
    assert "Grafana dashboards" in rendered["maille/templates/NOTES.txt"]


def test_tracing_set():
    _, docs = render_set("tracing")
    proxy = container(one(docs, "DaemonSet"), "proxy")
    f = flags(proxy)
    assert f["otlp-endpoint"] == "http://otel-collector.observability:4317"
    assert f["otlp-protocol"] == "grpc"
    assert f["trace-sampling-ratio"] == "0", "a ratio of 0 is a value, not unset"
    assert env(proxy)["OTEL_SERVICE_NAME"] == "edge"
    proxy = container(one(documents(render({"tracing": {"otlpEndpoint": "http://c:4318"}})), "DaemonSet"), "proxy")
    assert flags(proxy)["otlp-protocol"] == "http/protobuf" and "trace-sampling-ratio" not in flags(proxy)
    # Off by default: no tracing flag at all.
    _, docs = render_set("default")
    assert not [k for k in flags(container(one(docs, "DaemonSet"), "proxy")) if "otlp" in k or "trace" in k]
    if (ROOT / "target" / "debug" / "maille-proxy").exists():
        check_flags(container(one(documents(render(VALUE_SETS["tracing"])), "DaemonSet"), "proxy"),
                    help_text(binary("maille-proxy")), "maille-proxy")


def test_kube_dns_set_deploys_coredns_for_the_mesh_zone():
    _, docs = render_set("kube-dns")
    dep = one(docs, "Deployment", "maille-coredns")
    svc = one(docs, "Service", "maille-coredns")
    assert sorted((p["port"], p["protocol"]) for p in svc["spec"]["ports"]) == [(53, "TCP"), (53, "UDP")]
    corefile = one(docs, "ConfigMap", "maille-coredns")["data"]["Corefile"]
    assert "maille.mesh:1053 {" in corefile
    assert "{1}-6d61696c6c65-{2}.maille.svc.corp.example." in corefile
    assert r"\.maille\.svc\.corp\.example\.$ {1}.{2}.maille.mesh." in corefile
    assert "kubernetes corp.example" in corefile and "rewrite stop {" in corefile
    assert "template ANY ANY maille.mesh {\n        rcode NXDOMAIN" in corefile
    assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/corefile"]
    # The separator is the one the controller's naming.rs uses.
    naming = (ROOT / "controller" / "src" / "naming.rs").read_text()
    assert 'SHADOW_SEPARATOR: &str = "-6d61696c6c65-"' in naming
    prepare = container(one(docs, "Deployment", "maille-controller"), "prepare")
    assert flags(prepare)["cluster-domain"] == "corp.example"
    # prepare points the kube-dns stub domain at this Service.
    assert flags(prepare)["dns-service"] == svc["metadata"]["name"]
    assert flags(prepare)["coredns-version"] == "1.11.1"
    role = one(docs, "Role", "maille-controller-maille")
    assert ["coredns", "rke2-coredns"] in [r.get("resourceNames") for r in role["rules"]]


def test_dns_off_set():
    _, docs = render_set("dns-off")
    ctrl = one(docs, "Deployment", "maille-controller")
    assert "initContainers" not in pod_spec(ctrl)
    assert not find(docs, "Job") and not find(docs, "PodDisruptionBudget")
    assert all(d["metadata"].get("namespace") != "kube-system" for _, d in docs)


def test_scheduling_images_set():
    _, docs = render_set("scheduling-images")
    ctrl = one(docs, "Deployment", "mesh-controller")
    ds = one(docs, "DaemonSet", "mesh-proxy")
    assert container(ctrl, "controller")["image"] == "registry.example/maille-controller:v9"
    assert container(ctrl, "prepare")["image"] == "registry.example/maille-controller:v9"
    assert container(one(docs, "Job"), "cleanup")["image"] == "registry.example/maille-controller:v9"
    assert container(ctrl, "controller")["imagePullPolicy"] == "Always"
    assert container(ds, "proxy")["image"] == "registry.example/maille-proxy:v9"
    for w in chart_workloads(docs):
        if w["metadata"]["namespace"] != "default":
            assert pod_spec(w)["imagePullSecrets"] == [{"name": "regcred"}], w["metadata"]["name"]
    spec = pod_spec(ctrl)
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"} and spec["priorityClassName"] == "system-cluster-critical"
    assert spec["tolerations"][0]["key"] == "dedicated" and "nodeAffinity" in spec["affinity"]
    assert pod_spec(ds)["tolerations"] == [{"operator": "Exists"}]
    assert "--kubeconfig=/etc/kube/config" in container(ctrl, "controller")["args"]
    assert env(container(ctrl, "controller"))["MAILLE_EXTRA"] == "1"
    assert container(ds, "proxy")["resources"]["limits"]["memory"] == "2Gi"
    assert one(docs, "ServiceAccount", "mesh-controller")["metadata"]["annotations"] == {"iam.example/role": "maille"}
    assert ctrl["spec"]["template"]["metadata"]["labels"]["team"] == "net"


def test_two_releases_do_not_collide_on_cluster_scoped_names():
    a = documents(render({}, name="maille", namespace="mesh-a"))
    b = documents(render({}, name="maille", namespace="mesh-b"))
    cluster_kinds = {"ClusterRole", "ClusterRoleBinding"}
    names = lambda docs: {(d["kind"], d["metadata"]["name"]) for _, d in docs  # noqa: E731
                          if d["kind"] in cluster_kinds or d["metadata"].get("namespace") == "kube-system"}
    assert names(a) and not names(a) & names(b), names(a) & names(b)


def test_gateway_api_crds_installed_when_missing_and_kept_and_routes_readable():
    _, docs = render_set("default")
    crds = {d["metadata"]["name"]: d for d in find(docs, "CustomResourceDefinition")}
    assert set(crds) == {"httproutes.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io"}, set(crds)
    for name, crd in crds.items():
        assert crd["spec"]["group"] == "gateway.networking.k8s.io"
        # Deleting a CRD deletes every route in it: uninstall keeps it.
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "maille"
        served = {v["name"] for v in crd["spec"]["versions"] if v["served"]}
        stored = [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
        assert stored == ["v1"], name
        assert served == ({"v1", "v1beta1"} if name.startswith("httproutes") else {"v1"}), name
        assert all(v["subresources"] == {"status": {}} for v in crd["spec"]["versions"]), name
    # The template reads the chart's generated files (controller/tests/gateway_crds.rs keeps them
    # equal to the types), guarded by a lookup of the definition in the cluster.
    template = (CHART / "templates" / "gateway-api-crds.yaml").read_text()
    assert 'lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition"' in template
    assert "meta.helm.sh/release-name" in template

    _, off = render_set("gateway-crds-off")
    assert not find(off, "CustomResourceDefinition")

    cr = one(docs, "ClusterRole", "maille-controller-maille")
    grants = {(g, r, v) for rule in cr["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    group = "gateway.networking.k8s.io"
    for res in ("httproutes", "grpcroutes"):
        assert {(group, res, v) for v in ("get", "list", "watch")} <= grants, res
        assert (group, f"{res}/status", "patch") in grants, res
        # Only the status is written, never the route.
        assert not {(group, res, v) for v in ("create", "update", "patch", "delete")} & grants, res
    assert not any(r.endswith("/status") and v != "patch" for g, r, v in grants if g == group)


def test_crds_validate():
    crds = sorted((CHART / "crds").glob("*.y*ml")) if (CHART / "crds").is_dir() else []
    if not crds:
        pytest.skip("charts/maille/crds has no CRDs yet")
    docs = [(str(p), d) for p in crds for d in yaml.safe_load_all(p.read_text()) if d]
    problems = kubernetes_validate(docs)
    assert not problems, "\n".join(problems)
    groups = {d["spec"]["group"] for _, d in docs}
    assert {"access.smi-spec.io", "specs.smi-spec.io", "split.smi-spec.io"} <= groups, groups


# ---------------------------------------------------------------------------------------------
# Bad values are refused, naming what is wrong


SCHEMA_REJECTS = [
    ({"acl": "yes"}, "acl"),
    ({"mtls": "on"}, "mtls"),
    ({"mtls": True}, "mtls"),
    ({"defaultMode": "grpc"}, "defaultMode"),
    ({"meshServices": "some"}, "meshServices"),
    ({"watchNamespaces": "shop,web"}, "watchNamespaces"),
    ({"watchNamespaces": ["Shop_1"]}, "watchNamespaces"),
    ({"ports": {"http": {"start": "5000", "size": 10}}}, "start"),
    ({"ports": {"tcp": {"start": 10000, "size": 0}}}, "size"),
    ({"ports": {"udp": {"start": 80, "size": 5}}}, "start"),
    ({"log": {"format": "xml"}}, "format"),
    ({"controller": {"replicas": 11}}, "replicas"),
    ({"controller": {"leaderElection": {"enabled": True, "leaseDuration": 1}}}, "leaseDuration"),
    ({"controller": {"replicas": "1"}}, "replicas"),
    ({"controller": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
    ({"proxy": {"adminPort": "8081"}}, "adminPort"),
    ({"proxy": {"nodeSelector": ["linux"]}}, "nodeSelector"),
    ({"proxy": {"tolerations": {"key": "x"}}}, "tolerations"),
    ({"proxy": {"resources": {"limits": {"memory": ["1Gi"]}}}}, "memory"),
    ({"metrics": {"serviceMonitor": {"enabled": "true"}}}, "enabled"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ({"grafana": {"dashboards": {"labels": {"grafana_dashboard": 1}}}}, "grafana_dashboard"),
    ({"imagePullSecrets": ["regcred"]}, "imagePullSecrets"),
    ({"controler": {"replicas": 1}}, "controler"),
    ({"tracing": {"otlpEndpoint": "https://collector:4318"}}, "otlpEndpoint"),
    ({"tracing": {"protocol": "http/json"}}, "protocol"),
    ({"tracing": {"samplingRatio": 1.5}}, "samplingRatio"),
    ({"proxy": {"gracePeriod": 10}}, "gracePeriod"),
    ({"proxy": {"threads": 0}}, "threads"),
    ({"dns": {"rbac": {"configMaps": "coredns"}}}, "configMaps"),
    ({"dns": {"corednsVersion": "latest"}}, "corednsVersion"),
    ({"identity": {"certificateLifetime": "1d"}}, "certificateLifetime"),
    ({"identity": {"trustDomain": "Cluster Local"}}, "trustDomain"),
    ({"identity": {"tokenExpirationSeconds": 60}}, "tokenExpirationSeconds"),
    ({"identity": {"ca": {"secretName": "Mesh_CA"}}}, "secretName"),
    ({"gatewayAPI": {"installCRDs": "yes"}}, "installCRDs"),
    ({"gatewayAPI": {"install": True}}, "install"),
]


def test_values_schema_refuses_wrong_types():
    failures = []
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})  # the defaults pass
        for values, needle in SCHEMA_REJECTS:
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE)
            except helm_python.HelmError as e:
                if needle not in str(e):
                    failures.append(f"{values}: refused, but the message does not name {needle!r}: {e}")
                continue
            failures.append(f"{values}: accepted")
    assert not failures, "\n".join(failures)


TEMPLATE_REJECTS = [
    ({"controller": {"replicas": 2, "leaderElection": {"enabled": False, "leaseDuration": 8}}},
     "controller.replicas: 2 replicas need controller.leaderElection.enabled"),
    ({"ports": {"tcp": {"start": 5005, "size": 25}}}, "ports.http (5000-5009) and ports.tcp (5005-5029) overlap"),
    ({"ports": {"udp": {"start": 65530, "size": 25}}}, "goes past port 65535"),
    ({"proxy": {"adminPort": 10003}}, "proxy.adminPort: 10003 lies inside ports.tcp"),
    ({"watchNamespaces": ["maille"]}, "is the mesh's own namespace"),
    ({"identity": {"enabled": False}}, "mtls: strict needs identity.enabled"),
    ({"identity": {"enabled": False}, "mtls": "permissive"}, "mtls: permissive needs identity.enabled"),
]


def test_templates_refuse_inconsistent_values():
    failures = []
    for values, needle in TEMPLATE_REJECTS:
        try:
            render(values)
        except helm_python.HelmError as e:
            if needle not in str(e):
                failures.append(f"{values}: refused with {e!s}, expected {needle!r}")
            continue
        failures.append(f"{values}: accepted")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# The chart passes only flags the binaries know


def binary(name):
    path = ROOT / "target" / "debug" / name
    if not path.exists():
        pytest.skip(f"{path} not built (cargo build --workspace --bins)")
    return path


def help_text(path, *sub):
    proc = subprocess.run([str(path), *sub, "--help"], capture_output=True, text=True, timeout=30)
    if proc.returncode == 0 and not proc.stdout.strip():
        pytest.skip(f"{path.name} has no command line yet (a placeholder main)")
    assert proc.returncode == 0, f"{path.name} {' '.join(sub)} --help failed: {proc.stderr}"
    return proc.stdout


def check_flags(c, text, what):
    for a in c.get("args", []):
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            assert f"{flag} " in text or f"{flag}=" in text or f"{flag}\n" in text or f"{flag}," in text, (
                f"{what}: the chart passes {flag}, which `--help` does not list"
            )


def flag_check_docs():
    return documents(render(VALUE_SETS["acl-namespaces-ports"])) + documents(render(VALUE_SETS["default"]))


def test_proxy_flags_are_known_to_the_binary():
    proxy_help = help_text(binary("maille-proxy"))
    for d in find(flag_check_docs(), "DaemonSet"):
        check_flags(container(d, "proxy"), proxy_help, "maille-proxy")


def test_controller_flags_are_known_to_the_binary():
    controller_bin = binary("maille-controller")
    run_help = help_text(controller_bin)
    for d in find(flag_check_docs(), "Deployment", "maille-controller"):
        check_flags(container(d, "controller"), run_help, "maille-controller")


def test_prepare_and_cleanup_flags_are_known_to_the_binary():
    controller_bin = binary("maille-controller")
    top = help_text(controller_bin)
    for sub in ("prepare", "cleanup"):
        if not re.search(rf"^\s+{sub}\b", top, re.M):
            pytest.skip(f"maille-controller has no `{sub}` subcommand yet")
    docs = flag_check_docs()
    for d in find(docs, "Deployment", "maille-controller"):
        check_flags(container(d, "prepare"), help_text(controller_bin, "prepare"), "maille-controller prepare")
    for d in find(docs, "Job"):
        check_flags(container(d, "cleanup"), help_text(controller_bin, "cleanup"), "maille-controller cleanup")

def test_dockerfile_builds_the_binaries_the_chart_runs():
    """CI builds no images; this keeps the Dockerfile's targets consistent with the crates and the chart."""
    docs = documents(render({}))
    text = (ROOT / "Dockerfile").read_text()
    # Stages by name: the text from `FROM ... AS name` to the next FROM.
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert "USER 65532:65532" in stages["runtime"] and ":nonroot AS runtime" in text, "the images must run as non-root"
    for crate in ("proxy", "controller"):
        cargo = (ROOT / crate / "Cargo.toml").read_text()
        name = f"maille-{crate}"
        assert f'name = "{name}"' in cargo, f"{crate}/Cargo.toml has no binary {name}"
        assert f"--bin {name}" in stages["build"] and f"target/release/{name}" in stages["build"]
        assert f"FROM runtime AS {name}" in text, f"the Dockerfile has no target {name} on the runtime stage"
        assert f"COPY --from=build /out/{name} /usr/local/bin/{name}" in stages[name]
        assert f'ENTRYPOINT ["/usr/local/bin/{name}"]' in stages[name]
        # The chart relies on the image's entrypoint: containers give args, never a command.
        for w in chart_workloads(docs):
            for c in pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]:
                if name in c["image"]:
                    assert "command" not in c, f"{c['name']} overrides the entrypoint"
                    # ... and the uid the image runs as is the pod's.
                    assert pod_spec(w)["securityContext"]["runAsUser"] == 65532


if __name__ == "__main__":
    sys.exit("run through tests/run-python")
