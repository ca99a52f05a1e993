"""``chargecast deploy``: the plan it makes, its dry run, and its runner against fake cloud tools.

The plan is checked for properties, not against a copy of itself: the order every step needs,
each command's exact flags for given options, a probe before everything that creates, the image
deployed by digest, the project given in the environment and never by `gcloud config set`.

gcloud, kubectl, docker and git are replaced by one small shell script on PATH that logs every
call with the environment it got, and plays the part a test asks for (not logged in, a failing
command, an existing cluster, a load balancer IP that appears on the third poll). Only ``kubectl
kustomize`` is real, so the happy path renders the repository's own gke overlay with the pushed digest.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chargecast import __version__
from chargecast.cli import main
from chargecast.deploy import gke
from chargecast.deploy.cli import default_root, default_tag
from chargecast.deploy.gke import GKE_IMAGE_PLACEHOLDER, PROJECT_RULE, GkeOptions, plan_gke
from chargecast.deploy.plan import Plan, Step, format_plan, show_command
from chargecast.deploy.runner import DeployError, run_plan
from tools import dev_tool

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "ab" * 32
IMAGE = "us-central1-docker.pkg.dev/demo-project/chargecast/chargecast"
TOOLS = ("gcloud", "kubectl", "docker", "git", "gke-gcloud-auth-plugin")

FAKE = r"""#!/bin/sh
# Stands in for gcloud, kubectl, docker, git and the GKE auth plugin: logs the call, then acts.
name=${0##*/}
call="$name $*"
printf '%s\n' "$call" >> "$FAKE_DIR/calls.log"
printf '%s\t%s\t%s\n' "$call" "${CLOUDSDK_CORE_PROJECT-(unset)}" "${CLOUDSDK_CORE_DISABLE_PROMPTS-(unset)}" \
  >> "$FAKE_DIR/env.log"
if [ -n "$FAKE_FAIL" ]; then
  case "$call" in
    "$FAKE_FAIL"*) printf 'ERROR: (%s) simulated failure of: %s\n' "$name" "$call" >&2; exit 1 ;;
  esac
fi
case "$call" in
  "gcloud auth list"*) [ -n "$FAKE_NO_LOGIN" ] || echo dev@example.com ;;
  "gcloud projects describe "*"projectNumber"*) echo 123456789012 ;;
  "gcloud projects describe"*) echo "$3" ;;
  "gcloud sql instances describe"*) [ -n "$FAKE_HAVE_SQL" ] || { echo NOT_FOUND >&2; exit 1; } ;;
  "gcloud sql databases describe"*|"gcloud sql users describe"*)
    [ -n "$FAKE_HAVE_SQL" ] || { echo NOT_FOUND >&2; exit 1; } ;;
  "kubectl get secret"*) [ -n "$FAKE_HAVE_SECRET" ] || { echo NotFound >&2; exit 1; } ;;
  "kubectl create secret"*) exec "$REAL_KUBECTL" "$@" ;;
  "gcloud artifacts repositories describe"*) [ -n "$FAKE_HAVE_REPO" ] || { echo NOT_FOUND >&2; exit 1; } ;;
  "gcloud container clusters describe"*) [ -n "$FAKE_HAVE_CLUSTER" ] || { echo NOT_FOUND >&2; exit 1; } ;;
  "gcloud artifacts docker images describe"*) echo "$FAKE_DIGEST" ;;
  "kubectl kustomize"*) exec "$REAL_KUBECTL" "$@" ;;
  "kubectl apply"*)
    { echo ---; while IFS= read -r line; do printf '%s\n' "$line"; done; } >> "$FAKE_DIR/applied.yaml"
    echo "deployment.apps/chargecast configured" ;;
  "kubectl get service"*)
    n=0
    [ -f "$FAKE_DIR/polls" ] && read -r n < "$FAKE_DIR/polls"
    n=$((n + 1))
    echo "$n" > "$FAKE_DIR/polls"
    [ "$n" -ge "$FAKE_IP_AFTER" ] && printf '203.0.113.7' ;;
  "kubectl rollout status"*) echo 'deployment "chargecast" successfully rolled out' ;;
  "kubectl rollout undo"*) echo "deployment.apps/chargecast rolled back" ;;
  "kubectl get deploy,hpa,pods,svc"*) echo "NAME                         READY   UP-TO-DATE" ;;
  "git -C "*" rev-parse "*) echo abc1234 ;;
  "git -C "*" status "*) [ -z "$FAKE_DIRTY" ] || echo " M src/chargecast/cli.py" ;;
