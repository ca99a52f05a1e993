"""``chargecast deploy``: the plans it makes, their dry runs, and the runner against fake cloud tools.

The plan is checked for properties, not against a copy of itself: the order every step needs,
each command's exact flags for given options, a probe before everything that creates, the image
deployed by digest, the project given in the environment and never by `gcloud config set`, no
secret on any command line or in any listing.

gcloud, kubectl, docker and git are replaced by one small shell script on PATH that logs every
call with the environment it got, remembers what was created (so a probe finds it afterwards),
and plays the part a test asks for (not logged in, a failing command, an existing cluster, a load
balancer IP that appears on the third poll, a certificate that goes from PROVISIONING to FAILED).
``kubectl kustomize``, ``kubectl create secret`` and ``kubectl create configmap`` are real, so every
run renders the repository's own overlays with the pushed digest.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chargecast import __version__, signing
from chargecast.cli import main
from chargecast.deploy import wrapper
from chargecast.deploy.certstate import read_certificate
from chargecast.deploy.cli import default_root, default_tag
from chargecast.deploy.gke import GKE_IMAGE_PLACEHOLDER, PROJECT_RULE, GkeOptions, plan_gke
from chargecast.deploy.iap import pick_backend
from chargecast.deploy.iapsecret import client_secret, manifest
from chargecast.deploy.options import Iap, ModelKey, Throttle
from chargecast.deploy.plan import HopelessError, Plan, Reading, Step, format_plan, show_command
from chargecast.deploy.runner import DeployError, IncompleteError, run_plan
from chargecast.deploy.teardown import TeardownOptions, plan_teardown
from tools import dev_tool

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "ab" * 32
IMAGE = "us-central1-docker.pkg.dev/demo-project/chargecast/chargecast"
DOMAIN = "chargecast.example.com"
CLIENT = "123456789012-abcdef0123456789.apps.googleusercontent.com"
SECRET = "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nough"  # what the IAP client's secret file holds
TOOLS = ("gcloud", "kubectl", "docker", "git", "gke-gcloud-auth-plugin")
STATIC_IP = "203.0.113.10"
CNAME = f"_acme-challenge.{DOMAIN}.\tCNAME\t0a1b2c3d.4.authorize.certificatemanager.goog."
BACKEND = "gkegw1-ab12-default-chargecast-80-0x9y8z7w6v5u"
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # signs the test checkouts' models

FAKE = r"""#!/bin/sh
# Stands in for gcloud, kubectl, docker, git and the GKE auth plugin: logs the call, then acts.
name=${0##*/}
call="$name $*"
printf '%s\n' "$call" >> "$FAKE_DIR/calls.log"
printf '%s\t%s\t%s\n' "$call" "${CLOUDSDK_CORE_PROJECT-(unset)}" "${CLOUDSDK_CORE_DISABLE_PROMPTS-(unset)}" \
  >> "$FAKE_DIR/env.log"
missing() { printf 'ERROR: (%s) NOT_FOUND: Resource was not found\n' "$name" >&2; exit 1; }
mark() { : > "$FAKE_DIR/have.$1"; }  # PATH holds only the fakes: no touch, no cat
# A probe finds what an earlier call created, or what the test says exists already.
have() { [ -f "$FAKE_DIR/have.$1" ] || case " $FAKE_HAVE " in *" $1 "*) true ;; *) false ;; esac; }
count() {
  n=0; [ -f "$FAKE_DIR/polls.$1" ] && read -r n < "$FAKE_DIR/polls.$1"
  n=$((n + 1)); echo "$n" > "$FAKE_DIR/polls.$1"; echo "$n"
}
if [ -n "$FAKE_FAIL" ]; then
  case "$call" in
    "$FAKE_FAIL"*) printf 'ERROR: (%s) simulated failure of: %s\n' "$name" "$call" >&2; exit 1 ;;
  esac
fi
if [ -n "$FAKE_GONE" ]; then
  case "$call" in $FAKE_GONE) missing ;; esac
fi
case "$call" in
  "gcloud auth list"*) [ -n "$FAKE_NO_LOGIN" ] || echo dev@example.com ;;
  "gcloud projects describe "*"projectNumber"*) echo 123456789012 ;;
  "gcloud projects describe"*) echo "$3" ;;
  "gcloud sql instances create"*) mark sql ;;
  "gcloud sql instances describe"*) have sql || missing ;;
  "gcloud sql databases create"*) mark sqldb ;;
  "gcloud sql databases describe"*) have sqldb || missing ;;
  "gcloud sql users create"*) mark sqluser ;;
  "gcloud sql users describe"*) have sqluser || missing ;;
  "kubectl get secret"*) have secret || { echo NotFound >&2; exit 1; } ;;
  "kubectl create secret"*|"kubectl create configmap"*|"kubectl kustomize"*) exec "$REAL_KUBECTL" "$@" ;;
  "gcloud artifacts repositories create"*) mark repo ;;
  "gcloud artifacts repositories describe"*) have repo || missing ;;
  "gcloud container clusters create"*) mark cluster ;;
  "gcloud container clusters describe"*) have cluster || missing ;;
  "gcloud container clusters list"*) have cluster && echo us-central1 ;;
  "gcloud artifacts docker images describe"*) echo "$FAKE_DIGEST" ;;
  "gcloud compute addresses create"*) mark ip ;;
  "gcloud compute addresses describe"*) have ip && echo 203.0.113.10 || missing ;;
  "gcloud certificate-manager dns-authorizations create"*) mark dnsauth ;;
  "gcloud certificate-manager dns-authorizations describe"*dnsResourceRecord*)
    printf '_acme-challenge.chargecast.example.com.\tCNAME\t0a1b2c3d.4.authorize.certificatemanager.goog.\n' ;;
  "gcloud certificate-manager dns-authorizations describe"*) have dnsauth || missing ;;
  "gcloud certificate-manager certificates create"*) mark cert ;;
  "gcloud certificate-manager certificates describe"*"managed.domains"*)
    echo "${FAKE_CERT_DOMAIN-chargecast.example.com}" ;;
  "gcloud certificate-manager certificates describe"*"--format=json"*)
    n=$(count cert); [ "$n" -gt "${FAKE_CERT_LAST:-1}" ] && n=${FAKE_CERT_LAST:-1}
    while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done < "$FAKE_DIR/cert-$n.json" ;;
  "gcloud certificate-manager certificates describe"*) have cert || missing ;;
  "gcloud certificate-manager maps entries create"*) mark entry ;;
  "gcloud certificate-manager maps entries describe"*) have entry || missing ;;
  "gcloud certificate-manager maps create"*) mark certmap ;;
  "gcloud certificate-manager maps describe"*) have certmap || missing ;;
  "gcloud compute security-policies create"*) mark armor ;;
  "gcloud compute security-policies describe"*) have armor || missing ;;
  "gcloud compute security-policies rules create"*) mark rule ;;
  "gcloud compute security-policies rules describe"*) have rule && echo throttle || missing ;;
  "gcloud iam service-accounts create"*) mark gsa ;;
  "gcloud iam service-accounts describe"*) have gsa || missing ;;
  "gcloud "*"add-iam-policy-binding"*) echo BwYvVyR5Ozk= ;;
  "gcloud compute backend-services describe"*) echo 4444444444444444444 ;;
  "kubectl apply"*)
    { echo ---; while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done; } >> "$FAKE_DIR/applied.yaml"
    echo "deployment.apps/chargecast configured" ;;
  "kubectl get service"*)
    [ "$(count ip)" -ge "$FAKE_IP_AFTER" ] && printf '203.0.113.7' ;;
  "kubectl get gateway/chargecast"*)
    [ "$(count backend)" -ge "${FAKE_BACKEND_AFTER:-1}" ] && printf '%s' "$FAKE_BACKENDS" ;;
  "kubectl wait"*) echo "gateway.gateway.networking.k8s.io/chargecast condition met" ;;
  "kubectl set env"*) echo "deployment.apps/chargecast env updated" ;;
  "kubectl rollout status"*) echo 'deployment "chargecast" successfully rolled out' ;;
  "kubectl rollout undo"*) echo "deployment.apps/chargecast rolled back" ;;
  "kubectl get deploy,hpa,pods,svc"*) echo "NAME                         READY   UP-TO-DATE" ;;
  "git -C "*" rev-parse "*) echo abc1234 ;;
  "git -C "*" status "*) [ -z "$FAKE_DIRTY" ] || echo " M src/chargecast/cli.py" ;;
