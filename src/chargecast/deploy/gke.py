"""The plans of ``chargecast deploy``: put the service on Google Kubernetes Engine, show its state,
roll it back.

Each step comes from a small builder named after it, and :func:`plan_gke` reads as the procedure:
check, enable, create what is missing, build, push, deploy by digest, wait. Everything is pure:
nothing here runs or reads anything. The project reaches every command through the plan's
environment (``CLOUDSDK_CORE_PROJECT``), so the user's gcloud configuration is never changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chargecast.deploy.plan import Plan, Poll, Step

APP = "chargecast"
SELECTOR = f"app.kubernetes.io/name={APP}"
DEPLOYMENT = f"deployment/{APP}"
# The image name the committed gke overlay renders; the deploy replaces it with the pushed digest.
GKE_IMAGE_PLACEHOLDER = f"REGION-docker.pkg.dev/PROJECT/REPOSITORY/{APP}"
OVERLAY = Path("deploy/k8s/overlays/gke")
# How long to wait for the load balancer's address: 60 polls, 5 s apart.
IP_POLLS = 60
IP_POLL_SECONDS = 5.0
PROJECT_RULE = (
    "a Google Cloud project ID has 6 to 30 characters: lowercase letters, digits and hyphens, "
    "starting with a letter and not ending with a hyphen"
)


def project_error(project: str) -> str | None:
    """Why ``project`` is no project ID, rule included; None when it is one.

    A legacy domain-scoped ID (``example.com:name``) passes.
    """
    problem = _project_problem(project)
    return f"invalid project ID {project!r}: it {problem}; {PROJECT_RULE}" if problem else None


def _project_problem(project: str) -> str | None:
    domain, colon, name = project.rpartition(":")
    if colon and not re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", domain):
        return f"has an invalid domain prefix {domain!r}"
    if not 6 <= len(name) <= 30:
        return f"has {len(name)} characters"
    bad = sorted(set(re.sub(r"[a-z0-9-]", "", name)))
    if bad:
        return "contains " + ", ".join(repr(c) for c in bad)
    if not name[0].isalpha():
        return f"starts with {name[0]!r}"
    if name.endswith("-"):
        return "ends with a hyphen"
    return None


@dataclass(frozen=True)
class GkeOptions:
    """Everything ``deploy gke`` needs; ``tag`` and ``root`` are resolved before planning."""

    project: str
    tag: str
    root: Path
    region: str = "us-central1"
    cluster: str = APP
    repository: str = APP
    nodes: int | None = None
    zone: str | None = None
    build: Literal["docker", "cloud"] = "docker"

    def __post_init__(self) -> None:
        error = project_error(self.project)
        if error:
            raise ValueError(error)

    @property
    def image(self) -> str:
        """The Artifact Registry path (Container Registry is shut down; this is its replacement)."""
        # A domain-scoped project "example.com:proj" is written "example.com/proj" in image paths.
        return f"{self.region}-docker.pkg.dev/{self.project.replace(':', '/')}/{self.repository}/{APP}"

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tag}"

    @property
    def location(self) -> str:
        """Autopilot clusters are regional; a Standard cluster of N nodes is zonal, so it has N nodes, not 3N."""
        if self.nodes is None:
            return self.region
        return self.zone or f"{self.region}-b"


def wrapper_kustomization(image: str) -> str:
    """A throw-away kustomization around a copy of the gke overlay that pins the image by digest."""
    return (
        "# Written by `chargecast deploy gke`: the repository's gke overlay with the image just pushed.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - k8s/{OVERLAY.relative_to('deploy/k8s').as_posix()}\n"
        "images:\n"
        f"  - name: {GKE_IMAGE_PLACEHOLDER}\n"
        f"    newName: {image}\n"
        "    digest: ${DIGEST}\n"
    )


# -- the steps of `deploy gke`, in the order they run -----------------------------------------------


def check_tools(o: GkeOptions) -> Step:
    tools = ("gcloud", "gke-gcloud-auth-plugin", "kubectl") + (() if o.build == "cloud" else ("docker",))
    return Step("check tools", (), "every later step calls one of these", tools=tools)


def check_login() -> Step:
    return Step(
        "check login",
        ("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"),
        "gcloud must act as someone allowed to create clusters in the project",
        hint="log in with `gcloud auth login`, then run this command again",
        require_output=True,
    )


def check_project(o: GkeOptions) -> Step:
    return Step(
        "check project",
        ("gcloud", "projects", "describe", o.project, "--format=value(projectId)"),
        "a mistyped or inaccessible project fails here in seconds, before anything is created",
        hint=f"check the ID with `gcloud projects list`, or create it: `gcloud projects create {o.project}`",
        require_output=True,
    )


def enable_apis(o: GkeOptions) -> Step:
    apis = ("container.googleapis.com", "artifactregistry.googleapis.com")
    cloud = o.build == "cloud"
    return Step(
        "enable APIs",
        ("gcloud", "services", "enable", *apis, *(("cloudbuild.googleapis.com",) if cloud else ())),
        ("GKE, Artifact Registry and Cloud Build" if cloud else "GKE and Artifact Registry")
        + " are off in a new project",
        hint="the project needs billing: https://console.cloud.google.com/billing/linkedaccount",
    )


def create_repository(o: GkeOptions) -> Step:
    return Step(
        "create repository",
        (
            "gcloud",
            "artifacts",
            "repositories",
            "create",
            o.repository,
            "--repository-format=docker",
            f"--location={o.region}",
            "--description=chargecast images",
        ),
        "images live in Artifact Registry, next to the cluster",
        skip_if=("gcloud", "artifacts", "repositories", "describe", o.repository, f"--location={o.region}"),
    )


def build_in_the_cloud(o: GkeOptions) -> Step:
    return Step(
        "build image",
        ("gcloud", "builds", "submit", f"--tag={o.ref}", str(o.root)),
        "Cloud Build builds and pushes the image; no Docker needed here",
        hint=f"the build context {o.root} needs the Dockerfile",
    )


def build_and_push_here(o: GkeOptions) -> list[Step]:
    return [
        Step(
            "configure docker",
            ("gcloud", "auth", "configure-docker", f"{o.region}-docker.pkg.dev", "--quiet"),
            "docker push authenticates to Artifact Registry through gcloud",
        ),
        Step(
            "build image",
            ("docker", "build", "--platform=linux/amd64", f"--tag={o.ref}", str(o.root)),
            "GKE nodes are x86-64, whatever this machine is",
            hint=f"the build context {o.root} needs the Dockerfile; is the Docker daemon running?",
        ),
        Step("push image", ("docker", "push", o.ref), "the cluster pulls from Artifact Registry"),
    ]


def resolve_digest(o: GkeOptions) -> Step:
    return Step(
        "resolve digest",
        ("gcloud", "artifacts", "docker", "images", "describe", o.ref, "--format=value(image_summary.digest)"),
        "deploy the exact bytes just pushed: a tag can move, a digest cannot",
        hint=f"the push did not land; see what is there: `gcloud artifacts docker images list {o.image}`",
        capture="DIGEST",
        require_output=True,
    )


def render_manifests(o: GkeOptions) -> Step:
    return Step(
        "render manifests",
        ("kubectl", "kustomize", "${WORKDIR}"),
        "render before creating anything slow, so a broken manifest fails in seconds",
        hint=f"check that `kubectl kustomize {OVERLAY}` works in the repository",
        copies=(("k8s", o.root / "deploy" / "k8s"),),
        files=(("kustomization.yaml", wrapper_kustomization(o.image)),),
        capture="MANIFESTS",
        must_contain=f"{o.image}@${{DIGEST}}",
    )


def create_cluster(o: GkeOptions) -> Step:
    where = (o.cluster, f"--location={o.location}")
    if o.nodes is None:
        create: tuple[str, ...] = ("gcloud", "container", "clusters", "create-auto", *where)
        why = "Autopilot: Google runs the nodes and bills per pod"
    else:
        create = ("gcloud", "container", "clusters", "create", *where, f"--num-nodes={o.nodes}")
        create += ("--enable-managed-prometheus",)
        why = f"a Standard cluster of {o.nodes} nodes, with managed Prometheus for the PodMonitoring"
    return Step(
        "create cluster",
        create,
        why + " (takes 5-10 minutes)",
        hint="check quotas and billing in the console; with --nodes, pass --zone if that zone does not exist",
        skip_if=("gcloud", "container", "clusters", "describe", *where, "--format=value(name)"),
    )


def get_credentials(o: GkeOptions) -> Step:
    return Step(
        "get credentials",
        ("gcloud", "container", "clusters", "get-credentials", o.cluster, f"--location={o.location}"),
        "points kubectl at the cluster",
    )


def apply_manifests(o: GkeOptions) -> Step:
    return Step(
        "apply manifests",
        ("kubectl", "apply", "-f", "-"),
        "creates or updates every object; the Deployment rolls out the new image",
        hint=(
            "if PodMonitoring is unknown, turn on managed Prometheus: "
            f"`gcloud container clusters update {o.cluster} --location={o.location} --enable-managed-prometheus`"
        ),
        stdin="${MANIFESTS}",
    )


def wait_for_rollout(why: str, hint: str) -> Step:
    return Step("wait for rollout", ("kubectl", "rollout", "status", DEPLOYMENT, "--timeout=5m"), why, hint=hint)


def wait_for_ip() -> Step:
    return Step(
        "wait for external IP",
        ("kubectl", "get", "service", APP, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"),
        "Google Cloud assigns the load balancer's address a minute or two after the Service exists",
        hint=f"see `kubectl describe service {APP}` for load balancer events",
        capture="EXTERNAL_IP",
        poll=Poll(IP_POLLS, IP_POLL_SECONDS),
    )


def plan_gke(o: GkeOptions) -> Plan:
    """The whole deployment, from an empty project to a URL."""
    build = [build_in_the_cloud(o)] if o.build == "cloud" else build_and_push_here(o)
    rollout = wait_for_rollout(
        "returns once the new pods are ready and the old ones gone",
        hint=f"look at `kubectl get pods -l {SELECTOR}` and `kubectl describe {DEPLOYMENT}`; "
        "`chargecast deploy rollback` returns to the previous version",
    )
    steps = [
        check_tools(o),
        check_login(),
        check_project(o),
        enable_apis(o),
        create_repository(o),
        *build,
        resolve_digest(o),
        render_manifests(o),  # before the slow cluster: a broken manifest fails in seconds
        create_cluster(o),
        get_credentials(o),
        apply_manifests(o),
        rollout,
        wait_for_ip(),
    ]
    return Plan(
        "deploy gke",
        tuple(steps),
        done=f"chargecast is serving at http://${{EXTERNAL_IP}}/ ({o.image}@${{DIGEST}})",
        retry="Every step is safe to repeat: after the fix, run the same command again.",
        env=(("CLOUDSDK_CORE_PROJECT", o.project),),
    )


# -- status and rollback: kubectl's current context ------------------------------------------------


def plan_status() -> Plan:
    """How the deployment in kubectl's current context is doing."""
    return Plan(
        "deploy status",
        (
            Step("check tools", (), "both steps call kubectl", tools=("kubectl",)),
            Step(
                "rollout status",
                ("kubectl", "rollout", "status", DEPLOYMENT, "--timeout=2m"),
                "waits for a rollout in progress; fails if it is stuck",
                hint=f"look at `kubectl get pods -l {SELECTOR}` and `kubectl describe {DEPLOYMENT}`",
            ),
            Step(
                "list objects",
                ("kubectl", "get", "deploy,hpa,pods,svc", "-l", SELECTOR),
                "replicas, autoscaler target, pod health and the external IP at a glance",
            ),
        ),
    )


def plan_rollback(revision: int | None = None) -> Plan:
    """Back to the previous ReplicaSet (or a given revision), then wait until it serves."""
    undo: tuple[str, ...] = ("kubectl", "rollout", "undo", DEPLOYMENT)
    if revision is not None:
        undo = (*undo, f"--to-revision={revision}")
    return Plan(
        "deploy rollback",
        (
            Step("check tools", (), "both steps call kubectl", tools=("kubectl",)),
            Step(
                "undo rollout",
                undo,
                "the previous pod template (image digest included) is kept as an old ReplicaSet",
                hint=f"`kubectl rollout history {DEPLOYMENT}` lists the revisions there are",
            ),
            wait_for_rollout(
                "the same rolling update as a deploy: capacity never drops",
                hint=f"look at `kubectl get pods -l {SELECTOR}`",
            ),
        ),
        done="rolled back; the next `chargecast deploy gke` rolls forward again",
    )
