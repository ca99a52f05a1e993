"""``chargecast deploy``: the plan it makes, its dry run, and its runner against fake cloud tools.

gcloud, kubectl, docker and git are replaced by one small shell script on PATH that logs every
call and plays the part a test asks for (not logged in, a failing command, an existing cluster,
a load balancer IP that appears on the third poll). Only ``kubectl kustomize`` is real, so the
happy path renders the repository's own gke overlay with the pushed digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from chargecast import __version__
from chargecast.cli import main
from chargecast.deploy.gke import (
    GKE_IMAGE_PLACEHOLDER,
    DeployError,
    GkeOptions,
    Plan,
    default_tag,
    format_plan,
    plan_gke,
    run_plan,
    show_command,
)
from tools import dev_tool

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "ab" * 32
IMAGE = "us-central1-docker.pkg.dev/demo-project/chargecast/chargecast"

# What a first deploy with the default options runs, step by step ("check tools" runs nothing).
AUTOPILOT = [
    ("check tools", ""),
    ("check login", "gcloud auth list --filter=status:ACTIVE '--format=value(account)'"),
    ("set project", "gcloud config set project demo-project"),
    ("enable APIs", "gcloud services enable container.googleapis.com artifactregistry.googleapis.com"),
    (
        "create repository",
        "gcloud artifacts repositories create chargecast --repository-format=docker --location=us-central1 "
        "'--description=chargecast images'",
    ),
    ("configure docker", "gcloud auth configure-docker us-central1-docker.pkg.dev --quiet"),
    ("build image", f"docker build --platform=linux/amd64 --tag={IMAGE}:TAG {ROOT}"),
    ("push image", f"docker push {IMAGE}:TAG"),
    ("resolve digest", f"gcloud artifacts docker images describe {IMAGE}:TAG '--format=value(image_summary.digest)'"),
    ("render manifests", 'kubectl kustomize "${WORKDIR}"'),
    ("create cluster", "gcloud container clusters create-auto chargecast --location=us-central1"),
    ("get credentials", "gcloud container clusters get-credentials chargecast --location=us-central1"),
    ("apply manifests", "kubectl apply -f -"),
    ("wait for rollout", "kubectl rollout status deployment/chargecast --timeout=5m"),
    ("wait for external IP", "kubectl get service chargecast -o 'jsonpath={.status.loadBalancer.ingress[0].ip}'"),
]
# --nodes 2: a zonal Standard cluster, so exactly two nodes.
STANDARD = {
    "create cluster": "gcloud container clusters create chargecast --location=us-central1-b --num-nodes=2 "
    "--enable-managed-prometheus",
    "get credentials": "gcloud container clusters get-credentials chargecast --location=us-central1-b",
}

FAKE = r"""#!/bin/sh
# Stands in for gcloud, kubectl, docker, git and the GKE auth plugin: logs the call, then acts.
name=${0##*/}
call="$name $*"
printf '%s\n' "$call" >> "$FAKE_DIR/calls.log"
if [ -n "$FAKE_FAIL" ]; then
  case "$call" in
    "$FAKE_FAIL"*) printf 'ERROR: (%s) simulated failure\n' "$name" >&2; exit 1 ;;
  esac