esac
exit 0
"""


def certificate(state: str, **managed: Any) -> dict[str, Any]:
    """What `gcloud certificate-manager certificates describe --format=json` prints."""
    return {
        "name": "projects/demo-project/locations/global/certificates/chargecast-cert",
        "managed": {
            "domains": [DOMAIN],
            "dnsAuthorizations": ["projects/demo-project/locations/global/dnsAuthorizations/chargecast-dns-auth"],
            "state": state,
            **managed,
        },
    }


def attempt(reason: str, state: str = "FAILED", details: str = "") -> dict[str, Any]:
    return {"domain": DOMAIN, "state": state, "failureReason": reason, **({"details": details} if details else {})}


@dataclass
class Fakes:
    dir: Path
    bin: Path

    def calls(self) -> list[str]:
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def environments(self) -> dict[str, set[tuple[str, str]]]:
        """For each tool, the (CLOUDSDK_CORE_PROJECT, CLOUDSDK_CORE_DISABLE_PROMPTS) values it ran with."""
        seen: dict[str, set[tuple[str, str]]] = {}
        for line in (self.dir / "env.log").read_text().splitlines():
            call, project, prompts = line.split("\t")
            seen.setdefault(call.split(" ")[0], set()).add((project, prompts))
        return seen

    def remove(self, tool: str) -> None:
        (self.bin / tool).unlink()

    def certificate_states(self, *described: dict[str, Any]) -> None:
        """The certificate's successive states, one per poll; the last one repeats."""
        for n, value in enumerate(described, 1):
            (self.dir / f"cert-{n}.json").write_text(json.dumps(value))
        os.environ["FAKE_CERT_LAST"] = str(len(described))

    def applied(self) -> list[dict[str, Any]]:
        return yaml_docs((self.dir / "applied.yaml").read_text())


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """PATH holds only the fakes, so no real cloud tool can be reached whatever this machine has."""
    kubectl = dev_tool("kubectl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).write_text(FAKE)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    monkeypatch.setenv("REAL_KUBECTL", kubectl)
    monkeypatch.setenv("FAKE_DIGEST", DIGEST)
    monkeypatch.setenv("FAKE_IP_AFTER", "1")
    monkeypatch.setenv("FAKE_BACKENDS", f"/projects/123456789012/global/backendServices/{BACKEND}")
    for name in ("FAKE_FAIL", "FAKE_GONE", "FAKE_NO_LOGIN", "FAKE_HAVE", "FAKE_DIRTY", "FAKE_CERT_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FAKE_BACKEND_AFTER", raising=False)
    monkeypatch.setenv("FAKE_CERT_LAST", "1")
    fake = Fakes(tmp_path, bin_dir)
    fake.certificate_states(certificate("ACTIVE"))
    return fake


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "iap-client-secret"
    path.write_text(SECRET + "\n")  # `echo SECRET > FILE` adds a newline; it is not part of the secret
    return path


def options(**changes: Any) -> GkeOptions:
    """The secure default: a Gateway at DOMAIN."""
    return GkeOptions(**{"project": "demo-project", "tag": "v1", "root": ROOT, "domain": DOMAIN, **changes})


def lb_options(**changes: Any) -> GkeOptions:
    """The tutorial's plain-HTTP demo."""
    return GkeOptions(**{"project": "demo-project", "tag": "v1", "root": ROOT, "expose": "loadbalancer", **changes})


def iap(members: tuple[str, ...] = ("user:ana@example.com", "group:actuaries@example.com")) -> Iap:
    return Iap(members, CLIENT, Path("/run/secrets/iap-client"))


SPKI = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(*SPKI).decode()


MODEL_KEY = ModelKey(Path("/keys/model.pub.pem"), public_pem(SIGNER), signing.fingerprint(SIGNER.public_key()))


def by_name(plan: Plan) -> dict[str, Step]:
    return {s.name: s for s in plan.steps}


def names(plan: Plan) -> list[str]:
    return [s.name for s in plan.steps]


def command(plan: Plan, step: str) -> str:
    return show_command(by_name(plan)[step].argv)


def yaml_docs(text: str) -> list[dict[str, Any]]:
    import yaml  # type: ignore[import-untyped, unused-ignore]

    return [doc for doc in yaml.safe_load_all(text) if doc]


def deploy(*extra: str) -> int:
    """The secure default from the command line."""
    return main(["deploy", "gke", "--project", "demo-project", "--tag", "v1", "--domain", DOMAIN, *extra])


def deploy_lb(*extra: str) -> int:
    return main(["deploy", "gke", "--project", "demo-project", "--tag", "v1", "--expose", "loadbalancer", *extra])


def listed(output: str) -> list[tuple[str, str, list[str]]]:
    """The "NN. step: command" lines of a dry run, each with the indented lines under it."""
    rows: list[tuple[str, str, list[str]]] = []
    for line in output.splitlines():
        number, sep, rest = line.partition(". ")
        if sep and number.strip().isdigit():
            assert int(number) == len(rows) + 1, "numbered in order, from 1"
            name, _, shown = rest.partition(": ")
            rows.append((name, shown, []))
        elif rows and line.startswith("    "):
            rows[-1][2].append(line.strip())
    return rows


PATHS = [
    pytest.param(options, id="gateway"),
    pytest.param(lb_options, id="loadbalancer"),
]
VARIANTS = [
    pytest.param({}, id="autopilot"),
    pytest.param({"nodes": 2}, id="standard"),
    pytest.param({"nodes": 3, "zone": "europe-west4-c", "region": "europe-west4"}, id="standard-zone"),
    pytest.param({"build": "cloud", "cluster": "ml", "repository": "images"}, id="cloud-build"),
    pytest.param({"cloudsql_instance": "audit"}, id="cloudsql"),
    pytest.param({"model_key": MODEL_KEY}, id="model-key"),
]


# -- the plan: order, flags, probes, digest, project --------------------------------------------

COMMON_NEEDS = [
    ("enable APIs", "create repository"),  # the registry API is off in a new project
    ("create repository", "build image"),
    ("build image", "resolve digest"),
    ("resolve digest", "render manifests"),  # the manifests name the digest
    ("render manifests", "create cluster"),  # a broken manifest fails before minutes of cluster creation
    ("create cluster", "allow Kubernetes account"),  # the Workload Identity pool exists once the cluster does
    ("create service account", "allow Kubernetes account"),
    ("create cluster", "get credentials"),
    ("get credentials", "apply manifests"),
    ("apply manifests", "wait for rollout"),
]
GATEWAY_NEEDS = [
    ("enable APIs", "reserve static IP"),  # Compute Engine and Certificate Manager are off in a new project
    ("render manifests", "reserve static IP"),
    ("create DNS authorization", "create certificate"),  # the certificate names the authorization
    ("create certificate", "check certificate domain"),
    ("create certificate", "create certificate map entry"),
    ("create certificate map", "create certificate map entry"),
    ("reserve static IP", "read static IP"),
    ("create DNS authorization", "read DNS authorization record"),
    ("read static IP", "show DNS records"),
    ("read DNS authorization record", "show DNS records"),
    ("show DNS records", "create cluster"),  # the records are added while the cluster is made
    ("create Cloud Armor policy", "set throttle rule"),
    ("set throttle rule", "apply manifests"),  # the GCPBackendPolicy names the policy
    ("create certificate map entry", "apply manifests"),  # the Gateway names the map
    ("wait for rollout", "wait for Gateway"),
    ("wait for Gateway", "wait for certificate"),
]


@pytest.mark.parametrize("changes", VARIANTS)
@pytest.mark.parametrize("make", PATHS)
def test_every_step_comes_after_what_it_needs(make: Any, changes: dict[str, Any]) -> None:
    o = make(**changes)
    steps = names(plan_gke(o))
    assert len(steps) == len(set(steps))
    checks = steps[1:4] if not o.gateway else steps[:3]
    assert checks == ["check tools", "check login", "check project"], "checks first, before anything changes"
    needs = COMMON_NEEDS + (GATEWAY_NEEDS if o.gateway else [("wait for rollout", "wait for external IP")])
    if o.build != "cloud":
        needs += [("configure docker", "push image"), ("build image", "push image"), ("push image", "resolve digest")]
    for before, after in needs:
        assert steps.index(before) < steps.index(after), f"{before} must run before {after}"
    assert steps[-1] == ("wait for certificate" if o.gateway else "wait for external IP")


def test_the_secure_path_lists_the_ip_the_certificate_the_policy_the_cluster_and_the_rollout_in_order() -> None:
    """Issue 11's "done when": in this order, each with a reason."""
    steps = names(plan_gke(options()))
    milestones = ["reserve static IP", "create certificate", "create Cloud Armor policy", "create cluster"]
    milestones += ["wait for rollout", "wait for certificate"]
    assert [s for s in steps if s in milestones] == milestones
    assert "wait for external IP" not in steps


def test_the_demo_path_warns_first_and_last_that_nothing_is_encrypted() -> None:
    plan = plan_gke(lb_options())
    first = plan.steps[0]
    assert (first.name, first.argv) == ("warning", ())
    assert "WARNING" in first.say
    assert "unencrypted" in first.say
    assert "anyone who can reach the IP" in first.say
    assert first.say in plan.done
    assert not {"reserve static IP", "create certificate", "create Cloud Armor policy"} & set(names(plan))


@pytest.mark.parametrize("changes", VARIANTS)
@pytest.mark.parametrize("make", PATHS)
def test_the_project_goes_in_the_environment_never_into_gcloud_config(make: Any, changes: dict[str, Any]) -> None:
    o = make(**changes)
    plan = plan_gke(o)
    assert plan.env == (("CLOUDSDK_CORE_PROJECT", o.project),)
    for step in plan.steps:
        for argv in (step.argv, step.skip_if, step.if_exists):
            assert argv[:2] != ("gcloud", "config"), step.name
            assert "config" not in argv or argv[:3] == ("gcloud", "auth", "configure-docker"), step.name


SCOPES = ("--location=", "--map=", "--security-policy=", "--global")


@pytest.mark.parametrize("changes", VARIANTS)
@pytest.mark.parametrize("make", PATHS)
def test_what_a_step_creates_is_probed_first_by_the_same_name_and_scope(make: Any, changes: dict[str, Any]) -> None:
    o = make(**changes)
    creating = [s for s in plan_gke(o).steps if s.argv[:1] == ("gcloud",) and {"create", "create-auto"} & set(s.argv)]
    expected = ["create repository", "create cluster", "create service account"]
    if o.gateway:
        expected[1:1] = [
            "reserve static IP",
            "create DNS authorization",
            "create certificate",
            "create certificate map",
            "create certificate map entry",
            "create Cloud Armor policy",
            "set throttle rule",
        ]
    if o.cloudsql_instance:
        expected[-1:-1] = ["create Cloud SQL instance", "create database", "create database user"]
    assert [s.name for s in creating] == expected
    for step in creating:
        verb = next(i for i, a in enumerate(step.argv) if a.startswith("create"))
        assert step.skip_if[:verb] == step.argv[:verb], step.name  # the same gcloud group
        assert step.skip_if[verb] == "describe", step.name
        name = step.argv[verb + 1]
        assert step.skip_if[verb + 1] in (name, f"{name}@{o.project}.iam.gserviceaccount.com"), step.name
        scopes = [a for a in step.argv if a.startswith(SCOPES)]
        assert [a for a in step.skip_if if a.startswith(SCOPES)] == scopes, step.name


@pytest.mark.parametrize("changes", VARIANTS)
@pytest.mark.parametrize("make", PATHS)
def test_the_image_is_deployed_by_the_digest_of_what_was_just_pushed(make: Any, changes: dict[str, Any]) -> None:
    o = make(**changes)
    steps = by_name(plan_gke(o))
    pushed = f"--tag={o.ref}" if o.build == "cloud" else o.ref
    assert pushed in (steps["build image"].argv if o.build == "cloud" else steps["push image"].argv)
    digest = steps["resolve digest"]
    assert o.ref in digest.argv
    assert digest.capture == "DIGEST"
    assert digest.require_output
    render = steps["render manifests"]
    assert render.copies == (("k8s", ROOT / "deploy" / "k8s"),), "a copy: the repository is never edited"
    ((name, text),) = render.files
    assert name == "kustomization.yaml"
    assert f"name: {GKE_IMAGE_PLACEHOLDER}\n" in text
    assert f"newName: {o.image}\n" in text
    assert "digest: ${DIGEST}\n" in text
    assert render.must_contain == f"{o.image}@${{DIGEST}}"
    assert render.must_lack == ("type: LoadBalancer" if o.gateway else "")
    assert steps["apply manifests"].stdin == "${MANIFESTS}" == "${" + render.capture + "}"
    assert not any(o.tag in " ".join(s.argv) for s in steps.values() if s.argv[:1] == ("kubectl",))


@pytest.mark.parametrize(
    ("make", "changes", "step", "expected"),
    [
        (options, {}, "check project", "gcloud projects describe demo-project '--format=value(projectId)'"),
        (
            options,
            {},
            "enable APIs",
            "gcloud services enable container.googleapis.com artifactregistry.googleapis.com iam.googleapis.com "
            "iamcredentials.googleapis.com compute.googleapis.com certificatemanager.googleapis.com",
        ),
        (
            options,
            {"iap": iap(), "build": "cloud", "cloudsql_instance": "audit"},
            "enable APIs",
            "gcloud services enable container.googleapis.com artifactregistry.googleapis.com iam.googleapis.com "
            "iamcredentials.googleapis.com compute.googleapis.com certificatemanager.googleapis.com "
            "iap.googleapis.com cloudbuild.googleapis.com sqladmin.googleapis.com",
        ),
        (
            lb_options,
            {},
            "enable APIs",
            "gcloud services enable container.googleapis.com artifactregistry.googleapis.com iam.googleapis.com "
            "iamcredentials.googleapis.com",
        ),
        (
            options,
            {"region": "europe-west4", "repository": "images"},
            "create repository",
            "gcloud artifacts repositories create images --repository-format=docker --location=europe-west4 "
            "'--description=chargecast images'",
        ),
        (options, {}, "configure docker", "gcloud auth configure-docker us-central1-docker.pkg.dev --quiet"),
        (options, {"tag": "v7"}, "build image", f"docker build --platform=linux/amd64 --tag={IMAGE}:v7 {ROOT}"),
        (
            options,
            {"build": "cloud", "region": "europe-west4"},
            "build image",
            f"gcloud builds submit --tag=europe-west4-docker.pkg.dev/demo-project/chargecast/chargecast:v1 {ROOT}",
        ),
        (options, {}, "push image", f"docker push {IMAGE}:v1"),
        (
            options,
            {},
            "resolve digest",
            f"gcloud artifacts docker images describe {IMAGE}:v1 '--format=value(image_summary.digest)'",
        ),
        (options, {}, "reserve static IP", "gcloud compute addresses create chargecast-ip --global --ip-version=IPV4"),
        (
            options,
            {},
            "create DNS authorization",
            f"gcloud certificate-manager dns-authorizations create chargecast-dns-auth --domain={DOMAIN}",
        ),
        (
            options,
            {},
            "create certificate",
            f"gcloud certificate-manager certificates create chargecast-cert --domains={DOMAIN} "
            "--dns-authorizations=chargecast-dns-auth",
        ),
        (options, {}, "create certificate map", "gcloud certificate-manager maps create chargecast-certmap"),
        (
            options,
            {},
            "create certificate map entry",
            "gcloud certificate-manager maps entries create chargecast-entry --map=chargecast-certmap "
            f"--hostname={DOMAIN} --certificates=chargecast-cert",
        ),
        (
            options,
            {},
            "read DNS authorization record",
            "gcloud certificate-manager dns-authorizations describe chargecast-dns-auth "
            "'--format=value(dnsResourceRecord.name,dnsResourceRecord.type,dnsResourceRecord.data)'",
        ),
        (
            options,
            {},
            "create Cloud Armor policy",
            "gcloud compute security-policies create chargecast-armor --type=CLOUD_ARMOR "
            "'--description=chargecast: a throttle per client IP'",
        ),
        (
            options,
            {},
            "set throttle rule",
            "gcloud compute security-policies rules create 1000 --security-policy=chargecast-armor "
            "'--src-ip-ranges=*' --action=throttle --rate-limit-threshold-count=600 "
            "--rate-limit-threshold-interval-sec=60 --conform-action=allow --exceed-action=deny-429 "
            "--enforce-on-key=IP",
        ),
        (
            options,
            {"throttle": Throttle(rate=120, interval=10, ban_seconds=300)},
            "set throttle rule",
            "gcloud compute security-policies rules create 1000 --security-policy=chargecast-armor "
            "'--src-ip-ranges=*' --action=rate-based-ban --rate-limit-threshold-count=120 "
            "--rate-limit-threshold-interval-sec=10 --conform-action=allow --exceed-action=deny-429 "
            "--enforce-on-key=IP --ban-duration-sec=300",
        ),
        (options, {}, "create cluster", "gcloud container clusters create-auto chargecast --location=us-central1"),
        (
            options,
            {"nodes": 2},
            "create cluster",
            "gcloud container clusters create chargecast --location=us-central1-b --num-nodes=2 "
            "--enable-managed-prometheus --workload-pool=demo-project.svc.id.goog --enable-dataplane-v2 "
            "--gateway-api=standard",
        ),
        (
            lb_options,
            {"nodes": 3, "zone": "us-central1-f", "cluster": "ml"},
            "create cluster",
            "gcloud container clusters create ml --location=us-central1-f --num-nodes=3 --enable-managed-prometheus "
            "--workload-pool=demo-project.svc.id.goog --enable-dataplane-v2",
        ),
        (
            options,
            {},
            "create service account",
            "gcloud iam service-accounts create chargecast '--display-name=chargecast pods'",
        ),
        (
            options,
            {},
            "allow Kubernetes account",
            "gcloud iam service-accounts add-iam-policy-binding chargecast@demo-project.iam.gserviceaccount.com "
            "--role=roles/iam.workloadIdentityUser "
            "'--member=serviceAccount:demo-project.svc.id.goog[default/chargecast]' '--format=value(etag)'",
        ),
        (
            options,
            {"nodes": 2},
            "get credentials",
            "gcloud container clusters get-credentials chargecast --location=us-central1-b",
        ),
        (options, {}, "apply manifests", "kubectl apply -f -"),
        (
            options,
            {"cloudsql_instance": "audit", "region": "europe-west4"},
            "create Cloud SQL instance",
            "gcloud sql instances create audit --database-version=POSTGRES_15 --edition=enterprise "
            "--tier=db-f1-micro --region=europe-west4 --storage-auto-increase",
        ),
        (
            options,
            {"cloudsql_instance": "audit"},
            "create database",
            "gcloud sql databases create chargecast --instance=audit",
        ),
        (
            options,
            {"cloudsql_instance": "audit"},
            "create database user",
            "gcloud sql users create chargecast --instance=audit",
        ),
        (
            options,
            {"cloudsql_instance": "audit"},
            "grant Cloud SQL client",
            "gcloud projects add-iam-policy-binding demo-project --role=roles/cloudsql.client "
            "--member=serviceAccount:chargecast@demo-project.iam.gserviceaccount.com --condition=None "
            "'--format=value(etag)'",
        ),
        (
            options,
            {"cloudsql_instance": "audit"},
            "set database password",
            'gcloud sql users set-password chargecast --instance=audit "--password=${DB_PASSWORD}"',
        ),
        (
            options,
            {"cloudsql_instance": "audit"},
            "render audit secret",
            'kubectl create secret generic chargecast-audit "--from-file=CHARGECAST_AUDIT_URL=${WORKDIR}/audit-url" '
            "--dry-run=client -o yaml",
        ),
        (options, {}, "wait for rollout", "kubectl rollout status deployment/chargecast --timeout=5m"),
        (options, {}, "wait for Gateway", "kubectl wait gateway/chargecast --for=condition=Programmed --timeout=15m"),
        (
            options,
            {},
            "wait for certificate",
            "gcloud certificate-manager certificates describe chargecast-cert --format=json",
        ),
        (
            options,
            {"iap": iap()},
            "grant IAP access to group:actuaries@example.com",
            'gcloud iap web add-iam-policy-binding --resource-type=backend-services "--service=${BACKEND_SERVICE}" '
            "--member=group:actuaries@example.com --role=roles/iap.httpsResourceAccessor '--format=value(etag)'",
        ),
        (
            options,
            {"iap": iap()},
            "set IAP audience",
            "kubectl set env deployment/chargecast "
            '"CHARGECAST_IAP_AUDIENCE=/projects/${PROJECT_NUMBER}/global/backendServices/${BACKEND_ID}"',
        ),
        (
            lb_options,
            {},
            "wait for external IP",
            "kubectl get service chargecast -o 'jsonpath={.status.loadBalancer.ingress[0].ip}'",
        ),
    ],
)
def test_each_command_has_exactly_the_flags_its_options_call_for(
    make: Any, changes: dict[str, Any], step: str, expected: str
) -> None:
    assert command(plan_gke(make(**changes)), step) == expected


def test_cloud_build_needs_no_docker() -> None:
    plan = plan_gke(options(build="cloud"))
    assert not {"configure docker", "push image"} & set(names(plan))
    assert not any(s.argv[:1] == ("docker",) for s in plan.steps)
    assert plan.steps[0].tools == ("gcloud", "gke-gcloud-auth-plugin", "kubectl")
    assert plan_gke(options()).steps[0].tools == ("gcloud", "gke-gcloud-auth-plugin", "kubectl", "docker")


def test_an_existing_throttle_rule_is_updated_to_the_numbers_asked_for() -> None:
    rule = by_name(plan_gke(options(throttle=Throttle(rate=50))))["set throttle rule"]
    assert rule.skip_if[:6] == ("gcloud", "compute", "security-policies", "rules", "describe", "1000")
    assert rule.if_exists[:6] == ("gcloud", "compute", "security-policies", "rules", "update", "1000")
    assert rule.if_exists[6:] == rule.argv[6:], "the same flags, so a second deploy changes the limit"
    assert "--rate-limit-threshold-count=50" in rule.argv


def test_workload_identity_and_no_key_file_anywhere() -> None:
    for o in (options(), lb_options(), options(cloudsql_instance="audit", nodes=2)):
        plan = plan_gke(o)
        text = " ".join(" ".join(s.argv) for s in plan.steps)
        assert "keys create" not in text
        assert "key-file" not in text
        ((_, wrapper_text),) = by_name(plan)["render manifests"].files
        assert "iam.gke.io/gcp-service-account: chargecast@demo-project.iam.gserviceaccount.com\n" in wrapper_text
        grants = [s for s in plan.steps if "add-iam-policy-binding" in s.argv]
        roles = sorted(a for s in grants for a in s.argv if a.startswith("--role="))
        expected = ["--role=roles/iam.workloadIdentityUser"]
        expected += ["--role=roles/cloudsql.client"] if o.cloudsql_instance else []
        assert roles == sorted(expected), "the pods' account holds no project role it does not need"


# -- the IAP path --------------------------------------------------------------------------------

IAP_STEPS = [
    "render IAP secret",
    "apply IAP secret",
    "apply manifests",
    "wait for rollout",
    "wait for Gateway",
    "find backend service",
    "look up backend service ID",
    "look up project number",
    "grant IAP access to user:ana@example.com",
    "grant IAP access to group:actuaries@example.com",
    "set IAP audience",
    "wait for IAP rollout",
    "wait for certificate",
]


def test_iap_adds_its_secret_before_the_manifests_and_its_grants_once_the_backend_exists() -> None:
    plan = plan_gke(options(iap=iap()))
    assert [n for n in names(plan) if n in IAP_STEPS] == IAP_STEPS
    steps = by_name(plan)
    render = steps["render IAP secret"]
    assert render.argv[1:] == ("-m", "chargecast.deploy.iapsecret", "/run/secrets/iap-client", CLIENT)
    assert render.secret
    assert render.capture == "IAP_SECRET"
    assert steps["apply IAP secret"].stdin == "${IAP_SECRET}"
    ((_, text),) = steps["render manifests"].files
    assert "  - k8s/components/iap\n" in text
    assert f"path: /spec/default/iap/clientID\n        value: {CLIENT}\n" in text
    assert "behind IAP: only user:ana@example.com, group:actuaries@example.com get through" in plan.done
    assert not any(n.startswith("grant IAP") for n in names(plan_gke(options())))


@pytest.mark.parametrize("make", PATHS)
def test_a_deploy_without_iap_clears_an_audience_an_earlier_one_set(make: Any) -> None:
    """`kubectl set env` is outside what apply manages: without this, pods would wait for a header no one sends."""
    steps = names(plan_gke(make()))
    assert steps.index("apply manifests") < steps.index("clear IAP audience") < steps.index("wait for rollout")
    assert command(plan_gke(make()), "clear IAP audience") == (
        "kubectl set env deployment/chargecast CHARGECAST_IAP_AUDIENCE-"
    )
    assert "clear IAP audience" not in names(plan_gke(options(iap=iap())))


def test_the_backend_service_is_picked_out_of_the_gateways_annotation() -> None:
    listing = (
        "/projects/1/global/backendServices/gkegw1-ab12-gke-gateway-gw-serve404-80-8zjp3d8cqfsu, "
        f"/projects/1/global/backendServices/{BACKEND}, "
        "/projects/1/global/backendServices/gkegw1-ab12-gke-gateway-gw-serve500-80-1q2w3e4r5t6y"
    )
    assert pick_backend(listing) == Reading(BACKEND)
    assert pick_backend(BACKEND) == Reading(BACKEND), "older GKE versions list bare names"
    assert pick_backend("").value is None
    waiting = pick_backend("gkegw1-ab12-default-chargecast-metrics-x, gkegw1-ab12-default-other-80-y")
    assert waiting.value is None
    assert "no backend service for default/chargecast yet" in waiting.note


# -- project IDs and every other flag: one clear line, nothing run ----------------------------


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs a command line that must be refused: exit 2, no traceback; returns stderr."""
    try:
        code = main(argv)
    except SystemExit as exited:
        code = exited.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("project", "problem"),
    [
        ("Bad_Project", "contains 'B', 'P', '_'"),
        ("short", "has 5 characters"),
        ("a" * 31, "has 31 characters"),
        ("1project", "starts with '1'"),
        ("-project", "starts with '-'"),
        ("project-", "ends with a hyphen"),
        ("my project", "contains ' '"),
        ("Example.com:demo-project", "has an invalid domain prefix 'Example.com'"),
    ],
)
@pytest.mark.parametrize("verb", ["gke", "teardown"])
def test_an_invalid_project_id_is_refused_with_the_rule_and_nothing_runs(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], project: str, problem: str, verb: str
) -> None:
    err = refused(["deploy", verb, f"--project={project}"], capsys)  # "=": "-project" would look like an option
    assert f"argument --project: invalid project ID {project!r}: it {problem}; {PROJECT_RULE}" in err
    assert "6 to 30 characters: lowercase letters, digits and hyphens, starting with a letter" in err
    assert fakes.calls() == [], "not even git"
    with pytest.raises(ValueError, match="invalid project ID"):
        options(project=project)


@pytest.mark.parametrize("project", ["a12345", "a" * 30, "demo-project", "p-2024"])
def test_valid_project_ids_are_accepted(fakes: Fakes, capsys: pytest.CaptureFixture[str], project: str) -> None:
    assert main(["deploy", "gke", "--project", project, "--domain", DOMAIN, "--tag", "v1", "--dry-run"]) == 0
    assert f"CLOUDSDK_CORE_PROJECT={project}" in capsys.readouterr().out


@pytest.mark.parametrize("verb", [["gke", "--domain", DOMAIN], ["teardown"]])
def test_domain_scoped_projects_are_refused(fakes: Fakes, capsys: pytest.CaptureFixture[str], verb: list[str]) -> None:
    """Their service account and Workload Identity pool names are spelled differently; not built here."""
    err = refused(["deploy", verb[0], "--project", "example.com:demo-project", *verb[1:], "--dry-run"], capsys)
    assert "domain-scoped projects (example.com:name) are not supported" in err
    assert fakes.calls() == []


@pytest.mark.parametrize(
    ("domain", "problem"),
    [
        ("localhost", "has only one label"),
        ("bad_name.example.com", "has the label 'bad_name'"),
        ("-a.example.com", "has the label '-a'"),
        ("a-.example.com", "has the label 'a-'"),
        ("a..example.com", "has the label ''"),
        ("example.com.", "ends with a dot"),
        ("192.0.2.1", "ends in an all-digit label (an IP address?)"),
        ("*.example.com", "has the label '*'"),
        ("a" * 64 + ".example.com", f"has the label '{'a' * 64}'"),
        ("a" * 250 + ".com", "has 254 characters"),
        ("caf\u00e9.example.com", "has the label 'caf\u00e9'"),
    ],
)
def test_a_bad_domain_is_refused_with_the_rule(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], domain: str, problem: str
) -> None:
    err = refused(["deploy", "gke", "--project", "demo-project", "--tag", "v1", f"--domain={domain}"], capsys)
    assert f"argument --domain: invalid domain {domain!r}: it {problem}; a domain name is 2 or more labels" in err
    assert fakes.calls() == []
    with pytest.raises(ValueError, match="invalid domain"):
        options(domain=domain)


def test_a_domain_in_capitals_is_the_same_name(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--domain", "Chargecast.Example.COM", "--dry-run") == 0  # the later --domain wins
    out = capsys.readouterr().out
    assert f"--domains={DOMAIN} " in out
    assert "Example" not in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--domain is required: the default path serves HTTPS at a name you own"),
        (["--expose", "loadbalancer", "--domain", DOMAIN], "--domain: only for the default Gateway path (HTTPS)"),
        (["--expose", "loadbalancer", "--rate", "10"], "--rate/--rate-interval/--ban-seconds: only for the default"),
        (["--expose", "loadbalancer", "--ban-seconds", "60"], "--rate/--rate-interval/--ban-seconds: only for"),
        (["--expose", "http"], "argument --expose: invalid choice: 'http'"),
        (["--domain", DOMAIN, "--rate", "0"], "argument --rate: 0 must be at least 1"),
        (["--domain", DOMAIN, "--rate", "lots"], "argument --rate: 'lots' is not a whole number"),
        (
            ["--domain", DOMAIN, "--rate-interval", "45"],
            "argument --rate-interval: 45 is not a Cloud Armor interval: Cloud Armor accepts 10, 30, 60, 120",
        ),
        (
            ["--domain", DOMAIN, "--ban-seconds", "30"],
            "argument --ban-seconds: 30 is not a Cloud Armor ban length: Cloud Armor accepts 0 (no ban), 60, 120",
        ),
        (["--domain", DOMAIN, "--ban-seconds", "-1"], "argument --ban-seconds: -1 must be at least 0"),
        (["--domain", DOMAIN, "--cert-timeout", "0"], "argument --cert-timeout: 0 must be at least 1"),
        (["--domain", DOMAIN, "--cert-timeout", "1441"], "argument --cert-timeout: 1441 must be at most 1440"),
        (["--domain", DOMAIN, "--zone", "us-central1-f"], "--zone is for a Standard cluster; add --nodes N"),
    ],
)
def test_every_bad_edge_option_is_one_clear_line(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    err = refused(["deploy", "gke", "--project", "demo-project", "--tag", "v1", *extra], capsys)
    (line,) = [line for line in err.splitlines() if message in line]
    assert line.startswith(("chargecast deploy gke: ", "usage: ")) or " error: " in line
    assert fakes.calls() == []


IAP_FLAGS = ["--iap-client-id", CLIENT]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ("ana@example.com", "invalid member 'ana@example.com': it does not start with user:, group:"),
        ("user:not-an-email", "invalid member 'user:not-an-email': 'not-an-email' is not an email address"),
        ("users:ana@example.com", "invalid member 'users:ana@example.com': it does not start with"),
        ("domain:bad_domain.com", "invalid member 'domain:bad_domain.com': 'bad_domain.com' is not a domain"),
        (" , ,", "no members given"),
        ("user:ana@example.com,everyone", "invalid member 'everyone'"),
    ],
)
def test_bad_iap_members_are_refused_with_the_rule(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], secret_file: Path, members: str, message: str
) -> None:
    err = refused(
        [
            "deploy",
            "gke",
            "--project",
            "demo-project",
            "--tag",
            "v1",
            "--domain",
            DOMAIN,
            "--iap",
            members,
            *IAP_FLAGS,
            "--iap-client-secret-file",
            str(secret_file),
        ],
        capsys,
    )
    assert f"argument --iap: {message}" in err
    assert "each member is user:EMAIL, group:EMAIL, serviceAccount:EMAIL or domain:DOMAIN" in err
    assert fakes.calls() == []


def test_iap_without_its_oauth_client_says_where_to_make_one(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(
        ["deploy", "gke", "--project", "demo-project", "--tag", "v1", "--domain", DOMAIN, "--iap", "user:a@b.co"],
        capsys,
    )
    (line,) = err.strip().splitlines()
    assert line.startswith("chargecast deploy gke: --iap needs --iap-client-id and --iap-client-secret-file")
    assert "gcloud can no longer create IAP's OAuth client (the IAP OAuth Admin API is shut down)" in line
    assert "https://console.cloud.google.com/auth/clients" in line
    assert "https://iap.googleapis.com/v1/oauth/clientIds/CLIENT_ID:handleRedirect" in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("", "empty; it must hold the OAuth client's secret"),
        ("two words\n", "holds more than one word"),
        ("{not json", "starts like JSON but is not valid JSON"),
        ('{"web": {"client_id": "1-x.apps.googleusercontent.com"}}', "JSON without web.client_secret"),
        (
            json.dumps({"web": {"client_id": "999-other.apps.googleusercontent.com", "client_secret": SECRET}}),
            f"it is the secret of another OAuth client than --iap-client-id {CLIENT}",
        ),
    ],
)
def test_a_bad_iap_secret_file_is_refused_without_showing_it(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "secret.txt"
    if content is not None:
        path.write_text(content)
    argv = ["deploy", "gke", "--project", "demo-project", "--tag", "v1", "--domain", DOMAIN, "--iap", "user:a@b.co"]
    err = refused([*argv, *IAP_FLAGS, "--iap-client-secret-file", str(path)], capsys)
    assert f"chargecast deploy gke: --iap-client-secret-file {path}: {message}" in err
    assert SECRET not in err
    assert "two words" not in err
    assert fakes.calls() == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--iap-client-id", "my-client"], "argument --iap-client-id: 'my-client' is not a valid OAuth client ID"),
        (IAP_FLAGS, "--iap-client-id and --iap-client-secret-file only go with --iap MEMBERS"),
        (["--expose", "loadbalancer", "--iap", "user:a@b.co", *IAP_FLAGS], "--iap: only for the default Gateway path"),
    ],
)
def test_iap_flags_belong_together(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], secret_file: Path, extra: list[str], message: str
) -> None:
    domain = [] if "loadbalancer" in extra else ["--domain", DOMAIN]
    argv = ["deploy", "gke", "--project", "demo-project", "--tag", "v1", *domain, *extra]
    err = refused([*argv, "--iap-client-secret-file", str(secret_file)] if "--iap" in extra else argv, capsys)
    assert message in err
    assert fakes.calls() == []


def test_the_library_refuses_what_the_command_line_does() -> None:
    with pytest.raises(ValueError, match="--domain is required"):
        GkeOptions(project="demo-project", tag="v1", root=ROOT)
    with pytest.raises(ValueError, match="--rate-interval 45: Cloud Armor accepts only 10, 30"):
        Throttle(interval=45)
    with pytest.raises(ValueError, match="--ban-seconds 59"):
        Throttle(ban_seconds=59)
    with pytest.raises(ValueError, match="--rate 0"):
        Throttle(rate=0)
    with pytest.raises(ValueError, match="--iap: no members given"):
        Iap((), CLIENT, Path("x"))
    with pytest.raises(ValueError, match="--iap-client-id 'abc'"):
        Iap(("user:a@b.co",), "abc", Path("x"))


@pytest.mark.parametrize("name", ["Audit", "1audit", "audit-", "a_b", "a" * 99])
@pytest.mark.parametrize("verb", ["gke", "teardown"])
def test_a_bad_instance_name_is_a_usage_error(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], name: str, verb: str
) -> None:
    argv = ["deploy", verb, "--project", "demo-project", "--cloudsql-instance", name, "--dry-run"]
    err = refused(argv + (["--domain", DOMAIN] if verb == "gke" else []), capsys)
    assert "cloudsql-instance" in err
    assert fakes.calls() == []


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "gke", "--project", "demo-project", "--domain", DOMAIN, "--nodes", "0"],
        ["deploy", "gke", "--project", "demo-project", "--domain", DOMAIN, "--tag", "bad tag"],
        ["deploy", "gke", "--project", "demo-project", "--domain", DOMAIN, "--region", "Europe"],
        ["deploy", "gke"],
        ["deploy", "teardown"],
        ["deploy", "teardown", "--project", "demo-project", "--region", "Europe"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    refused(argv, capsys)
    assert fakes.calls() == []


def test_source_without_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--source", str(tmp_path), "--dry-run") == 2
    assert "deploy/k8s/overlays/gke not found" in capsys.readouterr().err
    assert deploy_lb("--source", str(tmp_path), "--dry-run") == 2
    assert "deploy/k8s/overlays/gke-loadbalancer not found" in capsys.readouterr().err


def test_the_default_source_is_this_checkout_wherever_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_root() == ROOT


def test_default_tag(fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_tag(tmp_path) == "abc1234"
    monkeypatch.setenv("FAKE_DIRTY", "1")
    assert default_tag(tmp_path) == "abc1234-dirty"
    fakes.remove("git")
    assert default_tag(tmp_path) == f"v{__version__}"


# -- the dry run --------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [None, 2])
@pytest.mark.parametrize("tag", ["v7", None])
def test_dry_run_lists_every_step_with_its_reason_and_runs_none(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tag: str | None, nodes: int | None
) -> None:
    argv = ["deploy", "gke", "--project", "demo-project", "--domain", DOMAIN, "--dry-run"]
    argv += ["--tag", tag] if tag else []
    argv += ["--nodes", str(nodes)] if nodes else []
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = listed(out)
    assert [name for name, _, _ in rows] == names(plan_gke(options(nodes=nodes)))
    for name, _, details in rows:
        reasons = [d for d in details if d.startswith("# ")]
        assert len(reasons) == 1, f"{name} says why it is there, once"
        assert len(reasons[0]) > 20, name
    shown = {name: text for name, text, _ in rows}
    # Without --tag the tag is the git short SHA (the fake git says abc1234).
    assert shown["build image"].endswith(f"--tag={IMAGE}:{tag or 'abc1234'} {ROOT}")
    assert shown["check tools"] == "gcloud, gke-gcloud-auth-plugin, kubectl, docker must be on PATH"
    assert ("--num-nodes=2" in shown["create cluster"]) == (nodes == 2)
    assert shown["show DNS records"] == "prints (runs nothing)"
    under = {name: d for name, _, d in rows}
    probe = "gcloud artifacts repositories describe chargecast --location=us-central1"
    assert f"skipped when this succeeds: {probe}" in under["create repository"]
    assert (
        "repeated every 30 s, at most 120 times (60 min), until the certificate is ACTIVE"
        in under["wait for certificate"]
    )
    assert f"|   {DOMAIN}.\tA\t${{STATIC_IP}}" in under["show DNS records"]
    assert "|   ${DNS_AUTH_RECORD}" in under["show DNS records"]
    assert "|     digest: ${DIGEST}" in under["render manifests"]
    assert f"|         value: [{DOMAIN}]" in under["render manifests"]
    assert "None of them was run" in out
    assert "Every step runs with CLOUDSDK_CORE_PROJECT=demo-project in its environment" in out
    assert "`export CLOUDSDK_CORE_PROJECT=demo-project` first" in out
    assert f"Then it prints: chargecast is serving at https://{DOMAIN}/ ({IMAGE}@${{DIGEST}})" in out
    assert "http://" not in out.split("Then it prints:")[1]
    # Not one cloud tool was started; git only to name the tag.
    assert all(c.startswith("git -C ") for c in fakes.calls())
    assert (fakes.calls() == []) == bool(tag)


def test_the_demo_dry_run_starts_and_ends_with_the_warning(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy_lb("--dry-run") == 0
    out = capsys.readouterr().out
    rows = listed(out)
    assert rows[0][:2] == ("warning", "prints (runs nothing)")
    assert any("WARNING: --expose loadbalancer serves plain HTTP" in d for d in rows[0][2])
    assert rows[-1][0] == "wait for external IP"
    assert "repeated every 5 s, at most 60 times, until it prints something" in rows[-1][2]
    done = out.split("Then it prints: ")[1]
    assert done.startswith("chargecast is serving at http://${EXTERNAL_IP}/")
    assert "WARNING" in done
    assert "unencrypted" in done


def test_the_dry_run_never_shows_a_secret(fakes: Fakes, capsys: pytest.CaptureFixture[str], secret_file: Path) -> None:
    argv = ["--iap", "user:ana@example.com", *IAP_FLAGS, "--iap-client-secret-file", str(secret_file)]
    assert deploy(*argv, "--cloudsql-instance", "audit", "--dry-run") == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert base64.b64encode(SECRET.encode()).decode() not in out
    shown = {name: text for name, text, _ in listed(out)}
    assert shown["render IAP secret"].endswith(f"-m chargecast.deploy.iapsecret {secret_file} {CLIENT}")
    assert "its output becomes ${IAP_SECRET}, a secret that is never printed" in out
    assert "its output becomes ${DB_PASSWORD}, a secret that is never printed" in out
    assert fakes.calls() == [], "nothing ran, so no password even exists"


def test_the_certificate_wait_follows_its_flag(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--cert-timeout", "90", "--dry-run") == 0
    assert "at most 180 times (90 min), until the certificate is ACTIVE" in capsys.readouterr().out


def test_dry_run_needs_no_tools_at_all(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    for tool in TOOLS:
        fakes.remove(tool)
    assert main(["deploy", "gke", "--project", "demo-project", "--domain", DOMAIN, "--dry-run"]) == 0
    assert f"{IMAGE}:v{__version__}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "expected_steps"),
    [
        (
            "status",
            [
                ("check tools", "kubectl must be on PATH"),
                ("rollout status", "kubectl rollout status deployment/chargecast --timeout=2m"),
                ("list objects", "kubectl get deploy,hpa,pods,svc -l app.kubernetes.io/name=chargecast"),
            ],
        ),
        (
            "rollback",
            [
                ("check tools", "kubectl must be on PATH"),
                ("undo rollout", "kubectl rollout undo deployment/chargecast"),
                ("wait for rollout", "kubectl rollout status deployment/chargecast --timeout=5m"),
            ],
        ),
    ],
)
def test_status_and_rollback_dry_runs(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], command: str, expected_steps: list[tuple[str, str]]
) -> None:
    assert main(["deploy", command, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [(name, shown) for name, shown, _ in listed(out)] == expected_steps
    assert "CLOUDSDK_CORE_PROJECT" not in out, "kubectl's current context needs no project"
    assert fakes.calls() == []


def test_placeholders_stay_expandable_in_the_listing() -> None:
    assert show_command(["kubectl", "kustomize", "${WORKDIR}"]) == 'kubectl kustomize "${WORKDIR}"'
    assert show_command(["echo", 'a "$b" ${DIGEST}']) == 'echo "a \\"\\$b\\" ${DIGEST}"'
    assert show_command(["--format=value(account)"]) == "'--format=value(account)'"
    assert " 1. check tools: gcloud, gke-gcloud-auth-plugin, kubectl, docker must be on PATH" in format_plan(
        plan_gke(options())
    )


# -- the runner against fake tools: checks and failures ------------------------------------------


def test_missing_gcloud_names_the_step_and_the_install_page(fakes: Fakes, capfd: pytest.CaptureFixture[str]) -> None:
    fakes.remove("gcloud")
    assert deploy() == 2
    err = capfd.readouterr().err
    assert (
        "step 'check tools': gcloud not found on PATH; "
        "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
    ) in err
    assert "Traceback" not in err
    assert fakes.calls() == []


def test_missing_docker_suggests_cloud_build(fakes: Fakes, capfd: pytest.CaptureFixture[str]) -> None:
    fakes.remove("docker")
    assert deploy() == 2
    err = capfd.readouterr().err
    assert "step 'check tools': docker not found on PATH" in err
    assert "--build cloud" in err
    # Building in the cloud needs no docker, so only the other missing tool is reported.
    fakes.remove("kubectl")
    assert deploy("--build", "cloud") == 2
    err = capfd.readouterr().err
    assert "kubectl not found on PATH" in err
    assert "docker" not in err


def test_not_logged_in(fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NO_LOGIN", "1")
    assert deploy() == 2
    err = capfd.readouterr().err
    assert "step 'check login'" in err
    assert "gcloud auth login" in err
    assert "Traceback" not in err
    assert fakes.calls() == ["gcloud auth list --filter=status:ACTIVE --format=value(account)"]


def test_an_unknown_project_stops_before_anything_is_created(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "gcloud projects describe")
    assert deploy() == 2
    err = capfd.readouterr().err
    assert "step 'check project': `gcloud projects describe demo-project" in err
    assert "gcloud projects list" in err
    assert fakes.calls()[-1].startswith("gcloud projects describe demo-project")
    assert len(fakes.calls()) == 2


def test_a_failed_step_stops_the_run_and_says_which(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "gcloud services enable")
    assert deploy() == 2
    err = capfd.readouterr().err
    assert "chargecast deploy gke: step 'enable APIs': `gcloud services enable" in err
    assert "exited with status 1" in err
    assert "ERROR: (gcloud) simulated failure" in err
    assert "billing" in err
    assert "safe to repeat" in err
    assert "Traceback" not in err
    assert fakes.calls()[-1].startswith("gcloud services enable")
    assert not any("artifacts" in c or c.startswith(("docker", "kubectl")) for c in fakes.calls())


def test_a_failing_build_keeps_the_cluster_untouched(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "docker build")
    assert deploy() == 2
    assert "step 'build image'" in capfd.readouterr().err
    assert not any("container clusters" in c or "addresses" in c or c.startswith("kubectl") for c in fakes.calls())


def test_a_render_that_misses_the_digest_is_caught(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the overlay's placeholder image changed, the wrapper would silently deploy the placeholder."""
    monkeypatch.setattr(wrapper, "GKE_IMAGE_PLACEHOLDER", "example/renamed")
    with pytest.raises(DeployError, match=r"step 'render manifests': the output lacks .*@sha256:"):
        run_plan(plan_gke(options()), sleep=lambda _: None)
    assert not any(c.startswith(("kubectl apply", "gcloud compute")) for c in fakes.calls())


def test_a_certificate_for_another_domain_is_named_not_served(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HAVE", "ip dnsauth cert")
    monkeypatch.setenv("FAKE_CERT_DOMAIN", "old.example.org")
    assert deploy() == 2
    err = capfd.readouterr().err
    assert f"step 'check certificate domain': the output lacks {DOMAIN}" in err
    assert "chargecast deploy teardown" in err
    assert not any("maps" in c or "clusters create" in c for c in fakes.calls())


# -- the runner against fake tools: whole deploys ----------------------------------------------


def ran_as_planned(plan: Plan, calls: list[str], polls: dict[str, int]) -> list[str]:
    """What a first deploy runs: each create after its probe found nothing, polls as often as said."""
    render = next(c for c in calls if c.startswith("kubectl kustomize "))
    expected: list[str] = []
    for step in plan.steps:
        if step.skip_if:
            expected.append(" ".join(step.skip_if))
        line = render if step.name == "render manifests" else " ".join(step.argv)
        expected += [line] * polls.get(step.name, 1)
    return [c for c in expected if c]  # "check tools" and messages run nothing


def test_happy_path_first_secure_deploy(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "someone-elses-project")  # the user's own setting loses
    fakes.certificate_states(
        certificate("PROVISIONING"),
        certificate("PROVISIONING"),
        certificate("ACTIVE"),
    )
    naps: list[float] = []
    plan = plan_gke(options())
    values = run_plan(plan, sleep=naps.append)
    calls = fakes.calls()
    assert calls == ran_as_planned(plan, calls, {"wait for certificate": 3})
    assert not any(c.startswith("gcloud config") for c in calls)
    # Every tool got the project (and no prompts) from the environment the runner gave it ...
    assert fakes.environments() == {tool: {("demo-project", "1")} for tool in ("gcloud", "docker", "kubectl")}
    # ... while this process's own environment is as it was.
    assert os.environ["CLOUDSDK_CORE_PROJECT"] == "someone-elses-project"
    assert naps == [30.0, 30.0]
    assert values["DIGEST"] == DIGEST
    assert (values["STATIC_IP"], values["DNS_AUTH_RECORD"]) == (STATIC_IP, CNAME)
    out = capfd.readouterr().out
    assert f"  {DOMAIN}.\tA\t{STATIC_IP}\n  {CNAME}\n" in out, "the records to add, filled in"
    assert out.count("PROVISIONING: Google's certificate authority is waiting") == 1, "said once, not per poll"
    assert out.rstrip().endswith(f"chargecast is serving at https://{DOMAIN}/ ({IMAGE}@{DIGEST})")
    # What reached the cluster: the real gke overlay, pinned to the digest, named for the domain.
    applied = fakes.applied()
    kinds = {o["kind"] for o in applied}
    assert {"Gateway", "HTTPRoute", "GCPBackendPolicy", "HealthCheckPolicy", "NetworkPolicy"} <= kinds
    assert not [o for o in applied if o["kind"] == "Service" and o["spec"].get("type") == "LoadBalancer"]
    deployment = next(o for o in applied if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}@{DIGEST}"
    for route in (o for o in applied if o["kind"] == "HTTPRoute"):
        assert route["spec"]["hostnames"] == [DOMAIN]
    (account,) = [o for o in applied if o["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == (
        "chargecast@demo-project.iam.gserviceaccount.com"
    )
    (policy,) = [o for o in applied if o["kind"] == "GCPBackendPolicy"]
    assert policy["spec"]["default"]["securityPolicy"] == "chargecast-armor"
    assert "iap" not in policy["spec"]["default"] or not policy["spec"]["default"]["iap"].get("enabled")
    (gateway,) = [o for o in applied if o["kind"] == "Gateway"]
    assert gateway["metadata"]["annotations"]["networking.gke.io/certmap"] == "chargecast-certmap"
    assert gateway["spec"]["addresses"] == [{"type": "NamedAddress", "value": "chargecast-ip"}]
    for placeholder in (GKE_IMAGE_PLACEHOLDER, "@PROJECT.iam", ":v1"):
        assert placeholder not in (fakes.dir / "applied.yaml").read_text()


def test_second_secure_deploy_skips_what_exists_and_updates_the_throttle(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HAVE", "repo cluster ip dnsauth cert certmap entry armor rule gsa")
    assert deploy("--nodes", "2", "--rate", "100") == 0
    calls = fakes.calls()
    created = [c for c in calls if re.search(r" (create|create-auto) ", c) and c.startswith("gcloud")]
    assert created == [], "everything was there"
    (update,) = [c for c in calls if " rules " in c and " update " in c]
    assert "--rate-limit-threshold-count=100" in update
    out = capfd.readouterr().out
    assert out.count("already there: skipped") == 9
    assert out.count("already there: updating it") == 1
    assert f"https://{DOMAIN}/" in out


def test_happy_path_first_demo_deploy(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IP_AFTER", "3")  # the load balancer needs two more polls
    naps: list[float] = []
    plan = plan_gke(lb_options())
    values = run_plan(plan, sleep=naps.append)
    calls = fakes.calls()
    assert calls == ran_as_planned(plan, calls, {"wait for external IP": 3})
    assert naps == [5.0, 5.0]
    assert values["EXTERNAL_IP"] == "203.0.113.7"
    out = capfd.readouterr().out
    assert out.startswith("[1/")
    assert out.count("WARNING: --expose loadbalancer serves plain HTTP") == 2, "before anything, and at the end"
    assert f"chargecast is serving at http://203.0.113.7/ ({IMAGE}@{DIGEST})" in out
    applied = fakes.applied()
    (service,) = [o for o in applied if o["kind"] == "Service"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert {"port": 80, "targetPort": "http"}.items() <= service["spec"]["ports"][0].items()
    assert not {"Gateway", "HTTPRoute", "GCPBackendPolicy"} & {o["kind"] for o in applied}
    assert "kind: PodMonitoring" in (fakes.dir / "applied.yaml").read_text()
    assert not Path(next(c for c in calls if c.startswith("kubectl kustomize ")).split(" ", 2)[2]).exists()


def test_no_external_ip_is_a_bounded_wait(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_IP_AFTER", "1000")
    naps: list[float] = []
    with pytest.raises(DeployError, match=r"step 'wait for external IP': .* printed nothing for 300 s") as caught:
        run_plan(plan_gke(lb_options()), sleep=naps.append)
    assert "kubectl describe service chargecast" in str(caught.value)
    assert len(naps) == 59


# -- waiting for the certificate ----------------------------------------------------------------


def test_a_failed_certificate_stops_with_the_reason_and_what_to_do(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)
    fakes.certificate_states(
        certificate("PROVISIONING", authorizationAttemptInfo=[attempt("", state="AUTHORIZING")]),
        certificate(
            "FAILED",
            provisioningIssue={"reason": "AUTHORIZATION_ISSUE", "details": "1 domain failed"},
            authorizationAttemptInfo=[attempt("CAA", details="CAA record for example.com forbids issuance")],
        ),
    )
    assert deploy() == 2
    out, err = capfd.readouterr()
    assert "PROVISIONING: Google's certificate authority is waiting" in out
    (line,) = [line for line in err.splitlines() if "step 'wait for certificate'" in line]
    assert "the certificate FAILED: a domain could not be authorised (AUTHORIZATION_ISSUE)" in line
    assert (
        f"{DOMAIN}: a CAA record forbids Google's certificate authorities (CAA): "
        f'add `{DOMAIN}. CAA 0 issue "pki.goog"`' in line
    )
    assert "(Google says: CAA record for example.com forbids issuance)" in line
    assert "Do not wait for a FAILED certificate to recover: fix the cause" in line
    assert "gcloud certificate-manager certificates delete chargecast-cert" in line
    assert f"fix: nothing is lost: add or fix the DNS records ({DOMAIN}. A {STATIC_IP}; {CNAME})" in err
    assert sum("--format=json" in c for c in fakes.calls()) == 2, "no poll after FAILED"


def test_a_certificate_that_never_comes_is_a_bounded_wait_that_explains(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    naps: list[float] = []
    monkeypatch.setattr(time, "sleep", naps.append)
    fakes.certificate_states(
        certificate(
            "PROVISIONING",
            provisioningIssue={"reason": "AUTHORIZATION_ISSUE"},
            authorizationAttemptInfo=[attempt("CONFIG", state="AUTHORIZING", details="CNAME not found")],
        )
    )
    assert deploy("--cert-timeout", "2") == 2
    out, err = capfd.readouterr()
    assert naps == [30.0] * 3, "2 minutes: 4 polls, 30 s apart"
    assert sum("--format=json" in c for c in fakes.calls()) == 4
    assert "step 'wait for certificate': still not done after 120 s: PROVISIONING:" in err
    assert f"the CNAME _acme-challenge.{DOMAIN} is missing, wrong or not visible yet" in err
    assert "(like FAILED_NOT_VISIBLE for load-balancer-authorised certificates)" in err
    assert f"dig +short CNAME _acme-challenge.{DOMAIN}" in err
    assert "(Google says: CNAME not found)" in err
    assert "run the same command again: it skips what exists and waits again" in err
    assert "chargecast is serving" not in out


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        (certificate("ACTIVE"), Reading("ACTIVE")),
        (certificate("PROVISIONING"), Reading(None, "PROVISIONING: Google's certificate authority is waiting")),
        (
            certificate("PROVISIONING", authorizationAttemptInfo=[attempt("", state="AUTHORIZED")]),
            Reading(None, "PROVISIONING: Google's certificate authority is waiting"),
        ),
        (
            certificate("PROVISIONING", provisioningIssue={"reason": "RATE_LIMITED"}),
            Reading(None, "PROVISIONING: Google's or the certificate authority's quota is exhausted (RATE_LIMITED)"),
        ),
        (
            certificate("PROVISIONING", authorizationAttemptInfo=[attempt("RATE_LIMITED", state="AUTHORIZING")]),
            Reading(None, f"PROVISIONING: {DOMAIN}: the certificate authority's rate limit for this domain"),
        ),
        (
            certificate("PROVISIONING", authorizationAttemptInfo=[attempt("CONFIG", state="AUTHORIZING")]),
            Reading(None, f"PROVISIONING: {DOMAIN}: the DNS check failed (CONFIG)"),
        ),
    ],
)
def test_each_certificate_state_reads_in_plain_words(described: dict[str, Any], expected: Reading) -> None:
    reading = read_certificate(json.dumps(described))
    assert reading.value == expected.value
    assert reading.note.startswith(expected.note)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (json.dumps(certificate("FAILED")), "the certificate FAILED: Google gave no reason"),
        (
            json.dumps(certificate("FAILED", authorizationAttemptInfo=[attempt("CONFIG")])),
            f"the certificate FAILED: {DOMAIN}: the DNS check failed (CONFIG)",
        ),
        (
            json.dumps(certificate("FAILED", authorizationAttemptInfo=[attempt("RATE_LIMITED")])),
            "rate limit for this domain was reached (RATE_LIMITED)",
        ),
        (json.dumps({"name": "x", "selfManaged": {}}), "chargecast-cert is not a Google-managed certificate"),
        ("ERROR: not json", "gcloud printed something that is not JSON"),
    ],
)
def test_a_certificate_that_cannot_become_active_is_hopeless(text: str, message: str) -> None:
    with pytest.raises(HopelessError, match=re.escape(message)):
        read_certificate(text)


# -- IAP, end to end on fakes --------------------------------------------------------------------


def test_iap_deploy_keeps_the_client_secret_off_every_command_line_and_message(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, secret_file: Path
) -> None:
    monkeypatch.setenv("FAKE_BACKEND_AFTER", "2")  # the Gateway names its backend on the second look
    monkeypatch.setattr(time, "sleep", lambda _: None)
    members = "user:ana@example.com,group:actuaries@example.com"
    assert deploy("--iap", members, *IAP_FLAGS, "--iap-client-secret-file", str(secret_file)) == 0
    calls = fakes.calls()
    out, err = capfd.readouterr()
    encoded = base64.b64encode(SECRET.encode()).decode()
    for text in ("\n".join(calls), out, err, (fakes.dir / "env.log").read_text()):
        assert SECRET not in text
        assert encoded not in text
    applied = fakes.applied()
    (secret,) = [o for o in applied if o["kind"] == "Secret" and o["metadata"]["name"] == "chargecast-iap"]
    assert base64.b64decode(secret["data"]["key"]).decode() == SECRET, "the newline is not part of the secret"
    (policy,) = [o for o in applied if o["kind"] == "GCPBackendPolicy"]
    assert policy["spec"]["default"]["iap"] == {
        "enabled": True,
        "clientID": CLIENT,
        "oauth2ClientSecret": {"name": "chargecast-iap"},
    }
    assert applied.index(secret) < applied.index(policy), "the Secret first, then the policy naming it"
    grants = [c for c in calls if c.startswith("gcloud iap web add-iam-policy-binding")]
    assert grants == [
        f"gcloud iap web add-iam-policy-binding --resource-type=backend-services --service={BACKEND} "
        f"--member={m} --role=roles/iap.httpsResourceAccessor --format=value(etag)"
        for m in members.split(",")
    ]
    assert sum(c.startswith("kubectl get gateway/chargecast") for c in calls) == 2
    assert "the Gateway lists no backend service for default/chargecast yet" in out
    assert f"gcloud compute backend-services describe {BACKEND} --global --format=value(id)" in calls
    assert (
        "kubectl set env deployment/chargecast "
        "CHARGECAST_IAP_AUDIENCE=/projects/123456789012/global/backendServices/4444444444444444444"
    ) in calls
    after = calls[calls.index(grants[-1]) :]
    assert [c.split(" ")[1] for c in after if c.startswith("kubectl")] == ["set", "rollout"]
    assert f"behind IAP: only {members.replace(',', ', ')} get through" in out


def test_a_failing_iap_secret_names_the_step_but_never_the_secret(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, secret_file: Path
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "kubectl apply")
    assert deploy("--iap", "user:ana@example.com", *IAP_FLAGS, "--iap-client-secret-file", str(secret_file)) == 2
    out, err = capfd.readouterr()
    assert "step 'apply IAP secret': `kubectl apply -f -` exited with status 1" in err
    assert SECRET not in out + err
    assert base64.b64encode(SECRET.encode()).decode() not in out + err


def test_the_secret_file_reader_takes_the_secret_or_the_consoles_download(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_text(f"  {SECRET}\r\n")
    assert client_secret(raw) == SECRET
    download = tmp_path / "client_secret.json"
    download.write_text(json.dumps({"web": {"client_id": CLIENT, "client_secret": SECRET, "project_id": "p"}}))
    assert client_secret(download, CLIENT) == SECRET
    made = json.loads(manifest(SECRET))
    assert made["metadata"] == {"name": "chargecast-iap", "labels": {"app.kubernetes.io/name": "chargecast"}}
    assert base64.b64decode(made["data"]["key"]).decode() == SECRET
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70_000)
    with pytest.raises(ValueError, match="larger than 64 KiB"):
        client_secret(big)


def test_status_runs_rollout_status_then_lists(fakes: Fakes, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "status"]) == 0
    assert fakes.calls() == [
        "kubectl rollout status deployment/chargecast --timeout=2m",
        "kubectl get deploy,hpa,pods,svc -l app.kubernetes.io/name=chargecast",
    ]
    out = capfd.readouterr().out
    assert "successfully rolled out" in out
    assert "READY" in out


def test_rollback_undoes_and_waits(fakes: Fakes, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "rollback"]) == 0
    assert fakes.calls() == [
        "kubectl rollout undo deployment/chargecast",
        "kubectl rollout status deployment/chargecast --timeout=5m",
    ]
    assert "rolled back" in capfd.readouterr().out


def test_rollback_to_a_revision_that_fails(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "kubectl rollout undo")
    assert main(["deploy", "rollback", "--to-revision", "3"]) == 2
    err = capfd.readouterr().err
    assert "step 'undo rollout': `kubectl rollout undo deployment/chargecast --to-revision=3`" in err
    assert "kubectl rollout history deployment/chargecast" in err
    assert "safe to repeat" not in err, "a second undo would flip back to the version being left"
    assert fakes.calls() == ["kubectl rollout undo deployment/chargecast --to-revision=3"]


def test_status_without_kubectl(fakes: Fakes, capfd: pytest.CaptureFixture[str]) -> None:
    fakes.remove("kubectl")
    assert main(["deploy", "status"]) == 2
    assert "step 'check tools': kubectl not found on PATH" in capfd.readouterr().err


# -- the audit log on Cloud SQL (--cloudsql-instance) ---------------------------------------------

CLOUDSQL_STEPS = [
    "create Cloud SQL instance",
    "create database",
    "create database user",
    "grant Cloud SQL client",
    "generate database password",
    "set database password",
    "render audit secret",
    "apply audit secret",
]


@pytest.mark.parametrize("changes", [{}, {"nodes": 2}, {"build": "cloud"}])
def test_cloudsql_steps_come_in_the_order_each_needs(changes: dict[str, Any]) -> None:
    steps = [s.name for s in plan_gke(options(cloudsql_instance="audit", **changes)).steps]
    assert [n for n in steps if n in CLOUDSQL_STEPS] == CLOUDSQL_STEPS
    for before, after in [
        ("enable APIs", "create Cloud SQL instance"),  # the Cloud SQL Admin API is off in a new project
        ("render manifests", "create Cloud SQL instance"),  # a broken manifest fails before minutes of creation
        ("create cluster", "create Cloud SQL instance"),
        ("create service account", "grant Cloud SQL client"),  # the proxy connects as the pods' account
        ("get credentials", "set database password"),  # its probe asks the cluster for the Secret
        ("apply audit secret", "apply manifests"),  # the first pods already find the Secret
    ]:
        assert steps.index(before) < steps.index(after), f"{before} must run before {after}"
    assert [s.name for s in plan_gke(options(**changes)).steps if s.name in CLOUDSQL_STEPS] == []


def test_what_cloudsql_creates_is_probed_first_and_the_password_is_kept_while_the_secret_exists() -> None:
    steps = by_name(plan_gke(options(cloudsql_instance="audit")))
    for name in ("create Cloud SQL instance", "create database", "create database user"):
        step = steps[name]
        verb = step.argv.index("create")
        assert step.skip_if[:verb] == step.argv[:verb]
        assert step.skip_if[verb : verb + 2] == ("describe", step.argv[verb + 1])
    probe = ("kubectl", "get", "secret", "chargecast-audit", "-o", "name")
    for name in ("set database password", "render audit secret", "apply audit secret"):
        assert steps[name].skip_if == probe, name
    assert steps["generate database password"].secret
    assert steps["generate database password"].capture == "DB_PASSWORD"
    ((file, url),) = steps["render audit secret"].files
    assert (file, url) == ("audit-url", "postgresql://chargecast:${DB_PASSWORD}@127.0.0.1:5432/chargecast")
    assert not any("${DB_PASSWORD}" in a for a in steps["render audit secret"].argv), "the URL goes in by file"


def test_cloudsql_dry_run_shows_placeholders_and_runs_nothing(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--cloudsql-instance", "audit", "--dry-run") == 0
    out = capsys.readouterr().out
    assert fakes.calls() == [], "nothing ran, so no password even exists"
    shown = {name: text for name, text, _ in listed(out)}
    assert [n for n in shown if n in CLOUDSQL_STEPS] == CLOUDSQL_STEPS
    assert shown["set database password"].endswith('"--password=${DB_PASSWORD}"')
    assert "its output becomes ${DB_PASSWORD}, a secret that is never printed" in out
    assert re.findall(r"--password=(\S+)", out) == ['${DB_PASSWORD}"']
    assert "| postgresql://chargecast:${DB_PASSWORD}@127.0.0.1:5432/chargecast" in out
    assert "|                     value: demo-project:us-central1:audit" in out


def test_cloudsql_first_deploy_keeps_the_password_out_of_every_message(
    fakes: Fakes, capfd: pytest.CaptureFixture[str]
) -> None:
    plan = plan_gke(options(cloudsql_instance="audit"))
    values = run_plan(plan, sleep=lambda _: None)
    password = values["DB_PASSWORD"]
    assert len(password) >= 32
    calls = fakes.calls()
    ran = [
        c
        for c in calls
        if c.startswith(("gcloud sql", "gcloud projects add-iam", "kubectl create secret")) and " describe " not in c
    ]
    assert ran == [
        "gcloud sql instances create audit --database-version=POSTGRES_15 --edition=enterprise --tier=db-f1-micro "
        "--region=us-central1 --storage-auto-increase",
        "gcloud sql databases create chargecast --instance=audit",
        "gcloud sql users create chargecast --instance=audit",
        "gcloud projects add-iam-policy-binding demo-project --role=roles/cloudsql.client "
        "--member=serviceAccount:chargecast@demo-project.iam.gserviceaccount.com --condition=None "
        "--format=value(etag)",
        f"gcloud sql users set-password chargecast --instance=audit --password={password}",
        "kubectl create secret generic chargecast-audit --from-file=CHARGECAST_AUDIT_URL="
        + next(c for c in calls if c.startswith("kubectl create secret")).split("=", 2)[2],
    ]
    out, err = capfd.readouterr()
    assert password not in out + err
    applied = (fakes.dir / "applied.yaml").read_text()
    # One apply of the Secret (one document), then one of the manifests (many).
    parts = applied.split("---\n")
    (audit,) = yaml_docs(parts[1])
    manifests = yaml_docs("---\n".join(parts[2:]))
    url = base64.b64decode(audit["data"]["CHARGECAST_AUDIT_URL"]).decode()
    assert url == f"postgresql://chargecast:{password}@127.0.0.1:5432/chargecast"
    deployment = next(o for o in manifests if o["kind"] == "Deployment")
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["env"] == [{"name": "CLOUDSQL_INSTANCE", "value": "demo-project:us-central1:audit"}]
    assert "PROJECT:REGION:INSTANCE" not in applied
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}@{DIGEST}"


def test_a_failing_password_step_shows_the_placeholder_not_the_password(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "gcloud sql users set-password")
    assert deploy("--cloudsql-instance", "audit") == 2
    out, err = capfd.readouterr()
    (logged,) = [c for c in fakes.calls() if "set-password" in c]
    password = logged.rsplit("--password=", 1)[1]
    assert password
    assert password not in out + err, "neither in the command shown nor in the tool's own error"
    assert "step 'set database password': `gcloud sql users set-password chargecast --instance=audit" in err
    assert '"--password=${DB_PASSWORD}"' in err
    assert "simulated failure of: gcloud sql users set-password chargecast --instance=audit" in err
    assert "--password=${DB_PASSWORD}" in err.split("simulated failure of: ")[1]
    assert not any(c.startswith("kubectl create secret") for c in fakes.calls()), "no Secret for an unset password"


def test_cloudsql_second_deploy_skips_the_instance_and_keeps_the_password(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    have = "repo cluster sql sqldb sqluser secret gsa ip dnsauth cert certmap entry armor rule"
    monkeypatch.setenv("FAKE_HAVE", have)
    assert deploy("--cloudsql-instance", "audit") == 0
    calls = fakes.calls()
    assert not any(" create " in f" {c} " and c.startswith(("gcloud sql", "gcloud artifacts")) for c in calls)
    assert not any("set-password" in c or c.startswith("kubectl create secret") for c in calls)
    assert "gcloud sql instances describe audit --format=value(name)" in calls
    assert calls.count("kubectl get secret chargecast-audit -o name") == 3
    # The grant is repeated (adding an existing binding changes nothing); the manifests are applied once.
    assert sum(c.startswith("gcloud projects add-iam-policy-binding") for c in calls) == 1
    assert sum(c == "kubectl apply -f -" for c in calls) == 1
    # repository, cluster, six edge resources, service account, instance, database, user, three Secret probes
    assert capfd.readouterr().out.count("already there: skipped") == 2 + 6 + 1 + 3 + 3


# -- teardown --------------------------------------------------------------------------------------

TEARDOWN = [
    "check tools",
    "check login",
    "check project",
    "find cluster",
    "get credentials",
    "delete Gateway",
    "delete Service",
    "delete cluster",
    "remove Cloud SQL client grant",
    "delete service account",
    "delete certificate map entry",
    "delete certificate map",
    "delete certificate",
    "delete DNS authorization",
    "delete Cloud Armor policy",
    "release static IP",
    "delete repository",
]


def teardown(*extra: str) -> int:
    return main(["deploy", "teardown", "--project", "demo-project", *extra])


def test_teardown_deletes_in_an_order_that_never_removes_what_is_still_used() -> None:
    plan = plan_teardown(TeardownOptions("demo-project"))
    assert names(plan) == TEARDOWN
    for before, after in [
        ("delete Gateway", "delete cluster"),  # its controller removes the load balancer, then the cluster goes
        ("delete Service", "delete cluster"),
        ("delete Gateway", "delete certificate map"),  # the load balancer's HTTPS proxy uses the map ...
        ("delete Gateway", "delete Cloud Armor policy"),  # ... its backend service the policy ...
        ("delete Gateway", "release static IP"),  # ... and its forwarding rule the address
        ("delete certificate map entry", "delete certificate"),
        ("delete certificate", "delete DNS authorization"),
        ("remove Cloud SQL client grant", "delete service account"),
    ]:
        assert TEARDOWN.index(before) < TEARDOWN.index(after), f"{before} must run before {after}"
    deletes = [s for s in plan.steps if s.name.startswith(("delete", "remove", "release"))]
    assert all(s.gone_if for s in deletes), "each tolerates what is already gone"
    assert all(s.when == "CLUSTER_LOCATION" for s in plan.steps[4:8]), "nothing inside a cluster that is not there"
    assert plan.keep_going
    with_sql = names(plan_teardown(TeardownOptions("demo-project", cloudsql_instance="audit")))
    assert with_sql.index("delete Cloud SQL instance") == with_sql.index("delete cluster") + 1


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "find cluster",
            "gcloud container clusters list --filter=name=chargecast '--format=value(location)' --limit=1",
        ),
        (
            "delete Gateway",
            "kubectl delete gateway/chargecast httproute/chargecast httproute/chargecast-redirect --ignore-not-found "
            "--wait=true --timeout=15m",
        ),
        ("delete cluster", 'gcloud container clusters delete chargecast "--location=${CLUSTER_LOCATION}" --quiet'),
        (
            "delete certificate map entry",
            "gcloud certificate-manager maps entries delete chargecast-entry --map=chargecast-certmap --quiet",
        ),
        ("delete Cloud Armor policy", "gcloud compute security-policies delete chargecast-armor --quiet"),
        ("release static IP", "gcloud compute addresses delete chargecast-ip --global --quiet"),
        (
            "delete service account",
            "gcloud iam service-accounts delete chargecast@demo-project.iam.gserviceaccount.com --quiet",
        ),
        ("delete repository", "gcloud artifacts repositories delete chargecast --location=us-central1 --quiet"),
    ],
)
def test_each_teardown_command(step: str, expected: str) -> None:
    assert command(plan_teardown(TeardownOptions("demo-project")), step) == expected