esac
exit 0
"""


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
    for name in ("FAKE_FAIL", "FAKE_NO_LOGIN", "FAKE_HAVE_REPO", "FAKE_HAVE_CLUSTER", "FAKE_DIRTY", "FAKE_HAVE_SQL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FAKE_HAVE_SECRET", raising=False)
    return Fakes(tmp_path, bin_dir)


def options(**changes: Any) -> GkeOptions:
    return GkeOptions(**{"project": "demo-project", "tag": "v1", "root": ROOT, **changes})


def by_name(plan: Plan) -> dict[str, Step]:
    return {s.name: s for s in plan.steps}


def command(plan: Plan, step: str) -> str:
    return show_command(by_name(plan)[step].argv)


VARIANTS = [
    pytest.param({}, id="autopilot"),
    pytest.param({"nodes": 2}, id="standard"),
    pytest.param({"nodes": 3, "zone": "europe-west4-c", "region": "europe-west4"}, id="standard-zone"),
    pytest.param({"build": "cloud", "cluster": "ml", "repository": "images"}, id="cloud-build"),
    pytest.param({"project": "example.com:demo-project"}, id="domain-scoped"),
]


# -- the plan: order, flags, probes, digest, project --------------------------------------------


@pytest.mark.parametrize("changes", VARIANTS)
def test_every_step_comes_after_what_it_needs(changes: dict[str, Any]) -> None:
    names = [s.name for s in plan_gke(options(**changes)).steps]
    assert len(names) == len(set(names))
    assert names[:3] == ["check tools", "check login", "check project"], "checks first, before anything changes"
    needs = [
        ("enable APIs", "create repository"),  # the registry API is off in a new project
        ("create repository", "build image"),
        ("build image", "resolve digest"),
        ("resolve digest", "render manifests"),  # the manifests name the digest
        ("render manifests", "create cluster"),  # a broken manifest fails before minutes of cluster creation
        ("create cluster", "get credentials"),
        ("get credentials", "apply manifests"),
        ("apply manifests", "wait for rollout"),
        ("wait for rollout", "wait for external IP"),
    ]
    if changes.get("build") != "cloud":
        needs += [("configure docker", "push image"), ("build image", "push image"), ("push image", "resolve digest")]
    for before, after in needs:
        assert names.index(before) < names.index(after), f"{before} must run before {after}"
    assert names[-1] == "wait for external IP"


@pytest.mark.parametrize("changes", VARIANTS)
def test_the_project_goes_in_the_environment_never_into_gcloud_config(changes: dict[str, Any]) -> None:
    o = options(**changes)
    plan = plan_gke(o)
    assert plan.env == (("CLOUDSDK_CORE_PROJECT", o.project),)
    for step in plan.steps:
        for argv in (step.argv, step.skip_if):
            assert argv[:2] != ("gcloud", "config"), step.name
            assert "config" not in argv or argv[:3] == ("gcloud", "auth", "configure-docker"), step.name


@pytest.mark.parametrize("changes", VARIANTS)
def test_what_a_step_creates_is_probed_first_by_the_same_name_and_location(changes: dict[str, Any]) -> None:
    creating = [s for s in plan_gke(options(**changes)).steps if {"create", "create-auto"} & set(s.argv)]
    assert [s.name for s in creating] == ["create repository", "create cluster"]
    for step in creating:
        verb = next(i for i, a in enumerate(step.argv) if a.startswith("create"))
        assert step.skip_if[:verb] == step.argv[:verb]  # gcloud artifacts repositories / container clusters
        assert step.skip_if[verb] == "describe"
        assert step.skip_if[verb + 1] == step.argv[verb + 1]  # the same name
        location = [a for a in step.argv if a.startswith("--location=")]
        assert location
        assert [a for a in step.skip_if if a.startswith("--location=")] == location


@pytest.mark.parametrize("changes", VARIANTS)
def test_the_image_is_deployed_by_the_digest_of_what_was_just_pushed(changes: dict[str, Any]) -> None:
    o = options(**changes)
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
    assert steps["apply manifests"].stdin == "${MANIFESTS}" == "${" + render.capture + "}"
    assert not any(o.tag in " ".join(s.argv) for s in steps.values() if s.argv[:1] == ("kubectl",))


@pytest.mark.parametrize(
    ("changes", "step", "expected"),
    [
        ({}, "check project", "gcloud projects describe demo-project '--format=value(projectId)'"),
        ({}, "enable APIs", "gcloud services enable container.googleapis.com artifactregistry.googleapis.com"),
        (
            {"build": "cloud"},
            "enable APIs",
            "gcloud services enable container.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com",
        ),
        (
            {"region": "europe-west4", "repository": "images"},
            "create repository",
            "gcloud artifacts repositories create images --repository-format=docker --location=europe-west4 "
            "'--description=chargecast images'",
        ),
        ({}, "configure docker", "gcloud auth configure-docker us-central1-docker.pkg.dev --quiet"),
        ({"tag": "v7"}, "build image", f"docker build --platform=linux/amd64 --tag={IMAGE}:v7 {ROOT}"),
        (
            {"build": "cloud", "region": "europe-west4"},
            "build image",
            f"gcloud builds submit --tag=europe-west4-docker.pkg.dev/demo-project/chargecast/chargecast:v1 {ROOT}",
        ),
        (
            {"project": "example.com:demo-project"},
            "push image",
            "docker push us-central1-docker.pkg.dev/example.com/demo-project/chargecast/chargecast:v1",
        ),
        (
            {},
            "resolve digest",
            f"gcloud artifacts docker images describe {IMAGE}:v1 '--format=value(image_summary.digest)'",
        ),
        ({}, "create cluster", "gcloud container clusters create-auto chargecast --location=us-central1"),
        (
            {"nodes": 2},
            "create cluster",
            "gcloud container clusters create chargecast --location=us-central1-b --num-nodes=2 "
            "--enable-managed-prometheus",
        ),
        (
            {"nodes": 3, "zone": "us-central1-f", "cluster": "ml"},
            "create cluster",
            "gcloud container clusters create ml --location=us-central1-f --num-nodes=3 --enable-managed-prometheus",
        ),
        (
            {"nodes": 2},
            "get credentials",
            "gcloud container clusters get-credentials chargecast --location=us-central1-b",
        ),
        ({}, "apply manifests", "kubectl apply -f -"),
        (
            {"cloudsql_instance": "audit"},
            "enable APIs",
            "gcloud services enable container.googleapis.com artifactregistry.googleapis.com sqladmin.googleapis.com",
        ),
        (
            {"cloudsql_instance": "audit", "region": "europe-west4"},
            "create Cloud SQL instance",
            "gcloud sql instances create audit --database-version=POSTGRES_15 --edition=enterprise "
            "--tier=db-f1-micro --region=europe-west4 --storage-auto-increase",
        ),
        ({"cloudsql_instance": "audit"}, "create database", "gcloud sql databases create chargecast --instance=audit"),
        ({"cloudsql_instance": "audit"}, "create database user", "gcloud sql users create chargecast --instance=audit"),
        (
            {"cloudsql_instance": "audit"},
            "grant Cloud SQL client",
            "gcloud projects add-iam-policy-binding demo-project --role=roles/cloudsql.client "
            '"--member=principal://iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/'
            'workloadIdentityPools/demo-project.svc.id.goog/subject/ns/default/sa/chargecast" '
            "--condition=None '--format=value(etag)'",
        ),
        (
            {"cloudsql_instance": "audit"},
            "set database password",
            'gcloud sql users set-password chargecast --instance=audit "--password=${DB_PASSWORD}"',
        ),
        (
            {"cloudsql_instance": "audit"},
            "render audit secret",
            'kubectl create secret generic chargecast-audit "--from-file=CHARGECAST_AUDIT_URL=${WORKDIR}/audit-url" '
            "--dry-run=client -o yaml",
        ),
        ({"cloudsql_instance": "audit"}, "apply audit secret", "kubectl apply -f -"),
        (
            {"cloudsql_instance": "audit", "nodes": 2},
            "create cluster",
            "gcloud container clusters create chargecast --location=us-central1-b --num-nodes=2 "
            "--enable-managed-prometheus --workload-pool=demo-project.svc.id.goog",
        ),
        ({}, "wait for rollout", "kubectl rollout status deployment/chargecast --timeout=5m"),
        (
            {},
            "wait for external IP",
            "kubectl get service chargecast -o 'jsonpath={.status.loadBalancer.ingress[0].ip}'",
        ),
    ],
)
def test_each_command_has_exactly_the_flags_its_options_call_for(
    changes: dict[str, Any], step: str, expected: str
) -> None:
    assert command(plan_gke(options(**changes)), step) == expected


def test_cloud_build_needs_no_docker() -> None:
    plan = plan_gke(options(build="cloud"))
    names = [s.name for s in plan.steps]
    assert "configure docker" not in names
    assert "push image" not in names
    assert not any(s.argv[:1] == ("docker",) for s in plan.steps)
    assert plan.steps[0].tools == ("gcloud", "gke-gcloud-auth-plugin", "kubectl")
    assert plan_gke(options()).steps[0].tools == ("gcloud", "gke-gcloud-auth-plugin", "kubectl", "docker")


# -- project IDs --------------------------------------------------------------------------------


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
def test_an_invalid_project_id_is_refused_with_the_rule_and_nothing_runs(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], project: str, problem: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["deploy", "gke", f"--project={project}"])  # "=": "-project" would look like an option
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --project: invalid project ID {project!r}: it {problem}; {PROJECT_RULE}" in err
    assert "6 to 30 characters: lowercase letters, digits and hyphens, starting with a letter" in err
    assert "Traceback" not in err
    assert fakes.calls() == [], "not even git"
    with pytest.raises(ValueError, match="invalid project ID"):
        options(project=project)


@pytest.mark.parametrize("project", ["a12345", "a" * 30, "demo-project", "p-2024", "example.com:demo-project"])
def test_valid_project_ids_are_accepted(fakes: Fakes, capsys: pytest.CaptureFixture[str], project: str) -> None:
    assert main(["deploy", "gke", "--project", project, "--tag", "v1", "--dry-run"]) == 0
    assert f"CLOUDSDK_CORE_PROJECT={project}" in capsys.readouterr().out


# -- the dry run --------------------------------------------------------------------------------


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


@pytest.mark.parametrize("nodes", [None, 2])
@pytest.mark.parametrize("tag", ["v7", None])
def test_dry_run_lists_every_step_with_its_reason_and_runs_none(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tag: str | None, nodes: int | None
) -> None:
    argv = ["deploy", "gke", "--project", "demo-project", "--dry-run"]
    argv += ["--tag", tag] if tag else []
    argv += ["--nodes", str(nodes)] if nodes else []
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = listed(out)
    assert [name for name, _, _ in rows] == [s.name for s in plan_gke(options(nodes=nodes)).steps]
    for name, _, details in rows:
        reasons = [d for d in details if d.startswith("# ")]
        assert len(reasons) == 1, f"{name} says why it is there, once"
        assert len(reasons[0]) > 20, name
    shown = {name: text for name, text, _ in rows}
    # Without --tag the tag is the git short SHA (the fake git says abc1234).
    assert shown["build image"].endswith(f"--tag={IMAGE}:{tag or 'abc1234'} {ROOT}")
    assert shown["check tools"] == "gcloud, gke-gcloud-auth-plugin, kubectl, docker must be on PATH"
    assert ("--num-nodes=2" in shown["create cluster"]) == (nodes == 2)
    under = {name: d for name, _, d in rows}
    probe = "gcloud artifacts repositories describe chargecast --location=us-central1"
    assert f"skipped when this succeeds: {probe}" in under["create repository"]
    assert "repeated every 5 s, at most 60 times, until it prints something" in under["wait for external IP"]
    assert "|     digest: ${DIGEST}" in under["render manifests"]
    assert "None of them was run" in out
    assert "Every step runs with CLOUDSDK_CORE_PROJECT=demo-project in its environment" in out
    assert "`export CLOUDSDK_CORE_PROJECT=demo-project` first" in out
    assert "chargecast is serving at http://${EXTERNAL_IP}/" in out
    # Not one cloud tool was started; git only to name the tag.
    assert all(c.startswith("git -C ") for c in fakes.calls())
    assert (fakes.calls() == []) == bool(tag)


def test_dry_run_needs_no_tools_at_all(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    for tool in TOOLS:
        fakes.remove(tool)
    assert main(["deploy", "gke", "--project", "demo-project", "--dry-run"]) == 0
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


# -- the runner against fake tools --------------------------------------------------------------


def deploy(*extra: str) -> int:
    return main(["deploy", "gke", "--project", "demo-project", "--tag", "v1", *extra])


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
    assert not any("container clusters" in c or c.startswith("kubectl") for c in fakes.calls())


def test_happy_path_first_deploy(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IP_AFTER", "3")  # the load balancer needs two more polls
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "someone-elses-project")  # the user's own setting loses
    naps: list[float] = []
    plan = plan_gke(options())
    values = run_plan(plan, sleep=naps.append)
    calls = fakes.calls()
    render = next(c for c in calls if c.startswith("kubectl kustomize "))
    # What ran is the plan, in order: each create after its probe found nothing, the IP polled 3 times.
    ran: list[str] = []
    for step in plan.steps:
        if step.skip_if:
            ran.append(" ".join(step.skip_if))
        ran += [render if step.name == "render manifests" else " ".join(step.argv)] * (3 if step.poll else 1)
    assert calls == [c for c in ran if c]  # "check tools" runs nothing
    assert not any(c.startswith("gcloud config") for c in calls)
    # Every tool got the project (and no prompts) from the environment the runner gave it ...
    assert fakes.environments() == {tool: {("demo-project", "1")} for tool in ("gcloud", "docker", "kubectl")}
    # ... while this process's own environment is as it was.
    assert os.environ["CLOUDSDK_CORE_PROJECT"] == "someone-elses-project"
    assert naps == [5.0, 5.0]
    assert values["DIGEST"] == DIGEST
    assert values["EXTERNAL_IP"] == "203.0.113.7"
    out = capfd.readouterr().out
    assert f"chargecast is serving at http://203.0.113.7/ ({IMAGE}@{DIGEST})" in out
    assert f"[{len(plan.steps)}/{len(plan.steps)}] wait for external IP" in out
    # What reached the cluster: the real overlay, pinned to the pushed digest.
    applied = (fakes.dir / "applied.yaml").read_text()
    assert f"image: {IMAGE}@{DIGEST}" in applied
    assert GKE_IMAGE_PLACEHOLDER not in applied
    assert ":v1" not in applied
    assert "kind: PodMonitoring" in applied
    # The temporary render directory is gone and the repository untouched.
    assert not Path(render.split(" ", 2)[2]).exists()


def test_second_deploy_skips_what_exists(
    fakes: Fakes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HAVE_REPO", "1")
    monkeypatch.setenv("FAKE_HAVE_CLUSTER", "1")
    assert deploy("--nodes", "2") == 0
    calls = fakes.calls()
    assert not any(" repositories create " in c for c in calls)
    assert not any(" clusters create" in c for c in calls)
    assert "gcloud artifacts repositories describe chargecast --location=us-central1" in calls
    assert "gcloud container clusters describe chargecast --location=us-central1-b --format=value(name)" in calls
    assert calls[-1].startswith("kubectl get service chargecast")
    out = capfd.readouterr().out
    assert out.count("already there: skipped") == 2
    assert "http://203.0.113.7/" in out


def test_no_external_ip_is_a_bounded_wait(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_IP_AFTER", "1000")
    naps: list[float] = []
    with pytest.raises(DeployError, match=r"step 'wait for external IP': .* printed nothing for 300 s") as caught:
        run_plan(plan_gke(options()), sleep=naps.append)
    assert "kubectl describe service chargecast" in str(caught.value)
    assert len(naps) == 59


def test_a_render_that_misses_the_digest_is_caught(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the overlay's placeholder image changed, the wrapper would silently deploy the placeholder."""
    monkeypatch.setattr(gke, "GKE_IMAGE_PLACEHOLDER", "example/renamed")
    with pytest.raises(DeployError, match=r"step 'render manifests': the output lacks .*@sha256:"):
        run_plan(plan_gke(options()), sleep=lambda _: None)
    assert not any(c.startswith("kubectl apply") for c in fakes.calls())


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


