"""The Kubernetes manifests, rendered by the real kustomize (kubectl's) and validated with the
Kubernetes API schemas of the versions GKE offers (1.32-1.35).

No cluster runs here: the gke overlay, the autoscaler, the disruption budget, the PodMonitoring and
the load balancer are checked only against schemas and by the assertions below. PodMonitoring and
Rules are Google custom resources without a schema in kubernetes-validate: they are validated against
the real CRDs in ../shared/k8s-crds (their openAPIV3Schema, closed to unknown fields as the API
server's strict field validation is, plus the CEL rules by hand).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]  # no stubs in the dev lock
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]  # stubs (types-PyYAML) are optional here

from chargecast.deploy.gke import GKE_IMAGE_PLACEHOLDER
from tools import dev_tool

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
GKE_VERSIONS = ("1.32.0", "1.33.0", "1.34.0", "1.35.0")
DRAIN_SECONDS = 10  # the server finishes in-flight requests within 10 s of SIGTERM
NAME = {"app.kubernetes.io/name": "chargecast"}
CRDS = ROOT.parent / "shared" / "k8s-crds"
CUSTOM = {
    "PodMonitoring": "monitoring.googleapis.com_podmonitorings.yaml",
    "Rules": "monitoring.googleapis.com_rules.yaml",
}

Obj = dict[str, Any]


def render_text(target: str) -> str:
    proc = subprocess.run(
        [dev_tool("kubectl"), "kustomize", str(K8S / target)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(target: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(render_text(target)) if doc]


@pytest.fixture(scope="module")
def gke() -> list[Obj]:
    return render("overlays/gke")


@pytest.fixture(scope="module")
def local() -> list[Obj]:
    return render("overlays/local")


@pytest.fixture(scope="module")
def cloudsql() -> list[Obj]:
    return render("overlays/gke-cloudsql")


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
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


def test_each_overlay_renders_the_expected_objects(gke: list[Obj], local: list[Obj]) -> None:
    assert sorted(o["kind"] for o in gke) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PodMonitoring",
        "Rules",
        "Service",
        "ServiceAccount",
    ]
    # podman kube play runs the Deployment as one pod; autoscaler, budget and load balancer mean nothing there.
    assert sorted(o["kind"] for o in local) == ["Deployment", "ServiceAccount"]
    # The generated ConfigMap's name ends in a hash of its data, so a change rolls the pods.
    assert re.fullmatch(r"chargecast-audit-default-[a-z0-9]{10}", one(gke, "ConfigMap")["metadata"]["name"])
    assert all(o["metadata"]["name"] == "chargecast" for o in gke + local if o["kind"] != "ConfigMap")


@pytest.mark.parametrize("overlay", ["gke", "gke-cloudsql", "local"])
def test_strict_schema_validation_for_every_gke_version(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(render_text(f"overlays/{overlay}"))
    args = [dev_tool("kubernetes-validate"), "--strict"]
    for version in GKE_VERSIONS:
        args += ["-k", version]
    proc = subprocess.run([*args, str(rendered)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout
    # Everything but the custom resources (checked against their CRDs below) was really checked.
    objects = [o for o in render(f"overlays/{overlay}") if o["kind"] not in CUSTOM]
    for obj in objects:
        resource = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
        for version in GKE_VERSIONS:
            minor = version.rsplit(".", 1)[0]
            assert f"passed for resource {resource} against version {minor}" in proc.stdout, proc.stdout
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARN")]
    assert all(any(f"kind {kind} " in line for kind in CUSTOM) for line in warnings), warnings


def test_the_validator_rejects_what_a_cluster_would_reject(gke: list[Obj], tmp_path: Path) -> None:
    """Guards the test above against passing vacuously: strict mode sees typos and API versions."""
    deployment = one(gke, "Deployment")
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(deployment))
    validate = [dev_tool("kubernetes-validate"), "--strict", "--quiet"]
    proc = subprocess.run(
        [*validate, "-k", "1.33.0", str(tmp_path / "typo.yaml")], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "readinesProbe" in proc.stdout
    # The native preStop sleep handler is what needs Kubernetes 1.29 or newer (GKE offers 1.32+).
    proc = subprocess.run(
        [*validate, "-k", "1.28.0", str(tmp_path / "ok.yaml")], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "'sleep' was unexpected" in proc.stdout


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


def test_service_is_a_load_balancer_from_80_to_the_http_port(gke: list[Obj]) -> None:
    service = one(gke, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert named_port(gke, "http") == 8080
    assert service["spec"]["selector"] == NAME
    pod_labels = one(gke, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert NAME.items() <= pod_labels.items()


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


def closed(schema: Obj) -> Obj:
    """The schema with unknown fields refused wherever it lists the known ones.

    The API server drops (or, with kubectl's default strict field validation, refuses) fields a
    structural schema does not declare; plain JSON Schema would let them through.
    """
    result = {key: closed(value) if isinstance(value, dict) else value for key, value in schema.items()}
    for key in ("properties", "patternProperties"):
        if isinstance(schema.get(key), dict):
            result[key] = {name: closed(sub) for name, sub in schema[key].items()}
    if isinstance(schema.get("items"), dict):
        result["items"] = closed(schema["items"])
    preserves = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserves:
        result["additionalProperties"] = False
    return result


def crd_schema(kind: str, version: str) -> Obj:
    """spec.versions[name == version].schema.openAPIV3Schema of the real CRD in ../shared/k8s-crds."""
    path = CRDS / CUSTOM[kind]
    if not path.is_file():
        message = f"{path} is missing (the repository sits beside shared/, which holds the CRDs)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: Obj = served["schema"]["openAPIV3Schema"]
    return schema


def crd_errors(obj: Obj) -> list[str]:
    """Where ``obj`` breaks its CRD's schema: one line per error, empty when it is valid."""
    group, version = obj["apiVersion"].split("/")
    assert group == "monitoring.googleapis.com"
    validator = jsonschema.Draft4Validator(closed(crd_schema(obj["kind"], version)))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def rule_cel_errors(rule: Obj) -> list[str]:
    """The Rules CRD's two CEL rules on each rule (x-kubernetes-validations), which JSON Schema skips."""
    errors = []
    if ("record" in rule) + ("alert" in rule) != 1:
        errors.append("Must set exactly one of Record or Alert")
    if "annotations" in rule and "alert" not in rule:
        errors.append("Annotations are only allowed for alerting rules")
    return errors


@pytest.mark.parametrize("kind", sorted(CUSTOM))
def test_custom_resources_match_their_crds(gke: list[Obj], kind: str) -> None:
    obj = one(gke, kind)
    assert crd_errors(obj) == []
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "chargecast"
    assert "namespace" not in obj["metadata"], "applied to kubectl's namespace, like every other object"
    if kind == "Rules":
        item = crd_schema("Rules", "v1")["properties"]["spec"]["properties"]["groups"]["items"]
        cel = item["properties"]["rules"]["items"]["x-kubernetes-validations"]
        assert {c["message"] for c in cel} == {
            "Must set exactly one of Record or Alert",
            "Annotations are only allowed for alerting rules",
        }, "the CRD gained a CEL rule: check it in rule_cel_errors"
        rules = [rule for group in obj["spec"]["groups"] for rule in group["rules"]]
        assert rules
        assert [error for rule in rules for error in rule_cel_errors(rule)] == []
        durations = [group["interval"] for group in obj["spec"]["groups"]] + [rule["for"] for rule in rules]
        assert all(re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", d) for d in durations), durations


def test_the_crd_check_rejects_what_the_api_server_would(gke: list[Obj]) -> None:
    """Guards the test above against passing vacuously: unknown fields, wrong types, missing fields."""
    pm = yaml.safe_load(yaml.safe_dump(one(gke, "PodMonitoring")))
    pm["spec"]["endpoints"][0]["prot"] = pm["spec"]["endpoints"][0].pop("port")
    assert any("'prot' was unexpected" in e for e in crd_errors(pm)), crd_errors(pm)
    rules = yaml.safe_load(yaml.safe_dump(one(gke, "Rules")))
    first = rules["spec"]["groups"][0]["rules"][0]
    first["fro"] = first.pop("for")
    first["labels"]["severity"] = 1
    errors = crd_errors(rules)
    assert any("'fro' was unexpected" in e for e in errors), errors
    assert any("1 is not of type 'string'" in e for e in errors), errors
    del rules["spec"]["groups"][1]["name"]
    assert any("'name' is a required property" in e for e in crd_errors(rules))
    assert rule_cel_errors({"expr": "up", "record": "x", "alert": "X"}) == ["Must set exactly one of Record or Alert"]
    assert rule_cel_errors({"expr": "up", "record": "x", "annotations": {}}) == [
        "Annotations are only allowed for alerting rules"
    ]


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


@pytest.mark.parametrize("overlay", ["gke", "local"])
def test_restricted_pod_security_profile(overlay: str, gke: list[Obj], local: list[Obj]) -> None:
    objects = gke if overlay == "gke" else local
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
    # The writable paths, /tmp and the audit spool, are emptyDirs (restricted allows no hostPath).
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/var/spool/chargecast"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all(set(volumes[name]) == {"name", "emptyDir"} for name in mounts.values())
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


def test_every_object_carries_the_common_labels(gke: list[Obj]) -> None:
    """`chargecast deploy status` lists objects by app.kubernetes.io/name."""
    for obj in gke:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "chargecast", obj["kind"]
        assert labels["app.kubernetes.io/part-of"] == "chargecast", obj["kind"]
    assert one(gke, "Deployment")["spec"]["selector"] == {"matchLabels": NAME}


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
    assert [o for o in cloudsql if o["kind"] != "Deployment"] == [o for o in gke if o["kind"] != "Deployment"]
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
