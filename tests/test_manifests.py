"""The Kubernetes manifests, rendered by the real kustomize (kubectl's) and validated with the
Kubernetes API schemas of the versions GKE offers (1.32-1.35).

No cluster runs here: every GKE object (the Gateway and its routes, the load-balancer policies, the
NetworkPolicies, Workload Identity, the autoscaler, the budget, the PodMonitoring) is checked only
against schemas and by the assertions below; docs/gke-manifests.md says which. Built-in kinds go
through kubernetes-validate --strict; custom resources through tests/crd.py, against the real CRDs in
../shared/k8s-crds (defaults, the schema closed to unknown fields, every CEL rule); the promises no
schema can state (tests/gke_checks.py) are each tested on the manifests and on a broken copy.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]  # stubs (types-PyYAML) are optional here

import crd
import gke_checks as checks
from chargecast.deploy.gke import GKE_IMAGE_PLACEHOLDER
from chargecast.settings import Settings
from tools import dev_tool

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
GKE_VERSIONS = ("1.32.0", "1.33.0", "1.34.0", "1.35.0")
DRAIN_SECONDS = 10  # the server finishes in-flight requests within 10 s of SIGTERM
GOOGLE_LB_KEEPALIVE_SECONDS = 600  # the global external Application Load Balancer's idle timeout to backends
NAME = {"app.kubernetes.io/name": "chargecast"}
CUSTOM = set(crd.FILES)
# Every rendering a deploy can apply: the overlays, and an overlay with components (OVERLAY+COMPONENT,
# as `deploy gke --iap` or `--model-public-key` wraps it). "local" is `podman kube play`'s.
OVERLAYS = (
    "gke",
    "gke-loadbalancer",
    "gke-cloudsql",
    "gke+iap",
    "gke+model-key",
    "gke-loadbalancer+model-key",
    "local",
)
GKE_OVERLAYS = OVERLAYS[:-1]
SECURE = ("gke", "gke-cloudsql", "gke+iap", "gke+model-key")
MODEL_KEY = "/etc/chargecast/model-key/public.pem"  # where the model-key component mounts the public key
PUBLIC = "0.0.0.0/0 except 10.0.0.0/8 except 172.16.0.0/12 except 192.168.0.0/16"

Obj = dict[str, Any]


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dev_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )


def wrapper(tmp: Path, overlay: str, components: list[str]) -> Path:
    """A kustomization over a copy of deploy/k8s, as `chargecast deploy gke` writes one."""
    shutil.copytree(K8S, tmp / "k8s")
    listed = "".join(f"  - k8s/components/{c}\n" for c in components)
    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - k8s/overlays/{overlay}\ncomponents:\n{listed}"
    )
    return tmp


def render_text(target: str) -> str:
    proc = kustomize(K8S / target)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(target: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(render_text(target)) if doc]


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each rendering's YAML, rendered once for the module."""
    result = {name: render_text(f"overlays/{name}") for name in OVERLAYS if "+" not in name}
    for name in (name for name in OVERLAYS if "+" in name):
        overlay, *components = name.split("+")
        proc = kustomize(wrapper(tmp_path_factory.mktemp("wrapped"), overlay, components))
        assert proc.returncode == 0, proc.stderr
        result[name] = proc.stdout
    return result


@pytest.fixture(scope="module")
def rendered(texts: dict[str, str]) -> dict[str, list[Obj]]:
    return {name: [doc for doc in yaml.safe_load_all(text) if doc] for name, text in texts.items()}


