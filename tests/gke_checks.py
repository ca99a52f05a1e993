"""What the secure GKE path promises, checked across the rendered objects: each check returns the
problems it finds (empty when there are none), so a test can run it on the real manifests and on a
deliberately broken copy and see both answers.

These are the cross-object rules no schema can state: the load balancer's health check asks what the
readiness probe asks, one GCPBackendPolicy per Service, who the NetworkPolicies let in on which port,
what the PodMonitoring scrapes, what the HTTP listener may do, which names the Gateway uses.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

Obj = dict[str, Any]

APP = "chargecast"
LB_RANGES = frozenset({"35.191.0.0/16", "130.211.0.0/22"})  # Google Front Ends and health checkers
ANYONE = "anyone"
COLLECTOR = {
    "namespaceSelector": {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["gmp-system", "gke-gmp-system"]}
        ]
    },
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "collector"}},
}
# The fixed Google Cloud names `chargecast deploy gke` creates and the manifests refer to.
STATIC_IP = f"{APP}-ip"
CERT_MAP = f"{APP}-certmap"
ARMOR_POLICY = f"{APP}-armor"
GATEWAY_CLASS = "gke-l7-global-external-managed"


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def deployment(objects: list[Obj]) -> Obj:
    (found,) = [o for o in of_kind(objects, "Deployment") if o["metadata"]["name"] == APP]
    result: Obj = found
    return result


def pod_labels(objects: list[Obj]) -> dict[str, str]:
    labels: dict[str, str] = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    return labels


def app_container(objects: list[Obj]) -> Obj:
    (found,) = [c for c in deployment(objects)["spec"]["template"]["spec"]["containers"] if c["name"] == APP]
    result: Obj = found
    return result


def container_port(objects: list[Obj], port: int | str) -> int | None:
    """The app container's port number for a name or a number; None when it has no such port."""
    ports = {p["name"]: p["containerPort"] for p in app_container(objects)["ports"]}
    if isinstance(port, int):
        return port if port in ports.values() else None
    return ports.get(port)