# -- options and helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "gke", "--project", "demo-project", "--nodes", "0"],
        ["deploy", "gke", "--project", "demo-project", "--tag", "bad tag"],
        ["deploy", "gke", "--project", "demo-project", "--region", "Europe"],
        ["deploy", "gke"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert fakes.calls() == []


def test_zone_needs_nodes(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--zone", "us-central1-f", "--dry-run") == 2
    assert "--zone is for a Standard cluster" in capsys.readouterr().err


def test_source_without_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--source", str(tmp_path), "--dry-run") == 2
    assert "deploy/k8s/overlays/gke not found" in capsys.readouterr().err


def test_the_default_source_is_this_checkout_wherever_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_root() == ROOT


def test_default_tag(fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_tag(tmp_path) == "abc1234"
    monkeypatch.setenv("FAKE_DIRTY", "1")
    assert default_tag(tmp_path) == "abc1234-dirty"
    fakes.remove("git")
    assert default_tag(tmp_path) == f"v{__version__}"


def test_placeholders_stay_expandable_in_the_listing() -> None:
    assert show_command(["kubectl", "kustomize", "${WORKDIR}"]) == 'kubectl kustomize "${WORKDIR}"'
    assert show_command(["echo", 'a "$b" ${DIGEST}']) == 'echo "a \\"\\$b\\" ${DIGEST}"'
    assert show_command(["--format=value(account)"]) == "'--format=value(account)'"
    assert " 1. check tools: gcloud, gke-gcloud-auth-plugin, kubectl, docker must be on PATH" in format_plan(
        plan_gke(options())
    )


# -- the audit log on Cloud SQL (--cloudsql-instance) ---------------------------------------------

CLOUDSQL_STEPS = [
    "create Cloud SQL instance",
    "create database",
    "create database user",
    "look up project number",
    "grant Cloud SQL client",
    "generate database password",
    "set database password",
    "render audit secret",
    "apply audit secret",
]


@pytest.mark.parametrize("changes", [{}, {"nodes": 2}, {"build": "cloud"}])
def test_cloudsql_steps_come_in_the_order_each_needs(changes: dict[str, Any]) -> None:
    names = [s.name for s in plan_gke(options(cloudsql_instance="audit", **changes)).steps]
    assert [n for n in names if n in CLOUDSQL_STEPS] == CLOUDSQL_STEPS
    for before, after in [
        ("enable APIs", "create Cloud SQL instance"),  # the Cloud SQL Admin API is off in a new project
        ("render manifests", "create Cloud SQL instance"),  # a broken manifest fails before minutes of creation
        ("create cluster", "create Cloud SQL instance"),
        ("get credentials", "set database password"),  # its probe asks the cluster for the Secret
        ("apply audit secret", "apply manifests"),  # the first pods already find the Secret
    ]:
        assert names.index(before) < names.index(after), f"{before} must run before {after}"
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
        "--member=principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
        "demo-project.svc.id.goog/subject/ns/default/sa/chargecast --condition=None --format=value(etag)",
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
    for name in ("FAKE_HAVE_REPO", "FAKE_HAVE_CLUSTER", "FAKE_HAVE_SQL", "FAKE_HAVE_SECRET"):
        monkeypatch.setenv(name, "1")
    assert deploy("--cloudsql-instance", "audit") == 0
    calls = fakes.calls()
    assert not any(" create " in f" {c} " and c.startswith(("gcloud sql", "gcloud artifacts")) for c in calls)
    assert not any("set-password" in c or c.startswith("kubectl create secret") for c in calls)
    assert "gcloud sql instances describe audit --format=value(name)" in calls
    assert calls.count("kubectl get secret chargecast-audit -o name") == 3
    # The grant is repeated (adding an existing binding changes nothing); the manifests are applied once.
    assert sum(c.startswith("gcloud projects add-iam-policy-binding") for c in calls) == 1
    assert sum(c == "kubectl apply -f -" for c in calls) == 1
    assert capfd.readouterr().out.count("already there: skipped") == 2 + 3 + 3


def test_cloudsql_refuses_domain_scoped_projects(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "gke", "--project", "example.com:demo-project", "--tag", "v1", "--cloudsql-instance", "audit"]
    assert main([*argv, "--dry-run"]) == 2
    assert "does not support domain-scoped projects" in capsys.readouterr().err
    with pytest.raises(ValueError, match="domain-scoped"):
        options(project="example.com:demo-project", cloudsql_instance="audit")


@pytest.mark.parametrize("name", ["Audit", "1audit", "audit-", "a_b", "a" * 99])
def test_a_bad_instance_name_is_a_usage_error(fakes: Fakes, capsys: pytest.CaptureFixture[str], name: str) -> None:
    with pytest.raises(SystemExit) as exited:
        deploy("--cloudsql-instance", name, "--dry-run")
    assert exited.value.code == 2
    assert "cloudsql-instance" in capsys.readouterr().err
    assert fakes.calls() == []


def yaml_docs(text: str) -> list[dict[str, Any]]:
    import yaml  # type: ignore[import-untyped, unused-ignore]

    return [doc for doc in yaml.safe_load_all(text) if doc]