fi
case "$call" in
  "gcloud auth list"*) [ -n "$FAKE_NO_LOGIN" ] || echo dev@example.com ;;
  "gcloud artifacts repositories describe"*) [ -n "$FAKE_HAVE_REPO" ] || { echo NOT_FOUND >&2; exit 1; } ;;
  "gcloud container clusters describe"*) [ -n "$FAKE_HAVE_CLUSTER" ] || { echo NOT_FOUND >&2; exit 1; } ;;
  "gcloud artifacts docker images describe"*) echo "$FAKE_DIGEST" ;;
  "kubectl kustomize"*) exec "$REAL_KUBECTL" "$@" ;;
  "kubectl apply"*)
    while IFS= read -r line; do printf '%s\n' "$line"; done > "$FAKE_DIR/applied.yaml"
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

    def remove(self, tool: str) -> None:
        (self.bin / tool).unlink()


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """PATH holds only the fakes, so no real cloud tool can be reached whatever this machine has."""
    kubectl = dev_tool("kubectl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "kubectl", "docker", "git", "gke-gcloud-auth-plugin"):
        (bin_dir / tool).write_text(FAKE)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    monkeypatch.setenv("REAL_KUBECTL", kubectl)
    monkeypatch.setenv("FAKE_DIGEST", DIGEST)
    monkeypatch.setenv("FAKE_IP_AFTER", "1")
    for name in ("FAKE_FAIL", "FAKE_NO_LOGIN", "FAKE_HAVE_REPO", "FAKE_HAVE_CLUSTER", "FAKE_DIRTY"):
        monkeypatch.delenv(name, raising=False)
    return Fakes(tmp_path, bin_dir)


def steps(plan: Plan) -> list[tuple[str, str]]:
    return [(s.name, show_command(s.argv)) for s in plan.steps]


def expected(tag: str, nodes: int | None = None) -> list[tuple[str, str]]:
    rows = [(name, command.replace("TAG", tag)) for name, command in AUTOPILOT]
    if nodes is not None:
        rows = [(name, STANDARD.get(name, command)) for name, command in rows]
    return rows


def listed(output: str) -> list[tuple[str, str]]:
    """The "NN. step: command" lines of a dry run."""
    rows = []
    for line in output.splitlines():
        number, sep, rest = line.partition(". ")
        if sep and number.strip().isdigit():
            name, _, command = rest.partition(": ")
            rows.append((name, "" if command.endswith("must be on PATH") else command))
    return rows


# -- the plan -----------------------------------------------------------------------------------


def test_autopilot_plan_is_the_documented_sequence() -> None:
    plan = plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT))
    assert steps(plan) == expected("v1")
    by_name = {s.name: s for s in plan.steps}
    assert by_name["check tools"].tools == ("gcloud", "gke-gcloud-auth-plugin", "kubectl", "docker")
    # Idempotency: what exists is described first and not created again.
    assert show_command(by_name["create repository"].skip_if) == (
        "gcloud artifacts repositories describe chargecast --location=us-central1"
    )
    assert show_command(by_name["create cluster"].skip_if) == (
        "gcloud container clusters describe chargecast --location=us-central1 '--format=value(name)'"
    )
    # Deployed by digest, rendered from a copy of the overlay: the repository is never edited.
    render = by_name["render manifests"]
    assert render.copies == (("k8s", ROOT / "deploy" / "k8s"),)
    ((name, text),) = render.files
    assert name == "kustomization.yaml"
    assert f"name: {GKE_IMAGE_PLACEHOLDER}\n" in text
    assert f"newName: {IMAGE}\n" in text
    assert "digest: ${DIGEST}" in text
    assert render.must_contain == IMAGE + "@${DIGEST}"


def test_standard_cluster_plan_with_two_nodes() -> None:
    plan = plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT, nodes=2))
    assert steps(plan) == expected("v1", nodes=2)
    describe = next(s for s in plan.steps if s.name == "create cluster").skip_if
    assert "--location=us-central1-b" in describe


def test_cloud_build_needs_no_docker() -> None:
    plan = plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT, build="cloud", region="europe-west4"))
    names = [s.name for s in plan.steps]
    assert "configure docker" not in names
    assert "push image" not in names
    assert plan.steps[0].tools == ("gcloud", "gke-gcloud-auth-plugin", "kubectl")
    commands = dict(steps(plan))
    image = "europe-west4-docker.pkg.dev/demo-project/chargecast/chargecast"
    assert commands["build image"] == f"gcloud builds submit --tag={image}:v1 {ROOT}"
    assert commands["enable APIs"].endswith("artifactregistry.googleapis.com cloudbuild.googleapis.com")


def test_zone_and_names_are_honoured() -> None:
    options = GkeOptions(
        project="demo-project", tag="v1", root=ROOT, nodes=3, zone="us-central1-f", cluster="ml", repository="images"
    )
    commands = dict(steps(plan_gke(options)))
    assert commands["create cluster"] == (
        "gcloud container clusters create ml --location=us-central1-f --num-nodes=3 --enable-managed-prometheus"
    )
    assert commands["push image"] == "docker push us-central1-docker.pkg.dev/demo-project/images/chargecast:v1"


# -- the dry run --------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [None, 2])
@pytest.mark.parametrize("tag", ["v7", None])
def test_dry_run_prints_every_command_in_order_and_runs_none(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], tag: str | None, nodes: int | None
) -> None:
    argv = ["deploy", "gke", "--project", "demo-project", "--dry-run"]
    argv += ["--tag", tag] if tag else []
    argv += ["--nodes", str(nodes)] if nodes else []
    assert main(argv) == 0
    out = capsys.readouterr().out
    # Without --tag the tag is the git short SHA (the fake git says abc1234).
    assert listed(out) == expected(tag or "abc1234", nodes)
    assert "None of them was run" in out
    assert "not even the tool and login checks" in out
    assert "digest: ${DIGEST}" in out
    assert "chargecast is serving at http://${EXTERNAL_IP}/" in out
    # Not one cloud tool was started; git only to name the tag.
    assert [c for c in fakes.calls() if not c.startswith("git ")] == []
    assert all(" rev-parse " in c or " status " in c for c in fakes.calls())
    if tag:
        assert fakes.calls() == []