def test_teardown_dry_run_lists_every_deletion_with_its_reason(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert teardown("--cloudsql-instance", "audit", "--region", "europe-west4", "--dry-run") == 0
    out = capsys.readouterr().out
    rows = listed(out)
    assert [name for name, _, _ in rows] == [*TEARDOWN[:8], "delete Cloud SQL instance", *TEARDOWN[8:]]
    for name, _, details in rows:
        assert len([d for d in details if d.startswith("# ")]) == 1, name
    assert "A deletion that fails is reported and the others still run" in out
    assert "skipped when ${CLUSTER_LOCATION} is empty" in out
    assert "gcloud sql instances delete audit --quiet" in out
    assert "--location=europe-west4 --quiet" in out
    assert "gs://demo-project_cloudbuild" in out
    assert "only git" not in out, "a teardown has no tag to name"
    assert fakes.calls() == []


def test_teardown_removes_everything_that_is_there(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HAVE", "cluster")
    assert teardown("--cloudsql-instance", "audit") == 0
    calls = fakes.calls()
    assert "gcloud container clusters get-credentials chargecast --location=us-central1" in calls
    assert "gcloud container clusters delete chargecast --location=us-central1 --quiet" in calls
    kubectl = [c for c in calls if c.startswith("kubectl")]
    assert [c.split(" ")[2] for c in kubectl] == ["gateway/chargecast", "service/chargecast"]
    assert calls.index(kubectl[-1]) < calls.index(
        "gcloud container clusters delete chargecast --location=us-central1 --quiet"
    )
    assert "Everything chargecast deploy created is gone" in capfd.readouterr().out


def test_teardown_of_what_is_already_gone_reports_it_and_succeeds(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GONE", "gcloud * delete *")  # every gcloud delete: NOT_FOUND
    assert teardown() == 0
    out = capfd.readouterr().out
    # Eight gcloud deletions found nothing (the cluster's own are skipped: there is no cluster).
    assert out.count("already gone: nothing to delete") == 8
    assert out.count("nothing to do: ${CLUSTER_LOCATION} is empty") == 4
    assert not any(c.startswith("kubectl") for c in fakes.calls()), "no cluster, so kubectl never runs"


def test_a_failed_deletion_is_reported_and_the_others_still_run(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "gcloud compute security-policies delete")
    assert teardown() == 2
    out, err = capfd.readouterr()
    assert "chargecast deploy teardown: step 'delete Cloud Armor policy': `gcloud compute security-policies" in err
    assert "still in use by the load balancer the Gateway made" in err
    assert "1 step(s) failed, the others ran: delete Cloud Armor policy" in err
    calls = fakes.calls()
    assert "gcloud compute addresses delete chargecast-ip --global --quiet" in calls, "the next ones still ran"
    assert calls[-1] == "gcloud artifacts repositories delete chargecast --location=us-central1 --quiet"
    assert "Everything chargecast deploy created is gone" not in out


def test_teardown_stops_if_kubectl_could_point_at_another_cluster(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HAVE", "cluster")
    monkeypatch.setenv("FAKE_FAIL", "gcloud container clusters get-credentials")
    assert teardown() == 2
    assert "step 'get credentials'" in capfd.readouterr().err
    assert not any(c.startswith("kubectl") or " delete " in c for c in fakes.calls())
    with pytest.raises(DeployError, match="get credentials") as caught:
        run_plan(plan_teardown(TeardownOptions("demo-project")), sleep=lambda _: None)
    assert not isinstance(caught.value, IncompleteError), "stopped there, not carried on"


# -- the rendered wrapper builds against the repository's overlays ---------------------------------

RENDERS = [
    pytest.param(options, {}, id="gateway"),
    pytest.param(options, {"iap": iap()}, id="gateway-iap"),
    pytest.param(options, {"cloudsql_instance": "audit"}, id="gateway-cloudsql"),
    pytest.param(options, {"iap": iap(), "cloudsql_instance": "audit"}, id="gateway-iap-cloudsql"),
    pytest.param(lb_options, {}, id="loadbalancer"),
    pytest.param(lb_options, {"cloudsql_instance": "audit"}, id="loadbalancer-cloudsql"),
    pytest.param(options, {"model_key": MODEL_KEY}, id="gateway-model-key"),
    pytest.param(options, {"iap": iap(), "cloudsql_instance": "audit", "model_key": MODEL_KEY}, id="gateway-all"),
    pytest.param(lb_options, {"model_key": MODEL_KEY}, id="loadbalancer-model-key"),
]


@pytest.mark.parametrize(("make", "changes"), RENDERS)
def test_the_wrapper_renders_with_kubectl_kustomize(make: Any, changes: dict[str, Any], tmp_path: Path) -> None:
    import shutil
    import subprocess

    o = make(**changes)
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    (tmp_path / "kustomization.yaml").write_text(wrapper.wrapper_kustomization(o).replace("${DIGEST}", DIGEST))
    done = subprocess.run(
        [dev_tool("kubectl"), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml_docs(done.stdout)
    kinds = [d["kind"] for d in rendered]
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"{IMAGE}@{DIGEST}"
    (account,) = [d for d in rendered if d["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == o.service_account
    services = [d for d in rendered if d["kind"] == "Service"]
    balancers = [s for s in services if s["spec"].get("type") == "LoadBalancer"]
    assert len(balancers) == (0 if o.gateway else 1)
    assert ("Gateway" in kinds) == o.gateway
    for route in (d for d in rendered if d["kind"] == "HTTPRoute"):
        assert route["spec"]["hostnames"] == [DOMAIN]
    policies = [d for d in rendered if d["kind"] == "GCPBackendPolicy"]
    assert len(policies) == (1 if o.gateway else 0)
    for policy in policies:
        iap_block = policy["spec"]["default"].get("iap", {})
        assert bool(iap_block.get("enabled")) == bool(o.iap)
        if o.iap:
            assert iap_block["clientID"] == CLIENT
            assert iap_block["oauth2ClientSecret"] == {"name": "chargecast-iap"}
    proxies = [c for c in pod.get("initContainers", []) if c["name"] == "cloud-sql-proxy"]
    assert [c["env"] for c in proxies] == (
        [[{"name": "CLOUDSQL_INSTANCE", "value": o.connection_name}]] if o.cloudsql_instance else []
    )
    app = pod["containers"][0]
    keyed = [e for e in app["env"] if e["name"] == "CHARGECAST_MODEL_PUBLIC_KEY"]
    assert keyed == ([{"name": "CHARGECAST_MODEL_PUBLIC_KEY", "value": KEY_PATH}] if o.model_key else [])
    mounted = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "chargecast-model-key"]
    assert bool(mounted) == bool(o.model_key)
    text = done.stdout
    for placeholder in (GKE_IMAGE_PLACEHOLDER, "IAP_CLIENT_ID", "PROJECT:REGION:INSTANCE", "@PROJECT.iam"):
        assert placeholder not in text


# -- signed models only: --model-public-key ------------------------------------------------------

KEY_PATH = "/etc/chargecast/model-key/public.pem"  # where the model-key component mounts the key
KEY_VOLUME = {
    "name": "model-key",
    "configMap": {
        "name": "chargecast-model-key",
        "items": [{"key": "public.pem", "path": "public.pem"}],
        "defaultMode": 0o444,
    },
}


@dataclass(frozen=True)
class Checkouts:
    """Copies of the repository's deploy/k8s and models/current, their models in each state, and keys."""

    dir: Path

    def source(self, name: str) -> Path:
        return self.dir / name

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.pem"


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory: pytest.TempPathFactory) -> Checkouts:
    d = tmp_path_factory.mktemp("checkouts")
    for name in ("signed", "unsigned", "tampered", "garbled", "modelless"):
        shutil.copytree(ROOT / "deploy" / "k8s", d / name / "deploy" / "k8s")
        if name != "modelless":
            shutil.copytree(ROOT / "models" / "current", d / name / "models" / "current")
    for name in ("signed", "tampered", "garbled"):
        signing.sign(d / name / "models" / "current", SIGNER)
    metadata = d / "tampered" / "models" / "current" / "metadata.json"
    metadata.write_bytes(metadata.read_bytes() + b" ")  # the same model, but not the bytes that were signed
    (d / "garbled" / "models" / "current" / "metadata.json.sig").write_text("not a signature\n")
    (d / "public.pem").write_text(public_pem(SIGNER))
    (d / "other.pem").write_text(public_pem(Ed25519PrivateKey.generate()))
    private = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (d / "private.pem").write_bytes(SIGNER.private_bytes(*private))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (d / "rsa.pem").write_bytes(rsa_key.public_bytes(*SPKI))
    (d / "text.pem").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI not a PEM file\n")
    return Checkouts(d)


def keyed(checkouts: Checkouts, source: str = "signed", key: str = "public") -> list[str]:
    return ["--source", str(checkouts.source(source)), "--model-public-key", str(checkouts.key(key))]


@pytest.mark.parametrize("make", PATHS)
def test_the_model_key_goes_in_as_a_configmap_before_the_manifests_that_mount_it(make: Any) -> None:
    plan = plan_gke(make(model_key=MODEL_KEY))
    steps = names(plan)
    assert (
        steps.index("get credentials")
        < steps.index("render model key")
        < steps.index("apply model key")
        < steps.index("apply manifests")
    ), "the cluster first; the ConfigMap before the pods that cannot start without it"
    assert command(plan, "render model key") == (
        'kubectl create configmap chargecast-model-key "--from-file=public.pem=${WORKDIR}/model-public.pem" '
        "--dry-run=client -o yaml"
    )
    render, apply = by_name(plan)["render model key"], by_name(plan)["apply model key"]
    assert render.files == (("model-public.pem", MODEL_KEY.pem),), "the very text that was checked"
    assert (render.capture, render.require_output) == ("MODEL_KEY", True)
    assert MODEL_KEY.fingerprint in render.why
    assert (apply.argv, apply.stdin) == (("kubectl", "apply", "-f", "-"), "${MODEL_KEY}")
    ((_, text),) = by_name(plan)["render manifests"].files
    assert "  - k8s/components/model-key\n" in text
    said = f"\nsigned models only: every pod checks the model's signature with {MODEL_KEY.fingerprint}"
    assert plan.done.endswith(said)


@pytest.mark.parametrize("make", PATHS)
def test_without_a_model_key_no_trace_of_it_is_left(make: Any) -> None:
    """The setting and the mount come only with the component, in the manifest, never from `kubectl set env`:
    `kubectl apply` records what it applied, so the next apply without the component removes them
    (unlike the IAP audience, which needs `clear IAP audience`). The ConfigMap may stay; nothing mounts it."""
    plan = plan_gke(make())
    assert not {"render model key", "apply model key"} & set(names(plan))
    ((_, text),) = by_name(plan)["render manifests"].files
    assert "model-key" not in text
    assert "signed models only" not in plan.done
    for o in (make(), make(model_key=MODEL_KEY)):
        for step in plan_gke(o).steps:
            assert "CHARGECAST_MODEL_PUBLIC_KEY" not in " ".join(step.argv), step.name


def test_teardown_needs_nothing_for_the_model_key() -> None:
    """The ConfigMap is inside the cluster, which teardown deletes; nothing outside it was made."""
    plan = plan_teardown(TeardownOptions(project="demo-project"))
    assert "delete cluster" in names(plan)
    assert not any("model" in " ".join(s.argv) for s in plan.steps)


REFUSALS = [
    pytest.param("signed", "missing", "cannot read the key (No such file or directory)", id="missing-file"),
    pytest.param("signed", "text", "not a PEM public key", id="not-pem"),
    pytest.param("signed", "rsa", "an RSA key; model signatures use Ed25519", id="rsa"),
    pytest.param("signed", "private", "a private key; give its public half", id="private-key"),
    pytest.param(
        "unsigned",
        "public",
        "models/current is unsigned (no metadata.json.sig), so the pods would refuse it; sign it first with "
        "`chargecast sign models/current --key PRIVATE.pem`",
        id="unsigned",
    ),
    pytest.param("signed", "other", "models/current is not signed by this key (signed by another", id="wrong-key"),
    pytest.param("tampered", "public", "models/current is not signed by this key", id="changed-since"),
    pytest.param("garbled", "public", "models/current would be refused: ", id="not-a-signature"),
    pytest.param("modelless", "public", "no model at ", id="no-model"),
]


@pytest.mark.parametrize("path", [["--domain", DOMAIN], ["--expose", "loadbalancer", "--dry-run"]])
@pytest.mark.parametrize(("source", "key", "message"), REFUSALS)
def test_each_model_key_refusal_is_one_line_naming_the_flag_before_anything_runs(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    checkouts: Checkouts,
    path: list[str],
    source: str,
    key: str,
    message: str,
) -> None:
    argv = ["deploy", "gke", "--project", "demo-project", "--tag", "v1", *path, *keyed(checkouts, source, key)]
    (line,) = refused(argv, capsys).strip().splitlines()
    assert line.startswith(f"chargecast deploy gke: --model-public-key {checkouts.key(key)}")
    assert message in line
    assert "BEGIN" not in line, "the key's text is not repeated"
    assert fakes.calls() == [], "refused before anything is built, or even listed"


def test_the_dry_run_shows_the_key_going_in_before_the_manifests(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], checkouts: Checkouts
) -> None:
    assert deploy(*keyed(checkouts), "--dry-run") == 0
    rows = listed(capsys.readouterr().out)
    assert [name for name, _, _ in rows] == names(plan_gke(options(model_key=MODEL_KEY)))
    under = {name: details for name, _, details in rows}
    assert "|   - k8s/components/model-key" in under["render manifests"]
    assert "first writes ${WORKDIR}/model-public.pem:" in under["render model key"]
    assert "| -----BEGIN PUBLIC KEY-----" in under["render model key"]
    assert "stdin: ${MODEL_KEY}" in under["apply model key"]
    assert fakes.calls() == []


def key_in_pods(applied: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The applied ConfigMap and Deployment, once the Deployment mounts the key and points the setting at it."""
    (config,) = [o for o in applied if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "chargecast-model-key"]
    deployment = next(o for o in applied if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    app = pod["containers"][0]
    assert {"name": "CHARGECAST_MODEL_PUBLIC_KEY", "value": KEY_PATH} in app["env"]
    assert {"name": "model-key", "mountPath": str(Path(KEY_PATH).parent), "readOnly": True} in app["volumeMounts"]
    assert KEY_VOLUME in pod["volumes"]
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    return config, deployment


@pytest.mark.parametrize("run", [deploy, deploy_lb])
def test_a_model_key_deploy_applies_the_key_then_the_pods_that_check_with_it(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], checkouts: Checkouts, run: Any
) -> None:
    assert run(*keyed(checkouts)) == 0
    calls = fakes.calls()
    (create,) = [c for c in calls if c.startswith("kubectl create configmap")]
    assert re.fullmatch(
        r"kubectl create configmap chargecast-model-key --from-file=public\.pem=/\S+/model-public\.pem "
        r"--dry-run=client -o yaml",
        create,
    )
    build = next(c for c in calls if c.startswith("docker build"))
    assert build.endswith(f" {checkouts.source('signed')}"), "the image is built from the checkout that was checked"
    applied = fakes.applied()
    config, deployment = key_in_pods(applied)
    assert config["data"] == {"public.pem": checkouts.key("public").read_text()}
    assert applied.index(config) < applied.index(deployment)
    out = capfd.readouterr().out
    fingerprint = signing.fingerprint(SIGNER.public_key())
    assert f"signed models only: every pod checks the model's signature with {fingerprint}" in out


def test_a_failing_model_key_stops_before_the_manifests(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, checkouts: Checkouts
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "kubectl apply")
    assert deploy(*keyed(checkouts)) == 2
    assert "step 'apply model key': `kubectl apply -f -` exited with status 1" in capfd.readouterr().err
    assert not (fakes.dir / "applied.yaml").exists(), "no Deployment without its key"