def selects_pods(selector: Obj, labels: dict[str, str]) -> bool:
    """A label selector's verdict on the pod labels (matchLabels only: the manifests use no expressions)."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return wanted.items() <= labels.items()


def policies(objects: list[Obj], direction: str) -> list[Obj]:
    """The NetworkPolicies that select the app pods and govern ``direction`` (Ingress or Egress)."""
    labels = pod_labels(objects)
    found = []
    for policy in of_kind(objects, "NetworkPolicy"):
        spec = policy["spec"]
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if direction in types and selects_pods(spec["podSelector"], labels):
            found.append(policy)
    return found


def _covers(rule_ports: list[Obj] | None, number: int, objects: list[Obj]) -> bool:
    if not rule_ports:
        return True  # a rule without ports admits every port
    for entry in rule_ports:
        if "port" not in entry:
            return True
        start = container_port(objects, entry["port"])
        if start is not None and start <= number <= entry.get("endPort", start):
            return True
    return False


def describe(peer: Obj) -> str:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        return str(block["cidr"]) + "".join(f" except {e}" for e in block.get("except", []))
    return "pods " + json.dumps(peer, sort_keys=True)


def ingress_peers(objects: list[Obj], port: int | str) -> set[str]:
    """Who may open a connection to the app pods on ``port``, under all their ingress policies together."""
    number = container_port(objects, port)
    assert number is not None, f"the app has no port {port}"
    found: set[str] = set()
    for policy in policies(objects, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            if _covers(rule.get("ports"), number, objects):
                found |= {describe(peer) for peer in rule.get("from", [])} or {ANYONE}
    return {ANYONE} if ANYONE in found else found  # anyone includes every range


def egress(objects: list[Obj]) -> set[tuple[str, int | str, str]]:
    """(protocol, port, destination) for every connection the app pods may open."""
    found: set[tuple[str, int | str, str]] = set()
    for policy in policies(objects, "Egress"):
        for rule in policy["spec"].get("egress", []):
            destinations = {describe(peer) for peer in rule.get("to", [])} or {ANYONE}
            ports = [(p.get("protocol", "TCP"), p.get("port", "*")) for p in rule.get("ports", [])] or [("*", "*")]
            found |= {(protocol, port, to) for protocol, port in ports for to in destinations}
    return found


def network_problems(objects: list[Obj], serving: set[str]) -> list[str]:
    """Default deny both ways; ``serving`` alone reaches the serving port, the collectors alone the metrics port."""
    problems = [f"no NetworkPolicy isolates the pods' {d}" for d in ("Ingress", "Egress") if not policies(objects, d)]
    allowed = {"http": serving, "metrics": {describe(COLLECTOR)}}
    for name, expected in allowed.items():
        found = ingress_peers(objects, name)
        if found != expected:
            problems.append(f"port {name} admits {sorted(found)}, not {sorted(expected)}")
    open_ports = {container_port(objects, name) for name in allowed}
    for policy in policies(objects, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            ports = [container_port(objects, p["port"]) if "port" in p else None for p in rule.get("ports", [])]
            if not ports or not set(ports) <= open_ports:
                problems.append(f"{policy['metadata']['name']} opens ports beyond http and metrics: {rule}")
    return problems


def _service(objects: list[Obj], name: str) -> Obj | None:
    return next((s for s in of_kind(objects, "Service") if s["metadata"]["name"] == name), None)


def _target_service(objects: list[Obj], policy: Obj) -> Obj | None:
    ref = policy["spec"]["targetRef"]
    if (ref.get("group"), ref.get("kind")) != ("", "Service"):
        return None
    return _service(objects, ref["name"])


def backend_policy_problems(objects: list[Obj]) -> list[str]:
    """At most one GCPBackendPolicy per Service (GKE ignores all but the oldest), each on a real Service."""
    problems = []
    targets = Counter(json.dumps(p["spec"]["targetRef"], sort_keys=True) for p in of_kind(objects, "GCPBackendPolicy"))
    problems += [f"{count} GCPBackendPolicies target {ref}" for ref, count in targets.items() if count > 1]
    for kind in ("GCPBackendPolicy", "HealthCheckPolicy"):
        for policy in of_kind(objects, kind):
            if _target_service(objects, policy) is None:
                problems.append(
                    f"{kind} {policy['metadata']['name']} targets no Service: {policy['spec']['targetRef']}"
                )
    return problems


def _service_target_port(objects: list[Obj], service: Obj) -> int | None:
    (port,) = service["spec"]["ports"]
    return container_port(objects, port["targetPort"])


def health_check_problems(objects: list[Obj]) -> list[str]:
    """The load balancer checks each Service on the readiness probe's path and port, over HTTP."""
    probe = app_container(objects)["readinessProbe"]["httpGet"]
    wanted = (probe["path"], container_port(objects, probe["port"]))
    checks = of_kind(objects, "HealthCheckPolicy")
    problems = [] if checks else ["no HealthCheckPolicy: the load balancer would check / instead"]
    for check in checks:
        config = check["spec"].get("default", {}).get("config", {})
        http = config.get("httpHealthCheck", {})
        service = _target_service(objects, check)
        if config.get("type") != "HTTP" or service is None:
            problems.append(f"{check['metadata']['name']}: not an HTTP check of a Service: {check['spec']}")
            continue
        fixed = http.get("portSpecification") == "USE_FIXED_PORT"
        port = container_port(objects, http["port"]) if fixed else _service_target_port(objects, service)
        found = (http.get("requestPath", "/"), port)
        if found != wanted:
            problems.append(f"{check['metadata']['name']} checks {found}, the readiness probe {wanted}")
    return problems


def podmonitoring_problems(objects: list[Obj]) -> list[str]:
    """Managed Prometheus scrapes the app pods on their metrics port, which no Service exposes."""
    monitors = of_kind(objects, "PodMonitoring")
    problems = [] if monitors else ["no PodMonitoring"]
    metrics = container_port(objects, "metrics")
    exposed = {_service_target_port(objects, s) for s in of_kind(objects, "Service")}
    for monitor in monitors:
        if not selects_pods(monitor["spec"]["selector"], pod_labels(objects)):
            problems.append(f"{monitor['metadata']['name']} selects other pods: {monitor['spec']['selector']}")
        for endpoint in monitor["spec"]["endpoints"]:
            port = container_port(objects, endpoint["port"])
            if port != metrics or port in exposed:
                problems.append(f"{monitor['metadata']['name']} scrapes port {endpoint['port']}, not the metrics port")
    return problems


def loadbalancer_problems(objects: list[Obj]) -> list[str]:
    """On the secure path nothing but the Gateway faces the internet: no LoadBalancer or NodePort Service."""
    return [
        f"Service {s['metadata']['name']} is of type {s['spec']['type']}"
        for s in of_kind(objects, "Service")
        if s["spec"].get("type", "ClusterIP") != "ClusterIP"
    ]