def test_dry_run_needs_no_tools_at_all(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    for tool in ("gcloud", "kubectl", "docker", "git", "gke-gcloud-auth-plugin"):
        fakes.remove(tool)
    assert main(["deploy", "gke", "--project", "demo-project", "--dry-run"]) == 0
    assert f"{IMAGE}:v{__version__}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "expected_steps"),
    [
        (
            "status",
            [
                ("rollout status", "kubectl rollout status deployment/chargecast --timeout=2m"),
                ("list objects", "kubectl get deploy,hpa,pods,svc -l app.kubernetes.io/name=chargecast"),
            ],
        ),
        (
            "rollback",
            [
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
    assert listed(capsys.readouterr().out) == [("check tools", ""), *expected_steps]
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
    naps: list[float] = []
    values = run_plan(plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT)), sleep=naps.append)
    calls = fakes.calls()
    render = next(c for c in calls if c.startswith("kubectl kustomize "))
    assert calls == [
        "gcloud auth list --filter=status:ACTIVE --format=value(account)",
        "gcloud config set project demo-project",
        "gcloud services enable container.googleapis.com artifactregistry.googleapis.com",
        "gcloud artifacts repositories describe chargecast --location=us-central1",
        "gcloud artifacts repositories create chargecast --repository-format=docker --location=us-central1 "
        "--description=chargecast images",
        "gcloud auth configure-docker us-central1-docker.pkg.dev --quiet",
        f"docker build --platform=linux/amd64 --tag={IMAGE}:v1 {ROOT}",
        f"docker push {IMAGE}:v1",
        f"gcloud artifacts docker images describe {IMAGE}:v1 --format=value(image_summary.digest)",
        render,
        "gcloud container clusters describe chargecast --location=us-central1 --format=value(name)",
        "gcloud container clusters create-auto chargecast --location=us-central1",
        "gcloud container clusters get-credentials chargecast --location=us-central1",
        "kubectl apply -f -",
        "kubectl rollout status deployment/chargecast --timeout=5m",
        *["kubectl get service chargecast -o jsonpath={.status.loadBalancer.ingress[0].ip}"] * 3,
    ]
    assert naps == [5.0, 5.0]
    assert values["DIGEST"] == DIGEST
    assert values["EXTERNAL_IP"] == "203.0.113.7"
    out = capfd.readouterr().out
    assert f"chargecast is serving at http://203.0.113.7/ ({IMAGE}@{DIGEST})" in out
    assert "[15/15] wait for external IP" in out
    # What reached the cluster: the real overlay, pinned to the pushed digest.
    applied = (fakes.dir / "applied.yaml").read_text()
    assert f"image: {IMAGE}@{DIGEST}" in applied
    assert GKE_IMAGE_PLACEHOLDER not in applied
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
    assert "gcloud container clusters describe chargecast --location=us-central1-b --format=value(name)" in calls
    assert calls[-1].startswith("kubectl get service chargecast")
    out = capfd.readouterr().out
    assert out.count("already there: skipped") == 2
    assert "http://203.0.113.7/" in out


def test_no_external_ip_is_a_bounded_wait(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_IP_AFTER", "1000")
    naps: list[float] = []
    with pytest.raises(DeployError, match=r"step 'wait for external IP': .* printed nothing for 300 s") as caught:
        run_plan(plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT)), sleep=naps.append)
    assert "kubectl describe service chargecast" in str(caught.value)
    assert len(naps) == 59


def test_a_render_that_misses_the_digest_is_caught(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the overlay's placeholder image changed, the wrapper would silently deploy the placeholder."""
    monkeypatch.setattr("chargecast.deploy.gke.GKE_IMAGE_PLACEHOLDER", "example/renamed")
    with pytest.raises(DeployError, match=r"step 'render manifests': the output lacks .*@sha256:"):
        run_plan(plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT)), sleep=lambda _: None)
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
        ["deploy", "gke", "--project", "Bad_Project"],
        ["deploy", "gke", "--project", "demo-project", "--nodes", "0"],
        ["deploy", "gke", "--project", "demo-project", "--tag", "bad tag"],
        ["deploy", "gke"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_zone_needs_nodes(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--zone", "us-central1-f", "--dry-run") == 2
    assert "--zone is for a Standard cluster" in capsys.readouterr().err


def test_source_without_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy("--source", str(tmp_path), "--dry-run") == 2
    assert "deploy/k8s/overlays/gke not found" in capsys.readouterr().err


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
    listing = format_plan(plan_gke(GkeOptions(project="demo-project", tag="v1", root=ROOT)))
    assert "skipped when this succeeds: gcloud artifacts repositories describe" in listing
    assert "repeated every 5 s, at most 60 times" in listing
