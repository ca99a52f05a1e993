"""The plans of ``chargecast deploy``: put the service on Google Kubernetes Engine, show its state,
roll it back.

Each step comes from a small builder named after it, and :func:`plan_gke` reads as the procedure:
check, enable, create what is missing, build, push, deploy by digest, wait. Everything is pure:
nothing here runs or reads anything. The project reaches every command through the plan's
environment (``CLOUDSDK_CORE_PROJECT``), so the user's gcloud configuration is never changed.
"""

from __future__ import annotations

import re
import sys
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
# The gke overlay plus the Cloud SQL Auth Proxy sidecar, and the placeholder instance it names.
CLOUDSQL_OVERLAY = Path("deploy/k8s/overlays/gke-cloudsql")
CLOUDSQL_PLACEHOLDER = "PROJECT:REGION:INSTANCE"
# The Secret the pods read CHARGECAST_AUDIT_URL from, the database and its user, and the namespace
# the plan applies to (kubectl's default): Workload Identity names the Kubernetes account by it.
AUDIT_SECRET = f"{APP}-audit"
DATABASE = APP
DB_USER = APP
NAMESPACE = "default"
AUDIT_URL = f"postgresql://{DB_USER}:${{DB_PASSWORD}}@127.0.0.1:5432/{DATABASE}"
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
    cloudsql_instance: str | None = None  # the audit log on this Cloud SQL for PostgreSQL instance

    def __post_init__(self) -> None:
        error = project_error(self.project)
        if error:
            raise ValueError(error)
        if self.cloudsql_instance and ":" in self.project:
            # Their Workload Identity pool and connection names are spelled differently; untested here.
            raise ValueError("--cloudsql-instance does not support domain-scoped projects (example.com:name)")

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

    @property
    def connection_name(self) -> str:
        """PROJECT:REGION:INSTANCE, what the Cloud SQL Auth Proxy connects to."""
        return f"{self.project}:{self.region}:{self.cloudsql_instance}"

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"