def _listeners(objects: list[Obj]) -> dict[str, Obj]:
    return {listener["name"]: listener for g in of_kind(objects, "Gateway") for listener in g["spec"]["listeners"]}


def attached(objects: list[Obj], listener: str) -> list[Obj]:
    """The HTTPRoutes on ``listener`` of the Gateway: those naming it, and those naming no section at all."""
    found = []
    for route in of_kind(objects, "HTTPRoute"):
        for ref in route["spec"]["parentRefs"]:
            if ref["name"] == APP and ref.get("sectionName", listener) == listener:
                found.append(route)
                break
    return found


def _redirects_only(route: Obj) -> bool:
    for rule in route["spec"].get("rules", [{}]):
        filters = rule.get("filters", [])
        if rule.get("backendRefs") or not filters:
            return False
        for f in filters:
            redirect = f.get("requestRedirect", {})
            if f["type"] != "RequestRedirect" or redirect.get("scheme") != "https" or redirect.get("statusCode") != 301:
                return False
    return True


def listener_problems(objects: list[Obj]) -> list[str]:
    """HTTPS on 443 serves the app; HTTP on 80 only answers 301 to https."""
    listeners = _listeners(objects)
    problems = []
    expected = {"https": ("HTTPS", 443), "http": ("HTTP", 80)}
    for name, (protocol, port) in expected.items():
        listener = listeners.get(name, {})
        if (listener.get("protocol"), listener.get("port")) != (protocol, port):
            problems.append(f"listener {name} is {listener}, not {protocol} on {port}")
    if "tls" in listeners.get("https", {}):
        problems.append("the https listener names certificates itself: the certmap annotation supplies them")
    on_http = attached(objects, "http")
    problems += [
        f"route {r['metadata']['name']} on HTTP does more than redirect" for r in on_http if not _redirects_only(r)
    ]
    if not on_http:
        problems.append("nothing on the http listener redirects to https")
    if not any(rule.get("backendRefs") for r in attached(objects, "https") for rule in r["spec"]["rules"]):
        problems.append("no route on the https listener reaches a backend")
    return problems


def gateway_problems(objects: list[Obj]) -> list[str]:
    """One Gateway of the global external class, on the fixed address, certificates and Cloud Armor policy."""
    gateways = of_kind(objects, "Gateway")
    if len(gateways) != 1:
        return [f"{len(gateways)} Gateways, not 1"]
    (gateway,) = gateways
    spec, annotations = gateway["spec"], gateway["metadata"].get("annotations", {})
    problems = []
    if spec["gatewayClassName"] != GATEWAY_CLASS:
        problems.append(f"gatewayClassName {spec['gatewayClassName']}")
    if spec.get("addresses") != [{"type": "NamedAddress", "value": STATIC_IP}]:
        problems.append(f"addresses {spec.get('addresses')}, not the reserved {STATIC_IP}")
    if annotations.get("networking.gke.io/certmap") != CERT_MAP:
        problems.append(f"certmap {annotations.get('networking.gke.io/certmap')}, not {CERT_MAP}")
    for policy in of_kind(objects, "GCPBackendPolicy"):
        if policy["spec"].get("default", {}).get("securityPolicy") != ARMOR_POLICY:
            problems.append(f"{policy['metadata']['name']} does not attach Cloud Armor policy {ARMOR_POLICY}")
    return problems


def route_problems(objects: list[Obj]) -> list[str]:
    """Every route hangs on an existing listener and every backend is an existing Service port."""
    listeners = _listeners(objects)
    problems = []
    for route in of_kind(objects, "HTTPRoute"):
        name = route["metadata"]["name"]
        for ref in route["spec"]["parentRefs"]:
            if ref.get("kind", "Gateway") != "Gateway" or ref["name"] != APP or ref.get("sectionName") not in listeners:
                problems.append(f"route {name} hangs on no listener of Gateway {APP}: {ref}")
        for rule in route["spec"].get("rules", []):
            for backend in rule.get("backendRefs", []):
                service = _service(objects, backend["name"])
                is_service = (backend.get("group", ""), backend.get("kind", "Service")) == ("", "Service")
                ports = {p["port"] for p in service["spec"]["ports"]} if service and is_service else set()
                if backend.get("port") not in ports:
                    problems.append(f"route {name} sends to {backend}, which is no Service port")
    return problems