@pytest.fixture(scope="module")
def gke(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["gke"]


@pytest.fixture(scope="module")
def local(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["local"]


@pytest.fixture(scope="module")
def cloudsql(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["gke-cloudsql"]


@pytest.fixture(scope="module")
def demo(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["gke-loadbalancer"]


@pytest.fixture(scope="module")
def iap(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["gke+iap"]


def demo_path(overlay: str) -> bool:
    """The plain-HTTP demo, with or without components."""
    return overlay.split("+", maxsplit=1)[0] == "gke-loadbalancer"


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in {None, o["metadata"]["name"]}]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: list[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Obj = containers[0]
    return result


def pod_spec(objects: list[Obj]) -> Obj:
    result: Obj = one(objects, "Deployment")["spec"]["template"]["spec"]
    return result


def named_port(objects: list[Obj], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    return int(ports[name])


def broken(objects: list[Obj]) -> list[Obj]:
    """A deep copy to break on purpose."""
    return copy.deepcopy(objects)


GKE_KINDS = [
    "ConfigMap",
    "Deployment",
    "GCPBackendPolicy",
    "Gateway",
    "HTTPRoute",
    "HTTPRoute",
    "HealthCheckPolicy",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "PodMonitoring",
    "Rules",
    "Service",
    "ServiceAccount",
]
EDGE = {"Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"}


def test_each_overlay_renders_the_expected_objects(rendered: dict[str, list[Obj]]) -> None:
    kinds = {name: sorted(o["kind"] for o in objects) for name, objects in rendered.items()}
    assert kinds["gke"] == GKE_KINDS
    # The demo: the same, minus the Gateway API's objects, plus the policy that opens the serving port.
    assert kinds["gke-loadbalancer"] == sorted([k for k in GKE_KINDS if k not in EDGE] + ["NetworkPolicy"])
    # The components add a NetworkPolicy each (their egress) and change objects that exist.
    assert kinds["gke-cloudsql"] == kinds["gke+iap"] == sorted([*GKE_KINDS, "NetworkPolicy"])
    # The model key's ConfigMap is made by the deploy from the user's file, not by the component.
    assert kinds["gke+model-key"] == kinds["gke"]
    assert kinds["gke-loadbalancer+model-key"] == kinds["gke-loadbalancer"]
    # podman kube play runs the Deployment as one pod; autoscaler, budget and load balancer mean nothing there.
    assert kinds["local"] == ["Deployment", "ServiceAccount"]
    gke = rendered["gke"]
    # The generated ConfigMap's name ends in a hash of its data, so a change rolls the pods.
    assert re.fullmatch(r"chargecast-audit-default-[a-z0-9]{10}", one(gke, "ConfigMap")["metadata"]["name"])
    names = {(o["kind"], o["metadata"]["name"]) for objects in rendered.values() for o in objects}
    assert {name for kind, name in names if kind not in {"ConfigMap", "HTTPRoute", "NetworkPolicy"}} == {"chargecast"}
    assert {name for kind, name in names if kind == "HTTPRoute"} == {"chargecast", "chargecast-redirect"}
    assert {name for kind, name in names if kind == "NetworkPolicy"} == {
        "chargecast",
        "chargecast-loadbalancer",
        "chargecast-cloudsql",
        "chargecast-iap",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_strict_schema_validation_for_every_gke_version(
    overlay: str, texts: dict[str, str], rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    file = tmp_path / "rendered.yaml"
    file.write_text(texts[overlay])
    args = [dev_tool("kubernetes-validate"), "--strict"]
    for version in GKE_VERSIONS:
        args += ["-k", version]
    proc = subprocess.run([*args, str(file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout
    # Everything but the custom resources (checked against their CRDs below) was really checked.
    for obj in [o for o in rendered[overlay] if o["kind"] not in CUSTOM]:
        resource = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
        for version in GKE_VERSIONS:
            minor = version.rsplit(".", 1)[0]
            assert f"passed for resource {resource} against version {minor}" in proc.stdout, proc.stdout
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARN")]
    assert all(any(f"kind {kind} " in line for kind in CUSTOM) for line in warnings), warnings


def test_probes_hit_the_right_paths_on_the_serving_port(gke: list[Obj]) -> None:
    c = container(gke)
    port = named_port(gke, "http")
    assert port == 8080
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    # The startup probe must allow a slow model load before liveness can restart the pod.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    env = {e["name"]: e for e in c["env"]}
    assert env["CHARGECAST_HOST"]["value"] == "0.0.0.0"
    assert int(env["CHARGECAST_PORT"]["value"]) == port
    assert env["CHARGECAST_MODEL_DIR"]["value"] == "/app/models/current"


def test_api_keys_come_from_an_optional_secret(gke: list[Obj]) -> None:
    env = {e["name"]: e for e in container(gke)["env"]}
    ref = env["CHARGECAST_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "chargecast-api-keys", "key": "keys", "optional": True}


def test_service_is_cluster_internal_from_80_to_the_http_port(gke: list[Obj]) -> None:
    service = one(gke, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert named_port(gke, "http") == 8080
    assert service["spec"]["selector"] == NAME
    pod_labels = one(gke, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert NAME.items() <= pod_labels.items()
    # The Gateway controller attaches the pods through NEGs it manages: no Ingress or standalone NEG annotation.
    assert not service["metadata"].get("annotations")


def test_the_demo_is_the_tutorials_public_load_balancer(gke: list[Obj], demo: list[Obj]) -> None:
    service = one(demo, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == one(gke, "Service")["spec"]["ports"], "port 80 -> the pods' http"
    assert not {o["kind"] for o in demo} & EDGE, "no Gateway, routes or load-balancer policies"
    # Everything else is the secure overlay's, untouched.
    changed = {("Service", "chargecast"), ("NetworkPolicy", "chargecast-loadbalancer")}
    same = [o for o in demo if (o["kind"], o["metadata"]["name"]) not in changed]
    assert same == [o for o in gke if o["kind"] not in EDGE and o["kind"] != "Service"]


def test_autoscaler_keeps_2_to_10_replicas_on_cpu(gke: list[Obj]) -> None:
    hpa = one(gke, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chargecast"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    assert spec["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    # Utilization is measured against the request, so there must be one.
    assert container(gke)["resources"]["requests"]["cpu"]


def test_disruption_budget_lets_one_pod_go_at_a_time(gke: list[Obj]) -> None:
    spec = one(gke, "PodDisruptionBudget")["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") == 1
    assert spec["selector"] == {"matchLabels": NAME}


# -- custom resources against their CRDs (tests/crd.py) ---------------------------------------------


def custom_resources(rendered: dict[str, list[Obj]]) -> list[tuple[str, Obj]]:
    return [(name, o) for name, objects in rendered.items() for o in objects if o["kind"] in CUSTOM]


def test_custom_resources_match_their_crds(rendered: dict[str, list[Obj]]) -> None:
    """Defaults filled in, no unknown field, every CEL rule of every field present: what the API server runs."""
    found = custom_resources(rendered)
    assert {o["kind"] for _, o in found} == CUSTOM, "every CRD is used, so every one is checked"
    errors = {f"{name}: {o['kind']}/{o['metadata']['name']}": crd.crd_errors(o) for name, o in found}
    assert all(not e for e in errors.values()), {k: v for k, v in errors.items() if v}
    for _, obj in found:
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "chargecast"
        assert "namespace" not in obj["metadata"], "applied to kubectl's namespace, like every other object"


@pytest.mark.parametrize("kind", sorted(CUSTOM))
def test_the_manifests_use_each_crds_served_storage_version(kind: str, rendered: dict[str, list[Obj]]) -> None:
    (storage,) = [v["name"] for v in crd.crd(kind)["spec"]["versions"] if v.get("storage")]
    versions = {o["apiVersion"] for _, o in custom_resources(rendered) if o["kind"] == kind}
    assert versions == {f"{crd.crd(kind)['spec']['group']}/{storage}"}


@pytest.mark.parametrize("kind", sorted(CUSTOM))
def test_the_evaluator_understands_every_cel_rule_of_the_crds(kind: str) -> None:
    """A rule it could not parse, or a function it lacks, would fail every object: none may be left out."""
    for version in crd.crd(kind)["spec"]["versions"]:
        rules = crd.rules_in(kind, version["name"])
        assert all(crd.compiles(rule) for rule in rules)
        assert [rule for rule in rules if crd.unknown_functions(rule)] == []
    if kind in {"Gateway", "HTTPRoute", "HealthCheckPolicy", "PodMonitoring"}:
        assert crd.rules_in(kind, "v1"), "these CRDs carry CEL rules: the walk must find them"


def test_cel_follows_kubernetes_semantics() -> None:
    """Escaped names (namespace is __namespace__), heterogeneous equality, absent fields as errors."""
    ref = {"properties": {"namespace": {"type": "string"}, "name": {"type": "string"}}, "type": "object"}
    rule = [{"rule": "has(self.__namespace__) && self.__namespace__ == 'x'", "message": "m"}]
    assert crd.cel_errors({"namespace": "x"}, {**ref, "x-kubernetes-validations": rule}) == []
    assert crd.cel_errors({"name": "x"}, {**ref, "x-kubernetes-validations": rule}) == ["<root>: m"]
    port = {"x-kubernetes-int-or-string": True, "x-kubernetes-validations": [{"rule": "self != 0", "message": "p"}]}
    assert crd.cel_errors("metrics", port) == []
    assert crd.cel_errors(0, port) == ["<root>: p"]
    absent = {**ref, "x-kubernetes-validations": [{"rule": "self.name == 'a' ? true : true", "message": "a"}]}
    (error,) = crd.cel_errors({}, absent)
    assert error.startswith("<root>: a (evaluation error:")


def test_the_crd_check_rejects_what_the_api_server_would(gke: list[Obj]) -> None:
    """Guards the test above against passing vacuously: unknown fields, wrong types, missing fields, CEL."""
    pm = copy.deepcopy(one(gke, "PodMonitoring"))
    pm["spec"]["endpoints"][0]["prot"] = pm["spec"]["endpoints"][0].pop("port")
    assert any("'prot' was unexpected" in e for e in crd.crd_errors(pm)), crd.crd_errors(pm)
    rules = copy.deepcopy(one(gke, "Rules"))
    first = rules["spec"]["groups"][0]["rules"][0]
    first["fro"] = first.pop("for")
    first["labels"]["severity"] = 1
    errors = crd.crd_errors(rules)
    assert any("'fro' was unexpected" in e for e in errors), errors
    assert any("1 is not of type 'string'" in e for e in errors), errors
    del rules["spec"]["groups"][1]["name"]
    assert any("'name' is a required property" in e for e in crd.crd_errors(rules))
    rules = copy.deepcopy(one(gke, "Rules"))
    rules["spec"]["groups"][0]["rules"][0]["record"] = "x"  # an alert that also records
    rules["spec"]["groups"][0]["rules"].append({"record": "y", "expr": "up", "annotations": {"a": "b"}})
    assert [e.split(": ", 1)[1] for e in crd.crd_errors(rules)] == [
        "Must set exactly one of Record or Alert",
        "Annotations are only allowed for alerting rules",
    ]


BREAKS = [
    # (kind, name, how to break it, what the API server says)
    (
        "HealthCheckPolicy",
        None,
        lambda s: s["default"]["config"]["httpHealthCheck"].pop("portSpecification"),
        "for portSpecification being USE_FIXED_PORT, port must be set",
    ),
    (
        "HealthCheckPolicy",
        None,
        lambda s: s["default"].update(timeoutSec=9),
        "timeOutSec cannot exceed checkIntervalSec",
    ),
    (
        "HealthCheckPolicy",
        None,
        lambda s: s["default"]["config"].update(type="TCP"),
        "tcpHealthCheck must be specified for type TCP",
    ),
    ("Gateway", None, lambda s: s["listeners"][1].update(name="https"), "Listener name must be unique"),
    ("Gateway", None, lambda s: s["listeners"][1].update(tls={"mode": "Terminate"}), "tls must not be specified"),
    ("Gateway", None, lambda s: s["addresses"][0].update(type="IPAddress"), "is not valid under any of the given"),
    (
        "HTTPRoute",
        "chargecast-redirect",
        lambda s: s["rules"][0].update(backendRefs=[{"name": "chargecast", "port": 80}]),
        "RequestRedirect filter must not be used together with backendRefs",
    ),
    ("HTTPRoute", "chargecast", lambda s: s["rules"][0]["backendRefs"][0].pop("port"), "Must have port for Service"),
    (
        "HTTPRoute",
        "chargecast-redirect",
        lambda s: s["rules"][0]["filters"][0].update(type="URLRewrite"),
        "filter.requestRedirect must be nil if the filter.type is not RequestRedirect",
    ),
    (
        "GCPBackendPolicy",
        None,
        lambda s: s["default"]["logging"].update(sampleRate=2_000_000),
        "greater than the maximum",
    ),
    ("GCPBackendPolicy", None, lambda s: s["default"].update(securtyPolicy="x"), "'securtyPolicy' was unexpected"),
    ("GCPBackendPolicy", None, lambda s: s.pop("targetRef"), "'targetRef' is a required property"),
]


@pytest.mark.parametrize(("kind", "name", "breaking", "message"), BREAKS)
def test_the_crd_check_rejects_broken_edge_objects(
    gke: list[Obj], kind: str, name: str | None, breaking: Any, message: str
) -> None:
    obj = copy.deepcopy(one(gke, kind, name))
    breaking(obj["spec"])
    errors = crd.crd_errors(obj)
    assert any(message in e for e in errors), errors


# -- what no schema states (tests/gke_checks.py): each on the manifests and on a broken copy ----------


@pytest.mark.parametrize("overlay", SECURE)
def test_the_health_check_asks_what_the_readiness_probe_asks(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    assert checks.health_check_problems(objects) == []
    http = one(objects, "HealthCheckPolicy")["spec"]["default"]["config"]["httpHealthCheck"]
    assert (http["requestPath"], http["port"]) == ("/readyz", named_port(objects, "http"))
    wrong = broken(objects)
    one(wrong, "HealthCheckPolicy")["spec"]["default"]["config"]["httpHealthCheck"]["requestPath"] = "/healthz"
    assert checks.health_check_problems(wrong) == [
        "chargecast checks ('/healthz', 8080), the readiness probe ('/readyz', 8080)"
    ]
    wrong = broken(objects)
    container(wrong)["readinessProbe"]["httpGet"]["port"] = 9090
    assert "the readiness probe ('/readyz', 9090)" in checks.health_check_problems(wrong)[0]
    wrong = broken(objects)
    http = one(wrong, "HealthCheckPolicy")["spec"]["default"]["config"]["httpHealthCheck"]
    del http["port"], http["portSpecification"]  # the serving port, resolved through the Service: still right
    assert checks.health_check_problems(wrong) == []
    wrong = [o for o in broken(objects) if o["kind"] != "HealthCheckPolicy"]
    assert checks.health_check_problems(wrong) == ["no HealthCheckPolicy: the load balancer would check / instead"]


@pytest.mark.parametrize("overlay", SECURE)
def test_each_service_has_at_most_one_backend_policy(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    assert checks.backend_policy_problems(objects) == []
    second = copy.deepcopy(one(objects, "GCPBackendPolicy"))
    second["metadata"]["name"] = "chargecast-iap"
    (problem,) = checks.backend_policy_problems([*objects, second])
    assert problem.startswith("2 GCPBackendPolicies target")
    wrong = broken(objects)
    one(wrong, "GCPBackendPolicy")["spec"]["targetRef"]["name"] = "other"
    assert checks.backend_policy_problems(wrong) == [
        "GCPBackendPolicy chargecast targets no Service: {'group': '', 'kind': 'Service', 'name': 'other'}"
    ]


@pytest.mark.parametrize("overlay", GKE_OVERLAYS)
def test_only_the_load_balancer_reaches_the_serving_port(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    """Default deny; the LB ranges alone on http (anyone, on the demo); the collectors alone on metrics."""
    objects = rendered[overlay]
    serving = {checks.ANYONE} if demo_path(overlay) else set(checks.LB_RANGES)
    assert checks.network_problems(objects, serving) == []
    assert checks.ingress_peers(objects, "http") == serving
    assert checks.ingress_peers(objects, 8080) == serving
    wrong = broken(objects)  # a third range on the serving port
    one(wrong, "NetworkPolicy", "chargecast")["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "10.0.0.0/8"}})
    if not demo_path(overlay):
        assert checks.network_problems(wrong, serving)[0].startswith("port http admits ['10.0.0.0/8', ")
    wrong = broken(objects)  # a rule for every port
    one(wrong, "NetworkPolicy", "chargecast")["spec"]["ingress"][1].pop("ports")
    problems = checks.network_problems(wrong, serving)
    assert any("opens ports beyond" in p for p in problems)
    # The collectors would reach the serving port too (on the demo, anyone already does).
    assert any(p.startswith("port http admits") for p in problems) == (not demo_path(overlay))
    if demo_path(overlay):  # without its own policy the demo would be unreachable
        wrong = [o for o in broken(objects) if o["metadata"]["name"] != "chargecast-loadbalancer"]
        assert checks.network_problems(wrong, serving)[0].startswith("port http admits ['130.211.0.0/22', ")
    wrong = [o for o in broken(objects) if o["kind"] != "NetworkPolicy"]
    assert checks.network_problems(wrong, serving)[:2] == [
        "no NetworkPolicy isolates the pods' Ingress",
        "no NetworkPolicy isolates the pods' Egress",
    ]


def test_the_secure_policy_admits_exactly_the_documented_peers(gke: list[Obj]) -> None:
    policy = one(gke, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": NAME}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert [r["ports"] for r in policy["spec"]["ingress"]] == [
        [{"port": "http", "protocol": "TCP"}],
        [{"port": "metrics", "protocol": "TCP"}],
    ]
    assert checks.ingress_peers(gke, "metrics") == {checks.describe(checks.COLLECTOR)}


def test_egress_is_dns_unless_a_component_needs_more(gke: list[Obj], cloudsql: list[Obj], iap: list[Obj]) -> None:
    """The service calls nothing; the Cloud SQL proxy needs its token, its API and its instance; IAP its keys."""
    dns = {("UDP", 53, checks.ANYONE), ("TCP", 53, checks.ANYONE)}
    assert checks.egress(gke) == dns
    assert checks.egress(cloudsql) == dns | {
        ("TCP", 80, "169.254.169.254/32"),
        ("TCP", 8080, "169.254.169.254/32"),
        ("TCP", 988, "169.254.169.252/32"),
        ("TCP", 987, "169.254.169.252/32"),
        ("TCP", 443, PUBLIC),
        ("TCP", 3307, checks.ANYONE),
    }
    assert checks.egress(iap) == dns | {("TCP", 443, PUBLIC)}
    assert not any("169.254.169" in to for _, _, to in checks.egress(iap)), "no metadata server without Cloud SQL"


def test_the_podmonitoring_targets_the_metrics_port(rendered: dict[str, list[Obj]]) -> None:
    for name in GKE_OVERLAYS:
        assert checks.podmonitoring_problems(rendered[name]) == [], name
    wrong = broken(rendered["gke"])
    one(wrong, "PodMonitoring")["spec"]["endpoints"][0]["port"] = "http"
    assert checks.podmonitoring_problems(wrong) == ["chargecast scrapes port http, not the metrics port"]
    wrong = broken(rendered["gke"])
    one(wrong, "PodMonitoring")["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    assert checks.podmonitoring_problems(wrong)[0].startswith("chargecast selects other pods")


@pytest.mark.parametrize("overlay", SECURE)
def test_no_service_faces_the_internet_on_the_secure_path(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    assert checks.loadbalancer_problems(rendered[overlay]) == []
    assert checks.loadbalancer_problems(rendered["gke-loadbalancer"]) == ["Service chargecast is of type LoadBalancer"]
    wrong = broken(rendered[overlay])
    one(wrong, "Service")["spec"]["type"] = "NodePort"
    assert checks.loadbalancer_problems(wrong) == ["Service chargecast is of type NodePort"]


@pytest.mark.parametrize("overlay", SECURE)
def test_the_http_listener_only_redirects(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    assert checks.listener_problems(objects) == []
    assert [r["metadata"]["name"] for r in checks.attached(objects, "http")] == ["chargecast-redirect"]
    assert [r["metadata"]["name"] for r in checks.attached(objects, "https")] == ["chargecast"]
    wrong = broken(objects)  # the app's route without a section hangs on both listeners: plain HTTP to the app
    del one(wrong, "HTTPRoute", "chargecast")["spec"]["parentRefs"][0]["sectionName"]
    assert checks.listener_problems(wrong) == ["route chargecast on HTTP does more than redirect"]
    wrong = broken(objects)
    one(wrong, "HTTPRoute", "chargecast-redirect")["spec"]["rules"][0]["filters"][0]["requestRedirect"]["scheme"] = (
        "http"
    )
    assert checks.listener_problems(wrong) == ["route chargecast-redirect on HTTP does more than redirect"]
    wrong = broken(objects)
    one(wrong, "Gateway")["spec"]["listeners"][0]["tls"] = {"certificateRefs": [{"name": "cert"}]}
    assert checks.listener_problems(wrong) == [
        "the https listener names certificates itself: the certmap annotation supplies them"
    ]
    wrong = [o for o in broken(objects) if o["metadata"]["name"] != "chargecast-redirect"]
    assert checks.listener_problems(wrong) == ["nothing on the http listener redirects to https"]


@pytest.mark.parametrize("overlay", SECURE)
def test_the_gateway_uses_the_fixed_google_cloud_names(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    assert checks.gateway_problems(objects) == []
    gateway = one(objects, "Gateway")
    assert gateway["metadata"]["annotations"] == {"networking.gke.io/certmap": "chargecast-certmap"}
    assert gateway["spec"]["addresses"] == [{"type": "NamedAddress", "value": "chargecast-ip"}]
    wrong = broken(objects)
    one(wrong, "Gateway")["spec"]["addresses"] = [{"type": "NamedAddress", "value": "other-ip"}]
    one(wrong, "Gateway")["metadata"]["annotations"] = {}
    one(wrong, "GCPBackendPolicy")["spec"]["default"].pop("securityPolicy")
    assert checks.gateway_problems(wrong) == [
        "addresses [{'type': 'NamedAddress', 'value': 'other-ip'}], not the reserved chargecast-ip",
        "certmap None, not chargecast-certmap",
        "chargecast does not attach Cloud Armor policy chargecast-armor",
    ]


@pytest.mark.parametrize("overlay", SECURE)
def test_routes_reach_existing_listeners_and_service_ports(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    assert checks.route_problems(objects) == []
    for route in (one(objects, "HTTPRoute", n) for n in ("chargecast", "chargecast-redirect")):
        assert route["spec"]["hostnames"] == ["chargecast.example.com"], "the placeholder the deploy replaces"
    wrong = broken(objects)
    one(wrong, "HTTPRoute", "chargecast")["spec"]["rules"][0]["backendRefs"][0]["port"] = 8080
    one(wrong, "HTTPRoute", "chargecast-redirect")["spec"]["parentRefs"][0]["sectionName"] = "plain"
    assert checks.route_problems(wrong) == [
        "route chargecast sends to {'name': 'chargecast', 'port': 8080}, which is no Service port",
        "route chargecast-redirect hangs on no listener of Gateway chargecast: "
        "{'name': 'chargecast', 'sectionName': 'plain'}",
    ]


# -- the load balancer's settings ---------------------------------------------------------------------


def test_the_backend_policy_fits_the_servers_timeouts(gke: list[Obj]) -> None:
    default = one(gke, "GCPBackendPolicy")["spec"]["default"]
    assert default["securityPolicy"] == "chargecast-armor"
    assert default["logging"] == {"enabled": True, "sampleRate": 1_000_000}, "every request: Cloud Armor's refusals too"
    # The server's own limits answer first (a clear 408), not the load balancer's bare timeout.
    assert default["timeoutSec"] > Settings().csv_upload_timeout + 10
    pod = pod_spec(gke)
    pause = container(gke)["lifecycle"]["preStop"]["sleep"]["seconds"]
    draining = default["connectionDraining"]["drainingTimeoutSec"]
    assert pause + DRAIN_SECONDS <= draining <= pod["terminationGracePeriodSeconds"]
    # Google's load balancer reuses an idle connection for up to 600 s: the pod must not close it first.
    env = {e["name"]: e.get("value") for e in container(gke)["env"]}
    assert int(env["CHARGECAST_KEEPALIVE_SECONDS"]) > GOOGLE_LB_KEEPALIVE_SECONDS
    Settings(keepalive_seconds=int(env["CHARGECAST_KEEPALIVE_SECONDS"]))  # within the setting's bounds
    check = one(gke, "HealthCheckPolicy")["spec"]["default"]
    probe = container(gke)["readinessProbe"]
    assert (check["checkIntervalSec"], check["timeoutSec"]) == (probe["periodSeconds"], probe["timeoutSeconds"])
    assert check["unhealthyThreshold"] == probe["failureThreshold"]


def test_the_iap_component_turns_iap_on_in_the_one_backend_policy(gke: list[Obj], iap: list[Obj]) -> None:
    policy = one(iap, "GCPBackendPolicy")
    assert policy["spec"]["default"]["iap"] == {
        "enabled": True,
        "oauth2ClientSecret": {"name": "chargecast-iap"},
        "clientID": "IAP_CLIENT_ID",
    }
    without = copy.deepcopy(policy)
    del without["spec"]["default"]["iap"]
    assert without == one(gke, "GCPBackendPolicy"), "only IAP changes"
    assert [o for o in iap if o["kind"] not in {"GCPBackendPolicy", "NetworkPolicy"}] == [
        o for o in gke if o["kind"] not in {"GCPBackendPolicy", "NetworkPolicy"}
    ]


def test_iap_over_the_demo_fails_to_render(tmp_path: Path) -> None:
    """IAP needs the Gateway: over the plain load balancer the component refuses instead of doing nothing."""
    proc = kustomize(wrapper(tmp_path, "gke-loadbalancer", ["iap"]))
    assert proc.returncode != 0
    assert "no matches for Id GCPBackendPolicy.v1.networking.gke.io/chargecast" in proc.stderr


@pytest.mark.parametrize("overlay", ["gke", "gke-loadbalancer"])
def test_the_model_key_component_mounts_the_key_read_only_and_changes_nothing_else(
    overlay: str, rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHARGECAST_MODEL_PUBLIC_KEY names public.pem of the ConfigMap chargecast-model-key, mounted read-only."""
    objects, plain = rendered[f"{overlay}+model-key"], rendered[overlay]
    c = container(objects)
    (setting,) = [e for e in c["env"] if e["name"] == "CHARGECAST_MODEL_PUBLIC_KEY"]
    assert setting == {"name": "CHARGECAST_MODEL_PUBLIC_KEY", "value": MODEL_KEY}
    monkeypatch.setenv("CHARGECAST_MODEL_PUBLIC_KEY", MODEL_KEY)
    assert Settings().model_public_key == Path(MODEL_KEY), "the name serve and predict read"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "model-key"]
    assert mount == {"name": "model-key", "mountPath": str(Path(MODEL_KEY).parent), "readOnly": True}
    (volume,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == "model-key"]
    assert volume["configMap"] == {
        "name": "chargecast-model-key",
        "items": [{"key": "public.pem", "path": Path(MODEL_KEY).name}],
        "defaultMode": 0o444,
    }
    assert "optional" not in volume["configMap"], "without the key no pod starts: never an unchecked model"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Take those three away and the Deployment is the overlay's own; every other object is untouched.
    deployment = yaml.safe_load(yaml.safe_dump(one(objects, "Deployment")))
    pod = deployment["spec"]["template"]["spec"]
    app = pod["containers"][0]
    app["env"] = [e for e in app["env"] if e != setting]
    app["volumeMounts"] = [m for m in app["volumeMounts"] if m != mount]
    pod["volumes"] = [v for v in pod["volumes"] if v != volume]
    assert deployment == one(plain, "Deployment")
    assert [o for o in objects if o["kind"] != "Deployment"] == [o for o in plain if o["kind"] != "Deployment"]


def test_workload_identity_without_key_files(rendered: dict[str, list[Obj]]) -> None:
    """The ServiceAccount names the Google service account; no key Secret, file or variable exists."""
    for name in GKE_OVERLAYS:
        objects = rendered[name]
        account = one(objects, "ServiceAccount")
        assert account["metadata"]["annotations"] == {
            "iam.gke.io/gcp-service-account": "chargecast@PROJECT.iam.gserviceaccount.com"
        }
        assert account["automountServiceAccountToken"] is False, "the metadata server needs no mounted token"
        pod = pod_spec(objects)
        assert pod["automountServiceAccountToken"] is False
        assert not any("secret" in v or "projected" in v for v in pod["volumes"]), name
        for c in pod["containers"] + pod.get("initContainers", []):
            names = {e["name"] for e in c.get("env", [])}
            assert "GOOGLE_APPLICATION_CREDENTIALS" not in names, name
            assert not any("credentials" in a for a in c.get("args", [])), name
    assert "annotations" not in one(rendered["local"], "ServiceAccount")["metadata"]


def test_podmonitoring_scrapes_the_metrics_port(gke: list[Obj]) -> None:
    pm = one(gke, "PodMonitoring")
    spec = pm["spec"]
    assert spec["selector"] == {"matchLabels": NAME}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics"  # the supervisor's port; the public one answers 404
    assert named_port(gke, "metrics") == 9090
    env = {e["name"]: e for e in container(gke)["env"]}
    assert int(env["CHARGECAST_METRICS_PORT"]["value"]) == 9090
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+(ms|s|m)", endpoint["interval"])
    assert pm["metadata"]["labels"]["app.kubernetes.io/name"] == "chargecast"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_pod_security_profile(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    pod = pod_spec(objects)
    c = container(objects)
    sc = {**pod["securityContext"], **c["securityContext"]}
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert not c["securityContext"].get("privileged", False)
    assert not any(key in pod for key in ("hostNetwork", "hostPID", "hostIPC"))
    # The writable paths, /tmp and the audit spool, are emptyDirs (restricted allows no hostPath); the
    # model key, with the model-key component, is a ConfigMap mounted read-only.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert set(mounts) == {"/tmp", "/var/spool/chargecast"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all(set(volumes[name]) == {"name", "emptyDir"} for name in mounts.values())
    read_only = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"] if m.get("readOnly")}
    assert set(read_only) == ({"/etc/chargecast/model-key"} if "model-key" in overlay else set())
    assert all(set(v) == {"name", "configMap"} for v in read_only.values())
    assert pod["automountServiceAccountToken"] is False
    account = one(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_rolling_update_never_drops_capacity(gke: list[Obj]) -> None:
    strategy = one(gke, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


@pytest.mark.parametrize("target", ["base", "overlays/gke"])
def test_replicas_are_left_to_the_autoscaler(target: str) -> None:
    assert "replicas" not in one(render(target), "Deployment")["spec"]


def test_shutdown_fits_the_servers_drain(gke: list[Obj]) -> None:
    pre_stop = container(gke)["lifecycle"]["preStop"]
    # The native handler: no /bin/sleep needed in the image.
    assert set(pre_stop) == {"sleep"}
    pause = pre_stop["sleep"]["seconds"]
    assert pause >= 3, "endpoints and the load balancer need a few seconds to stop sending traffic"
    assert pod_spec(gke)["terminationGracePeriodSeconds"] >= pause + DRAIN_SECONDS


def test_resources_are_requested_and_memory_is_capped(gke: list[Obj]) -> None:
    resources = container(gke)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert set(requests) == {"cpu", "memory"}
    assert "cpu" not in limits, "a CPU limit only throttles; the HPA works from requests"

    def mebibytes(quantity: str) -> int:
        match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
        assert match, f"unexpected memory quantity {quantity}"
        return int(match[1]) * (1024 if match[2] == "Gi" else 1)

    assert mebibytes(requests["memory"]) >= 128, "the server needs ~100 MB with 2 workers"
    assert mebibytes(limits["memory"]) >= mebibytes(requests["memory"])


def test_replicas_spread_over_nodes_and_zones(gke: list[Obj]) -> None:
    spread = {c["topologyKey"]: c for c in pod_spec(gke)["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread.values():
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"] == {"matchLabels": NAME}


@pytest.mark.parametrize("overlay", GKE_OVERLAYS)
def test_every_object_carries_the_common_labels(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    """`chargecast deploy status` lists objects by app.kubernetes.io/name (and teardown deletes by it)."""
    for obj in rendered[overlay]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "chargecast", obj["kind"]
        assert labels["app.kubernetes.io/part-of"] == "chargecast", obj["kind"]
    assert one(rendered[overlay], "Deployment")["spec"]["selector"] == {"matchLabels": NAME}


def test_gke_image_is_the_placeholder_the_deploy_command_replaces(gke: list[Obj]) -> None:
    image = container(gke)["image"]
    assert image.startswith(GKE_IMAGE_PLACEHOLDER + ":")


def test_local_overlay_is_one_pod_on_loopback(local: list[Obj]) -> None:
    deployment = one(local, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    c = container(local)
    assert c["image"] == "localhost/chargecast:dev"
    assert c["imagePullPolicy"] in {"Never", "IfNotPresent"}
    assert sorted(c["ports"], key=lambda p: p["containerPort"]) == [
        {"name": "http", "containerPort": 8080, "hostPort": 8080, "hostIP": "127.0.0.1", "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "hostPort": 9090, "hostIP": "127.0.0.1", "protocol": "TCP"},
    ]
    # podman runs no lifecycle hooks; the liveness probe is what it turns into a health check.
    assert "lifecycle" not in c
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget", "PodMonitoring"} & {o["kind"] for o in local}


# -- the audit log's URL and Cloud SQL ------------------------------------------------------------


def test_the_audit_log_is_off_unless_the_optional_secret_names_it(gke: list[Obj]) -> None:
    """A pod has no disk shared or kept: the app's local SQLite default would split and lose the record."""
    c = container(gke)
    config = one(gke, "ConfigMap")
    assert config["data"] == {"CHARGECAST_AUDIT_URL": "off"}
    # Later envFrom sources win, and an env entry would beat both: the Secret must come last, alone.
    assert c["envFrom"] == [
        {"configMapRef": {"name": config["metadata"]["name"]}},
        {"secretRef": {"name": "chargecast-audit", "optional": True}},
    ]
    assert "CHARGECAST_AUDIT_URL" not in {e["name"] for e in c["env"]}
    assert config["metadata"]["labels"]["app.kubernetes.io/name"] == "chargecast"


def test_the_local_overlay_keeps_the_apps_own_audit_default(local: list[Obj]) -> None:
    c = container(local)
    assert "envFrom" not in c
    assert "CHARGECAST_AUDIT_URL" not in {e["name"] for e in c["env"]}


def proxy(objects: list[Obj]) -> Obj:
    (sidecar,) = pod_spec(objects)["initContainers"]
    assert sidecar["name"] == "cloud-sql-proxy"
    result: Obj = sidecar
    return result


def test_the_cloudsql_proxy_is_a_native_sidecar_on_loopback(cloudsql: list[Obj]) -> None:
    sidecar = proxy(cloudsql)
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: up before the app, down after it"
    assert re.fullmatch(r"gcr\.io/cloud-sql-connectors/cloud-sql-proxy:2\.\d+\.\d+", sidecar["image"]), "pinned"
    args = sidecar["args"]
    assert {"--port=5432", "--structured-logs", "--health-check", "--http-address=0.0.0.0"} <= set(args)
    assert not any(a.startswith("--address") for a in args), "the default address is 127.0.0.1: pod-local"
    assert args[-1] == "$(CLOUDSQL_INSTANCE)"
    assert {e["name"]: e["value"] for e in sidecar["env"]} == {"CLOUDSQL_INSTANCE": "PROJECT:REGION:INSTANCE"}
    (health,) = [int(a.split("=")[1]) for a in args if a.startswith("--http-port=")]
    app_ports = {p["containerPort"] for p in container(cloudsql)["ports"]}
    assert health not in app_ports | {5432}, "the proxy's default health/metrics port 9090 is the app's metrics port"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/startup", "port": health}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/liveness", "port": health}
    assert "readinessProbe" not in sidecar, "a database outage must not take forecasts off the load balancer"
    assert set(sidecar["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in sidecar["resources"]["limits"]


def test_the_cloudsql_overlay_changes_only_the_pod_template(gke: list[Obj], cloudsql: list[Obj]) -> None:
    """Plus the proxy's egress, a NetworkPolicy of its own."""
    added = one(cloudsql, "NetworkPolicy", "chargecast-cloudsql")
    assert [o for o in cloudsql if o["kind"] != "Deployment" and o is not added] == [
        o for o in gke if o["kind"] != "Deployment"
    ]
    assert container(cloudsql) == container(gke), "the app container is untouched: its URL comes from the Secret"
    with_proxy = yaml.safe_load(yaml.safe_dump(one(cloudsql, "Deployment")))
    del with_proxy["spec"]["template"]["spec"]["initContainers"]
    assert with_proxy == one(gke, "Deployment")


def test_every_container_of_the_cloudsql_pod_is_restricted(cloudsql: list[Obj]) -> None:
    pod = pod_spec(cloudsql)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(key in pod for key in ("hostNetwork", "hostPID", "hostIPC"))
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc.get("seccompProfile", pod["securityContext"]["seccompProfile"]) == {"type": "RuntimeDefault"}
        assert not sc.get("privileged", False), c["name"]
        assert not any("hostPort" in port for port in c.get("ports", [])), c["name"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "audit-spool"}, "no hostPath, no key file"


def _quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


@pytest.mark.parametrize("overlay", ["gke", "local"])
def test_the_audit_spool_has_a_volume_that_holds_its_limit(overlay: str, request: pytest.FixtureRequest) -> None:
    """The spool's default limit must fit the volume it is written to, never the 64Mi /tmp."""
    from chargecast.settings import Settings

    objects = request.getfixturevalue(overlay)
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    spool = env["CHARGECAST_AUDIT_SPOOL_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    volume = volumes[mounts[spool]]
    limit = int(env.get("CHARGECAST_AUDIT_SPOOL_MAX_BYTES") or Settings().audit_spool_max_bytes)
    assert _quantity(volume["emptyDir"]["sizeLimit"]) >= limit + (16 << 20)  # and a margin for a torn batch
    assert mounts[spool] != mounts.get("/tmp")