def wrapper_kustomization(image: str, connection_name: str | None = None) -> str:
    """A throw-away kustomization around a copy of the gke overlay that pins the image by digest.

    With a Cloud SQL instance it wraps the gke-cloudsql overlay and names the instance in the proxy.
    """
    overlay = CLOUDSQL_OVERLAY if connection_name else OVERLAY
    text = (
        "# Written by `chargecast deploy gke`: the repository's gke overlay with the image just pushed.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - k8s/{overlay.relative_to('deploy/k8s').as_posix()}\n"
        "images:\n"
        f"  - name: {GKE_IMAGE_PLACEHOLDER}\n"
        f"    newName: {image}\n"
        "    digest: ${DIGEST}\n"
    )
    if connection_name:
        text += (
            "patches:\n"
            "  - patch: |\n"
            "      apiVersion: apps/v1\n"
            "      kind: Deployment\n"
            "      metadata:\n"
            f"        name: {APP}\n"
            "      spec:\n"
            "        template:\n"
            "          spec:\n"
            "            initContainers:\n"
            "              - name: cloud-sql-proxy\n"
            "                env:\n"
            "                  - name: CLOUDSQL_INSTANCE\n"
            f"                    value: {connection_name}\n"
        )
    return text


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
    extra = (("cloudbuild.googleapis.com",) if cloud else ()) + (
        ("sqladmin.googleapis.com",) if o.cloudsql_instance else ()
    )
    names = (
        ["GKE", "Artifact Registry"]
        + (["Cloud Build"] if cloud else [])
        + (["Cloud SQL Admin"] if o.cloudsql_instance else [])
    )
    return Step(
        "enable APIs",
        ("gcloud", "services", "enable", *apis, *extra),
        ", ".join(names[:-1]) + " and " + names[-1] + " are off in a new project",
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
        files=(
            ("kustomization.yaml", wrapper_kustomization(o.image, o.connection_name if o.cloudsql_instance else None)),
        ),
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
        if o.cloudsql_instance:  # Autopilot has Workload Identity on; a Standard cluster needs it asked for
            create += (f"--workload-pool={o.workload_pool}",)
            why += " and Workload Identity for the Cloud SQL proxy"
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


# -- the audit log on Cloud SQL (--cloudsql-instance) ----------------------------------------------


def create_sql_instance(o: GkeOptions) -> Step:
    name = str(o.cloudsql_instance)
    return Step(
        "create Cloud SQL instance",
        (
            "gcloud",
            "sql",
            "instances",
            "create",
            name,
            "--database-version=POSTGRES_15",
            "--edition=enterprise",
            "--tier=db-f1-micro",
            f"--region={o.region}",
            "--storage-auto-increase",
        ),
        "the audit log's PostgreSQL, beside the cluster: the smallest shared-core tier, storage that grows "
        "instead of filling up (takes 5-10 minutes)",
        hint="check billing and the Cloud SQL quota; `gcloud sql instances list` shows what exists",
        skip_if=("gcloud", "sql", "instances", "describe", name, "--format=value(name)"),
    )


def create_database(o: GkeOptions) -> Step:
    where = (DATABASE, f"--instance={o.cloudsql_instance}")
    return Step(
        "create database",
        ("gcloud", "sql", "databases", "create", *where),
        "the audit log creates its own tables, inside a database of its own",
        skip_if=("gcloud", "sql", "databases", "describe", *where, "--format=value(name)"),
    )


def create_database_user(o: GkeOptions) -> Step:
    where = (DB_USER, f"--instance={o.cloudsql_instance}")
    return Step(
        "create database user",
        ("gcloud", "sql", "users", "create", *where),
        "a login of its own, not the instance's postgres superuser; its password is set below",
        skip_if=("gcloud", "sql", "users", "describe", *where, "--format=value(name)"),
    )


def project_number(o: GkeOptions) -> Step:
    return Step(
        "look up project number",
        ("gcloud", "projects", "describe", o.project, "--format=value(projectNumber)"),
        "Workload Identity principals name the project by number",
        capture="PROJECT_NUMBER",
        require_output=True,
    )


def grant_sql_client(o: GkeOptions) -> Step:
    # The Kubernetes service account itself, by Workload Identity Federation: no Google service
    # account to create, no key, no annotation; the grant names the namespace and account.
    member = (
        "principal://iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
        f"{o.workload_pool}/subject/ns/{NAMESPACE}/sa/{APP}"
    )
    return Step(
        "grant Cloud SQL client",
        (
            "gcloud",
            "projects",
            "add-iam-policy-binding",
            o.project,
            "--role=roles/cloudsql.client",
            f"--member={member}",
            "--condition=None",
            "--format=value(etag)",
        ),
        f"the proxy in each pod connects as the Kubernetes service account {NAMESPACE}/{APP}; "
        "adding a binding that exists changes nothing",
        hint="granting needs resourcemanager.projects.setIamPolicy "
        "(roles/owner or roles/resourcemanager.projectIamAdmin)",
    )


def secret_probe() -> tuple[str, ...]:
    """Succeeds once the Secret holds a URL: its password is then the one in use, so it is kept."""
    return ("kubectl", "get", "secret", AUDIT_SECRET, "-o", "name")


def generate_password() -> Step:
    return Step(
        "generate database password",
        (sys.executable, "-c", "import secrets; print(secrets.token_urlsafe(24))"),
        "made here, never shown: it goes to Cloud SQL and into the Secret, and is hidden from every message",
        capture="DB_PASSWORD",
        require_output=True,
        secret=True,
    )


def set_database_password(o: GkeOptions) -> Step:
    return Step(
        "set database password",
        (
            "gcloud",
            "sql",
            "users",
            "set-password",
            DB_USER,
            f"--instance={o.cloudsql_instance}",
            "--password=${DB_PASSWORD}",
        ),
        "before the Secret, so a failure in between heals on the next run (no Secret yet: a new password)",
        skip_if=secret_probe(),
    )


def render_audit_secret() -> list[Step]:
    return [
        Step(
            "render audit secret",
            (
                "kubectl",
                "create",
                "secret",
                "generic",
                AUDIT_SECRET,
                "--from-file=CHARGECAST_AUDIT_URL=${WORKDIR}/audit-url",
                "--dry-run=client",
                "-o",
                "yaml",
            ),
            "the URL goes in by file, not on kubectl's command line; the pods read it with envFrom",
            files=(("audit-url", AUDIT_URL),),
            capture="AUDIT_SECRET",
            skip_if=secret_probe(),
        ),
        Step(
            "apply audit secret",
            ("kubectl", "apply", "-f", "-"),
            "created before the Deployment, so the first pods already log to Cloud SQL",
            stdin="${AUDIT_SECRET}",
            skip_if=secret_probe(),
        ),
    ]


def cloudsql_steps(o: GkeOptions) -> tuple[list[Step], list[Step]]:
    """(after the cluster is created, after kubectl points at it): the instance, then its credentials."""
    if not o.cloudsql_instance:
        return [], []
    instance = [create_sql_instance(o), create_database(o), create_database_user(o)]
    access = [project_number(o), grant_sql_client(o), generate_password(), set_database_password(o)]
    return instance, access + render_audit_secret()


def plan_gke(o: GkeOptions) -> Plan:
    """The whole deployment, from an empty project to a URL."""
    build = [build_in_the_cloud(o)] if o.build == "cloud" else build_and_push_here(o)
    rollout = wait_for_rollout(
        "returns once the new pods are ready and the old ones gone",
        hint=f"look at `kubectl get pods -l {SELECTOR}` and `kubectl describe {DEPLOYMENT}`; "
        "`chargecast deploy rollback` returns to the previous version",
    )
    instance, access = cloudsql_steps(o)
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
        *instance,
        get_credentials(o),
        *access,
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
